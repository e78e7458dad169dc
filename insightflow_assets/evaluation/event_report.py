"""What ``als_eval`` adds on the events form (pure polars; the report format is `offline`'s).

* **The peer's metric set in every method's entry** (`peer_scores`, an `offline.MoreScores`):
  `event_metrics.event_metrics` of the method's lists against the same `Truth` as the rest of the
  entry, with the ratings pairs as the training interactions (the peer's ``train_interactions``:
  one row per visitor x item after its filters) and the catalogue's category paths. Metrics
  already in the entry (precision/recall/... at the evaluation's K) are kept as they are: on the
  same truth they are the same numbers. Added: coverage@5 (over the training items, the peer's
  catalogue), novelty@5 (bits), diversity@5 (categories per list), cold_share, reranked_share,
  and the peer's Ks (recall@20, ...) when the evaluation's Ks lack them.
* **One more method, ``als_category``** (`category_method`): the ALS candidates re-ranked by
  category affinity (`postrank.events_lists.category_lists`, the peer's alpha 0.6 / beta 0.4,
  as ``user_recos`` exports by default), cold visitors on the cart-popular list, so the report
  compares the re-rank with plain ALS on the same users.

``UNBOUNDED`` names the metrics that are not shares (novelty in bits, diversity a count of
categories): the range check holds them to finite and >= 0 instead of [0, 1].
"""

from __future__ import annotations

import numpy as np
import polars as pl

from insightflow_assets.evaluation.event_metrics import event_metrics
from insightflow_assets.evaluation.offline import Judge, MoreScores
from insightflow_assets.postrank.events_lists import (
    PEER_ALPHA,
    PEER_BETA,
    cart_popularity,
    category_lists,
    event_history,
    item_paths,
)

__all__ = ["UNBOUNDED", "peer_scores", "category_method", "is_unbounded"]

UNBOUNDED = ("novelty@", "diversity@")


def is_unbounded(metric: str) -> bool:
    """A metric that is not a share (module docstring)."""
    return metric.startswith(UNBOUNDED)


def peer_scores(ratings: pl.DataFrame, products: pl.DataFrame) -> MoreScores:
    """The peer's metrics of one method's lists, on the judge's truth (module docstring)."""
    train = ratings.select(pl.col("user_id").cast(pl.Int32), pl.col("product_id").cast(pl.Int32))
    paths = item_paths(products)

    def more(recs: pl.DataFrame, judge: Judge) -> dict:
        return event_metrics(recs, judge.truth, train=train, item_paths=paths)

    return more


def category_method(
    candidates: pl.DataFrame, users: np.ndarray, ratings: pl.DataFrame, products: pl.DataFrame, n: int
) -> pl.DataFrame:
    """``als_category``'s lists for ``users``: the candidates re-ranked for warm visitors (a
    ratings row), the cart-popular list for the others, flagged ``reranked``."""
    return category_lists(
        candidates, event_history(ratings), products, pl.Series("user_id", users), cart_popularity(ratings),
        alpha=PEER_ALPHA, beta=PEER_BETA, n=n,
    )  # fmt: skip
