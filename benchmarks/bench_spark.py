"""The heavy per-line stages on both engines: polars (in a child process) vs the Spark jobs
(insightflow_assets/spark) under ``spark-submit --master local[2]``, driver memory 2g, at
25 %, 50 %, 100 % and 200 % of Instacart's users, within 30 minutes and 20 GB per engine and size.

    .venv/bin/python benchmarks/bench_spark.py                      # all four sizes
    .venv/bin/python benchmarks/bench_spark.py --fractions 1.0 2.0 --merge benchmarks/results/X-spark-scale.json

Limits: each engine and size runs as its own process tree (polars: this script with
``--polars-child``; Spark: spark-submit), stopped (the whole process group killed) past
``--limit-minutes`` wall or when the tree's summed RSS passes ``--limit-gb``; the row then says
"did not complete (limit)". Spill: Spark's event log is on for the run; memory and disk bytes
spilled are summed from its SparkListenerTaskEnd task metrics (per Spark stage in the JSON).
Polars has no spill to report: it works in memory (n.a.). Results (md + json, tag
``spark-scale``) are rewritten after each size, so a stopped run keeps the sizes it finished.

Inputs are the cached generated datasets of run_scale.py (CSV, converted once to parquet beside
them); orders_imputed is the raw orders plus ``is_first_order`` (imputation is not benchmarked
here). Per stage: wall seconds and peak RSS -- polars: its process's (VmHWM, reset per stage);
Spark: the summed RSS of the whole spark-submit process tree (JVM + Python driver), sampled
every 200 ms. Spark's ``startup`` row is its total minus its stages: the JVM, the session, the
application's shutdown. The user_seg that segment_popularity reads comes from polars' KMeans
(untimed): KMeans stays on one machine. ``basket_counts`` is basket_pairs' counting (polars:
window_lines + count_baskets; Spark: basket_pair_counts + basket_item_counts), not its
normalising and profile choice.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from benchmarks._common import Stages, cached_dataset, descendants, machine, markdown, proc_mb, write_results  # noqa: E402
from insightflow_assets.basket.pairs import count_baskets, dense_items, window_lines  # noqa: E402
from insightflow_assets.ratings.build import build_holdout, build_ratings  # noqa: E402
from insightflow_assets.segmentation.popularity import segment_popularity  # noqa: E402
from insightflow_assets.segmentation.rfm import rfm_table, segment_users  # noqa: E402
from insightflow_assets.spark.launch import DRIVER_MEMORY, spark_missing, submit_command, submit_env  # noqa: E402

INSTACART_USERS = 206_209
TAG = "spark-scale"
OK = "ok"
COLUMNS = ["stage", "users", "engine", "seconds", "peak_rss_mb", "rows", "spill_memory_mb", "spill_disk_mb", "status", "load_1m"]
SUMMARY = ["users", "share", "polars_s", "polars_peak_mb", "polars_status", "spark_s", "spark_peak_mb",
           "spark_spill_memory_mb", "spark_spill_disk_mb", "spark_status", "spark_over_polars", "load_1m"]  # fmt: skip


def parquet_inputs(users: int, seed: int = 42) -> dict[str, Path]:
    """orders (+ is_first_order), all lines and products of the cached dataset, as parquet."""
    clean = cached_dataset(users, seed, missing_rate=0.05, test_share=0.364)
    out = clean / "spark-inputs-v2"  # v2: the lines keep add_to_cart_order (basket pair counts)
    paths = {name: out / f"{name}.parquet" for name in ("orders", "lines", "products")}
    if not all(p.exists() for p in paths.values()):
        out.mkdir(exist_ok=True)
        orders = pl.read_csv(clean / "orders.csv").with_columns(is_first_order=pl.col("order_number") == 1)
        orders.write_parquet(paths["orders"])
        parts = [pl.read_csv(p) for p in sorted(clean.glob("order_products__*.csv"))]
        pl.concat(parts).select("order_id", "product_id", "add_to_cart_order").write_parquet(paths["lines"])
        pl.read_csv(clean / "products.csv").write_parquet(paths["products"])
    return paths


class TreeRss(threading.Thread):
    """Peak summed RSS (MB) of this process's descendants (spark-submit, its JVM, the driver; or
    the polars child); past ``limit_mb`` it calls ``on_limit`` once (the caller kills the tree)."""

    def __init__(self, every: float = 0.2, limit_mb: float = float("inf"), on_limit=None) -> None:
        super().__init__(daemon=True)
        self.every, self.peak_mb, self._halt = every, 0.0, threading.Event()
        self.limit_mb, self.on_limit, self.over = limit_mb, on_limit, False

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_mb = max(self.peak_mb, sum(proc_mb(p, "VmRSS", missing=0.0) for p in descendants(os.getpid())))
            if self.peak_mb > self.limit_mb and not self.over:
                self.over = True
                if self.on_limit is not None:
                    self.on_limit()
            self._halt.wait(self.every)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return round(self.peak_mb, 0)


def run_polars(paths: dict[str, Path], users: int, out: Path) -> tuple[list[dict], dict[str, str]]:
    """Each stage timed in this process; returns the rows and the inputs Spark's later stages read."""
    stages = Stages()
    orders, lines, products = (pl.read_parquet(paths[n]) for n in ("orders", "lines", "products"))
    with stages.stage("ratings", users=users, engine="polars") as row:
        ratings = build_ratings(orders, lines)
        row["rows"] = ratings.height
    with stages.stage("holdout", users=users, engine="polars") as row:
        row["rows"] = build_holdout(orders, lines).height
    with stages.stage("rfm", users=users, engine="polars") as row:
        rfm = rfm_table(orders, lines, products, users=ratings.select("user_id").unique())
        row["rows"] = rfm.height
    user_seg = segment_users(rfm, seed=42)[0]  # untimed: KMeans stays on one machine
    with stages.stage("segment_popularity", users=users, engine="polars") as row:
        row["rows"] = segment_popularity(user_seg, ratings).height
    with stages.stage("basket_counts", users=users, engine="polars") as row:
        row["rows"] = basket_counts(orders, lines, user_seg)
    side = {"ratings": str(out / "polars_ratings.parquet"), "user_seg": str(out / "polars_user_seg.parquet")}
    ratings.write_parquet(side["ratings"])
    user_seg.write_parquet(side["user_seg"])
    return stages.rows, side


