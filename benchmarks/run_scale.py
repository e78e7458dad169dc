"""Scale benchmark: the whole graph through Dagster at Instacart scale on the local store.

    .venv/bin/python benchmarks/run_scale.py                 # 206,209 users, one run
    .venv/bin/python benchmarks/run_scale.py --in-process    # one step at a time, in this process
    .venv/bin/python benchmarks/run_scale.py --curve         # also 10 %, 25 %, 50 % → scaling plot

The graph runs as `insightflow run --parallel` runs it: steps side by side, each in a process
of its own (`--in-process`: one at a time, as `insightflow run` does by default). Per asset it records wall time (the step's start/success events), the CPU
seconds and peak RSS of the step's process (sampled every 200 ms; in process: the tree's over
the step) and rows in/out (materialization metadata). The whole graph's figures are of the
process tree: CPU of every process, and the peak of its summed proportional set sizes (pages
shared with the forkserver count once; read every 2 s, as reading them is not free).
Targets on 2 cores / 24 GB: whole graph ≤ 4 minutes, peak memory ≤ 6 GB. CPU seconds are what
the load of a shared machine inflates far less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import CACHE, RESULTS, cached_dataset, descendants, machine, markdown, proc_mb, write_results  # noqa: E402

INSTACART_USERS = 206_209
TARGET_SECONDS, TARGET_RSS_MB = 240, 6 * 1024  # issue 11: the whole graph, validation included, <= 4 min
COLUMNS = ["stage", "seconds", "cpu_s", "peak_rss_mb", "rows_in", "rows_out"]


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _proc_stats(pids=None) -> dict[int, tuple[int, float, float, float]]:
    """``pid -> (ppid, own CPU s, CPU s of its reaped children, RSS MB)`` of every process (or
    of ``pids``, those still alive)."""
    out = {}
    for entry in os.listdir("/proc") if pids is None else map(str, pids):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        f = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        out[int(entry)] = (int(f[1]), (int(f[11]) + int(f[12])) / _TICK, (int(f[13]) + int(f[14])) / _TICK,
                           int(f[21]) * _PAGE_MB)
    return out


class TreeSampler(threading.Thread):
    """Samples this process and its descendants (the forkserver and each step's process):
    memory and CPU time of the tree, and per process its CPU and peak RSS, so each step gets
    its own figures even when two run side by side. On a shared machine a step's wall time
    grows with the load, its CPU time much less."""

    def __init__(self, every: float = 0.2, rescan: int = 3, pss_every: float = 2.0, pss_above_mb: float = 64.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.total: list[tuple[float, float, float]] = []  # (time, tree CPU s, tree PSS MB)
        self.cpu_of: dict[int, float] = {}
        self.peak_of: dict[int, float] = {}
        self._halt = threading.Event()
        self._pss_at = 0.0
        self._tree: set[int] = set()
        self._tick = 0
        # What measuring costs is inside the tree's figures: the whole /proc is listed every
        # ``rescan`` samples only (to find new processes), the known tree read in between, and
        # PSS read only for processes above ``pss_above_mb`` of RSS (not the log tails).
        self.rescan, self.pss_every, self.pss_above_mb = rescan, pss_every, pss_above_mb
        self.own_cpu = 0.0  # this thread's CPU seconds

    def _stats(self) -> dict[int, tuple[int, float, float, float]]:
        me = os.getpid()
        if self._tick % self.rescan == 0 or not self._tree:
            stats = _proc_stats()
            children: dict[int, list[int]] = {}
            for pid, (ppid, *_rest) in stats.items():
                children.setdefault(ppid, []).append(pid)
            self._tree = {me, *descendants(me, children)}
            return {pid: stats[pid] for pid in self._tree & stats.keys()}
        return _proc_stats(self._tree)

    def sample(self) -> None:
        stats = self._stats()
        self._tick += 1
        # PSS walks the page tables (≈ 30 ms for a busy step's process): every pss_every seconds,
        # or the sampler itself slows the run it measures
        now = time.time()
        with_pss = now - self._pss_at >= self.pss_every
        self._pss_at = now if with_pss else self._pss_at
        cpu = mem = 0.0
        for pid, (_, own, reaped, mb) in stats.items():
            cpu += own + reaped  # a finished step's CPU lives on in its parent's reaped time
            # PSS: pages shared with the forkserver (the preloaded code location) count once
            if with_pss:
                mem += proc_mb(pid, "Pss", "smaps_rollup", missing=mb) if mb >= self.pss_above_mb else mb
            self.cpu_of[pid] = own
            self.peak_of[pid] = max(self.peak_of.get(pid, 0.0), mb)
        self.total.append((now, cpu, mem if with_pss else float("nan")))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self.own_cpu = time.thread_time()
            self._halt.wait(self.every)

    def _at(self, t: float) -> tuple[float, float, float]:
        return min(self.total, key=lambda s: abs(s[0] - t))

    def cpu_seconds(self, start: float, end: float) -> float:
        """CPU seconds of the whole tree between two instants (nearest samples)."""
        return max(self._at(end)[1] - self._at(start)[1], 0.0) if self.total else float("nan")

    def peak(self, start: float, end: float) -> float:
        """Largest PSS sample of the tree between two instants (else the one nearest ``end``)."""
        measured = [(t, mb) for t, _, mb in self.total if mb == mb]  # NaN: no PSS in that sample
        inside = [mb for t, mb in measured if start <= t <= end]
        return max(inside) if inside else min(measured, key=lambda s: abs(s[0] - end))[1]

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def run_once(users: int, seed: int, run_config: dict | None = None, keep: Path | None = None,
             in_process: bool = False) -> dict:
    """One run of the whole graph as `insightflow run --parallel` runs it (steps side by side in
    processes of their own), or one step at a time in this process."""
    from dagster import DagsterEventType, DagsterInstance

    from resources import LocalStorage

    clean = cached_dataset(users, seed, missing_rate=0.05, test_share=0.364)
    curated = keep or Path(tempfile.mkdtemp(prefix="scale-curated-", dir=CACHE))
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise SystemExit(f"--keep {keep}: not empty (a fresh folder keeps one run)")
    # the code location of this environment: each step's process rebuilds it from there
    os.environ.update({"INSIGHTFLOW_STORAGE": "local", "INSIGHTFLOW_SOURCE_DIR": str(clean),
                       "INSIGHTFLOW_CURATED_DIR": str(curated), "INSIGHTFLOW_COMPUTE": "local"})
    from insightflow_assets.definitions import make_definitions
    from insightflow_assets.runner import run_graph

    store, defs = LocalStorage(root=str(curated)), make_definitions()

    sampler = TreeSampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as home, DagsterInstance.local_temp(home) as instance:
        t0 = time.time()
        outcome = run_graph(instance, defs=defs if in_process else None, run_config=run_config,
                            log_level="CRITICAL", parallel=not in_process)
        wall = time.time() - t0
        sampler.stop()
        run = instance.get_runs(limit=1)[0]
        records = instance.all_logs(run.run_id)

    starts, ends, rows, pids = {}, {}, {}, {}
    for rec in records:
        ev = rec.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type == DagsterEventType.STEP_WORKER_STARTED:
            pids[ev.step_key] = int(ev.event_specific_data.metadata["pid"].value)
        elif ev.event_type == DagsterEventType.STEP_START:
            starts[ev.step_key] = rec.timestamp
        elif ev.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[ev.step_key] = rec.timestamp
        elif ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            mat = ev.event_specific_data.materialization
            value = mat.metadata.get("dagster/row_count")  # set by the IO manager on every table
            rows[mat.asset_key.to_user_string()] = int(value.value) if value is not None else None

    graph = defs.resolve_asset_graph()
    steps = []
    for step, start in sorted(starts.items(), key=lambda kv: kv[1]):
        end = ends.get(step, start)
        produced = [k for k in rows if k == step or step == "instacart_snapshot" and k in ("raw_orders", "raw_order_products", "products")]
        pid = pids.get(step)
        if pid is None:  # in process: the tree's figures over the step
            cpu, peak = sampler.cpu_seconds(start, end), sampler.peak(start, end)
        else:  # the step's own process (its last sample, up to 0.1 s before it ended)
            cpu, peak = sampler.cpu_of.get(pid, float("nan")), sampler.peak_of.get(pid, float("nan"))
        row = {"stage": step, "seconds": round(end - start, 2), "cpu_s": round(cpu, 1), "peak_rss_mb": round(peak)}
        if produced:
            outs = [rows[k] for k in produced if rows[k] is not None]
            if outs:  # folders (charts, model, reports) have files, not rows
                row["rows_out"] = sum(outs)
            parents = {p.to_user_string() for k in produced for p in graph.get(_key(k)).parent_keys}
            ins = [rows.get(p) for p in parents if rows.get(p) is not None]
            if ins:
                row["rows_in"] = sum(ins)
        steps.append(row)

    # the source CSVs' lines, for the ingest step's rows in
    for row in steps:
        if row["stage"] == "instacart_snapshot":
            row["rows_in"] = sum(sum(1 for _ in open(p, "rb")) - 1 for p in clean.glob("*.csv"))
    selection = _selection_seconds(store, outcome.run_key)
    quality = _holdout_quality(store, outcome.run_key)
    total = {
        "stage": "whole graph",
        "seconds": round(wall, 1),
        "cpu_s": round(sampler.cpu_seconds(t0, t0 + wall), 1),
        "peak_rss_mb": round(sampler.peak(t0, t0 + wall)),
    }
    if keep is None:
        _rmtree(curated)
    return {
        "users": users,
        "ok": "yes" if outcome.ok else "NO",
        "errors": outcome.errors,
        "failed_checks": outcome.failed_error_checks,
        "executor": "in process" if in_process else "multiprocess (insightflow run --parallel)",
        "stages": steps + [total],
        "model_selection_candidates": selection,
        "quality": quality,
        "whole_graph_seconds": total["seconds"],
        "peak_rss_mb": total["peak_rss_mb"],
        "sampler_cpu_s": round(sampler.own_cpu, 1),  # inside the whole graph's CPU figure
    }


def _selection_seconds(store, run_key: str) -> list[dict]:
    """Inside the biggest step: each validation candidate's fit + score seconds and map@10."""
    from resources.layout import artifact

    try:
        report = json.loads(store.read_bytes(artifact("model_selection").keys(run_key)["selection.json"]))
    except Exception:  # noqa: BLE001 - a failed run has no report; the run's errors say why
        return []
    # a candidate the early stop skipped has no score ("skipped" says why)
    return [{"method": c["method"], "params": c["params"], "seconds": c["seconds"],
             "map@10": round(c["map@10"], 4) if c["map@10"] is not None else "skipped"}
            for c in report["candidates"]]


def _holdout_quality(store, run_key: str) -> dict:
    """What the speed levers could cost: each method's holdout map@10 / recall@10 (the exported
    one beside GP-TopFreq), ALS's chosen iterations and LightFM's final epochs."""
    from resources.layout import artifact

    def stored(asset: str, name: str) -> dict:
        return json.loads(store.read_bytes(artifact(asset).keys(run_key)[name]))

    try:
        post = stored("als_postrank", "metrics.json")
        als, lfm = stored("als_model", "params.json"), stored("lightfm_model", "params.json")
        basket = stored("basket_eval", "metrics.json")["methods"]
    except Exception:  # noqa: BLE001 - a failed run has no reports; the run's errors say why
        return {}
    return {
        # LightFM's item vectors feed the basket blend: its hit@10 / mrr@10 move with LightFM's epochs
        "basket_eval": {m: {k: round(v[k], 4) for k in ("hit@10", "mrr@10") if k in v} for m, v in basket.items()},
        "exported_method": post["exported_method"]["method"],
        "holdout": {m: {k: round(v[k], 4) for k in ("map@10", "recall@10")} for m, v in post["methods"].items()},
        "als_model": {k: als.get(k) for k in ("iterations", "chosen_on", "fit_seconds")},
        "lightfm_model": {k: lfm.get(k) for k in ("epochs_final", "best_epoch", "epochs_run", "chosen_on")},
    }


def _key(name: str):
    from dagster import AssetKey

    return AssetKey(name)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def plot_curve(points: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(9, 4.5), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    users = [p["users"] for p in points]
    ax1.plot(users, [p["whole_graph_seconds"] for p in points], marker="o")
    ax1.axhline(TARGET_SECONDS, ls=":", color="grey", label=f"target {TARGET_SECONDS / 60:g} min")
    ax1.set(title="Whole graph wall time", xlabel="users", ylabel="seconds")
    ax2.plot(users, [p["peak_rss_mb"] / 1024 for p in points], marker="o", color="tab:orange")
    ax2.axhline(TARGET_RSS_MB / 1024, ls=":", color="grey", label="target 6 GB")
    ax2.set(title="Peak memory (RSS of the run process)", xlabel="users", ylabel="GB")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_ylim(bottom=0)
    fig.suptitle("InsightFlow scaling on 2 cores (generated Instacart-shaped data)")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=INSTACART_USERS)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--curve", action="store_true", help="also run at 10 %%, 25 %% and 50 %% of --users")
    ap.add_argument("--keep", type=Path, help="store the run in this (new or empty) folder and keep it, "
                    "e.g. for benchmarks/bench_serving.py --curated")
    ap.add_argument("--in-process", action="store_true", help="one step at a time in this process "
                    "(insightflow run's default) instead of side by side")
    ap.add_argument("--point", help=argparse.SUPPRESS)  # internal: one curve point, JSON to this path
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit wants single-threaded BLAS

    if args.point:
        r = run_once(args.users, args.seed, in_process=args.in_process)
        Path(args.point).write_text(json.dumps({k: r[k] for k in ("users", "whole_graph_seconds", "peak_rss_mb", "ok")}))
        return

    print(f"scale benchmark: whole graph at {args.users:,} users")
    load_start = os.getloadavg()  # the CPU is often shared: timings read against the load
    result = run_once(args.users, args.seed, keep=args.keep, in_process=args.in_process)
    payload = {
        "benchmark": "scale",
        **result,
        "targets": {"whole_graph_seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_RSS_MB},
        "machine": machine(),
        "load_average_start": load_start,
        "load_average": os.getloadavg(),
    }
    write_results("scale", payload, COLUMNS)
    print("\nmodel_selection, per candidate (fit + score seconds, shared work split evenly):")
    print(markdown(result["model_selection_candidates"], ["method", "params", "map@10", "seconds"]))
    print("holdout quality:", json.dumps(result["quality"], indent=1))
    print(f"load average at the end: {os.getloadavg()}")
    if args.curve:
        points = []
        for frac in (0.1, 0.25, 0.5):
            n = int(args.users * frac)
            print(f"curve: {n:,} users")
            # a fresh process per point, so its peak RSS is its own and not the heap left behind
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [sys.executable, __file__, "--users", str(n), "--seed", str(args.seed), "--point", out.name]
                cmd += ["--in-process"] if args.in_process else []
                subprocess.run(cmd, check=True)
                points.append(json.loads(Path(out.name).read_text()))
        points.append({"users": args.users, "whole_graph_seconds": result["whole_graph_seconds"], "peak_rss_mb": result["peak_rss_mb"], "ok": result["ok"]})
        payload["curve"] = points
        RESULTS.mkdir(parents=True, exist_ok=True)
        plot_curve(points, RESULTS / "scaling_curve.png")
        print("\n" + markdown(points, ["users", "whole_graph_seconds", "peak_rss_mb", "ok"]))
        write_results("scale", payload, COLUMNS)
    if result["ok"] != "yes":
        print("RUN FAILED:", result["errors"], result["failed_checks"])


if __name__ == "__main__":
    main()
