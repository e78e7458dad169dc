"""Events form (issue 16): generating RetailRocket-sized data and reading/validating it.

    .venv/bin/python benchmarks/bench_events.py                 # RetailRocket's 1,407,580 visitors
    .venv/bin/python benchmarks/bench_events.py --visitors 200000
    .venv/bin/python benchmarks/bench_events.py --opaque-properties 40   # ~RetailRocket's 20 M property rows

Stages: generate the four tables in memory, write them as CSV, then `read_events_form` (typing,
every validation, as-of resolution of category and availability per event, category paths).
The machine may be shared: each stage records the 1-minute load average and CPU seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Stages, machine, write_results  # noqa: E402
from benchmarks.bench_transactions import cpu_and_load  # noqa: E402

COLUMNS = ["stage", "rows", "seconds", "cpu_s", "load_1m", "peak_rss_mb"]


def main() -> None:
    from insightflow_assets.data.events import FULL_SIZE, generate_events_tables, summarize_events
    from insightflow_assets.data.generate import write_instacart
    from insightflow_assets.ingest.events import read_events_form

    ap = argparse.ArgumentParser()
    ap.add_argument("--visitors", type=int, default=FULL_SIZE["visitors"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--opaque-properties", type=int, default=5, help="hashed properties besides categoryid/available")
    args = ap.parse_args()

    st = Stages()
    print(f"events-form benchmark at {args.visitors:,} visitors")
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        with st.stage("generate (in memory)") as row, cpu_and_load(row):
            tables = generate_events_tables(args.visitors, seed=args.seed, opaque_properties=args.opaque_properties)
            row["rows"] = sum(t.height for t in tables.values())
        counts = summarize_events(tables)
        with st.stage("write csv") as row, cpu_and_load(row):
            paths = write_instacart(tables, tmp, fmt="csv")
            row["rows"] = sum(t.height for t in tables.values())
        sizes = {p.name: round(p.stat().st_size / 2**20, 1) for p in paths}
        del tables
        with st.stage("read + validate + as-of") as row, cpu_and_load(row):
            snap = read_events_form(tmp)
            row["rows"] = snap.events.height
        info = snap.info
    payload = {
        "visitors": args.visitors,
        "opaque_properties": args.opaque_properties,
        "users": args.visitors,  # the README line of `write_results` says "users"
        "generated": counts,
        "file_mb": sizes,
        "read_info": info,
        "machine": machine(),
        "stages": st.rows,
    }
    print(f"\ngenerated: {counts}\nfiles (MB): {sizes}")
    write_results("events" if args.opaque_properties == 5 else f"events-opaque{args.opaque_properties}", payload, COLUMNS)


if __name__ == "__main__":
    main()