def basket_counts(orders: pl.DataFrame, lines: pl.DataFrame, user_seg: pl.DataFrame) -> int:
    """basket_pairs' counting (window lines, pairs per segment at the default window and
    support, baskets per product): the part the Spark stages do; returns the pair rows."""
    wl = window_lines(orders, lines, user_seg)
    ids, item = dense_items(wl["product_id"].to_numpy())
    counted = count_baskets(wl["order_id"].to_numpy(), item, wl["segment"].to_numpy(), max(len(ids), 1), 5, 3)
    return counted.pairs.height


def spark_tasks(paths: dict[str, Path], side: dict[str, str], out: Path) -> list[dict]:
    base = {"orders": str(paths["orders"]), "order_products": str(paths["lines"])}
    return [
        {"stage": "ratings", "inputs": base, "output": str(out / "ratings.parquet")},
        {"stage": "holdout", "inputs": base, "output": str(out / "holdout.parquet")},
        {"stage": "rfm", "inputs": {**base, "products": str(paths["products"]), "users": side["ratings"]}, "output": str(out / "rfm.parquet")},
        {"stage": "segment_popularity", "inputs": side, "output": str(out / "segment_popularity.parquet")},
        {"stage": "basket_pair_counts", "inputs": {**base, "user_seg": side["user_seg"]}, "output": str(out / "pairs.parquet")},
        {"stage": "basket_item_counts", "inputs": {**base, "user_seg": side["user_seg"]}, "output": str(out / "items.parquet")},
    ]  # fmt: skip


