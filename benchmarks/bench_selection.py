"""Selection, next-basket model and evaluation at full scale: each asset measured on its own.

    .venv/bin/python benchmarks/bench_selection.py [--data DIR] [--stages a,b,...] [--tag after]
    .venv/bin/python benchmarks/bench_selection.py --profile nbr_model   # cProfile of one stage

Data: the generated 206,209-user dataset of `run_scale.py` (`cached_dataset`, test share 0.364),
ingested and imputed once; the inputs every measured asset reads (orders_imputed, order lines,
products, ratings, holdout) are cached as parquet under ``benchmarks/.cache/stages-<dataset>/``.

Stages, in graph order: ``model_selection``, ``als_model``, ``nbr_model``, ``als_candidates``,
``als_eval``, ``user_recos``, ``als_postrank``. Each is the asset function itself, invoked directly (no IO
manager, default config), so what is measured is exactly what the graph runs. A stage not
selected with ``--stages`` reads its output from the previous run's cache instead.

Per stage: wall seconds, CPU seconds (user + sys of the whole process, every thread: on a
shared machine wall time inflates with the load, CPU time much less), peak RSS and the extra
peak above the RSS at the stage's start. The load average is recorded beside.
Results: ``benchmarks/results/DATE-selection-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit wants single-threaded BLAS

import polars as pl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import CACHE, _reset_peak, _rss_mb, machine, write_results  # noqa: E402

USERS, SEED = 206_209, 42
STAGES = ("model_selection", "als_model", "nbr_model", "als_candidates", "als_eval", "user_recos", "als_postrank")
RUN_KEY = "run-20260101-000000"
# the stage package defining each asset
MODULES = {"model_selection": "selection", "als_model": "model", "nbr_model": "nbr",
           "als_candidates": "evaluation", "als_eval": "evaluation", "user_recos": "postrank", "als_postrank": "postrank"}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def measured(rows: list[dict], name: str):
    """Wall, CPU, peak RSS and extra peak of the block, appended to ``rows``."""
    _reset_peak()
    start_rss, load = _rss_mb("VmRSS"), os.getloadavg()[0]
    w0, c0 = time.perf_counter(), _cpu()
    yield
    row = {
        "stage": name,
        "wall_s": round(time.perf_counter() - w0, 1),
        "cpu_s": round(_cpu() - c0, 1),
        "peak_rss_mb": round(_rss_mb("VmHWM")),
        "extra_mb": round(_rss_mb("VmHWM") - start_rss),
        "load_1m": round(load, 1),
    }
    rows.append(row)
    print(f"  {name:<16} wall {row['wall_s']:>7.1f} s  cpu {row['cpu_s']:>7.1f} s  "
          f"peak {row['peak_rss_mb']:>6} MB  extra {row['extra_mb']:>6} MB  load {load:.1f}", flush=True)


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #
def inputs(data: Path) -> dict[str, pl.DataFrame]:
    """The graph's inputs to the measured assets, built once per dataset and cached."""
    folder = CACHE / f"stages-{data.name}"
    names = ("orders_imputed", "raw_order_products", "products", "ratings", "holdout")
    if not all((folder / f"{n}.parquet").exists() for n in names):
        folder.mkdir(parents=True, exist_ok=True)
        for name, frame in _build_inputs(data).items():
            frame.write_parquet(folder / f"{name}.parquet")
    return {n: pl.read_parquet(folder / f"{n}.parquet") for n in names}


def _build_inputs(data: Path) -> dict[str, pl.DataFrame]:
    from insightflow_assets.imputation.assets import MiceConfig
    from insightflow_assets.imputation.mice import impute_orders, order_features
    from insightflow_assets.ingest.loading import read_table, validate_snapshot
    from insightflow_assets.ratings.build import build_holdout, build_ratings

    print(f"building inputs from {data} (once) ...", flush=True)
    stems = [p.stem for p in data.glob("*.csv")]
    snap = validate_snapshot({s: read_table(data / f"{s}.csv", s) for s in stems}, {s: s for s in stems})
    cfg = MiceConfig()
    orders, _ = impute_orders(
        order_features(snap.orders, snap.order_products),
        n_imputations=cfg.n_imputations, max_iter=cfg.max_iter, fit_sample=cfg.fit_sample, seed=cfg.seed,
    )
    lines = snap.order_products
    return {
        "orders_imputed": orders, "raw_order_products": lines, "products": snap.products,
        "ratings": build_ratings(orders, lines), "holdout": build_holdout(orders, lines),
    }


# --------------------------------------------------------------------------- #
# the assets, invoked directly
# --------------------------------------------------------------------------- #
def _context():
    from dagster import DagsterInstance, build_asset_context

    from insightflow_assets.partitions import runs_partitions

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(runs_partitions.name, [RUN_KEY])
    return build_asset_context(partition_key=RUN_KEY, instance=instance)


