"""The house defaults of every per-run asset and check, their storage declaration, and the run key guard.

Assets and checks are written as Dagster's ``@asset`` / ``@asset_check`` functions; `run_asset`
and `run_check` make their steps log each value once (`lean_step`): a run's event log stays
small (issue 13) with the same lineage, values and blocking semantics.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    AssetOut,
    ConfigurableIOManager,
    ConfigurableIOManagerFactory,
    ConfigurableResource,
    MaterializeResult,
    Output,
    PreviewWarning,
    ResourceDefinition,
    ResourceParam,
    asset,
    multi_asset,
)

from insightflow_assets.partitions import runs_partitions
from resources.io_manager import ALL_RUNS, CuratedIOManager
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
    ins: Mapping[str, AssetIn] | None = None,
    deps: Sequence = (),
    **kwargs,
):
    """``@asset`` partitioned per run, owned and versioned like every other InsightFlow asset,
    with its storage entry declared here, where it is defined (see `stored`).

    The function is written as for ``@asset``: upstream values as parameters named after their
    asset (or mapped by ``ins``), config, resources. See `lean_step` for how they reach it.
    """

    options = dict(
        group_name=group, kinds=kinds, owners=OWNERS, code_version=code_version, description=description, deps=deps
    )

    def define(fn) -> AssetsDefinition:
        build = functools.partial(_define, fn, ins or {}, options, kwargs)
        assets_def = build(())
        _BUILDERS[assets_def.key] = build  # stages.collect rebuilds it with its checks
        return assets_def if storage is _UNDECLARED else stored(storage, extra_storage)(assets_def)

    return define


# How to define each run_asset again with its checks, by asset key (see `with_step_checks`).
_BUILDERS: dict[AssetKey, Callable[[Sequence[StepCheck]], AssetsDefinition]] = {}


def _define(fn, ins: Mapping[str, AssetIn], options: dict, kwargs: dict, checks: Sequence[StepCheck]) -> AssetsDefinition:
    """The asset of ``fn``; with ``checks``, a subsettable one that evaluates them in its step."""
    body, reads = lean_step(fn, ins, checks)
    options = {**options, "deps": [*options["deps"], *reads]}
    if not checks:
        return asset(partitions_def=runs_partitions, **options, **kwargs)(body)
    deps = options.pop("deps")
    return multi_asset(
        name=fn.__name__,
        outs={fn.__name__: AssetOut(is_required=False, **options)},
        deps=deps,
        check_specs=[c.spec for c in checks],
        can_subset=True,  # `make check` runs the checks alone, on what is stored
        partitions_def=runs_partitions,
        **kwargs,
    )(body)


def resource_params(fn) -> set[str]:
    """Names of ``fn``'s parameters that Dagster passes as resources: annotated with a resource
    class (``ConfigurableResource``, ``ConfigurableIOManager``, a ``ResourceDefinition``) or
    ``ResourceParam[...]`` — the rule ``@asset`` applies, through public names only."""
    hints = typing.get_type_hints(fn, include_extras=True)
    kinds = (ConfigurableResource, ConfigurableIOManager, ConfigurableIOManagerFactory, ResourceDefinition)
    marker = typing.get_args(ResourceParam[int])[1:]  # ResourceParam's Annotated metadata

    def is_resource(hint) -> bool:
        if isinstance(hint, type):
            return issubclass(hint, kinds)
        return typing.get_origin(hint) is typing.Annotated and typing.get_args(hint)[1:] == marker

    return {name for name in inspect.signature(fn).parameters if is_resource(hints.get(name))}


def lean_step(fn, ins: Mapping[str, AssetIn], checks: Sequence[StepCheck] = ()) -> tuple[Any, list[AssetDep]]:
    """``fn`` as an asset body that logs each value once, and the dependencies it reads.

    Four of Dagster's ways of logging more than the value are avoided:
    - an upstream value loaded as a Dagster input logs a STEP_INPUT and a LOADED_INPUT event
      (about 2.7 KB per input per run); here the upstream assets are dependencies and the body
      reads their values through the IO manager itself (`CuratedIOManager.load_run`), so the
      lineage, the partition mapping and the value are the same;
    - an Output's metadata is copied into the STEP_OUTPUT event as well as the materialization;
      here it is the materialization's alone, where the UI and `runner` read it;
    - a value Dagster hands to the IO manager logs a HANDLED_OUTPUT event; here the step stores
      it through the same IO manager (`_store_in_step`) and reports the materialization;
    - a check in a step of its own logs that step's start, inputs and success; here the asset's
      checks are evaluated in its step, on what was just stored (`StepCheck.evaluate`).

    An input annotated ``pl.LazyFrame`` is not loaded: the body gets a scan of the stored table
    (`CuratedIOManager.scan_run`), so a step that hands it to Spark never holds it.
    """
    params = inspect.signature(fn).parameters
    passed = resource_params(fn) | {"context", "config"}
    reads = {n: ins.get(n) or AssetIn(n) for n in params if n not in passed}
    if set(ins) - set(reads):
        raise TypeError(f"asset {fn.__name__}: ins {sorted(set(ins) - set(reads))} name no parameter")
    for name, spec in reads.items():
        if spec.partition_mapping is not None and not (spec.metadata or {}).get(ALL_RUNS):
            raise TypeError(f"asset {fn.__name__}: input {name!r} reads this run, or every run with {ALL_RUNS}")
    lazy = _lazy_inputs(fn, reads)
    own = [n for n in params if n not in reads and n != "context"]

    def call(context: AssetExecutionContext, io_manager: CuratedIOManager, kwargs: dict):
        run_key = current_run(context)
        values = {n: kwargs[n] for n in own}
        with contextlib.ExitStack() as scans:  # a scan's temporary file lives until fn returns
            for name, spec in reads.items():
                key = (spec.key or AssetKey(name)).path[-1]
                if (spec.metadata or {}).get(ALL_RUNS):
                    values[name] = io_manager.load_runs(key, context.instance.get_dynamic_partitions(runs_partitions.name))
                elif name in lazy:
                    values[name] = scans.enter_context(io_manager.scan_run(key, run_key))
                else:
                    values[name] = io_manager.load_run(key, run_key)
            if "context" in params:
                values["context"] = context
            return fn(**values)

    if checks:
        if inspect.isgeneratorfunction(fn):
            raise TypeError(f"asset {fn.__name__}: run_check needs an asset that returns its value")

        def body(context, io_manager, **kwargs):
            if context.selected_asset_keys:  # else a subset of the checks alone (`make check`)
                yield _metadata_to_materialization(context, _named(context, call(context, io_manager, kwargs)))
            for check in checks:
                if check.spec.key in context.selected_asset_check_keys:
                    yield check.evaluate(context, io_manager, kwargs)
    elif inspect.isgeneratorfunction(fn):

        def body(context, io_manager, **kwargs):
            for result in call(context, io_manager, kwargs):
                yield _metadata_to_materialization(context, result)
    else:

        def body(context, io_manager, **kwargs):
            result = call(context, io_manager, kwargs)
            if result is not None and not isinstance(result, (Output, MaterializeResult)):
                result = _named(context, result)  # a bare value: the asset's one output
            return _metadata_to_materialization(context, result)

    body = _as_defined_by(body, fn)
    body.__signature__ = _body_signature(fn, own, checks)
    deps = [AssetDep(spec.key or AssetKey(n), partition_mapping=spec.partition_mapping) for n, spec in reads.items()]
    return body, deps


def _lazy_inputs(fn, reads: Mapping[str, AssetIn]) -> set[str]:
    """The inputs ``fn`` takes as ``pl.LazyFrame``: scanned, not loaded (see `lean_step`)."""
    hints = typing.get_type_hints(fn)
    lazy = {n for n in reads if hints.get(n) is pl.LazyFrame}
    if lazy and inspect.isgeneratorfunction(fn):
        raise TypeError(f"asset {fn.__name__}: a pl.LazyFrame input needs an asset that returns its value")
    every_run = sorted(n for n in lazy if (reads[n].metadata or {}).get(ALL_RUNS))
    if every_run:
        raise TypeError(f"asset {fn.__name__}: input {every_run[0]!r} reads every run, which is loaded, not scanned")
    return lazy


def _body_signature(fn, own: Sequence[str], checks: Sequence[StepCheck]) -> inspect.Signature:
    """What Dagster reads of the body: the context, fn's config and resources, the resources its
    checks need, and the IO manager; every annotation resolved where it was written."""
    hints = typing.get_type_hints(fn)
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = {n: inspect.Parameter(n, keyword, annotation=hints.get(n, inspect.Parameter.empty)) for n in own}
    for check in checks:
        needed = [n for n in check.resources if n not in params]
        check_hints = typing.get_type_hints(check.fn) if needed else {}
        params.update({n: inspect.Parameter(n, keyword, annotation=check_hints[n]) for n in needed})
    return inspect.Signature(
        [
            inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=AssetExecutionContext),
            *params.values(),
            inspect.Parameter("io_manager", keyword, annotation=ResourceParam[CuratedIOManager]),
        ],
        # none: the body returns a MaterializeResult for a value it stored (`_store_in_step`),
        # which Dagster accepts from an output of type Any only
        return_annotation=inspect.Signature.empty,
    )


def _named(context: AssetExecutionContext, result) -> Output:
    """The asset body's result as the Output of its (multi-asset) output."""
    name = context.assets_def.get_output_name_for_asset_key(context.assets_def.key)
    if isinstance(result, Output):
        return Output(result.value, name, metadata=result.metadata, data_version=result.data_version, tags=result.tags)
    return Output(result, name)


