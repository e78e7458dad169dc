"""Events form (issue 16): `insightflow generate --form events` at RetailRocket's size, as a user runs it.

    .venv/bin/python benchmarks/bench_events_generate.py                  # 1,407,580 visitors, once
    .venv/bin/python benchmarks/bench_events_generate.py --repeats 3
    .venv/bin/python benchmarks/bench_events_generate.py --visitors 200000 1407580

Each row is one run of the command in a child process writing to a temporary folder: wall
time, CPU seconds (user + system) and peak RSS of that process (from `wait4`), the 1-minute
load average when it starts (the machine may be shared), and what it wrote next to
RetailRocket's counts. `bench_events.py` splits generation, writing and reading into stages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, write_results  # noqa: E402

COLUMNS = ["stage", "visitors", "events", "event_items", "items_with_properties", "seconds", "cpu_s", "load_1m", "peak_rss_mb", "files_mb"]
CLI = Path(sys.executable).with_name("insightflow")


def run_once(visitors: int, seed: int) -> dict:
    """One `insightflow generate --form events` in a child process, measured."""
    import polars as pl

    with tempfile.TemporaryDirectory(prefix="bench-events-generate-") as tmp:
        cmd = [str(CLI), "generate", "--form", "events", "--users", str(visitors), "--seed", str(seed), "--out", tmp]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed")
        events = pl.scan_csv(Path(tmp) / "events.csv").select(pl.len(), pl.col("itemid").n_unique()).collect()
        # RetailRocket's 417 k items are those with properties (235 k of them have events).
        props = pl.scan_csv(Path(tmp) / "item_properties_part*.csv").select(pl.col("itemid").n_unique()).collect()
        files_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
    return {
        "stage": "insightflow generate --form events",
        "visitors": visitors,
        "events": int(events[0, 0]),
        "event_items": int(events[0, 1]),
        "items_with_properties": int(props[0, 0]),
        "seconds": round(seconds, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "load_1m": round(load, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 0),  # KiB on Linux
        "files_mb": round(files_mb, 1),
    }


def main() -> None:
    from insightflow_assets.data.events import FULL_SIZE

    ap = argparse.ArgumentParser()
    ap.add_argument("--visitors", type=int, nargs="+", default=[FULL_SIZE["visitors"]])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    print(f"insightflow generate --form events: {args.visitors} visitors, {args.repeats} repeat(s)")
    rows = []
    for visitors in args.visitors:
        for _ in range(args.repeats):
            row = run_once(visitors, args.seed)
            rows.append(row)
            print(f"  {visitors:>10,} visitors  {row['seconds']:>7.2f} s  {row['cpu_s']:>7.2f} CPU s  {row['peak_rss_mb']:>6.0f} MB  load {row['load_1m']}", flush=True)
    medians = {
        v: {k: statistics.median(r[k] for r in rows if r["visitors"] == v) for k in ("seconds", "cpu_s", "peak_rss_mb")}
        for v in args.visitors
    }
    payload = {
        "visitors": args.visitors,
        "users": ", ".join(f"{v:,}" for v in args.visitors),  # the line write_results prints
        "repeats": args.repeats,
        "retailrocket": FULL_SIZE,
        "medians": {str(v): m for v, m in medians.items()},
        "machine": machine(),
        "stages": rows,
    }
    # No README block is named events_generate: write_results leaves the README alone.
    write_results("events_generate", payload, COLUMNS)


if __name__ == "__main__":
    main()