def _value(out):
    return out.value if hasattr(out, "value") else out


def invoke(name: str, data: dict) -> object:
    """Run one asset on ``data`` (inputs and upstream outputs by name) with its default config."""
    import importlib
    import inspect

    fn = getattr(importlib.import_module(f"insightflow_assets.{MODULES[name]}.assets"), name)
    # the function as written (run_asset's step reads upstream values through the IO manager)
    body = inspect.unwrap(fn.op.compute_fn.decorated_fn)
    params = inspect.signature(body).parameters
    kwargs = {p: data[p] for p in params if p not in ("context", "config")}
    if "context" in params:
        kwargs["context"] = _context()
    if "config" in params:
        kwargs["config"] = params["config"].annotation()
    return _value(body(**kwargs))


# --------------------------------------------------------------------------- #
# outputs of stages not re-run: cached from the last run
# --------------------------------------------------------------------------- #
def _save(folder: Path, name: str, value) -> None:
    from resources.io_manager import ArtifactFolder

    if isinstance(value, ArtifactFolder):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for f, b in value.files.items():
            (folder / name / f).write_bytes(b)
    elif isinstance(value, pl.DataFrame):
        value.write_parquet(folder / f"{name}.parquet")
    else:
        (folder / f"{name}.json").write_text(json.dumps(value))


def _load(folder: Path, name: str):
    from resources.io_manager import ArtifactFolder

    if (folder / name).is_dir():
        return ArtifactFolder({p.name: p.read_bytes() for p in (folder / name).iterdir()})
    if (folder / f"{name}.parquet").exists():
        return pl.read_parquet(folder / f"{name}.parquet")
    return json.loads((folder / f"{name}.json").read_text())


def run(data: dict, stages: list[str], folder: Path, profile: str | None) -> list[dict]:
    rows: list[dict] = []
    folder.mkdir(parents=True, exist_ok=True)
    last = max(STAGES.index(s) for s in stages)
    for name in STAGES[: last + 1]:
        if name not in stages:
            data[name] = _load(folder, name)
            continue
        if name == profile:
            data[name] = _profiled(name, data)
        else:
            with measured(rows, name):
                data[name] = invoke(name, data)
        _save(folder, name, data[name])
    return rows


def _profiled(name: str, data: dict):
    import cProfile
    import pstats

    prof = cProfile.Profile(_cpu)  # CPU time of every thread, charged to the main thread's calls
    out = prof.runcall(invoke, name, data)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=CACHE / f"instacart-u{USERS}-s{SEED}-m0.05-t0.364",
                    help="folder of Instacart CSVs (default: run_scale's cached dataset)")
    ap.add_argument("--stages", default=",".join(STAGES), help="stages to run (others read the last run's outputs)")
    ap.add_argument("--tag", default="after", help="results go to DATE-selection-<tag>.json")
    ap.add_argument("--profile", choices=STAGES, help="print a cProfile of this stage instead of measuring it")
    args = ap.parse_args()
    if not (args.data / "orders.csv").exists():
        from benchmarks._common import cached_dataset

        args.data = cached_dataset(USERS, SEED, missing_rate=0.05, test_share=0.364)

    data = inputs(args.data)
    print(f"{data['orders_imputed']['user_id'].n_unique():,} users, {data['raw_order_products'].height:,} lines; "
          f"load {os.getloadavg()}", flush=True)
    stages = [s for s in args.stages.split(",") if s]
    rows = run(data, stages, CACHE / f"stages-{args.data.name}" / "outputs", args.profile)
    if args.profile:
        return
    if data.get("model_selection"):
        sel = data["model_selection"]
        print("validation winner:", sel["winner"]["label"], {k: round(v, 4) for k, v in sel["winner"].items() if "@" in k})
        print("candidates (seconds = fit + score):")
        for c in sel["candidates"]:
            print(f"    {c['label']:<14} {json.dumps(c['params'], sort_keys=True)[:90]:<92} map@10 {_score(c['map@10'])}  {c['seconds']:>6.1f} s")
    payload = {
        "benchmark": "selection", "tag": args.tag, "users": USERS, "data": str(args.data),
        "stages": rows, "machine": machine(), "load_average_end": os.getloadavg(),
        "selection": data.get("model_selection"),
        "timings": "wall_s = elapsed; cpu_s = user+sys of the process over all threads",
    }
    write_results(f"selection-{args.tag}", payload, ["stage", "wall_s", "cpu_s", "peak_rss_mb", "extra_mb", "load_1m"])


def _score(value: float | None) -> str:
    return "skipped" if value is None else f"{value:.4f}"  # None: the early stop did not try it


if __name__ == "__main__":
    main()
