"""The events form's lists: `category.category_rerank` fed from the snapshot tables (pure polars).

On the events form (`ingest.events_schema.is_events_form`) the exported lists (``user_recos``)
and the evaluation's re-ranked method read the same things:

* **history** (`event_history`): one ``user_id, product_id`` row per training event (each pair
  or session line repeated ``views + addtocarts + transactions`` times), so the re-rank's
  category popularity counts events as the peer's ``category_stats.n_events`` does. Warm visitors
  are those with a history row; the others are cold and get the popular list.
* **item paths and availability** from ``products`` (``category_path``, ``available`` at the
  cut-off, `ingest.events_schema`): ``available = 0`` is never recommended, a null is kept.
* **popular** (`cart_popularity`): the peer's fallback ranks items by add-to-cart / purchase
  (its target) rather than by views: visitors who carted or bought the item, ties broken by
  visitors with any event on it, then product_id.
"""

from __future__ import annotations

from typing import Any, Callable

import polars as pl

from insightflow_assets.ingest.events_schema import AVAILABLE, CATEGORY_PATH, EVENT_COUNTS
from insightflow_assets.postrank.category import category_rerank, need_columns
from insightflow_assets.postrank.rerank import POSTRANK_SCHEMA

__all__ = [
    "PEER_ALPHA", "PEER_BETA", "prior_lines", "event_history", "cart_popularity", "item_paths", "availability",
    "category_lists", "chunked_category_lists", "as_postrank",
]  # fmt: skip

PEER_ALPHA, PEER_BETA = 0.6, 0.4  # the peer's final experiment (seed 003): ALS + category re-rank
CHUNK_USERS = 200_000  # users re-ranked at once by `chunked_category_lists`


def prior_lines(orders: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
    """``user_id, product_id`` and the event counts of every line of a session before the cut-off
    (``eval_set == "prior"``; the ``train`` order is the target)."""
    need_columns(orders, "orders", ("order_id", "user_id", "eval_set"))
    need_columns(lines, "order_products", ("order_id", "product_id", *EVENT_COUNTS))
    prior = orders.filter(pl.col("eval_set").cast(pl.String) == "prior").select("order_id", "user_id")
    return lines.join(prior, on="order_id", how="inner").select("user_id", "product_id", *EVENT_COUNTS)


def _counts(frame: pl.DataFrame) -> list[str]:
    return [c for c in EVENT_COUNTS if c in frame.columns]


def event_history(frame: pl.DataFrame) -> pl.DataFrame:
    """One ``user_id, product_id`` (Int32) row per event of ``frame`` (session lines or ratings
    pairs with the count columns; a frame without them counts one event per row)."""
    need_columns(frame, "history", ("user_id", "product_id"))
    cols = _counts(frame)
    n = pl.sum_horizontal([pl.col(c).fill_null(0).cast(pl.Int64) for c in cols]) if cols else pl.lit(1, pl.Int64)
    return (
        frame.select(pl.col("user_id").cast(pl.Int32), pl.col("product_id").cast(pl.Int32), _n=n)
        .filter(pl.col("_n") > 0)
        .select("user_id", "product_id", pl.int_ranges(0, "_n").alias("_i"))
        .explode("_i")
        .drop("_i")
    )


def cart_popularity(frame: pl.DataFrame) -> pl.DataFrame:
    """``product_id, popularity`` in fill order (module docstring). ``popularity`` = carters +
    visitors / (all visitors + 1): the second term is below 1, so the order is carters first,
    then visitors, exactly."""
    need_columns(frame, "history", ("user_id", "product_id"))
    carted = [c for c in ("addtocarts", "transactions") if c in frame.columns]
    cart = pl.sum_horizontal([pl.col(c).fill_null(0) for c in carted]) > 0 if carted else pl.lit(False)
    total = frame["user_id"].n_unique() + 1
    return (
        frame.group_by(pl.col("product_id").cast(pl.Int32))
        .agg(_carters=pl.col("user_id").filter(cart).n_unique(), _visitors=pl.col("user_id").n_unique())
        .select("product_id", popularity=pl.col("_carters") + pl.col("_visitors") / total)
        .sort(["popularity", "product_id"], descending=[True, False])
    )


def item_paths(products: pl.DataFrame) -> pl.DataFrame:
    """``product_id, path`` (the category path, root first) of the catalogue's items."""
    need_columns(products, "products", ("product_id", CATEGORY_PATH))
    return products.select(pl.col("product_id").cast(pl.Int32), pl.col(CATEGORY_PATH).alias("path"))


def availability(products: pl.DataFrame) -> pl.DataFrame:
    """``product_id, available`` (0/1, null when never stated) at the cut-off."""
    need_columns(products, "products", ("product_id", AVAILABLE))
    return products.select(pl.col("product_id").cast(pl.Int32), pl.col(AVAILABLE))


def chunked_category_lists(
    recommend: Callable[[pl.Series], pl.DataFrame],
    history: pl.DataFrame,
    products: pl.DataFrame,
    users: pl.Series,
    popular: pl.DataFrame,
    *,
    alpha: float,
    beta: float,
    n: int,
    chunk: int = CHUNK_USERS,
) -> pl.DataFrame:
    """`category_lists` of ``recommend(some_users)``'s candidates, ``chunk`` users at a time: a
    100-deep pool of every visitor at once would be 140 M rows at RetailRocket's size. The history
    and the popular list stay whole, so category popularity is the same for every chunk and the
    result equals one call on all users."""
    users = users.cast(pl.Int32).unique().sort()
    parts = [
        category_lists(recommend(part), history, products, part, popular, alpha=alpha, beta=beta, n=n)
        for part in (users.slice(i, chunk) for i in range(0, max(users.len(), 1), chunk))
    ]
    return pl.concat(parts).sort("user_id", "rank")


def category_lists(
    candidates: pl.DataFrame,
    history: pl.DataFrame,
    products: pl.DataFrame,
    users: Any,
    popular: pl.DataFrame,
    *,
    alpha: float,
    beta: float,
    n: int,
) -> pl.DataFrame:
    """`category_rerank` of ``candidates`` (``user_id, rank, product_id, score, source``) for the
    warm visitors of ``users`` (those with a ``history`` row, `event_history`), the ``popular``
    list for the cold ones; `category.OUTPUT_SCHEMA` (with ``reranked``), ``rank`` in 1..n."""
    return category_rerank(
        candidates, history, item_paths(products), alpha=alpha, beta=beta, n=n,
        available=availability(products), popular=popular, users=users,
    )  # fmt: skip


def as_postrank(lists: pl.DataFrame) -> pl.DataFrame:
    """The lists in ``user_recos``' schema (`rerank.POSTRANK_SCHEMA`, the other forms' one)."""
    return lists.select([pl.col(c).cast(t) for c, t in POSTRANK_SCHEMA.items()]).sort("user_id", "rank")
