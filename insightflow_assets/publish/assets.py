"""Publishing: the promotion of a fully checked run to `latest/`."""

from datetime import datetime, timezone

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue

from insightflow_assets.common import current_run, run_asset
from insightflow_assets.publish.gate import check_statuses, guarding_checks, verdict
from insightflow_assets.publish.promotion import PromotionError, promote
from resources.layout import LATEST_MANIFEST
from resources.storage import Storage

GROUP = "publish"


@run_asset(
    group=GROUP,
    # No per-run value: it writes latest/ and LATEST_MANIFEST itself (publish/promotion.py).
    storage=None,
    # No storage kind: like every asset it writes where the curated resource points, local or S3.
    kinds={"json"},
    deps=["eval_charts", "user_seg", "segment_popularity", "rfm_charts", "exports", "als_postrank", "mice_checks", "basket_eval",
          # what the serving API reads (insightflow_assets/serving)
          "user_recos", "model_selection", "basket_pairs", "lightfm_model", "products"],
    description=(
        "Promotes this run's user_seg, segment_popularity, eval_charts and what serving reads (user_recos, model_selection, "
        "basket_pairs, lightfm_model, products) to latest/ and writes "
        "recsys/latest/index.json last. Promotes only when every upstream blocking check has a "
        "passing evaluation recorded for this run (a check left out of the run fails the step); "
        "an older run never replaces a newer one."
    ),
)
def latest_manifest(context: AssetExecutionContext, curated: Storage) -> MaterializeResult:
    run = current_run(context)
    gated = _require_checks_passed(context, run)
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        result = promote(curated, run, finished_at_utc=finished)
    except PromotionError as exc:
        # A Failure's description is what the run summary shows: the promotion's own line,
        # with its guidance, rather than the innermost storage exception.
        raise Failure(description=str(exc), allow_retries=False) from exc
    if result.get("recovered"):
        context.log.warning(f"before promoting: {result['recovered']}")
    if not result["promoted"]:
        context.log.warning(f"latest/ not changed: {result['reason']}")
    manifest = result["manifest"]
    return MaterializeResult(
        metadata={
            "promoted": result["promoted"],
            "reason": result["reason"],
            "latest_run_key": manifest["run_key"],
            "objects": len(manifest["objects"]),
            "blocking_checks_passed": MetadataValue.json(gated),
            "manifest": MetadataValue.path(curated.uri(LATEST_MANIFEST)),
        }
    )


def _require_checks_passed(context: AssetExecutionContext, run: str) -> list[str]:
    """Fail the step, before anything in latest/ is touched, unless the gate is open.

    Dagster's blocking only holds within one run: a check not selected into it blocks nothing.
    The required set is derived from the graph, so checks added later are covered too.
    """
    graph = context.job_def.asset_layer.asset_graph
    required = guarding_checks(graph, context.asset_key)
    statuses = check_statuses(context.instance, graph, required, run)
    gate = verdict([k.to_user_string() for k in required], statuses)
    if not gate.open:
        raise Failure(
            description=f"latest/ not changed: {gate.describe()}",
            metadata={"missing": gate.missing, "failed": gate.failed, "stale": gate.stale},
            allow_retries=False,
        )
    # no log line: the materialization's blocking_checks_passed names them (issue 13: a small log)
    return sorted(statuses)