def run_limited(cmd: list[str], env: dict, log: Path, limits: argparse.Namespace) -> tuple[str, float, float]:
    """Run ``cmd`` as its own process group within the wall and tree-RSS limits; returns
    (status, seconds, peak MB). Past a limit the whole group is killed: nothing outlives it."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    sampler = TreeRss(limit_mb=limits.limit_gb * 1024, on_limit=lambda: _kill_group(proc))
    sampler.start()
    t0 = time.perf_counter()
    try:
        proc.wait(timeout=limits.limit_minutes * 60)
        status = OK if proc.returncode == 0 else _failure(proc.returncode, log)
    except subprocess.TimeoutExpired:
        status = f"did not complete (limit: {limits.limit_minutes:g} min)"
    finally:  # also on Ctrl-C: the JVM and its workers go with the group
        _kill_group(proc)
        proc.wait()
        seconds, peak = round(time.perf_counter() - t0, 2), sampler.stop()
    if sampler.over:
        status = f"did not complete (limit: {limits.limit_gb:g} GB)"
    return status, seconds, peak


def _failure(code: int, log: Path) -> str:
    oom = "OutOfMemoryError" in log.read_text(errors="replace")
    return f"failed (exit {code}{': Java heap OutOfMemoryError' if oom else ''}, see {log.name})"


def _kill_group(proc: subprocess.Popen) -> None:
    # pyspark.daemon (the Python workers) starts its own process group: kill the tree's pids too
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def event_log_spill(folder: Path) -> list[dict]:
    """Memory and disk bytes spilled per Spark stage, summed over its SparkListenerTaskEnd task
    metrics (an unfinished log, ``.inprogress``, counts the tasks it has). Spark 4 writes a
    folder of rolled ``events_*`` files per application (``appstatus_*`` is empty)."""
    per_stage: dict[int, dict] = {}
    for log in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("appstatus")):
        with open(log) as f:
            for line in f:
                if '"SparkListenerTaskEnd"' not in line and '"SparkListenerStageCompleted"' not in line:
                    continue
                event = json.loads(line)
                if event["Event"] == "SparkListenerStageCompleted":
                    info = event["Stage Info"]
                    row = per_stage.setdefault(info["Stage ID"], _spill_row(info["Stage ID"]))
                    row["name"], row["tasks"] = info.get("Stage Name", ""), info.get("Number of Tasks", 0)
                    continue
                metrics = event.get("Task Metrics") or {}
                row = per_stage.setdefault(event["Stage ID"], _spill_row(event["Stage ID"]))
                row["memory_bytes_spilled"] += metrics.get("Memory Bytes Spilled", 0)
                row["disk_bytes_spilled"] += metrics.get("Disk Bytes Spilled", 0)
    return [per_stage[k] for k in sorted(per_stage)]


def _spill_row(stage_id: int) -> dict:
    return {"stage_id": stage_id, "name": "", "tasks": 0, "memory_bytes_spilled": 0, "disk_bytes_spilled": 0}


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def run_on_spark(paths: dict[str, Path], side: dict[str, str], users: int, out: Path, limits) -> tuple[list[dict], list[dict]]:
    """All Spark tasks in one application with the event log on; returns the rows and the
    spill per Spark stage."""
    tasks = spark_tasks(paths, side, out)
    with tempfile.TemporaryDirectory(prefix="insightflow-bench-spark-") as tmp:
        spec, results, events = Path(tmp) / "spec.json", Path(tmp) / "results.json", Path(tmp) / "events"
        events.mkdir()
        spec.write_text(json.dumps({"tasks": tasks, "results": str(results)}))
        conf = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri(), "spark.eventLog.compress": "false"}
        cmd = submit_command(conf=conf, driver_memory=limits.driver_memory, job_args=["--no-pipes", "--spec", str(spec)])
        load0 = _load()
        status, total, peak = run_limited(cmd, {**os.environ, **submit_env()}, out / "spark.log", limits)
        spill = event_log_spill(events)
        metas = json.loads(results.read_text()) if status == OK else []
    common = {"users": users, "engine": "spark", "peak_rss_mb": peak, "status": status, "load_1m": f"{load0}-{_load()}"}
    rows = [{"stage": t["stage"], **common, "seconds": m["seconds"], "rows": m["rows"]} for t, m in zip(tasks, metas)]
    if rows:
        rows.append({"stage": "startup", **common, "seconds": round(total - sum(r["seconds"] for r in rows), 2)})
    mb = lambda key: round(sum(s[key] for s in spill) / 2**20, 1)  # noqa: E731
    rows.append({"stage": "total", **common, "seconds": total, "spill_memory_mb": mb("memory_bytes_spilled"),
                 "spill_disk_mb": mb("disk_bytes_spilled")})  # fmt: skip
    return rows, spill


def run_polars_limited(users: int, out: Path, limits) -> tuple[list[dict], dict[str, str] | None]:
    """run_polars in a child process (its own VmHWM, killable at the limits)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--polars-child", str(users), str(out)]
    load0 = _load()
    status, seconds, tree_peak = run_limited(cmd, dict(os.environ), out / "polars.log", limits)
    common = {"users": users, "engine": "polars", "spill_memory_mb": "n.a.", "spill_disk_mb": "n.a.",
              "status": status, "load_1m": f"{load0}-{_load()}"}  # fmt: skip
    if status != OK:
        return [{"stage": "total", **common, "seconds": seconds, "peak_rss_mb": tree_peak}], None
    done = json.loads((out / "polars.json").read_text())
    rows = [{**r, **common} for r in done["rows"]]
    total = {"stage": "total", **common, "seconds": round(sum(r["seconds"] for r in rows), 2),
             "peak_rss_mb": max(r["peak_rss_mb"] for r in rows), "rows": ""}  # fmt: skip
    return rows + [total], done["side"]


def polars_child(users: int, out: Path) -> None:
    rows, side = run_polars(parquet_inputs(users), users, out)
    (out / "polars.json").write_text(json.dumps({"rows": rows, "side": side}))