def _as_defined_by(body, fn):
    """``body`` named, documented and located as ``fn``.

    Dagster links an asset to its source (the UI's code reference) by the file and line of its
    op's function; those of the asset's own definition are the ones to show.
    """
    functools.update_wrapper(body, fn)
    source = inspect.unwrap(fn).__code__
    body.__code__ = body.__code__.replace(co_filename=source.co_filename, co_firstlineno=source.co_firstlineno)
    return body


def metadata_on_materialization(fn):
    """``fn``, an asset body not defined with `run_asset` (a multi-asset), with the metadata of
    each Output it returns or yields recorded on the materialization alone (see `lean_step`)."""
    if inspect.isgeneratorfunction(fn):

        def body(*args, **kwargs):
            context = AssetExecutionContext.get()
            for result in fn(*args, **kwargs):
                yield _metadata_to_materialization(context, result)
    else:

        def body(*args, **kwargs):
            return _metadata_to_materialization(AssetExecutionContext.get(), fn(*args, **kwargs))

    return _as_defined_by(body, fn)


def _metadata_to_materialization(context: AssetExecutionContext, result):
    """``result`` with its metadata moved to its asset's materialization (see `lean_step`), and
    an Output's value stored in the step when the curated IO manager keeps it (`_store_in_step`)."""
    if isinstance(result, Output) and (stored_meta := _store_in_step(context, result)) is not None:
        key = context.assets_def.keys_by_output_name[result.output_name]
        context.add_asset_metadata({**result.metadata, **stored_meta}, asset_key=key)
        return MaterializeResult(asset_key=key, data_version=result.data_version, tags=result.tags)
    if isinstance(result, Output) and result.metadata:
        key = context.assets_def.keys_by_output_name[result.output_name]
        context.add_asset_metadata(dict(result.metadata), asset_key=key)
        return Output(result.value, result.output_name, data_version=result.data_version, tags=result.tags)
    if isinstance(result, MaterializeResult) and result.metadata:
        context.add_asset_metadata(dict(result.metadata), asset_key=result.asset_key)
        return MaterializeResult(
            asset_key=result.asset_key, check_results=result.check_results, data_version=result.data_version,
            tags=result.tags, value=result.value,
        )
    return result


