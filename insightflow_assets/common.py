"""The house defaults of every per-run asset and check, and the run key guard."""

from __future__ import annotations

from dagster import asset, asset_check

from insightflow_assets.partitions import runs_partitions
from resources.layout import run_ts

OWNERS = ["team:ml-platform"]
# Bump an asset's code_version when its output changes for the same input: the UI then marks
# the run partitions built with older code as stale (see README, Backfills).
CODE_VERSION = "1"


def run_asset(*, group: str, kinds: set[str], description: str, code_version: str = CODE_VERSION, **kwargs):
    """``@asset`` partitioned per run, owned and versioned like every other InsightFlow asset."""
    return asset(
        partitions_def=runs_partitions,
        group_name=group,
        kinds=kinds,
        owners=OWNERS,
        code_version=code_version,
        description=description,
        **kwargs,
    )


def run_check(*, asset, blocking: bool = True, **kwargs):
    """``@asset_check`` on one run partition; blocking unless said otherwise."""
    return asset_check(asset=asset, blocking=blocking, partitions_def=runs_partitions, **kwargs)


def current_run(context) -> str:
    """The run partition of this step, refused early when it is malformed."""
    if not context.has_partition_key:
        raise ValueError("InsightFlow assets are materialized per run: choose a run partition (run-YYYYMMDD-HHMMSS)")
    key = context.partition_key
    run_ts(key)
    return key
