"""Child process of `bench_events_graph.py`: run the whole graph on an events folder and write
what the parent reports (step seconds from the event log, the evaluation's headline).

    python benchmarks/_events_graph_child.py SOURCE_DIR WORK_DIR RESULT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADLINE = ("map@10", "recall@20", "coverage@5", "diversity@5")
RUN = "run-20260101-000000"


def main(source: str, work: str, result: str) -> None:
    from dagster import DagsterEventType, DagsterInstance

    from insightflow_assets.runner import run_graph
    from resources.layout import artifact
    from insightflow_assets_tests.conftest import local_defs

    curated = Path(work) / "curated"
    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(instance, run_key=RUN, defs=local_defs(Path(source), curated), log_level="ERROR")
        records = instance.all_logs(instance.get_runs(limit=1)[0].run_id)
    started, steps = {}, {}
    for r in records:
        e = r.dagster_event
        if e is not None and e.event_type == DagsterEventType.STEP_START:
            started[e.step_key] = r.timestamp
        elif e is not None and e.event_type == DagsterEventType.STEP_SUCCESS:
            steps[e.step_key] = r.timestamp - started[e.step_key]
    metrics_key = artifact("als_eval").keys(RUN)["metrics.json"]  # where the layout keeps it
    metrics = json.loads((curated / metrics_key).read_text()) if outcome.ok else {}
    methods = {
        m: {k: round(v[k], 4) for k in HEADLINE if isinstance(v.get(k), (int, float))}
        for m, v in metrics.get("methods", {}).items()
    }
    snapshot = outcome.materialized.get("raw_order_products", {}).get("derivation", {})
    Path(result).write_text(json.dumps({"ok": outcome.ok, "errors": outcome.errors, "steps": steps, "methods": methods, "snapshot": snapshot}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
