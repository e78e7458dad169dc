"""Transactions-form ingest against the Instacart ingest, on the same order lines.

    .venv/bin/python benchmarks/bench_transactions.py [--users 206209] [--repeats 3] [--tag after-4]

Target (issue 10): ingest of a 32 M-line transactions table within 1.5x of the Instacart
ingest on the same machine. The transactions table is written from the cached generated
Instacart data: one row per order line with customer, invoice, timestamp (the user's first
order on 2020-01-01 plus the cumulative gaps, at the order's hour), product, quantity and unit
price, as a CSV (the form most exports take) and as parquet.

``--repeats`` runs the three ingests that many times, in turn, and records the median ratios;
``--tag`` names the results file (``DATE-transactions-TAG``), whose README block, if any, is the
one updated. CPU seconds are split into user and system time: the transactions path allocates
more large arrays than the Instacart one, and on a loaded machine the page faults show as system time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import CACHE, Stages, cached_dataset, machine, write_results  # noqa: E402


def write_transactions(folder: Path, users: int) -> dict[str, Path]:
    """The cached Instacart files as one transactions table (csv and parquet), written once."""
    import polars as pl

    out = {"csv": CACHE / f"transactions-u{users}.csv", "parquet": CACHE / f"transactions-u{users}.parquet"}
    if all(p.exists() for p in out.values()):
        return out
    orders = pl.read_csv(folder / "orders.csv", null_values=[""])
    lines = pl.concat([pl.read_csv(folder / f"order_products__{s}.csv") for s in ("prior", "train")])
    day = pl.col("days_since_prior_order").fill_null(0).cum_sum().over("user_id", order_by="order_number")
    ts = (
        pl.datetime(2020, 1, 1)
        + pl.duration(days=day.cast(pl.Int64))
        + pl.duration(hours=pl.col("order_hour_of_day").fill_null(12).cast(pl.Int64))
    )
    orders = orders.select("order_id", "user_id", ts.dt.strftime("%Y-%m-%d %H:%M:%S").alias("timestamp"))
    table = lines.join(orders, on="order_id").select(
        pl.col("user_id").alias("customer_id"),
        pl.col("order_id"),
        "timestamp",
        "product_id",
        (pl.col("product_id") % 3 + 1).alias("quantity"),
        ((pl.col("product_id") % 97) / 10 + 0.5).round(2).alias("unit_price"),
    )
    table.write_csv(out["csv"])
    table.write_parquet(out["parquet"])
    return out


@contextmanager
def cpu_and_load(row: dict):
    """CPU seconds of the process (all threads; user and system), its minor page faults (in
    thousands: first touches of fresh memory, the system time's main cause here) and the 1-minute
    load average when the stage starts: the machine may be shared, and the wall time alone does
    not say so."""
    row["load_1m"] = round(os.getloadavg()[0], 2)
    t0, f0 = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    yield
    t1, f1 = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    row["cpu_s"] = round(t1.user + t1.system - t0.user - t0.system, 2)
    row["sys_s"] = round(t1.system - t0.system, 2)
    row["faults_k"] = round((f1 - f0) / 1000)


def median_ratios(rows: list[dict]) -> dict[str, float]:
    """Median of each transactions stage's ratios to the Instacart ingest, over the repeats."""
    out = {}
    for fmt in ("csv", "parquet"):
        mine = [r for r in rows if r["stage"].startswith(f"transactions ingest ({fmt})")]
        for key in ("x_instacart", "x_instacart_cpu"):
            out[f"{fmt} {key}"] = round(statistics.median(r[key] for r in mine), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=206_209)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    folder = cached_dataset(args.users, 42, 0.05, 0.0)
    files = write_transactions(folder, args.users)
    st = Stages()
    print(f"transactions ingest benchmark at {args.users:,} users, {args.repeats} repeat(s)")
    for run in range(1, args.repeats + 1):
        one_round(st, folder, files, f" #{run}" if args.repeats > 1 else "")
    payload = {"benchmark": "transactions", "users": args.users, "repeats": args.repeats, "machine": machine(),
               "stages": st.rows, "median": median_ratios(st.rows),
               "targets": {"transactions ingest (csv)": "<= 1.5x instacart ingest (csv)"}}
    print("medians:", payload["median"])
    columns = ["stage", "seconds", "cpu_s", "sys_s", "faults_k", "load_1m", "peak_rss_mb", "rows_in", "rows_out", "x_instacart", "x_instacart_cpu"]
    write_results("transactions" + (f"-{args.tag}" if args.tag else ""), payload, columns)


def one_round(st: Stages, folder: Path, files: dict[str, Path], suffix: str) -> None:
    """The Instacart ingest, then the transactions ingest of the same lines from csv and parquet."""
    from insightflow_assets.ingest.loading import pick_source_files, read_table, validate_snapshot
    from insightflow_assets.ingest.transactions import derive_snapshot

    with st.stage(f"instacart ingest (csv){suffix}") as row, cpu_and_load(row):
        chosen = pick_source_files([p.name for p in folder.iterdir()], str(folder))
        raw = {stem: read_table(folder / name, stem) for stem, name in chosen.items()}
        snap = validate_snapshot(raw, chosen)
        row.update(rows_in=sum(t.height for t in raw.values()), rows_out=snap.order_products.height)
    del raw, snap
    base, base_cpu = st.rows[-1]["seconds"], st.rows[-1]["cpu_s"]
    for fmt in ("csv", "parquet"):
        with st.stage(f"transactions ingest ({fmt}){suffix}") as row, cpu_and_load(row):
            result = derive_snapshot(files[fmt])
            row.update(rows_in=result.lines_in, rows_out=result.snapshot.order_products.height)
        st.rows[-1]["x_instacart"] = round(st.rows[-1]["seconds"] / base, 2)
        # under load the wall-time ratio is noisy; the ratio of CPU seconds is the fairer one
        st.rows[-1]["x_instacart_cpu"] = round(st.rows[-1]["cpu_s"] / base_cpu, 2)
        del result


if __name__ == "__main__":
    main()
