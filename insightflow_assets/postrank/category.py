"""Category-aware re-ranking for the events form, with a popular fallback (pure polars).

The peer's content-based re-rank (seed 003, "Подход к решению" step 2 and the final experiment
"ALS + Content-Based Re-ranking (alpha=0.6, beta=0.4)"; its code: ``src/recsys/models/rerank.py``,
``category_based_rerank``), per warm user ``u`` and candidate item ``i`` of category ``c_i``:

* ``model_i = 1 / r_i`` where ``r_i`` is the item's rank in the user's candidate list (score
  desc, product_id asc) -- the peer's normalisation: the rank stands in for the model score,
  so lists of any model (ALS, popularity, ...) blend on the same scale;
* ``category_i`` =
  ``1.0`` if ``c_i`` is one of the user's **top-3 categories** (most distinct history items;
  ties: lower category id), else
  ``0.5`` if ``c_i`` is the **parent or a child** of a top-3 category (one step in the tree, as
  the peer's parent/child map), else
  ``0.2 * pop(c_i)`` with ``pop(c) = events(c) / max_c' events(c')`` over the history rows
  (pass the training events for the peer's ``category_stats.n_events``); ``0`` for an item
  without a category;
* ``score_i = alpha * model_i + beta * category_i``; the list is the top ``n`` by score (ties
  keep the candidate order). ``alpha + beta <= 1`` keeps the score in [0, 1]; every setting
  the peer ran satisfies it (0.7/0.3, 0.6/0.4 and the adaptive ones).

``adaptive=True`` is the peer's production switch: users with fewer than 5 distinct history items
use alpha/beta 0.3/0.7, fewer than 20 use 0.5/0.5, the rest the given alpha/beta.

Cold users (no history row) get the popular list (the peer's fallback); a warm user short of
``n`` candidates is topped up from it. Items with ``available = 0`` at the cut-off are dropped
from candidates and from the fallback; items with no availability value are kept.

Output: `recommenders.base.RECS_SCHEMA` (``source`` as elsewhere: the candidate's own source,
``"als"`` when the candidates carry none; ``"popular"`` for a top-up; ``"fallback"`` for users
without candidates) plus ``reranked`` (Boolean, per list: the user's list was re-scored).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from insightflow_assets.frames import user_ids
from insightflow_assets.postrank.rerank import _popularity_table
from insightflow_assets.recommenders.base import RECS_SCHEMA

__all__ = ["category_rerank", "item_paths_at", "check_alpha_beta", "need_columns", "OUTPUT_SCHEMA", "ADAPTIVE_WEIGHTS"]

OUTPUT_SCHEMA = {**RECS_SCHEMA, "reranked": pl.Boolean}
TOP_CATEGORIES = 3
RELATED_SCORE, OTHER_SCALE = 0.5, 0.2
# (history items below, alpha, beta): the peer's adaptive weights; None = the given ones.
ADAPTIVE_WEIGHTS = ((5, 0.3, 0.7), (20, 0.5, 0.5))


def item_paths_at(snapshot: Any, cutoff: datetime | int) -> pl.DataFrame:
    """``product_id`` Int32, ``path`` of every item as of ``cutoff``, from an
    `ingest.events.EventsSnapshot` (its `paths_at`, under the name this module reads)."""
    return snapshot.paths_at(cutoff).rename({"category_path": "path"})


def check_alpha_beta(alpha: float, beta: float) -> None:
    """One-line ValueError naming the setting when alpha/beta are out of range."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"category rerank: {name} must be in [0, 1], got {value!r}")
    if alpha + beta > 1.0 + 1e-12:
        raise ValueError(f"category rerank: alpha + beta must be <= 1, got {alpha} + {beta} = {alpha + beta:g}")


