"""The peer's metric set for the events form (pure polars/numpy).

Seed 003, "Ключевые метрики" / "Метрики качества" and the final experiment's MLflow list:
Precision@5, Recall@20, NDCG@10, Hit Rate@5 (primary), Coverage@5, Novelty@5, Diversity@5
(guardrails), and from its monitoring the share of cold users and of re-ranked lists. The
definitions follow the peer's code (``src/recsys/evaluation/metrics.py``); per evaluated user
``u`` with target set ``B_u`` (add-to-cart / purchase items after the cut-off) and list ``L_u``:

* precision@K, recall@K, ndcg@K, hit_rate@K: `metrics.evaluate` -- the same formulas as the
  peer's (``hits/K``, ``hits/|B_u|``, binary-gain DCG over IDCG of ``min(K, |B_u|)`` items,
  ``hits >= 1``). One difference: the peer averages precision/recall/NDCG over users that have
  a list *and* a target, we over every user with a target (no list = zeros); with the popular
  fallback every user has a list and the two agree. Hit rate is over all target users in both.
* coverage@5 = |distinct items in the top-5 lists| / catalogue, at most 1; the peer's catalogue
  is the distinct items of the training interactions (``n_items`` overrides, e.g. the items
  available at the cut-off). `metrics.coverage` computes the share.
* novelty@5 = mean of ``-log2(count_i / N)`` over the recommended items, ``count_i`` = training
  rows of item ``i``, ``N`` = training rows, an item never seen in training counting 1 (the
  peer's rule). `metrics.novelty` averages per user first; equal to the peer's mean over all
  rows when every list has 5 items.
* diversity@5 = mean over users of the number of distinct categories in the top-5 (items
  without a category skipped; users with no categorised item not counted). Not
  `metrics.intra_list_diversity` (that is the share of pairs from different categories).
* cold_share = share of evaluated users with no training row; reranked_share = share of
  evaluated users whose list is flagged ``reranked`` (`postrank.category.category_rerank`;
  0 for lists without the flag).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from insightflow_assets.evaluation.metrics import Truth, coverage, evaluate, novelty, prepare_truth
from insightflow_assets.frames import user_ids
from insightflow_assets.postrank.category import need_columns

__all__ = ["PEER_METRICS", "event_metrics", "category_diversity", "peer_novelty"]

# the peer's headline set: name -> K
PEER_METRICS = {"precision": 5, "recall": 20, "ndcg": 10, "hit_rate": 5, "coverage": 5, "novelty": 5, "diversity": 5}
KS = (5, 10, 20)


def event_metrics(
    recs: pl.DataFrame,
    truth: pl.DataFrame | Truth,
    *,
    train: pl.DataFrame,
    item_paths: pl.DataFrame,
    users: Any = None,
    n_items: int | None = None,
) -> dict:
    """One method's entry of the ``methods`` map (`evaluation.offline`): everything `evaluate`
    gives at K = 5, 10, 20 (with ``repeat`` / ``explore`` against the training pairs), plus
    coverage@5, novelty@5, diversity@5, cold_share and reranked_share (module docstring).

    recs: ``user_id, rank, product_id`` (+ ``reranked``); truth: ``user_id, product_id`` targets
    or a `Truth` prepared on the same users; train: ``user_id, product_id`` training rows (one per
    interaction: the peer's ``train_interactions``); item_paths: ``product_id, path``.
    """
    need_columns(recs, "recs", ("user_id", "rank", "product_id"))
    need_columns(train, "train", ("user_id", "product_id"))
    need_columns(item_paths, "item_paths", ("product_id", "path"))
    if not isinstance(truth, Truth):
        truth = prepare_truth(truth, history=train.select("user_id", "product_id"), users=users)
    evaluated = truth.parts["all"].select(pl.col("user_id").cast(pl.Int32)).unique().sort("user_id")
    mine = recs.with_columns(pl.col("user_id").cast(pl.Int32)).join(evaluated, on="user_id", how="semi")
    out = evaluate(mine, truth, KS)
    k = PEER_METRICS["coverage"]
    catalogue = n_items if n_items is not None else train["product_id"].n_unique()
    share = coverage(mine, k=k, n_items=catalogue, users=evaluated)["coverage_item"]
    out[f"coverage@{k}"] = min(share, 1.0) if catalogue else None
    out[f"novelty@{k}"] = peer_novelty(mine, train, k)
    out[f"diversity@{k}"] = category_diversity(mine, item_paths, k)
    out["cold_share"] = _share(evaluated.join(_users(train), on="user_id", how="anti").height, evaluated.height)
    flagged = mine.filter(pl.col("reranked")).select("user_id").unique().height if "reranked" in mine.columns else 0
    out["reranked_share"] = _share(flagged, evaluated.height)
    return out


def _users(frame: pl.DataFrame) -> pl.DataFrame:
    return user_ids(frame.select("user_id"))


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def peer_novelty(recs: pl.DataFrame, train: pl.DataFrame, k: int) -> float | None:
    """Mean self-information ``-log2(count_i / N)`` of the top-k items (module docstring)."""
    total = train.height
    top = recs.filter(pl.col("rank") <= k).select(pl.col("product_id").cast(pl.Int32)).unique()
    if total == 0 or top.height == 0:
        return None
    counts = train.group_by(pl.col("product_id").cast(pl.Int32)).agg(count=pl.len())
    p = top.join(counts, on="product_id", how="left").select(
        "product_id", p=pl.col("count").fill_null(1).cast(pl.Float64) / total
    )
    value = novelty(recs, p, k)
    return None if np.isnan(value) else value


def category_diversity(recs: pl.DataFrame, item_paths: pl.DataFrame, k: int) -> float | None:
    """Mean number of distinct categories in the top-k lists (the peer's Diversity@k)."""
    cats = item_paths.select(pl.col("product_id").cast(pl.Int32), cat=pl.col("path").list.last())
    per_user = (
        recs.filter(pl.col("rank") <= k)
        .select(pl.col("user_id").cast(pl.Int32), pl.col("product_id").cast(pl.Int32))
        .join(cats.drop_nulls("cat"), on="product_id", how="inner")
        .group_by("user_id")
        .agg(n=pl.col("cat").n_unique())
        .sort("user_id")  # a fixed order keeps the float mean reproducible
    )
    return float(np.mean(per_user["n"].to_numpy())) if per_user.height else None
