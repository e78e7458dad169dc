"""Segmentation: `user_seg` (RFM + KMeans) and `segment_popularity` (per segment × product)."""

import time

import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, AssetIn, MetadataValue, Output

from insightflow_assets.common import all_conditions, conditions_description, current_run, run_asset, run_check
from insightflow_assets.ingest.events_schema import is_events_form
from insightflow_assets.segmentation.diagnostics import StepDiagnostics
from insightflow_assets.segmentation.popularity import segment_popularity as build_segment_popularity
from insightflow_assets.segmentation.rfm import (
    centroids_from_user_seg,
    parse_reference_date,
    rfm_definition,
    rfm_reference_time,
    rfm_table,
    segment_users,
)
from insightflow_assets.segmentation.session_rfm import session_reference, session_rfm_table
from insightflow_assets.spark.engine import run_stage
from resources.compute import Compute
from resources.io_manager import markdown_table
from resources.layout import Artifact, artifact
from resources.params import RfmParams
from resources.storage import Storage

GROUP = "segmentation"
# what the Spark job's R/F/M reads: its input name -> the upstream asset stored in this run
RFM_INPUTS = {"orders": "orders_imputed", "order_products": "raw_order_products", "products": "products", "users": "ratings"}


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/user_seg/run-{ts}", ("user_seg.parquet",), latest="recsys/user_seg/latest"),
    # the step's diagnostics, written by the asset itself beside its value
    extra_storage={
        "user_seg_diagnostics": Artifact(
            "recsys/debug/user-seg-{ts}/diag", ("driver_log.txt", "metrics.json", "orders_schema.json")
        )
    },
    kinds={"scikit-learn", "polars", "parquet"},
    description=(
        "Per user R, F, M (Instacart: days before the target order, orders, items or spend; dated "
        "transactions: days since the last order, orders, spend; event log: days since the last purchase session, "
        "purchase sessions, items bought), higher-is-better z-scores of their logs, "
        "and a KMeans segment ordered by the centroid's high-value score, k chosen under a minimum segment share. "
        "R/F/M on polars, or Spark under compute: spark; KMeans on scikit-learn in the step either way."
    ),
)
def user_seg(
    context: AssetExecutionContext,
    rfm: RfmParams,
    compute: Compute,
    curated: Storage,
    orders_imputed: pl.LazyFrame,
    raw_order_products: pl.LazyFrame,
    products: pl.LazyFrame,
    ratings: pl.LazyFrame,
) -> Output[pl.DataFrame]:
    run = current_run(context)
    # Its lines go to the stored driver_log.txt (the seed's); the chosen k and the segments are
    # this materialization's metadata, so the run's log does not repeat them.
    diag = StepDiagnostics()
    try:
        # the inputs are scans: under Spark this step holds the users, never the lines
        users = ratings.select("user_id").unique().collect()
        diag.record_schema(orders_imputed)
        diag.log(f"orders={_rows(orders_imputed)} lines={_rows(raw_order_products)} ratings_users={users.height}")
        t0 = time.perf_counter()
        if is_events_form(raw_order_products):
            # sessions, not orders: events_rfm_table's semantics (segmentation.session_rfm), on polars
            definition, engine = "events", {"engine": "local"}
            if compute.engine_name() != "local":
                diag.log("events form: R/F/M on polars, the Spark job has no session definition")
            orders = orders_imputed.collect()
            reference = session_reference(orders, parse_reference_date(rfm.reference_date))
            table = session_rfm_table(orders, raw_order_products.collect(), users=users, reference_time=reference)
        else:
            definition = rfm_definition(orders_imputed)
            reference = rfm_reference_time(orders_imputed, parse_reference_date(rfm.reference_date))
            if rfm.reference_date and definition != "dated":
                diag.log(f"rfm.reference_date={rfm.reference_date!r} ignored: the Instacart form has no dates")
            # KMeans below stays in the step: it works on one row per customer, not per line
            table, engine = run_stage(
                context, compute, curated, "rfm", inputs=RFM_INPUTS,
                params={"reference_time": reference and reference.isoformat()},
                local=lambda: rfm_table(orders_imputed.collect(), raw_order_products.collect(), products.collect(),
                                        users=users, reference_time=reference),
            )  # fmt: skip
        diag.metrics.update(rfm_definition=definition, reference_time=reference and reference.isoformat())
        diag.metrics["seconds_rfm"] = round(time.perf_counter() - t0, 3)
        diag.log(f"rfm ({definition}) rows={table.height}; KMeans k={rfm.k or f'auto {rfm.k_min}-{rfm.k_max}'} seed={rfm.seed}")
        seg, centroids, info = segment_users(
            table, k=rfm.k, k_min=rfm.k_min, k_max=rfm.k_max, min_segment_share=rfm.min_segment_share, seed=rfm.seed
        )
        diag.metrics.update(info)
        diag.log(f"k={info['k']} ({info['k_selection']['criterion']}); segments: {info['segment_users']}; "
                 f"inertia={info['inertia']:.1f} silhouette={info['silhouette']}")  # fmt: skip
    except Exception as exc:
        diag.failed(exc)
        raise
    finally:
        for key, data in zip(artifact("user_seg_diagnostics").keys(run).values(), diag.files().values()):
            curated.write_bytes(key, data)
    return Output(
        seg,
        metadata={
            "k": int(info["k"]),
            "k_selection": MetadataValue.json(info["k_selection"]),
            "min_segment_share": float(rfm.min_segment_share),
            "rfm_definition": definition,
            "reference_time": reference.isoformat() if reference else "none (Instacart form)",
            "segments": MetadataValue.md(markdown_table(centroids, n=centroids.height)),
            "silhouette": float(info["silhouette"]) if info["silhouette"] is not None else float("nan"),
            "inertia": float(info["inertia"]),
            **engine,
        },
    )