def need_columns(frame: pl.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    """One-line ValueError naming the frame and its first missing column."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column {missing[0]} (found: {', '.join(frame.columns)})")


def category_rerank(
    candidates: pl.DataFrame,
    user_history: pl.DataFrame,
    item_paths: pl.DataFrame,
    *,
    alpha: float,
    beta: float,
    n: int,
    available: pl.DataFrame | None = None,
    popular: pl.DataFrame | None = None,
    users: Any = None,
    adaptive: bool = False,
) -> pl.DataFrame:
    """Top-``n`` per user: warm users re-ranked by category affinity, cold ones the popular list.

    candidates: ``user_id, product_id, score`` (+ optional ``source``), any number per user.
    user_history: ``user_id, product_id`` rows before the cut-off (the training events: one row
        per event, so category popularity counts events; top categories count distinct items).
    item_paths: ``product_id, path`` (`item_paths_at`).
    available: ``product_id, available`` (0/1) at the cut-off; 0 is never recommended.
    popular: ``product_id`` and ``popularity`` / ``p`` / ``n_users`` (fill order: desc).
    users: whom to serve (default: every user of candidates or history); the others of
        ``users`` without history are the cold users.
    """
    check_alpha_beta(alpha, beta)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"category rerank: n must be an integer >= 1, got {n!r}")
    need_columns(candidates, "candidates", ("user_id", "product_id", "score"))
    need_columns(user_history, "user_history", ("user_id", "product_id"))
    need_columns(item_paths, "item_paths", ("product_id", "path"))
    blocked = _unavailable(available)
    served = _served_users(candidates, user_history, users)
    warm = user_history.select(pl.col("user_id").cast(pl.Int32)).unique()

    cats = item_paths.select(
        pl.col("product_id").cast(pl.Int32),
        pl.col("path").list.last().alias("cat"),
        pl.col("path").list.get(-2, null_on_oob=True).alias("parent"),
    )
    cand = _ranked_candidates(candidates, served.join(warm, on="user_id", how="semi"), blocked)
    scored = _blend(cand, _affinity(user_history, cats), cats, alpha, beta, adaptive)
    top = (
        scored.sort("user_id", "score", "r", descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .head(n)
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id"), reranked=pl.lit(True))
        .select("user_id", "rank", "product_id", "score", "source", "reranked")
    )
    return _fill(top, served, popular, blocked, n)


def _unavailable(available: pl.DataFrame | None) -> pl.DataFrame:
    """product_id of the items with ``available == 0`` (empty without an availability table);
    null means never stated, which blocks nothing."""
    if available is None:
        return pl.DataFrame({"product_id": []}, schema={"product_id": pl.Int32})
    frame = available.rename({"item_id": "product_id"}) if "item_id" in available.columns else available
    need_columns(frame, "available", ("product_id", "available"))
    bad = frame.filter(pl.col("available").is_not_null() & ~pl.col("available").is_in([0, 1]))
    if bad.height:
        raise ValueError(f"available: column available: value {bad['available'][0]!r} is not 0 or 1 ({bad.height} row(s))")
    return frame.filter(pl.col("available") == 0).select(pl.col("product_id").cast(pl.Int32)).unique()


def _served_users(candidates: pl.DataFrame, history: pl.DataFrame, users: Any) -> pl.DataFrame:
    if users is not None:
        return user_ids(users)
    ids = pl.concat([candidates.select(pl.col("user_id").cast(pl.Int32)), history.select(pl.col("user_id").cast(pl.Int32))])
    return ids.unique().sort("user_id")


def _ranked_candidates(candidates: pl.DataFrame, warm: pl.DataFrame, blocked: pl.DataFrame) -> pl.DataFrame:
    """Warm users' available candidates, one row per item (best score), with ``r`` = rank in the
    user's list by score desc, product_id asc (the peer's ALS rank)."""
    source = pl.col("source").cast(pl.String) if "source" in candidates.columns else pl.lit("als")
    return (
        candidates.select(
            pl.col("user_id").cast(pl.Int32),
            pl.col("product_id").cast(pl.Int32),
            pl.col("score").cast(pl.Float64).fill_nan(None).fill_null(float("-inf")),
            source.alias("source"),
        )
        .join(warm, on="user_id", how="semi")
        .join(blocked, on="product_id", how="anti")
        .sort("user_id", "score", "product_id", descending=[False, True, False])
        .unique(["user_id", "product_id"], keep="first", maintain_order=True)
        .with_columns(r=pl.int_range(1, pl.len() + 1).over("user_id"))
    )


def _affinity(history: pl.DataFrame, cats: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """What the blend reads from the history: each user's top categories (``user_id, cat``), their
    parents (``user_id, cat`` = a parent of a top one), category popularity (``cat, pop``) and
    history length (``user_id, n_items``: distinct items)."""
    rows = history.select(pl.col("user_id").cast(pl.Int32), pl.col("product_id").cast(pl.Int32)).join(
        cats, on="product_id", how="left"
    )
    pairs = rows.unique(["user_id", "product_id"])
    top = (
        pairs.drop_nulls("cat")
        .group_by("user_id", "cat", "parent")
        .agg(n=pl.len())
        .sort("user_id", "n", "cat", descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .head(TOP_CATEGORIES)
    )
    counts = rows.drop_nulls("cat").group_by("cat").agg(events=pl.len())
    top_events = counts["events"].max() or 1
    return {
        "top": top.select("user_id", "cat"),
        "top_parents": top.drop_nulls("parent").select("user_id", pl.col("parent").alias("cat")).unique(),
        "pop": counts.select("cat", pop=pl.col("events") / float(top_events)),
        "length": pairs.group_by("user_id").agg(n_items=pl.len()),
    }


def _blend(cand: pl.DataFrame, aff: dict[str, pl.DataFrame], cats: pl.DataFrame, alpha: float, beta: float, adaptive: bool) -> pl.DataFrame:
    """``score = a * 1/r + b * category`` per candidate (module docstring)."""

    def flag(frame: pl.DataFrame, key: str, name: str) -> pl.DataFrame:
        return frame.with_columns(pl.lit(True).alias(name)).rename({"cat": key})

    df = (
        cand.join(cats, on="product_id", how="left")
        .join(flag(aff["top"], "cat", "_direct"), on=["user_id", "cat"], how="left")
        # the item's category is the parent of a top one, or a child of one (its parent is top)
        .join(flag(aff["top_parents"], "cat", "_is_parent"), on=["user_id", "cat"], how="left")
        .join(flag(aff["top"], "parent", "_is_child"), on=["user_id", "parent"], how="left")
        .join(aff["pop"], on="cat", how="left")
        .join(aff["length"], on="user_id", how="left")
    )
    category = (
        pl.when(pl.col("cat").is_null()).then(0.0)
        .when(pl.col("_direct").fill_null(False)).then(1.0)
        .when(pl.col("_is_parent").fill_null(False) | pl.col("_is_child").fill_null(False)).then(RELATED_SCORE)
        .otherwise(OTHER_SCALE * pl.col("pop").fill_null(0.0))
    )  # fmt: skip
    a, b = pl.lit(float(alpha)), pl.lit(float(beta))
    if adaptive:
        for below, wa, wb in reversed(ADAPTIVE_WEIGHTS):
            short = pl.col("n_items").fill_null(0) < below
            a, b = pl.when(short).then(wa).otherwise(a), pl.when(short).then(wb).otherwise(b)
    return df.with_columns(score=a * (1.0 / pl.col("r")) + b * category)


def _fill(top: pl.DataFrame, served: pl.DataFrame, popular: pl.DataFrame | None, blocked: pl.DataFrame, n: int) -> pl.DataFrame:
    """Top every served user up to ``n`` from the available popular items not yet in their list:
    ``"popular"`` rows for users with a re-ranked list, ``"fallback"`` for the others."""
    out = top.join(served, on="user_id", how="semi").cast(OUTPUT_SCHEMA)
    if popular is not None:
        # a short list holds < n items, so 2n popular ones always leave enough after skipping
        pop = _popularity_table(popular, None).join(blocked, on="product_id", how="anti").head(2 * n)
        pop = pop.select("product_id", score="popularity", _order=pl.int_range(pl.len()))
        have = out.group_by("user_id").agg(_n=pl.len()).filter(pl.col("_n") < n)
        short = (
            have.join(pop, how="cross")
            .join(out.select("user_id", "product_id"), on=["user_id", "product_id"], how="anti")
            .sort("user_id", "_order")
            .with_columns(rank=pl.col("_n") + pl.int_range(1, pl.len() + 1).over("user_id"), source=pl.lit("popular"))
        )
        # users without a list (the cold ones, mostly): the same n items each, no anti-join
        empty = (
            served.join(out.select("user_id").unique(), on="user_id", how="anti")
            .join(pop.head(n), how="cross")
            .with_columns(rank=pl.col("_order") + 1, source=pl.lit("fallback"))
        )
        extra = [
            f.filter(pl.col("rank") <= n).with_columns(reranked=pl.lit(flag)).select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA)
            for f, flag in ((short, True), (empty, False))
        ]
        out = pl.concat([out.select(list(OUTPUT_SCHEMA)), *extra])
    return out.select(list(OUTPUT_SCHEMA)).sort("user_id", "rank")
