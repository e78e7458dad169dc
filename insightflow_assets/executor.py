"""The run key guard: a run of a malformed partition key fails before any step starts.

Keys reach runs through doors that never call our code: the UI's "Add partition", GraphQL,
a backfill, a sensor's partition request. Dagster takes any string as a dynamic partition key;
a run of a bad one used to fail at its first step and then report every other step as "not
executed". Every run launched from this code location (the UI's asset job as well as
``insightflow_run``) goes through the executor of `Definitions` before its first step, so the
guard is there: the run fails with the key's one-line error and nothing else.

``execute_in_process`` swaps in an executor of its own; `runner.run_graph` checks the key
itself for that path.

`run_executor` is the executor of the ``insightflow_run`` job: in process, or, with
``parallel: true`` in its config, Dagster's multiprocess executor, so independent stages
(LightFM beside model selection, the basket evaluation beside ALS's) share the machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from dagster import DagsterInstance, Executor, ExecutorDefinition, Field, multi_or_in_process_executor

from insightflow_assets.parallel import usable_cores
from insightflow_assets.partitions import registered_runs
from resources.layout import parse_run_key

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def run_partition_keys(tags: Mapping[str, str], instance: DagsterInstance) -> list[str]:
    """The run partition keys a run targets, from its tags (one key, or a range of them)."""
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start is None or end is None:
        return []
    keys = registered_runs(instance)
    if start in keys and end in keys:
        return keys[keys.index(start) : keys.index(end) + 1]
    return [start, end]


def check_run_partitions(tags: Mapping[str, str], instance: DagsterInstance) -> None:
    """Raise `RunKeyError` (one line) for the first malformed key the run targets."""
    for key in run_partition_keys(tags, instance):
        parse_run_key(key)


class RunKeyGuard(Executor):
    """Another executor, behind the run key check."""

    def __init__(self, inner: Executor):
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator:
        # Raising here, before the first event, fails the run as a whole: no step starts, so
        # no step fails and none is reported as skipped.
        check_run_partitions(plan_context.dagster_run.tags, plan_context.instance)
        yield from self._inner.execute(plan_context, execution_plan)


def run_key_guarded(inner: ExecutorDefinition) -> ExecutorDefinition:
    """``inner`` with the run key guard: same name, config and requirements."""

    def create(init_context) -> Executor:
        return RunKeyGuard(inner.executor_creation_fn(init_context))

    return ExecutorDefinition(
        name=inner.name,
        config_schema=inner.config_schema,
        requirements=inner.get_requirements,
        executor_creation_fn=create,
        description=f"{inner.description or inner.name}, refusing malformed run keys before any step",
    )


# Imported once by the forkserver that forks every step's process: each step then starts in
# well under a second instead of importing dagster, polars and the models again (spawn). Nothing
# here may start polars' thread pool at import (a fork copies only the forking thread).
PRELOAD = ("insightflow_assets.definitions", "polars", "numpy", "scipy.sparse", "sklearn", "implicit", "lightfm")

# run config of `insightflow_run` for steps side by side (what `run_graph(parallel=True)` sets)
PARALLEL = {"execution": {"config": {"parallel": True}}}


def _executor_config(config: dict) -> dict:
    """Our two settings as Dagster's `multi_or_in_process_executor` config."""
    if not config.get("parallel"):
        return {"in_process": {}}
    steps = config.get("max_concurrent", 0)
    if steps < 0:
        raise ValueError(f"execution config max_concurrent must be 0 (one per usable core) or more, not {steps}")
    return {"multiprocess": {"max_concurrent": steps or usable_cores(),
                             "start_method": {"forkserver": {"preload_modules": list(PRELOAD)}}}}


def run_executor() -> ExecutorDefinition:
    """The executor of ``insightflow_run``, guarded: one step at a time in the run's process by
    default (as the code location's other jobs), or with ``parallel: true`` Dagster's
    multiprocess executor: ``max_concurrent`` steps side by side (default one per usable core),
    each in its own process forked from a server that imported the code location once. Not the
    default: a run's event log grows by Dagster's per-process events (worker, resource init,
    captured logs) past the 300 KB target (README "Operating")."""
    inner = multi_or_in_process_executor.configured(
        _executor_config,
        config_schema={
            "parallel": Field(bool, default_value=False, description="steps side by side, each in its own process"),
            "max_concurrent": Field(int, default_value=0, description="with parallel: steps at a time; 0 = one per usable core"),
        },
    )
    return run_key_guarded(inner)
