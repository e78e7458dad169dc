"""Running the graph for one run partition through Dagster, and reporting on it.

Used by ``insightflow run`` (and so ``make run``) and by the integration tests: the run is
executed against a real `DagsterInstance`, so it shows up in the UI afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetCheckSeverity, DagsterInstance

from insightflow_assets.partitions import register_run
from resources.layout import ARTIFACTS, parse_run_key
from resources.storage import Storage


@dataclass
class RunOutcome:
    run_key: str
    success: bool
    failed_steps: list[str]
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the root cause of each failed step
    # "asset:check" of every check of the job's graph with no evaluation in this run: left out
    # by the selection, or never reached. Not a failure by itself (a backfill skips most), but
    # the promotion gate refuses a run that skipped a blocking one upstream of latest/.
    skipped_checks: list[str] = field(default_factory=list)
    # Materialization metadata of this run, per asset (plain values), e.g. the ingest's exclusions.
    materialized: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_id: str = ""  # the Dagster run: where its full log is (UI → Runs)

    @property
    def failed_error_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"] and c["severity"] == "ERROR"]

    @property
    def ok(self) -> bool:
        return self.success and not self.failed_error_checks


def run_graph(
    instance: DagsterInstance,
    *,
    run_key: str | None = None,
    tag: str | None = None,
    run_config: dict | None = None,
    selection: list[str] | None = None,
    defs=None,
    log_level: str | None = None,
    parallel: bool = False,
) -> RunOutcome:
    """Register a run partition (unless given) and materialize the graph for it.

    In process by default. ``parallel``: through the job's own executor with ``parallel: true``
    (`executor.run_executor`: independent steps side by side in processes of their own); every
    process builds the code location from the environment (`definitions.insightflow_run_job`),
    so ``defs`` cannot be given then.

    A malformed ``run_key`` raises `RunKeyError` before any step runs, even when it was
    registered behind our back (e.g. in the UI): ``execute_in_process`` brings its own executor,
    so the executor's guard (insightflow_assets.executor) does not apply here.
    """
    if parallel and defs is not None:
        raise ValueError("run_graph: parallel runs rebuild the code location's own definitions; defs cannot be given")
    if parallel:
        from insightflow_assets.definitions import insightflow_run_job

        job = insightflow_run_job()
    else:
        if defs is None:
            from insightflow_assets.definitions import defs
        job = defs.resolve_job_def("insightflow_run")
    kwargs: dict[str, Any] = {}
    if selection:  # refused before a run partition is registered
        kwargs["asset_selection"] = selected_keys(job.asset_layer.asset_graph, selection)
    key = register_run(instance, tag=tag) if run_key is None else register_run(instance, key=run_key, exist_ok=True)
    run_config = dict(run_config or {})
    if log_level:
        run_config.setdefault("loggers", {"console": {"config": {"log_level": log_level.upper()}}})
    if parallel:
        # `parallel: true` beside the run config's own executor settings (max_concurrent)
        execution = run_config.get("execution") or {}
        run_config["execution"] = {**execution, "config": {**(execution.get("config") or {}), "parallel": True}}
        result = _execute_parallel(instance, key, run_config, kwargs)
    else:
        result = job.execute_in_process(
            instance=instance, partition_key=key, run_config=run_config, raise_on_error=False, **kwargs
        )
    return _outcome(key, result, expected_checks=job.asset_layer.asset_graph.asset_check_keys)


def selected_keys(graph, names: Sequence[str]) -> list:
    """The asset keys of ``names``: asset names, or the name of a step that makes several
    (``instacart_snapshot``: the snapshot's three tables). An unknown name is refused in one line."""
    from dagster import AssetKey

    assets = {k.to_user_string() for k in graph.get_all_asset_keys()}
    steps = {d.node_def.name: sorted(k.to_user_string() for k in d.keys) for d in graph.assets_defs if d.is_executable}
    keys: list[str] = []
    for name in names:
        if name not in assets and name not in steps:
            raise ValueError(f"--select: no asset or step named {name!r}; assets: {', '.join(sorted(assets))}")
        keys += [name] if name in assets else steps[name]
    return [AssetKey(k) for k in dict.fromkeys(keys)]


def _execute_parallel(instance: DagsterInstance, key: str, run_config: dict, kwargs: dict):
    from dagster import execute_job, reconstructable

    from insightflow_assets.definitions import insightflow_run_job

    # Dagster keeps the last job it rebuilt (lru_cache on ReconstructableJob); drop it, so this
    # process builds the job from the environment of now, as the step processes will.
    recon = reconstructable(insightflow_run_job)
    with contextlib.suppress(AttributeError):  # internals; without them a test's new environment is not seen
        type(recon).get_definition.cache_clear()
        type(recon).get_repository_definition.cache_clear()
    try:
        return execute_job(recon, instance, run_config=run_config,
                           tags={"dagster/partition": key}, raise_on_error=False, **kwargs)
    finally:
        _stop_forkserver()


def _stop_forkserver() -> None:
    """Stop the forkserver the steps were forked from: it outlives the run and holds the code
    location, resources and environment variables of the moment it started, so the next
    parallel run in this process must start a fresh one (a test's changed environment)."""
    from multiprocessing import forkserver

    with contextlib.suppress(AttributeError):  # CPython's internals: a later run would then reuse it
        forkserver._forkserver._stop()


def run_checks(instance: DagsterInstance, run_key: str, *, defs=None) -> RunOutcome:
    """Re-run every asset check against what is stored for an existing run (`make check`)."""
    if defs is None:
        from insightflow_assets.definitions import defs
    parse_run_key(run_key)
    if run_key not in instance.get_dynamic_partitions("runs"):
        raise ValueError(f"run {run_key!r} is not registered (see `insightflow runs`)")
    job = defs.resolve_job_def("insightflow_checks")
    result = job.execute_in_process(
        instance=instance,
        tags={"dagster/partition": run_key},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    return _outcome(run_key, result, expected_checks=job.asset_layer.asset_graph.asset_check_keys)


def _outcome(key: str, result, expected_checks=()) -> RunOutcome:
    checks = [
        {
            "asset": ev.asset_key.to_user_string(),
            "check": ev.check_name,
            "passed": ev.passed,
            "severity": ev.severity.value if ev.severity else AssetCheckSeverity.ERROR.value,
            "metadata": {k: getattr(v, "value", v) for k, v in (ev.metadata or {}).items()},
        }
        for ev in result.get_asset_check_evaluations()
    ]
    evaluated = {f"{c['asset']}:{c['check']}" for c in checks}
    skipped = sorted({k.to_user_string() for k in expected_checks} - evaluated)
    materialized = {
        ev.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in ev.materialization.metadata.items()}
        for ev in result.get_asset_materialization_events()
    }
    return RunOutcome(
        key, result.success, sorted(result.get_failed_step_keys()), checks, _step_errors(result), skipped, materialized,
        run_id=result.run_id,
    )


def _step_errors(result) -> list[str]:
    """One line per failed step: a `Failure`'s own description, else the root exception."""
    errors = []
    for ev in result.get_step_failure_events():
        user = ev.step_failure_data.user_failure_data
        if user is not None and user.description:
            errors.append(user.description.strip())
            continue
        err = ev.step_failure_data.error
        while err is not None and err.cause is not None:
            err = err.cause
        if err is not None:
            errors.append(err.message.strip())
    return errors


def written_tree(storage: Storage, run_key: str) -> list[str]:
    """The objects of this run in the curated store, as an indented tree."""
    keys: list[tuple[str, int]] = []
    for spec in ARTIFACTS.values():
        for key in spec.keys(run_key).values():
            info = storage.stat(key)
            if info is not None:
                keys.append((key, info.size))
    keys.sort()
    lines = [storage.uri()]
    shown: set[str] = set()
    for key, size in keys:
        parts = key.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in shown:
                shown.add(folder)
                lines.append("  " * depth + parts[depth - 1] + "/")
        lines.append("  " * len(parts) + f"{parts[-1]}  ({size:,} B)")
    return lines
