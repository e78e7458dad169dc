"""The house defaults of every per-run asset and check, their storage declaration, and the run key guard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import AssetsDefinition, asset, asset_check

from insightflow_assets.partitions import runs_partitions
from resources.layout import ARTIFACTS, Artifact, run_ts

OWNERS = ["team:ml-platform"]
# Bump an asset's code_version when its output changes for the same input: the UI then marks
# the run partitions built with older code as stale (see README, Backfills).
CODE_VERSION = "1"


# `storage` left out: the asset is defined, and the code location's load refuses it by name
# (insightflow_assets.stages.require_storage), rather than its first run failing to store it.
_UNDECLARED: Any = object()


def run_asset(
    *,
    group: str,
    kinds: set[str],
    description: str,
    storage: Artifact | None = _UNDECLARED,
    extra_storage: Mapping[str, Artifact] | None = None,
    code_version: str = CODE_VERSION,
    **kwargs,
):
    """``@asset`` partitioned per run, owned and versioned like every other InsightFlow asset,
    with its storage entry declared here, where it is defined (see `stored`)."""
    as_asset = asset(
        partitions_def=runs_partitions,
        group_name=group,
        kinds=kinds,
        owners=OWNERS,
        code_version=code_version,
        description=description,
        **kwargs,
    )

    def define(fn) -> AssetsDefinition:
        assets_def = as_asset(fn)
        return assets_def if storage is _UNDECLARED else stored(storage, extra_storage)(assets_def)

    return define


def stored(storage: Artifact | Mapping[str, Artifact] | None, extra: Mapping[str, Artifact] | None = None):
    """Declare an asset's storage entries in the layout's registry, under the asset's name.

    ``storage`` is where the IO manager keeps the asset's value: one `Artifact`, one per
    output asset of a multi-asset, or None for an asset that stores no value per run (it
    writes its own keys). ``extra`` names entries the asset writes itself beside its value.
    """

    def declare(assets_def: AssetsDefinition) -> AssetsDefinition:
        if isinstance(storage, Mapping):
            for name, spec in storage.items():
                ARTIFACTS.declare(name, {name: spec})
        else:
            name = assets_def.key.path[-1]
            ARTIFACTS.declare(name, {} if storage is None else {name: storage})
        if extra:
            ARTIFACTS.declare(assets_def.key.path[-1], extra)
        return assets_def

    return declare


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
