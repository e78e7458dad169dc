"""The stage packages, and the assets and checks the code location collects from them.

A stage package is a subpackage of ``insightflow_assets`` with an ``assets`` module; every
asset and asset check at that module's top level belongs to the code location. Adding a model
is adding such a package (README, "The asset graph"): no list to edit elsewhere.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Sequence
from functools import cache
from types import ModuleType

from dagster import (
    AssetChecksDefinition,
    AssetKey,
    AssetsDefinition,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

import insightflow_assets
from insightflow_assets.common import STEP_CHECKS, with_step_checks
from resources.layout import ARTIFACTS

# The asset that promotes a run's latest/ entries (publish/assets.py).
PUBLISHER = AssetKey("latest_manifest")


@cache
def stage_modules() -> tuple[ModuleType, ...]:
    """The ``assets`` module of every stage package, imported (which declares their storage)."""
    names = sorted(m.name for m in pkgutil.iter_modules(insightflow_assets.__path__) if m.ispkg)
    found = [f"{insightflow_assets.__name__}.{n}.assets" for n in names]
    return tuple(importlib.import_module(m) for m in found if importlib.util.find_spec(m))


def collect(modules: Sequence[ModuleType]) -> tuple[list[AssetsDefinition], list[AssetChecksDefinition]]:
    """The assets and checks of these modules, refused unless each asset declared its storage.

    A `run_check` is part of its asset (evaluated in the asset's step): it is among the assets'
    check keys, not among the separate checks returned here.
    """
    assets = list(load_assets_from_modules(modules))
    require_storage({key.path[-1] for a in assets for key in a.keys})
    require_promoted_first(assets)
    step_checks = [c for m in modules for c in STEP_CHECKS.get(m.__name__, {}).values()]
    return with_step_checks(assets, step_checks), list(load_asset_checks_from_modules(modules))


def require_storage(assets: set[str]) -> None:
    """Refuse the load, in one line, when the graph and the storage entries disagree.

    Without it an asset with no entry fails only when a run first stores it, and an entry
    whose asset is gone lingers in every listing of the layout.
    """
    len(ARTIFACTS)  # reading it imports every stage: their entries count even when not collected here
    undeclared = sorted(assets - ARTIFACTS.declared)
    if undeclared:
        raise ValueError(
            f"asset {undeclared[0]!r} has no storage entry: declare it where it is defined, run_asset(storage=Artifact(...))"
        )
    orphans = sorted(entry for entry, writer in ARTIFACTS.writers.items() if writer not in assets)
    if orphans:
        writer = ARTIFACTS.writers[orphans[0]]
        raise ValueError(f"storage entry {orphans[0]!r} names no asset: it is declared for {writer!r}, which is not in the code location")


def require_promoted_first(assets: list[AssetsDefinition]) -> None:
    """Refuse the load when an entry with a ``latest/`` folder is promoted by a publisher that
    does not wait for its asset: the promotion would find the run's copy missing, at run time."""
    waits = next((a.asset_deps[PUBLISHER] for a in assets if PUBLISHER in a.keys), None)
    if waits is None:
        return  # nothing publishes in this code location
    late = sorted(w for n, w in ARTIFACTS.writers.items() if ARTIFACTS[n].latest and AssetKey(w) not in waits)
    if late:
        raise ValueError(f"asset {late[0]!r} has a latest/ entry but {PUBLISHER.to_user_string()} does not depend on it: add it to its deps")
