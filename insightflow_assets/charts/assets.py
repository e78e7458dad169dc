"""Charts: evaluation trends across runs (`eval_charts`) and the RFM analysis (`rfm_charts`)."""

from typing import Any

import polars as pl
from dagster import AllPartitionMapping, AssetExecutionContext, AssetIn, Config, MetadataValue, Output

from insightflow_assets.charts.eval_trends import BAR_FILE, TREND_FILES, publish_eval_charts
from insightflow_assets.charts.rfm import RFM_FILES, publish_rfm_charts
from insightflow_assets.common import current_run, run_asset
from insightflow_assets.exports.conform import conform_segmentation
from insightflow_assets.charts.runs import runs_up_to
from insightflow_assets.segmentation.rfm import centroids_from_user_seg
from resources.io_manager import ALL_RUNS, ArtifactFolder
from resources.layout import Artifact
from resources.params import RfmParams

GROUP = "charts"
_ALL_RUNS = dict(partition_mapping=AllPartitionMapping(), metadata={ALL_RUNS: True})
_EVAL_CHARTS = "recsys/eval_charts"  # both chart sets, and the promoted trend charts


class EvalChartsConfig(Config):
    k: int = 10


@run_asset(
    group=GROUP,
    storage=Artifact(
        f"{_EVAL_CHARTS}/publish-{{ts}}",
        (*TREND_FILES.values(), BAR_FILE, "index.json"),
        latest=f"{_EVAL_CHARTS}/latest",
    ),
    kinds={"matplotlib", "json"},
    ins={"als_eval_runs": AssetIn("als_eval", **_ALL_RUNS), "als_postrank_runs": AssetIn("als_postrank", **_ALL_RUNS)},
    description=(
        "Trend charts of MAP/NDCG/precision/recall/coverage over every run up to this one "
        "(every method of the runs' `methods` maps, the exported one marked), this run's metrics bar, and index.json."
    ),
)
def eval_charts(
    context: AssetExecutionContext,
    config: EvalChartsConfig,
    als_eval_runs: dict[str, Any],
    als_postrank_runs: dict[str, Any],
) -> Output[ArtifactFolder]:
    run = current_run(context)
    runs = runs_up_to(run, als_eval_runs, als_postrank_runs)
    files, index = publish_eval_charts(runs, run, k=config.k)
    for warning in index["skipped"]:
        context.log.warning(warning)
    return Output(
        ArtifactFolder.of({**files, "index.json": index}),
        metadata={
            "runs_included": len(index["runs"]),
            "runs_skipped": MetadataValue.json(index["skipped"]),
            "methods_charted": MetadataValue.json(index["methods"]),
            "exported_method": MetadataValue.json(index["exported_method"]),
        },
    )


@run_asset(
    group=GROUP,
    storage=Artifact(f"{_EVAL_CHARTS}/rfm_analysis-{{ts}}", (*RFM_FILES, "index.json")),
    kinds={"matplotlib", "json"},
    description="cluster_profiles.png, pca_segments.png, seg_pop_lift.png and index.json of the run's segmentation.",
)
def rfm_charts(
    context: AssetExecutionContext,
    rfm: RfmParams,
    user_seg: pl.DataFrame,
    segment_popularity: pl.DataFrame,
    products: pl.DataFrame,
) -> Output[ArtifactFolder]:
    run = current_run(context)
    seg, pop = conform_segmentation(user_seg, segment_popularity, run, strict=rfm.strict_parquet)
    files, index = publish_rfm_charts(
        seg,
        centroids_from_user_seg(seg),
        pop,
        products,
        run_key=run,
        params=rfm.model_dump(),
        pca_sample=rfm.pca_sample,
        seed=rfm.seed,
    )
    return Output(ArtifactFolder.of({**files, "index.json": index}))
