"""The heavy per-line stages on both engines: polars in this process vs the Spark jobs
(insightflow_assets/spark) under ``spark-submit --master local[2]``, driver memory 2g.

    .venv/bin/python benchmarks/bench_spark.py                     # 25 % and 50 % of Instacart's users
    .venv/bin/python benchmarks/bench_spark.py --fractions 0.25

Inputs are the cached generated datasets of run_scale.py (CSV, converted once to parquet beside
them); orders_imputed is the raw orders plus ``is_first_order`` (imputation is not benchmarked
here). Per stage: wall seconds and peak RSS -- polars: this process's (VmHWM, reset per stage);
Spark: the summed RSS of the whole spark-submit process tree (JVM + Python driver), sampled
every 200 ms. Spark's ``startup`` row is its total minus its stages: the JVM, the session, the
application's shutdown. The user_seg that segment_popularity reads comes from polars' KMeans
(untimed): KMeans stays on one machine. ``basket_counts`` is basket_pairs' counting (polars:
window_lines + count_baskets; Spark: basket_pair_counts + basket_item_counts), not its
normalising and profile choice.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from benchmarks._common import Stages, cached_dataset, machine, write_results  # noqa: E402
from insightflow_assets.basket.pairs import count_baskets, dense_items, window_lines  # noqa: E402
from insightflow_assets.ratings.build import build_holdout, build_ratings  # noqa: E402
from insightflow_assets.segmentation.popularity import segment_popularity  # noqa: E402
from insightflow_assets.segmentation.rfm import rfm_table, segment_users  # noqa: E402
from insightflow_assets.spark.launch import run_spark, spark_missing  # noqa: E402

INSTACART_USERS = 206_209
COLUMNS = ["stage", "users", "engine", "seconds", "peak_rss_mb", "rows"]


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
    """Peak summed RSS (MB) of this process's descendants: spark-submit, its JVM, the driver."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.peak_mb, self._halt = every, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_mb = max(self.peak_mb, sum(_rss_mb(p) for p in _descendants(os.getpid())))
            self._halt.wait(self.every)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return round(self.peak_mb, 0)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


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


def run_on_spark(paths: dict[str, Path], side: dict[str, str], users: int, out: Path) -> list[dict]:
    base = {"orders": str(paths["orders"]), "order_products": str(paths["lines"])}
    tasks = [
        {"stage": "ratings", "inputs": base, "output": str(out / "ratings.parquet")},
        {"stage": "holdout", "inputs": base, "output": str(out / "holdout.parquet")},
        {"stage": "rfm", "inputs": {**base, "products": str(paths["products"]), "users": side["ratings"]}, "output": str(out / "rfm.parquet")},
        {"stage": "segment_popularity", "inputs": side, "output": str(out / "segment_popularity.parquet")},
        {"stage": "basket_pair_counts", "inputs": {**base, "user_seg": side["user_seg"]}, "output": str(out / "pairs.parquet")},
        {"stage": "basket_item_counts", "inputs": {**base, "user_seg": side["user_seg"]}, "output": str(out / "items.parquet")},
    ]  # fmt: skip
    sampler = TreeRss()
    sampler.start()
    t0 = time.perf_counter()
    try:
        metas = run_spark(tasks, log=out / "spark.log")
    finally:
        total, peak = round(time.perf_counter() - t0, 2), sampler.stop()
    rows = [
        {"stage": t["stage"], "users": users, "engine": "spark", "seconds": m["seconds"], "peak_rss_mb": peak, "rows": m["rows"]}
        for t, m in zip(tasks, metas)
    ]
    startup = round(total - sum(r["seconds"] for r in rows), 2)
    rows.append({"stage": "startup", "users": users, "engine": "spark", "seconds": startup, "peak_rss_mb": peak, "rows": ""})
    rows.append({"stage": "total", "users": users, "engine": "spark", "seconds": total, "peak_rss_mb": peak, "rows": ""})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    args = parser.parse_args()
    if (why := spark_missing()) is not None:
        sys.exit(f"bench_spark: {why}")
    rows: list[dict] = []
    for frac in args.fractions:
        users = int(INSTACART_USERS * frac)
        paths = parquet_inputs(users)
        out = paths["orders"].parent / "out"
        out.mkdir(exist_ok=True)
        print(f"{users} users ({frac:.0%})", flush=True)
        polars_rows, side = run_polars(paths, users, out)
        total = {"stage": "total", "users": users, "engine": "polars", "seconds": round(sum(r["seconds"] for r in polars_rows), 2),
                 "peak_rss_mb": max(r["peak_rss_mb"] for r in polars_rows), "rows": ""}  # fmt: skip
        spark_rows = run_on_spark(paths, side, users, out)
        for r in spark_rows:
            print(f"  spark {r['stage']:<22} {r['seconds']:>8.2f} s  {r['peak_rss_mb']:>8.0f} MB", flush=True)
        rows += polars_rows + [total] + spark_rows
    load = os.getloadavg()
    write_results("spark", {"stages": rows, "machine": machine(), "load_avg_at_end": [round(x, 2) for x in load],
                            "driver_memory": "2g", "master": "local[2]"}, COLUMNS)  # fmt: skip


if __name__ == "__main__":
    main()
