"""Honest non-personalised and frequency baselines (pure polars, vectorised).

All generators take the training ``ratings`` (``user_id, product_id,
purchases, rating`` as built by ``insightflow_assets.ratings.build``), the
users to recommend for, and the list length ``n``; they return the common
``recs`` schema ``user_id`` Int32, ``rank`` Int32 (1-based), ``product_id``
Int32, ``score`` Float32, sorted by ``user_id, rank``. ``rank`` is
authoritative; ``score`` is informative only. Already-bought products are
*not* filtered out (grocery baskets are dominated by re-purchases).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from insightflow_assets.frames import lazy as _lazy, user_ids as _users_frame

Frame = pl.DataFrame | pl.LazyFrame
Users = Iterable[int] | pl.Series | pl.DataFrame | np.ndarray

__all__ = ["item_popularity", "global_popularity", "p_topfreq", "gp_topfreq"]

_SHIFT = 1 << 32

_RECS_SCHEMA = {
    "user_id": pl.Int32,
    "rank": pl.Int32,
    "product_id": pl.Int32,
    "score": pl.Float32,
}


def _finish(lf: pl.LazyFrame) -> pl.DataFrame:
    return (
        lf.select([pl.col(c).cast(t) for c, t in _RECS_SCHEMA.items()])
        .sort(pl.col("user_id").cast(pl.Int64) * _SHIFT + pl.col("rank").cast(pl.Int64))
        .collect()
    )


def _position_in_user_block() -> pl.Expr:
    """1-based row position within consecutive runs of equal ``user_id``.

    Only valid on a frame sorted (grouped) by ``user_id``; much cheaper than
    ``pl.int_range(...).over("user_id")`` on millions of rows.
    """
    new_user = (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True)
    idx = pl.int_range(0, pl.len(), dtype=pl.Int64)
    return idx - pl.when(new_user).then(idx).forward_fill() + 1


def _pair_key() -> pl.Expr:
    return pl.col("user_id").cast(pl.Int64) * _SHIFT + pl.col("product_id").cast(pl.Int64)


def item_popularity(ratings: Frame) -> pl.DataFrame:
    """``product_id`` Int32, ``n_users`` Int32 (distinct buyers), ``p`` Float64.

    ``p = n_users / number of distinct users in ratings`` (share of users who
    bought the item). ``ratings`` holds one row per (user, product), so
    ``n_users`` is the product's row count. Sorted by ``n_users`` desc, then
    ``product_id`` asc -- the popularity order used by the baselines.
    """
    lf = _lazy(ratings).select("user_id", "product_id")
    n_total = lf.select(pl.col("user_id").n_unique()).collect().item()
    return (
        lf.group_by("product_id")
        .agg(n_users=pl.len().cast(pl.Int32))
        .with_columns(
            pl.col("product_id").cast(pl.Int32),
            p=pl.col("n_users").cast(pl.Float64) / max(int(n_total), 1),
        )
        .sort(["n_users", "product_id"], descending=[True, False])
        .collect()
    )


def _top_popular(ratings: Frame, n: int) -> pl.DataFrame:
    return (
        item_popularity(ratings)
        .head(n)
        .with_columns(rank=pl.int_range(1, pl.len() + 1), score=pl.col("p"))
        .select("rank", "product_id", "score")
    )


def global_popularity(ratings: Frame, users: Users, n: int) -> pl.DataFrame:
    """The ``n`` products with most distinct buyers (ties: lower product_id
    first), the same list for every user; ``score`` = share of users who
    bought the product (``p`` of ``item_popularity``)."""
    top = _top_popular(ratings, n)
    return _finish(_users_frame(users).lazy().join(top.lazy(), how="cross"))


def _own_top(ratings: Frame, users: pl.DataFrame, n: int) -> pl.LazyFrame:
    """Own products ranked by purchases desc, rating desc, product_id asc."""
    return (
        _lazy(ratings)
        .select(
            pl.col("user_id").cast(pl.Int32),
            pl.col("product_id").cast(pl.Int32),
            "purchases",
            "rating",
        )
        .join(users.lazy(), on="user_id", how="semi")
        .sort(
            ["user_id", "purchases", "rating", "product_id"],
            descending=[False, True, True, False],
        )
        .with_columns(rank=_position_in_user_block())
        .filter(pl.col("rank") <= n)
        .with_columns(score=pl.col("purchases").cast(pl.Float32))
    )


def p_topfreq(ratings: Frame, users: Users, n: int) -> pl.DataFrame:
    """Personal top-frequency: the user's own products ordered by
    ``purchases`` desc, then ``rating`` desc, then ``product_id`` asc; at most
    ``n`` (fewer if the user bought fewer distinct products, none for users
    without ratings). ``score`` = purchases."""
    return _finish(_own_top(ratings, _users_frame(users), n))


def gp_topfreq(ratings: Frame, users: Users, n: int, *, own: pl.DataFrame | None = None) -> pl.DataFrame:
    """Personal top-frequency first (as ``p_topfreq``), then filled from the
    global popularity order skipping products already listed, to exactly
    ``n`` items (if the catalogue has at least ``n`` products). ``score`` =
    purchases (>= 1) for own items, popularity share ``p`` (<= 1) for filled
    items. The top-``n`` popular products always suffice to fill the gap.
    ``own``: ``p_topfreq(ratings, users, n)`` when the caller has it already."""
    uf = _users_frame(users)
    if own is None:
        own = _own_top(ratings, uf, n).select("user_id", "product_id", "score", "rank").collect()
    else:
        own = own.select("user_id", "product_id", "score", pl.col("rank").cast(pl.Int64))
    n_own = own.group_by("user_id").agg(_n_own=pl.len())
    fill = (
        # users sorted, popular list in rank order -> rows grouped by user
        uf.lazy()
        .join(_top_popular(ratings, n).lazy(), how="cross", maintain_order="left_right")
        .filter(~_pair_key().is_in(own.select(_pair_key()).to_series().implode()))
        .with_columns(rank=_position_in_user_block())
        .join(n_own.lazy(), on="user_id", how="left")
        .with_columns(rank=pl.col("rank") + pl.col("_n_own").fill_null(0))
        .filter(pl.col("rank") <= n)
        .select("user_id", "product_id", "score", "rank")
    )
    return _finish(pl.concat([own.lazy(), fill], how="vertical_relaxed"))