def _store_in_step(context: AssetExecutionContext, output: Output) -> dict[str, Any] | None:
    """Store ``output``'s value with the curated IO manager of its output, here in the step;
    the metadata of what was written, or None when another IO manager keeps it (Dagster does).

    Stored by Dagster, each value logs a HANDLED_OUTPUT event (~1.15 KB a run per asset, issue
    13); a MaterializeResult of a value already stored does not. The value, where it is kept,
    the metadata and the materialization are the same.
    """
    manager_key = context.op_def.output_def_named(output.output_name).io_manager_key
    io_manager = getattr(context.resources, manager_key, None)
    if not isinstance(io_manager, CuratedIOManager) or output.value is None:
        return None
    key = context.assets_def.keys_by_output_name[output.output_name]
    return io_manager.store(key, current_run(context), output.value)


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


@dataclass(frozen=True)
class StepCheck:
    """A `run_check`: its spec, its function, and the values it is given."""

    spec: AssetCheckSpec
    fn: Callable[..., AssetCheckResult]
    reads: Mapping[str, AssetKey]  # parameter → the asset whose stored value it gets
    resources: tuple[str, ...]

    def evaluate(self, context, io_manager: CuratedIOManager, resources: Mapping[str, Any]) -> AssetCheckResult:
        """The check on what is stored for this run (just written, or by an earlier run)."""
        run_key = current_run(context)
        values = {name: io_manager.load_run(key.path[-1], run_key) for name, key in self.reads.items()}
        result = self.fn(**values, **{name: resources[name] for name in self.resources})
        return AssetCheckResult(
            asset_key=self.spec.asset_key, check_name=self.spec.name, passed=result.passed, severity=result.severity,
            description=result.description, metadata=result.metadata,
        )


