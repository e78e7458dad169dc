"""Publishing: the promotion of a fully checked run to `latest/`."""

from datetime import datetime, timezone

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from insightflow_assets.common import current_run, run_asset
from insightflow_assets.publish.promotion import promote
from resources.layout import LATEST_MANIFEST
from resources.storage import Storage

GROUP = "publish"


@run_asset(
    group=GROUP,
    kinds={"s3", "json"},
    deps=["eval_charts", "user_seg", "segment_popularity", "rfm_charts", "exports", "als_postrank", "mice_checks"],
    description=(
        "Promotes this run's user_seg, segment_popularity and eval_charts to latest/ and writes "
        "recsys/latest/index.json last. Runs only when every upstream blocking check passed; "
        "an older run never replaces a newer one."
    ),
)
def latest_manifest(context: AssetExecutionContext, curated: Storage) -> MaterializeResult:
    run = current_run(context)
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = promote(curated, run, finished_at_utc=finished)
    if not result["promoted"]:
        context.log.warning(f"latest/ not changed: {result['reason']}")
    manifest = result["manifest"]
    return MaterializeResult(
        metadata={
            "promoted": result["promoted"],
            "reason": result["reason"],
            "latest_run_key": manifest["run_key"],
            "objects": len(manifest["objects"]),
            "manifest": MetadataValue.path(curated.uri(LATEST_MANIFEST)),
        }
    )
