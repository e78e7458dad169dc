"""Ratings: implicit (user, product) scores from the orders before each user's target basket,
and the held-out target baskets every evaluation reads."""

from typing import Optional

import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, Config, MetadataValue, Output
from pydantic import Field

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.ingest.events_schema import is_events_form
from insightflow_assets.ratings.build import build_holdout, build_ratings, default_filter
from insightflow_assets.ratings.events import DEFAULT_WEIGHTS
from insightflow_assets.spark.engine import run_stage
from resources.compute import Compute
from resources.layout import Artifact
from resources.storage import Storage

GROUP = "ratings"
# what the Spark job reads for both stages: its input name -> the upstream asset stored in this run.
# The steps take those inputs as scans (pl.LazyFrame): under Spark they never load the lines.
LINES_INPUTS = {"orders": "orders_imputed", "order_products": "raw_order_products"}


class RatingsConfig(Config):
    """Purchase counts (events form: weighted event counts), optionally time-decayed; the
    filters drop rare users and items."""

    half_life_days: Optional[float] = None
    min_user_interactions: Optional[int] = Field(default=None, description="Default: 1, or 5 on the events form (seed 003's filter).")
    min_item_interactions: Optional[int] = Field(default=None, description="Default: 1, or 5 on the events form (seed 003's filter).")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="Events form only: weight of each event type in a rating (view, addtocart, transaction).",
    )


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/ratings/run-{ts}", ("ratings.parquet",)),
    kinds={"polars", "parquet"},
    description=(
        "One row per (user, product) bought before the user's target order: purchases and rating "
        "(polars, or Spark under compute: spark)."
    ),
)
def ratings(
    context: AssetExecutionContext,
    config: RatingsConfig,
    compute: Compute,
    curated: Storage,
    orders_imputed: pl.LazyFrame,
    raw_order_products: pl.LazyFrame,
) -> Output[pl.DataFrame]:
    current_run(context)
    params = config.model_dump()
    events = is_events_form(raw_order_products)
    for name in ("min_user_interactions", "min_item_interactions"):
        params[name] = default_filter(params[name], events)
    if events:
        if compute.engine_name() != "local":
            raise RuntimeError("ratings: the events form runs on compute.engine local (the Spark job has no event weights)")
    else:
        params.pop("event_weights")  # only the events form has event counts
    df, engine = run_stage(
        context, compute, curated, "ratings", inputs=LINES_INPUTS, params=params,
        local=lambda: build_ratings(orders_imputed.collect(), raw_order_products.collect(), **params),
    )  # fmt: skip
    if df.height == 0:  # refused before anything is stored; the check would only say "rows=0"
        raise ValueError(
            "ratings: no customer has an order before their last (target) order, so there is no history to learn "
            "from: every customer of the input has a single order, or min_user/min_item_interactions removed the rest"
        )
    return Output(
        df,
        metadata={
            "users": df["user_id"].n_unique(),
            "products": df["product_id"].n_unique(),
            "config": MetadataValue.json(params),
            **engine,
        },
    )


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/holdout/run-{ts}", ("holdout.parquet",)),
    kinds={"polars", "parquet"},
    description="Each user's target basket (the eval_set=train order, else the last order): the evaluation truth.",
)
def holdout(
    context: AssetExecutionContext,
    compute: Compute,
    curated: Storage,
    orders_imputed: pl.LazyFrame,
    raw_order_products: pl.LazyFrame,
) -> Output[pl.DataFrame]:
    current_run(context)
    df, engine = run_stage(
        context, compute, curated, "holdout", inputs=LINES_INPUTS, params={},
        local=lambda: build_holdout(orders_imputed.collect(), raw_order_products.collect()),
    )  # fmt: skip
    return Output(df, metadata={"users": df["user_id"].n_unique(), **engine})


@run_check(asset=ratings)
def ratings_valid(ratings: pl.DataFrame) -> AssetCheckResult:
    """Ratings are non-empty, unique per (user, product), and every score is > 0."""
    duplicates = ratings.height - ratings.select("user_id", "product_id").n_unique() if ratings.height else 0
    non_positive = int((ratings["rating"] <= 0).sum()) if ratings.height else 0
    return AssetCheckResult(
        passed=ratings.height > 0 and duplicates == 0 and non_positive == 0,
        metadata={"rows": ratings.height, "duplicate_pairs": duplicates, "non_positive_scores": non_positive},
    )


CHECKS = [ratings_valid]
