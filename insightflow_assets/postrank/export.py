"""The exported lists: the validation winner's top-k for every user, never short (pure polars)."""

from __future__ import annotations

import polars as pl

from insightflow_assets.postrank.rerank import POSTRANK_SCHEMA


def complete_lists(recs: pl.DataFrame, users: pl.Series, k: int, popular: pl.DataFrame) -> pl.DataFrame:
    """Exactly ``k`` distinct products for every user of ``users``.

    ``recs`` (``user_id, rank, product_id, score, source``) is cut to ``k`` per user, then
    topped up from ``popular`` (``product_id`` in popularity order) skipping what is listed:
    ``source = popular`` for a user who had items, ``fallback`` for a user who had none (no
    history). ``popular`` must hold at least ``k`` products.
    """
    users = users.cast(pl.Int32).unique().sort()
    own = (
        recs.filter(pl.col("rank") <= k)
        .join(users.to_frame("user_id"), on="user_id", how="semi")
        .select(pl.col("user_id").cast(pl.Int32), pl.col("product_id").cast(pl.Int32), "score", "source", "rank")
    )
    counts = own.group_by("user_id").agg(_n=pl.len())
    top = popular.head(2 * k).select(pl.col("product_id").cast(pl.Int32)).with_row_index("_pop")
    fill = (
        users.to_frame("user_id")
        .join(counts, on="user_id", how="left")
        .with_columns(pl.col("_n").fill_null(0))
        .filter(pl.col("_n") < k)
        .join(top, how="cross")
        .join(own.select("user_id", "product_id"), on=["user_id", "product_id"], how="anti")
        .sort("user_id", "_pop")
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id") + pl.col("_n"))
        .filter(pl.col("rank") <= k)
        .select(
            "user_id",
            "product_id",
            pl.lit(0.0, dtype=pl.Float32).alias("score"),
            pl.when(pl.col("_n") == 0).then(pl.lit("fallback")).otherwise(pl.lit("popular")).alias("source"),
            "rank",
        )
    )
    out = pl.concat([own.with_columns(pl.col("score").cast(pl.Float32), pl.col("rank").cast(pl.Int64)), fill.with_columns(pl.col("rank").cast(pl.Int64))])
    return out.select([pl.col(c).cast(t) for c, t in POSTRANK_SCHEMA.items()]).sort("user_id", "rank")
