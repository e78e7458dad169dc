"""Ratings: implicit (user, product) scores from the orders before each user's target basket,
and the held-out target baskets every evaluation reads."""

from typing import Optional

import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, Config, MetadataValue, Output

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.ratings.build import build_holdout, build_ratings
from resources.layout import Artifact

GROUP = "ratings"


class RatingsConfig(Config):
    """Purchase counts, optionally time-decayed; the filters drop rare users and items."""

    half_life_days: Optional[float] = None
    min_user_interactions: int = 1
    min_item_interactions: int = 1


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/ratings/run-{ts}", ("ratings.parquet",)),
    kinds={"polars", "parquet"},
    description="One row per (user, product) bought before the user's target order: purchases and rating.",
)
def ratings(
    context: AssetExecutionContext, config: RatingsConfig, orders_imputed: pl.DataFrame, raw_order_products: pl.DataFrame
) -> Output[pl.DataFrame]:
    current_run(context)
    df = build_ratings(
        orders_imputed,
        raw_order_products,
        half_life_days=config.half_life_days,
        min_user_interactions=config.min_user_interactions,
        min_item_interactions=config.min_item_interactions,
    )
    return Output(
        df,
        metadata={
            "users": df["user_id"].n_unique(),
            "products": df["product_id"].n_unique(),
            "config": MetadataValue.json(config.model_dump()),
        },
    )


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/holdout/run-{ts}", ("holdout.parquet",)),
    kinds={"polars", "parquet"},
    description="Each user's target basket (the eval_set=train order, else the last order): the evaluation truth.",
)
def holdout(context: AssetExecutionContext, orders_imputed: pl.DataFrame, raw_order_products: pl.DataFrame) -> Output[pl.DataFrame]:
    current_run(context)
    df = build_holdout(orders_imputed, raw_order_products)
    return Output(df, metadata={"users": df["user_id"].n_unique()})


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
