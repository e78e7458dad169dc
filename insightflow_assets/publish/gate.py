"""The promotion gate: ``latest/`` only ever names a run whose guarding checks all passed.

Dagster's ``blocking`` only stops what runs *in the same run*: a check left out of the run
(by ``--select`` or otherwise) blocks nothing, so ``latest_manifest`` would promote a run
whose data no check ever looked at. The gate closes that hole by asking the instance, not
the run: every blocking check on an asset upstream of ``latest_manifest`` must have a
passing evaluation for this run partition, made against the asset's latest materialization.

`verdict` is the pure decision; `guarding_checks` and `check_statuses` are thin wrappers
over Dagster's asset graph and event log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dagster import AssetRecordsFilter
from dagster._core.event_api import PartitionKeyFilter  # 1.13: the partition filter of check queries
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

PASSED, FAILED, MISSING, STALE = "passed", "failed", "missing", "stale"


@dataclass(frozen=True)
class GateVerdict:
    missing: list[str]  # never evaluated on this partition (or planned but never finished)
    failed: list[str]  # the latest evaluation on this partition failed
    stale: list[str]  # passed, but against an older materialization of the asset

    @property
    def open(self) -> bool:
        return not (self.missing or self.failed or self.stale)

    def describe(self) -> str:
        """One line naming every check that keeps the gate shut."""
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (("missing", self.missing), ("failed", self.failed), ("stale", self.stale))
            if names
        ]
        if not parts:
            return "every blocking check passed"
        return "blocking checks not passed on this run (" + "; ".join(parts) + ")"


def verdict(required: Iterable[str], statuses: Mapping[str, str]) -> GateVerdict:
    """The gate's decision: each required check is satisfied only by the status ``passed``.

    A required check absent from ``statuses`` counts as missing.
    """
    by_status: dict[str, list[str]] = {MISSING: [], FAILED: [], STALE: []}
    for name in sorted(set(required)):
        status = statuses.get(name, MISSING)
        if status != PASSED:
            by_status.get(status, by_status[MISSING]).append(name)
    return GateVerdict(missing=by_status[MISSING], failed=by_status[FAILED], stale=by_status[STALE])


# --- Dagster wrappers ----------------------------------------------------------------------


def code_location_graph(asset_graph):
    """The code location's whole asset graph behind a job's (possibly subsetted) one.

    A run started with an asset selection sees only the selected checks in its job graph;
    the gate must see the unselected ones too, since skipping them is what it guards against.
    ``context.repository_def`` is not set under ``execute_in_process``, hence this route.
    """
    source = getattr(asset_graph, "source_asset_graph", None)
    while source is not None and source is not asset_graph:
        asset_graph, source = source, getattr(source, "source_asset_graph", None)
    return asset_graph


def guarding_checks(asset_graph, asset_key) -> list:
    """Every blocking check on an asset upstream of ``asset_key`` (transitively), sorted."""
    graph = code_location_graph(asset_graph)
    upstream = graph.get_ancestor_asset_keys(asset_key)
    keys = [k for k in graph.asset_check_keys if k.asset_key in upstream and graph.get(k).blocking]
    return sorted(keys, key=lambda k: k.to_user_string())


def check_statuses(instance, asset_graph, check_keys: Iterable, partition: str) -> dict[str, str]:
    """``{"asset:check": status}`` from the latest recorded execution of each check."""
    graph = code_location_graph(asset_graph)
    check_keys = list(check_keys)
    # A partitioned check records its evaluations under the run partition; an unpartitioned
    # one (allowed on a partitioned asset) under none.
    latest = {}
    for part in {partition if graph.get(k).partitions_def is not None else None for k in check_keys}:
        keys = [k for k in check_keys if (graph.get(k).partitions_def is not None) == (part is not None)]
        found = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            keys, partition_filter=PartitionKeyFilter(key=part)
        )
        latest.update({k: found[k] for k in keys if k in found})

    statuses = {}
    for key in check_keys:
        record = latest.get(key)
        if record is None or record.status == AssetCheckExecutionRecordStatus.PLANNED:  # planned but never evaluated
            status = MISSING
        elif record.status == AssetCheckExecutionRecordStatus.FAILED:
            status = FAILED
        else:
            status = PASSED if _targets_latest(instance, record, partition) else STALE
        statuses[key.to_user_string()] = status
    return statuses


def _targets_latest(instance, record, partition: str) -> bool:
    """Whether a passing evaluation judged the asset's current materialization on this partition.

    A pass on data that was rewritten since (an asset re-materialized without its check) says
    nothing about what would be promoted.
    """
    mats = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=record.key.asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not mats:
        return True  # nothing materialized on this partition: the check judged what is there
    target = record.evaluation.target_materialization_data if record.evaluation else None
    if target is not None:
        return target.storage_id == mats[0].storage_id
    return record.event is not None and mats[0].timestamp <= record.event.timestamp  # no target: compare times