@run_asset(
    group=GROUP,
    storage=Artifact(
        "recsys/segment_popularity/run-{ts}",
        ("segment_popularity.parquet",),
        latest="recsys/segment_popularity/latest",
    ),
    kinds={"polars", "parquet"},
    description="Top-N products per segment: buyers, purchases, share in segment, rank and lift over the overall share.",
)
def segment_popularity(
    context: AssetExecutionContext,
    rfm: RfmParams,
    compute: Compute,
    curated: Storage,
    user_seg: pl.LazyFrame,
    ratings: pl.LazyFrame,
) -> Output[pl.DataFrame]:
    current_run(context)
    df, engine = run_stage(
        context, compute, curated, "segment_popularity", inputs={"user_seg": "user_seg", "ratings": "ratings"},
        params={"top_n": rfm.top_n},
        local=lambda: build_segment_popularity(user_seg.collect(), ratings.collect(), top_n=rfm.top_n),
    )  # fmt: skip
    return Output(df, metadata={"segments": df["segment"].n_unique(), "top_n": rfm.top_n, **engine})


def _rows(frame: pl.LazyFrame) -> int:
    """A scanned table's row count (from the parquet footer, nothing loaded)."""
    return frame.select(pl.len()).collect().item()


# --- checks --------------------------------------------------------------------------------


def every_rated_user_has_one_segment(user_seg: pl.DataFrame, ratings: pl.DataFrame) -> AssetCheckResult:
    """Each user of the ratings appears exactly once in user_seg, and no one else does."""
    rated = ratings.select("user_id").unique()
    missing = rated.join(user_seg, on="user_id", how="anti").height
    extra = user_seg.join(rated, on="user_id", how="anti").height
    duplicated = user_seg.height - user_seg["user_id"].n_unique()
    return AssetCheckResult(
        passed=missing == 0 and extra == 0 and duplicated == 0,
        metadata={"missing": missing, "not_in_ratings": extra, "duplicated": duplicated},
    )


def no_empty_segment(user_seg: pl.DataFrame) -> AssetCheckResult:
    """Segments are numbered 0..S-1 with S >= 1, and every one of them has users."""
    centroids = centroids_from_user_seg(user_seg)
    ids = centroids["segment"].to_list()
    return AssetCheckResult(
        passed=len(ids) >= 1 and ids == list(range(len(ids))) and bool((centroids["users"] > 0).all()),
        metadata={
            "segments": len(ids),
            "users_per_segment": MetadataValue.json(dict(zip(centroids["segment_label"], centroids["users"]))),
        },
    )


def no_segment_below_min_share(user_seg: pl.DataFrame, rfm: RfmParams) -> AssetCheckResult:
    """Every segment holds at least rfm.min_segment_share of the users (unless there is only one)."""
    centroids = centroids_from_user_seg(user_seg)
    smallest = float(centroids["share"].min() or 0.0)
    return AssetCheckResult(
        passed=centroids.height == 1 or smallest >= rfm.min_segment_share,
        metadata={
            "min_segment_share": float(rfm.min_segment_share),
            "smallest_share": smallest,
            "share_per_segment": MetadataValue.json(dict(zip(centroids["segment_label"], centroids["share"].round(6)))),
        },
    )


# The blocking conditions on user_seg, evaluated as one Dagster check (`all_conditions`).
USER_SEG_CONDITIONS = [every_rated_user_has_one_segment, no_empty_segment, no_segment_below_min_share]


@run_check(
    asset=user_seg, additional_ins={"ratings": AssetIn("ratings")}, description=conditions_description(USER_SEG_CONDITIONS)
)
def user_seg_valid(user_seg: pl.DataFrame, ratings: pl.DataFrame, rfm: RfmParams) -> AssetCheckResult:
    """Every blocking condition on the segments (USER_SEG_CONDITIONS) holds."""
    return all_conditions(USER_SEG_CONDITIONS, user_seg=user_seg, ratings=ratings, rfm=rfm)


@run_check(asset=segment_popularity)
def segment_popularity_bounded(segment_popularity: pl.DataFrame, rfm: RfmParams) -> AssetCheckResult:
    """At most top_n rows per segment, and every lift > 0."""
    per_segment = segment_popularity.group_by("segment").len()["len"].max() or 0
    non_positive = int((segment_popularity["lift"] <= 0).sum())
    return AssetCheckResult(
        passed=per_segment <= rfm.top_n and non_positive == 0,
        metadata={"max_rows_per_segment": int(per_segment), "top_n": rfm.top_n, "non_positive_lift": non_positive},
    )


CHECKS = [user_seg_valid, segment_popularity_bounded]
