"""Event-log benchmark: the bytes one whole run writes to the Dagster event log.

    .venv/bin/python benchmarks/bench_event_log.py                # 2,000 generated users
    .venv/bin/python benchmarks/bench_event_log.py --users 20000

Each record is measured as the instance stores it (`serialize_value` of the EventLogEntry),
grouped by where it comes from: the step of an asset of the graph issue 13 set the target for,
the step of an asset added since, a step of a check of its own (a plain ``@asset_check``;
`run_check`s are evaluated in their asset's step), or the run itself. Chart previews
(`data:image` markdown) are counted apart, so a chart embedded whole shows.
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
        graph = defs.resolve_asset_graph()
        rows = breakdown(records, asset_steps(defs))
    issue_13 = [r for r in rows if r["stage"].split(":")[0] in ("run", "asset step")]
    total = _total("whole run", rows)
    return {
        "users": users,
        "ok": outcome.ok,
        "assets": len(graph.get_all_asset_keys()),
        "checks": len(graph.asset_check_keys),
        "total_bytes": total["bytes"],
        "issue_13_bytes": _total("", issue_13)["bytes"],
        "target_bytes": TARGET_BYTES,
        "stages": rows + [_total("issue-13 graph (its asset steps + run)", issue_13), total],
    }


def _total(stage: str, rows: list[dict]) -> dict:
    return {"stage": stage, **{key: sum(r[key] for r in rows) for key in ("events", "bytes", "chart_preview_bytes")}}


def asset_steps(defs) -> set[str]:
    """The step keys of asset computations (every other step of the run is an asset check's)."""
    return {a.node_def.name for a in defs.resolve_asset_graph().assets_defs if a.keys}


def where(step_key: str | None, asset_step_keys: set[str]) -> str:
    from insightflow_assets_tests.test_charts import ISSUE_13_STEPS

    if step_key is None:
        return "run"
    if step_key not in asset_step_keys:
        return "check step"
    return "asset step" if step_key in ISSUE_13_STEPS else "added asset step"


def breakdown(records, asset_step_keys: set[str]) -> list[dict]:
    from dagster._serdes import serialize_value

    size, count, charts = Counter(), Counter(), Counter()
    for rec in records:
        group = where(rec.step_key, asset_step_keys), rec.dagster_event.event_type_value if rec.dagster_event else "log message"
        text = serialize_value(rec)
        size[group] += len(text)
        count[group] += 1
        charts[group] += chart_bytes(text)
    return [
        {"stage": f"{w}: {kind}", "events": count[w, kind], "bytes": size[w, kind], "chart_preview_bytes": charts[w, kind]}
        for w, kind in sorted(size, key=lambda k: (-size[k]))
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
    print(
        f"whole run ({payload['assets']} assets, {payload['checks']} checks): {payload['total_bytes']:,} bytes of event log "
        f"(target {TARGET_BYTES:,}); the issue-13 graph's steps and the run: {payload['issue_13_bytes']:,}"
    )
    write_results("event_log", payload, ["stage", "events", "bytes", "chart_preview_bytes"])


if __name__ == "__main__":
    main()
