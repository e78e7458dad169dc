"""Small shared pieces of the asset definitions (owners, the run key guard)."""

from __future__ import annotations

from resources.layout import run_ts

OWNERS = ["team:ml-platform"]


def current_run(context) -> str:
    """The run partition of this step, refused early when it is malformed."""
    if not context.has_partition_key:
        raise ValueError("InsightFlow assets are materialized per run: choose a run partition (run-YYYYMMDD-HHMMSS)")
    key = context.partition_key
    run_ts(key)
    return key