def summary(rows: list[dict]) -> tuple[list[dict], dict[str, int | None]]:
    """One line per size (the engines' totals, Spark's over polars' seconds) and, per engine,
    the largest size that completed within the limits."""
    totals = {(r["users"], r["engine"]): r for r in rows if r["stage"] == "total"}
    lines, largest = [], {"polars": None, "spark": None}
    for users in sorted({u for u, _ in totals}):
        p, s = totals.get((users, "polars"), {}), totals.get((users, "spark"), {})
        both = p.get("status") == OK and s.get("status") == OK
        lines.append({
            "users": users, "share": f"{users / INSTACART_USERS:.0%}", "polars_s": p.get("seconds", ""),
            "polars_peak_mb": p.get("peak_rss_mb", ""), "polars_status": p.get("status", "not run"),
            "spark_s": s.get("seconds", ""), "spark_peak_mb": s.get("peak_rss_mb", ""),
            "spark_spill_memory_mb": s.get("spill_memory_mb", ""), "spark_spill_disk_mb": s.get("spill_disk_mb", ""),
            "spark_status": s.get("status", "not run"),
            "spark_over_polars": f"{s['seconds'] / p['seconds']:.1f}x" if both else "n.a.",
            "load_1m": f"polars {p.get('load_1m', '')}, spark {s.get('load_1m', '')}",
        })  # fmt: skip
        for engine, r in (("polars", p), ("spark", s)):
            if r.get("status") == OK:
                largest[engine] = users
    return lines, largest


def write(rows: list[dict], spill: dict[int, list[dict]], limits) -> None:
    rows = sorted(rows, key=lambda r: (r["users"], r["engine"] != "polars"))
    lines, largest = summary(rows)
    payload = {"stages": rows, "summary": lines, "largest_within_limits": largest, "spark_spill_per_stage": spill,
               "limits": {"minutes": limits.limit_minutes, "gb": limits.limit_gb}, "machine": machine(),
               "driver_memory": limits.driver_memory, "master": "local[2]", "polars_spill": "n.a. (in memory)"}  # fmt: skip
    # another driver memory than launch.py's default is another experiment: its own files
    tag = TAG if limits.driver_memory == DRIVER_MEMORY else f"{TAG}-driver{limits.driver_memory}"
    path = write_results(tag, payload, COLUMNS)
    verdict = "\n".join(
        f"- {e}: largest size within {limits.limit_minutes:g} min and {limits.limit_gb:g} GB: "
        + (f"{u:,} users ({u / INSTACART_USERS:.0%})" if u else "none") for e, u in largest.items()
    )  # fmt: skip
    md = path.with_suffix(".md")
    md.write_text(markdown(lines, SUMMARY) + "\n\n" + verdict + "\n\nPer stage:\n\n" + md.read_text())


def merged(path: Path | None, sizes: set[int]) -> tuple[list[dict], dict[int, list[dict]]]:
    """The rows and spill of an earlier spark-scale run, for sizes this run does not redo."""
    if path is None:
        return [], {}
    old = json.loads(path.read_text())
    spill = {int(u): s for u, s in old.get("spark_spill_per_stage", {}).items() if int(u) not in sizes}
    return [r for r in old["stages"] if r["users"] not in sizes], spill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--limit-minutes", type=float, default=30.0)
    parser.add_argument("--limit-gb", type=float, default=20.0)
    parser.add_argument("--driver-memory", default=DRIVER_MEMORY, help="spark-submit --driver-memory (local: the whole heap)")
    parser.add_argument("--merge", type=Path, help="an earlier spark-scale JSON: keep its other sizes")
    parser.add_argument("--polars-child", nargs=2, metavar=("USERS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.polars_child:
        return polars_child(int(args.polars_child[0]), Path(args.polars_child[1]))
    if (why := spark_missing()) is not None:
        sys.exit(f"bench_spark: {why}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run_limited's finally kills the child tree
    sizes = [int(INSTACART_USERS * f) for f in args.fractions]
    rows, spill = merged(args.merge, set(sizes))
    for users in sizes:
        paths = parquet_inputs(users)
        out = paths["orders"].parent / "out"
        out.mkdir(exist_ok=True)
        print(f"{users} users ({users / INSTACART_USERS:.0%})", flush=True)
        polars_rows, side = run_polars_limited(users, out, args)
        rows += polars_rows
        if side is not None:
            spark_rows, spill[users] = run_on_spark(paths, side, users, out, args)
            rows += spark_rows
        for r in {id(r): r for r in polars_rows[-1:] + rows[-1:]}.values():
            print(f"  {r['engine']} total {r['seconds']:>8.2f} s  {r['peak_rss_mb']:>8.0f} MB  {r['status']}", flush=True)
        write(rows, spill, args)


if __name__ == "__main__":
    main()
