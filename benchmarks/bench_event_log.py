"""Event-log benchmark: the bytes one whole run writes to the Dagster event log.

    .venv/bin/python benchmarks/bench_event_log.py                # 2,000 generated users
    .venv/bin/python benchmarks/bench_event_log.py --users 20000

Each record is measured as the instance stores it (`serialize_value` of the EventLogEntry),
grouped by where it comes from: an asset's step, an asset check's step, or the run itself.
Chart previews (`data:image` markdown) are counted apart, so a chart embedded whole shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cached_dataset, machine, write_results  # noqa: E402

TARGET_BYTES = 300_000


def measure(users: int, seed: int) -> dict:
    from dagster import DagsterInstance

    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs

    clean = cached_dataset(users, seed, missing_rate=0.05, test_share=0.05)
    with tempfile.TemporaryDirectory() as tmp, DagsterInstance.ephemeral() as instance:
        defs = local_defs(clean, Path(tmp) / "curated")
        outcome = run_graph(instance, run_key="run-20260101-000000", defs=defs, log_level="CRITICAL")
        records = instance.all_logs(instance.get_runs(limit=1)[0].run_id)
        rows = breakdown(records, asset_steps(defs))
    total = {key: sum(r[key] for r in rows) for key in ("events", "bytes", "chart_preview_bytes")}
    return {
        "users": users,
        "ok": outcome.ok,
        "total_bytes": total["bytes"],
        "target_bytes": TARGET_BYTES,
        "stages": rows + [{"stage": "whole run", **total}],
    }


def asset_steps(defs) -> set[str]:
    """The step keys of asset computations (every other step of the run is an asset check)."""
    return {a.node_def.name for a in defs.resolve_asset_graph().assets_defs if a.keys}


def breakdown(records, asset_step_keys: set[str]) -> list[dict]:
    from dagster._serdes import serialize_value

    size, count, charts = Counter(), Counter(), Counter()
    for rec in records:
        where = "run" if rec.step_key is None else "asset step" if rec.step_key in asset_step_keys else "check step"
        kind = rec.dagster_event.event_type_value if rec.dagster_event else "log message"
        text = serialize_value(rec)
        size[where, kind] += len(text)
        count[where, kind] += 1
        charts[where, kind] += chart_bytes(text)
    return [
        {"stage": f"{where}: {kind}", "events": count[where, kind], "bytes": size[where, kind], "chart_preview_bytes": charts[where, kind]}
        for where, kind in sorted(size, key=lambda k: -size[k])
    ]


def chart_bytes(text: str) -> int:
    """Bytes of inline images (``data:image/...;base64,...``) in one serialized record."""
    total, start = 0, text.find("data:image")
    while start != -1:
        end = text.find(")", start)
        total += (end if end != -1 else len(text)) - start
        start = text.find("data:image", start + 1)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    payload = {**measure(args.users, args.seed), "machine": machine()}
    print(f"whole run: {payload['total_bytes']:,} bytes of event log (target {TARGET_BYTES:,})")
    write_results("event_log", payload, ["stage", "events", "bytes", "chart_preview_bytes"])


if __name__ == "__main__":
    main()
