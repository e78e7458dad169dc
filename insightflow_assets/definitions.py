"""The InsightFlow code location: the stages' assets and checks, jobs, sensors and resources."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from dagster import Definitions, in_process_executor

from insightflow_assets.automation.sensors import daily_retrain, new_source_data
from insightflow_assets.code_references import linked_to_source
from insightflow_assets.executor import run_key_guarded
from insightflow_assets.jobs import insightflow_checks, insightflow_run
from insightflow_assets.stages import collect, stage_modules
from resources import Compute, build_resources


def make_definitions(resources: dict | None = None, modules: Sequence[ModuleType] | None = None) -> Definitions:
    """The code location, with the environment's resources unless others are given (tests).

    Its assets and checks are those of the stage packages (`stages.stage_modules`), or of the
    given modules; the load fails, naming the asset, if one has not declared its storage.
    """
    assets, checks = collect(stage_modules() if modules is None else modules)
    return Definitions(
        assets=linked_to_source(assets),  # each asset links to its source file in the UI
        asset_checks=checks,
        jobs=[insightflow_run, insightflow_checks],
        sensors=[new_source_data, daily_retrain],
        # given resources without `compute` (benchmarks' own dicts) compute locally, as before it existed
        resources={"compute": Compute(), **resources} if resources is not None else build_resources(),
        # One process per run (insightflow_run can run its steps side by side: executor.run_executor).
        # Guarded: a run of a malformed run key (added in the UI, say) fails before any step starts.
        executor=run_key_guarded(in_process_executor),
    )


defs = make_definitions()


def insightflow_run_job():
    """The ``insightflow_run`` job of the environment's code location, built afresh: what the
    launching process and each step's process rebuild (`dagster.reconstructable`) when the job
    runs under its multiprocess executor, so all of them agree (a replaced ``defs`` would not
    reach the step processes)."""
    return make_definitions().resolve_job_def("insightflow_run")
