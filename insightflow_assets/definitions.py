"""The InsightFlow code location: every asset, check, job, sensor and resource."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from insightflow_assets.automation.sensors import daily_retrain, new_source_data
from insightflow_assets.charts import assets as charts
from insightflow_assets.evaluation import assets as evaluation
from insightflow_assets.executor import run_key_guarded
from insightflow_assets.exports import assets as exports
from insightflow_assets.imputation import assets as imputation
from insightflow_assets.ingest import assets as ingest
from insightflow_assets.jobs import insightflow_checks, insightflow_run
from insightflow_assets.model import assets as model
from insightflow_assets.nbr import assets as nbr
from insightflow_assets.postrank import assets as postrank
from insightflow_assets.publish import assets as publish
from insightflow_assets.ratings import assets as ratings
from insightflow_assets.segmentation import assets as segmentation
from insightflow_assets.selection import assets as selection
from resources import build_resources

ASSETS = [
    ingest.instacart_snapshot,
    imputation.orders_imputed,
    imputation.mice_checks,
    ratings.ratings,
    ratings.holdout,
    model.als_model,
    selection.model_selection,
    nbr.nbr_model,
    evaluation.als_eval,
    postrank.user_recos,
    postrank.als_postrank,
    charts.eval_charts,
    segmentation.user_seg,
    segmentation.segment_popularity,
    charts.rfm_charts,
    exports.exports,
    publish.latest_manifest,
]
CHECKS = [
    *imputation.CHECKS,
    *ratings.CHECKS,
    *model.CHECKS,
    *evaluation.CHECKS,
    *postrank.CHECKS,
    *segmentation.CHECKS,
    *exports.CHECKS,
]




def make_definitions(resources: dict | None = None) -> Definitions:
    """The code location, with the environment's resources unless others are given (tests)."""
    return Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[insightflow_run, insightflow_checks],
        sensors=[new_source_data],
        schedules=[daily_retrain],
        resources=resources if resources is not None else build_resources(),
        # One process per run: the stages are numpy/polars-parallel already, and a 2-core
        # machine gains nothing from a process per step but their memory. Guarded: a run of a
        # malformed run key (added in the UI, say) fails before any step starts.
        executor=run_key_guarded(in_process_executor),
    )


defs = make_definitions()