def _only_key(assets_def: AssetsDefinition) -> AssetKey | None:
    return assets_def.key if len(assets_def.keys) == 1 else None


# Every run_check, by the module that declares it (gathered by stages.collect).
STEP_CHECKS: dict[str, dict[str, StepCheck]] = {}


def run_check(*, asset, blocking: bool = True, additional_ins: Mapping[str, AssetIn] | None = None, description: str | None = None):
    """An asset check on one run partition, evaluated in its asset's step; blocking unless
    said otherwise.

    The check function takes a parameter named after its asset, one per ``additional_ins``
    entry, and resources; it is given what is stored for the run. A failing blocking check
    fails the step after the asset is stored, so nothing downstream runs and latest/ is not
    promoted; `make check` (the ``insightflow_checks`` job) runs the checks alone on what a
    run stored. The decorator returns the function itself, a pure function tests call with
    values; the code location collects the check from `STEP_CHECKS` (see `with_step_checks`).
    """
    key = asset.key if isinstance(asset, AssetsDefinition) else AssetKey.from_coercible(asset)
    reads = {key.path[-1]: key, **{n: a.key or AssetKey(n) for n, a in (additional_ins or {}).items()}}

    def define(fn):
        resources = tuple(n for n in inspect.signature(fn).parameters if n not in reads)
        if {"context", "config"} & set(resources):
            raise TypeError(f"check {fn.__name__}: run_check passes its asset values and resources, not {resources}")
        with warnings.catch_warnings():
            # a partitioned check spec is a preview in 1.13; @asset_check(partitions_def=) made the same one
            warnings.simplefilter("ignore", PreviewWarning)
            spec = AssetCheckSpec(
                fn.__name__,
                asset=key,
                blocking=blocking,
                description=description or inspect.getdoc(fn),
                additional_deps=[k for k in reads.values() if k != key],
                partitions_def=runs_partitions,  # evaluated, and looked up by the gate, per run
            )
        STEP_CHECKS.setdefault(fn.__module__, {})[fn.__name__] = StepCheck(spec, fn, reads, resources)
        return fn

    return define


def conditions_description(conditions: Sequence[Callable[..., AssetCheckResult]]) -> str:
    """A merged check's description: each condition by name with its docstring's first line."""
    lines = [f"- `{c.__name__}`: {(inspect.getdoc(c) or '').splitlines()[0]}" for c in conditions]
    return "Every condition holds (a failed one is named in `failed`):\n" + "\n".join(lines)


def all_conditions(conditions: Sequence[Callable[..., AssetCheckResult]], **values) -> AssetCheckResult:
    """One check result for several conditions of the same severity, each a pure check function
    given the ``values`` it names: passed when all pass, the failed ones named.

    One Dagster check per asset rather than one per condition: each check costs ~4 KB of event
    log per run (planned, output and evaluation events) whatever it records (issue 13). A
    failed condition's metadata is kept under ``<condition> <key>``; a passing one adds none.
    """
    results = {c.__name__: c(**{n: values[n] for n in inspect.signature(c).parameters}) for c in conditions}
    failed = [name for name, r in results.items() if not r.passed]
    metadata: dict[str, Any] = {"failed": failed}
    for name in failed:
        metadata.update({f"{name} {key}": value for key, value in (results[name].metadata or {}).items()})
    return AssetCheckResult(
        passed=not failed, description=f"failed: {', '.join(failed)}" if failed else None, metadata=metadata
    )


def with_step_checks(assets: Sequence[AssetsDefinition], checks: Sequence[StepCheck]) -> list[AssetsDefinition]:
    """The assets, those with checks defined again to evaluate them in their step."""
    by_asset: dict[AssetKey, list[StepCheck]] = {}
    for check in checks:
        by_asset.setdefault(check.spec.asset_key, []).append(check)
    out = [_BUILDERS[key](by_asset.pop(key)) if (key := _only_key(a)) in by_asset and key in _BUILDERS else a for a in assets]
    if by_asset:
        key, (check, *_) = next(iter(by_asset.items()))
        raise ValueError(f"check {check.spec.name!r} is on {key.to_user_string()!r}, which is not a run_asset of the code location")
    return out


def current_run(context) -> str:
    """The run partition of this step, refused early when it is malformed."""
    if not context.has_partition_key:
        raise ValueError("InsightFlow assets are materialized per run: choose a run partition (run-YYYYMMDD-HHMMSS)")
    key = context.partition_key
    run_ts(key)
    return key
