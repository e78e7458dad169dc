"""Jobs: the whole graph for one run partition, and its checks alone."""

from dagster import AssetSelection, define_asset_job

from insightflow_assets.executor import run_executor

# The whole graph for one run partition; the sensor, the schedule and `insightflow run` launch it.
insightflow_run = define_asset_job(
    "insightflow_run",
    selection=AssetSelection.all(),
    description="Materialize the whole InsightFlow graph (with its checks) for one run partition.",
    # in process, or with `parallel: true` independent steps side by side (insightflow run --parallel)
    executor_def=run_executor(),
)

# Every asset check against what is stored for a run, without re-materializing anything.
insightflow_checks = define_asset_job(
    "insightflow_checks",
    # A checks-only selection has no asset to infer the partitioning from: it is launched
    # with the run's partition tag (see runner.run_checks).
    selection=AssetSelection.all_asset_checks(),
    description="Re-run every asset check for an existing run partition (`make check RUN=…`).",
)
