"""Exports for marketing, BI and the LLM step: `exports` → ``recsys/exports/run-TS/data/``."""

import json

import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, AssetIn, MetadataValue, Output

from insightflow_assets.common import all_conditions, conditions_description, current_run, run_asset, run_check
from insightflow_assets.exports.build import EXPORT_FILES, build_exports, jsonl_text, shortened, validate_bedrock_lines
from insightflow_assets.exports.conform import conform_segmentation
from insightflow_assets.segmentation.rfm import centroids_from_user_seg
from resources.io_manager import ArtifactFolder, markdown_table
from resources.layout import Artifact
from resources.params import RfmParams

GROUP = "exports"


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/exports/run-{ts}/data", EXPORT_FILES),
    kinds={"polars", "csv", "parquet", "json"},
    description=(
        "overview.csv, centroids, segment Top-K, the high-value and random cohorts with their "
        "Top-K recommendations (csv + parquet), and bedrock_inputs.jsonl validated against its JSON Schema."
    ),
)
def exports(
    context: AssetExecutionContext,
    rfm: RfmParams,
    user_seg: pl.DataFrame,
    segment_popularity: pl.DataFrame,
    ratings: pl.DataFrame,
    user_recos: pl.DataFrame,
    products: pl.DataFrame,
) -> Output[ArtifactFolder]:
    run = current_run(context)
    seg, pop = conform_segmentation(user_seg, segment_popularity, run, strict=rfm.strict_parquet)
    files = build_exports(
        seg,
        centroids_from_user_seg(seg),
        pop,
        ratings,
        user_recos,
        products,
        hv_n=rfm.hv_n,
        rand_n=rfm.rand_n,
        topn_per_segment=rfm.topn_per_segment,
        seed=rfm.seed,
    )
    errors = validate_bedrock_lines(files["bedrock_inputs.jsonl"])
    if errors:  # nothing half-valid is stored for the LLM step
        raise ValueError(f"bedrock_inputs.jsonl: {len(errors)} invalid line(s), first: {errors[0]}")
    lines = files["bedrock_inputs.jsonl"]
    files["bedrock_inputs.jsonl"] = jsonl_text(lines)
    return Output(
        ArtifactFolder.of(files),
        metadata={
            "overview": MetadataValue.md(markdown_table(files["overview.csv"], n=files["overview.csv"].height)),
            "bedrock_lines": len(lines),
            "bedrock_example": MetadataValue.json(shortened(lines[0]) if lines else {}),
        },
    )


# --- checks --------------------------------------------------------------------------------


def high_value_cohort_is_top_hv(exports: ArtifactFolder, user_seg: pl.DataFrame, rfm: RfmParams) -> AssetCheckResult:
    """users_high_value is exactly the hv_n users with the highest hv (ties by user_id)."""
    exported = exports.frame("users_high_value.parquet")
    expected = user_seg.sort(["hv", "user_id"], descending=[True, False]).head(rfm.hv_n)
    return AssetCheckResult(
        passed=exported["user_id"].to_list() == expected["user_id"].to_list(),
        metadata={"hv_n": rfm.hv_n, "exported": exported.height, "min_hv": float(exported["hv"].min() or 0)},
    )


def bedrock_inputs_match_schema(exports: ArtifactFolder) -> AssetCheckResult:
    """Every line of bedrock_inputs.jsonl parses and matches its JSON Schema."""
    text = exports["bedrock_inputs.jsonl"].decode()
    parsed, errors = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"line {i}: not JSON ({exc.msg})")
    errors += validate_bedrock_lines(parsed)
    return AssetCheckResult(
        passed=not errors and len(parsed) > 0, metadata={"lines": len(parsed), "errors": MetadataValue.json(errors[:20])}
    )


def export_row_counts(exports: ArtifactFolder, user_seg: pl.DataFrame, rfm: RfmParams) -> AssetCheckResult:
    """Cohorts of hv_n / rand_n users (fewer only if fewer users exist), Top-K per segment and user."""
    n_users = user_seg.height
    want = {
        "users_high_value.parquet": min(rfm.hv_n, n_users),
        "users_random.parquet": min(rfm.rand_n, n_users),
        "user_recos.parquet": (min(rfm.hv_n, n_users) + min(rfm.rand_n, n_users)) * rfm.topn_per_segment,
        "overview.csv": user_seg["segment"].n_unique(),
    }
    got = {
        name: (pl.read_csv(exports[name]) if name.endswith(".csv") else exports.frame(name)).height for name in want
    }
    top = exports.frame("segment_topn.parquet").group_by("segment").len()["len"]
    return AssetCheckResult(
        passed=got == want and bool((top <= rfm.topn_per_segment).all()),
        metadata={"expected": MetadataValue.json(want), "found": MetadataValue.json(got)},
    )


# The blocking conditions on the exports, evaluated as one Dagster check (`all_conditions`).
EXPORTS_CONDITIONS = [high_value_cohort_is_top_hv, bedrock_inputs_match_schema, export_row_counts]


@run_check(
    asset=exports, additional_ins={"user_seg": AssetIn("user_seg")}, description=conditions_description(EXPORTS_CONDITIONS)
)
def exports_valid(exports: ArtifactFolder, user_seg: pl.DataFrame, rfm: RfmParams) -> AssetCheckResult:
    """Every blocking condition on the exports (EXPORTS_CONDITIONS) holds."""
    return all_conditions(EXPORTS_CONDITIONS, exports=exports, user_seg=user_seg, rfm=rfm)


CHECKS = [exports_valid]
