"""Foundation benchmark: generation, ingest and MICE at Instacart scale.

    .venv/bin/python benchmarks/bench_foundation.py [--users 206209]

Targets (issue 2, 2 cores): ingest of 32 M order lines ≤ 30 s, MICE on 3.4 M orders ≤ 60 s.
Each stage runs the project's own functions on the generated data (no Dagster overhead).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Stages, cached_dataset, machine, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=206_209)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--missing-rate", type=float, default=0.05)
    ap.add_argument("--test-share", type=float, default=0.0)
    args = ap.parse_args()

    from insightflow_assets.data.generate import generate_instacart, summarize
    from insightflow_assets.imputation.mice import impute_orders, order_features
    from insightflow_assets.ingest.loading import pick_source_files, read_table, validate_snapshot

    st = Stages()
    print(f"foundation benchmark at {args.users:,} users")
    with st.stage("generate (in memory)") as row:
        tables = generate_instacart(args.users, seed=args.seed, missing_rate=args.missing_rate, test_share=args.test_share)
        s = summarize(tables)
        row.update(rows_out=s["orders"] + s["prior_lines"] + s["train_lines"])
    del tables
    folder = cached_dataset(args.users, args.seed, args.missing_rate, args.test_share)

    with st.stage("ingest (read + validate)") as row:
        chosen = pick_source_files([p.name for p in folder.iterdir()], str(folder))
        raw = {stem: read_table(folder / name, stem) for stem, name in chosen.items()}
        snap = validate_snapshot(raw, chosen)
        row.update(rows_in=sum(t.height for t in raw.values()), rows_out=snap.order_products.height)
    del raw

    with st.stage("MICE (features + impute)") as row:
        features = order_features(snap.orders, snap.order_products)
        imputed, info = impute_orders(features)
        row.update(rows_in=features.height, rows_out=imputed.height, cells_imputed=sum(info["n_imputed"].values()))

    payload = {"benchmark": "foundation", "users": args.users, "summary": s, "machine": machine(), "stages": st.rows,
               "targets": {"ingest (read + validate)": 30, "MICE (features + impute)": 60}}
    write_results("foundation", payload, ["stage", "seconds", "peak_rss_mb", "rows_in", "rows_out"])


if __name__ == "__main__":
    main()
