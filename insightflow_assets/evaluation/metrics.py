"""Offline top-K evaluation metrics (pure polars/numpy/scipy, vectorised).

Inputs
------
* ``recs``: ``user_id, rank, product_id`` (extra columns such as ``score`` are
  ignored). ``rank`` is the 1-based position in the user's list; a list may be
  shorter than K. If a product appears twice in a user's list only its best
  (lowest) rank is kept, so a duplicate can never be counted as two hits.
* ``holdout``: ``user_id, product_id`` = the user's relevant set ``B_u``
  (distinct products of the target basket; duplicates are ignored).
* ``history`` (optional): ``user_id, product_id`` pairs the user bought before
  the target (the pairs of the *unfiltered* ratings).

Per-user definitions, with ``rel_i = 1`` iff the item at rank ``i`` is in
``B_u``, ``hits@K = sum_{i<=K} rel_i`` and ``m = min(K, |B_u|)``:

* ``precision@K = hits@K / K`` (a short list is still divided by K)
* ``recall@K    = hits@K / |B_u|``
* ``map@K       = (1/m) * sum_{i<=K} P@i * rel_i`` with ``P@i = hits@i / i``
* ``ndcg@K      = DCG@K / IDCG@K``, ``DCG@K = sum_{i<=K} rel_i / log2(i + 1)``,
  ``IDCG@K = sum_{j=1..m} 1 / log2(j + 1)`` (binary gain)
* ``hit_rate@K  = 1 if hits@K >= 1 else 0``

Reported values are the plain means over the evaluated users (macro average).
Evaluated users are the users of ``holdout`` (intersected with ``users`` when
given; a user with an empty relevant set cannot be scored and is not counted).
A user without any recommendation counts with zeros.

Relation to ``implicit.evaluation.ranking_metrics_at_k`` (0.7.x), same recs
and same holdout: ``map@K`` and ``ndcg@K`` are *identical* definitions (mean
over users with a non-empty test row, AP normalised by ``min(K, |B_u|)``, IDCG
over ``min(K, |B_u|)``). implicit's ``precision`` is *pooled*:
``sum_u hits@K / sum_u min(K, |B_u|)``; it equals neither our
``precision@K`` nor ``recall@K`` in general; ``per_user_metrics`` exposes
``hits@K`` and ``n_relevant`` to recompute it (see ``pooled_precision``).
Also mind that implicit's model.recommend filters already-liked (training)
items by default, so feed it a recs list computed the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from insightflow_assets.frames import lazy as _lazy, user_ids


def _users_frame(users) -> pl.LazyFrame:
    return user_ids(users, pl.Int64).lazy()

Frame = pl.DataFrame | pl.LazyFrame

__all__ = [
    "per_user_metrics",
    "evaluate",
    "Truth",
    "prepare_truth",
    "pooled_precision",
    "coverage",
    "intra_list_diversity",
    "novelty",
]

_METRICS = ("precision", "recall", "map", "ndcg", "hit_rate")


_SHIFT = 1 << 32


def _key() -> pl.Expr:
    """One Int64 per (user_id, product_id) pair (ids are Int32)."""
    return pl.col("user_id").cast(pl.Int64) * _SHIFT + pl.col("product_id").cast(pl.Int64)


def _pairs(frame: Frame) -> pl.DataFrame:
    """Distinct (user_id, product_id) pairs with their ``_key``."""
    return (
        _lazy(frame)
        .select(pl.col("user_id").cast(pl.Int64), _key().alias("_key"))
        .unique(subset="_key")
        .collect()
    )


def _clean_recs(recs: Frame, kmax: int) -> pl.DataFrame:
    """Rows with 1 <= rank <= kmax, one row per (user, product) at its best rank."""
    top = (
        _lazy(recs)
        .select(
            pl.col("user_id").cast(pl.Int64),
            pl.col("rank").cast(pl.Int64),
            pl.col("product_id").cast(pl.Int64),
            _key().alias("_key"),
        )
        .filter(pl.col("rank").is_between(1, kmax))
        .collect()
    )
    if top.select(pl.col("_key").n_unique()).item() != top.height:
        top = top.sort("rank").unique(subset="_key", keep="first")
    return top


def _in(col: str, values: pl.DataFrame | pl.Series) -> pl.Expr:
    series = values.get_column(col) if isinstance(values, pl.DataFrame) else values
    return pl.col(col).is_in(series.implode())


def _idcg_table(kmax: int) -> np.ndarray:
    """idcg[m] = sum_{j=1..m} 1/log2(j+1); idcg[0] = 0."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, kmax + 2)))])


def per_user_metrics(
    recs: Frame,
    holdout: Frame,
    ks: Sequence[int] = (5, 10, 20),
    *,
    users: Iterable[int] | pl.Series | pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Per-user metrics (definitions in the module docstring).

    Returns one row per evaluated user (holdout users, intersected with
    ``users`` if given), sorted by ``user_id``, with ``n_relevant`` (= |B_u|)
    and for each K: ``hits@K``, ``precision@K``, ``recall@K``, ``map@K``,
    ``ndcg@K``, ``hit_rate@K``.
    """
    ks = _checked_ks(ks)
    return _per_user(_clean_recs(recs, ks[-1]), _relevant(holdout, users), ks)


def _checked_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return ks


def _relevant(holdout: Frame, users) -> pl.DataFrame:
    """The holdout's distinct pairs (``user_id``, ``_key``), of ``users`` only when given."""
    rel = _pairs(holdout)
    if users is not None:
        rel = rel.filter(_in("user_id", _users_frame(users).collect()))
    return rel


def _per_user(top: pl.DataFrame, rel: pl.DataFrame, ks: list[int]) -> pl.DataFrame:
    """`per_user_metrics` of cleaned lists (`_clean_recs`) against relevant pairs (`_relevant`)."""
    kmax = ks[-1]
    basket = rel.group_by("user_id").agg(n_relevant=pl.len())

    hits = (
        top
        .lazy()
        .filter(_in("_key", rel))
        .sort("user_id", "rank")
        .with_columns(_cum=(pl.int_range(pl.len()).over("user_id") + 1).cast(pl.Float64))
        .with_columns(
            _prec=pl.col("_cum") / pl.col("rank"),
            _gain=1.0 / (pl.col("rank").cast(pl.Float64) + 1.0).log(2),
        )
    )
    aggs = []
    for k in ks:
        within = pl.col("rank") <= k
        aggs += [
            within.sum().alias(f"_h{k}"),
            pl.col("_prec").filter(within).sum().alias(f"_ap{k}"),
            pl.col("_gain").filter(within).sum().alias(f"_dcg{k}"),
        ]
    per_user_hits = hits.group_by("user_id").agg(aggs)

    df = (
        basket.lazy()
        .join(per_user_hits, on="user_id", how="left")
        .fill_null(0)
        .sort("user_id")
        .collect()
    )

    idcg = _idcg_table(kmax)
    n_rel = df.get_column("n_relevant").to_numpy().astype(np.float64)
    cols: dict[str, np.ndarray | pl.Series] = {
        "user_id": df.get_column("user_id").cast(pl.Int32),
        "n_relevant": df.get_column("n_relevant").cast(pl.Int32),
    }
    for k in ks:
        h = df.get_column(f"_h{k}").to_numpy().astype(np.float64)
        m = np.minimum(k, df.get_column("n_relevant").to_numpy())
        with np.errstate(divide="ignore", invalid="ignore"):
            cols[f"hits@{k}"] = h.astype(np.int32)
            cols[f"precision@{k}"] = h / k
            cols[f"recall@{k}"] = h / n_rel
            cols[f"map@{k}"] = df.get_column(f"_ap{k}").to_numpy() / m
            cols[f"ndcg@{k}"] = df.get_column(f"_dcg{k}").to_numpy() / idcg[m]
            cols[f"hit_rate@{k}"] = (h > 0).astype(np.float64)
    return pl.DataFrame(cols)


# Why a mean has no value: no evaluated user has a relevant item of that kind (e.g. a dataset
# where every product is bought once by its user has no repeat item in any target basket).
UNDEFINED = {
    "all": "no evaluated user has a target basket",
    "repeat": "no evaluated user's target basket holds a product they bought before",
    "explore": "no evaluated user's target basket holds a product new to them",
}


def _summarise(pu: pl.DataFrame, ks: Sequence[int], split: str = "all") -> dict:
    """Means over the users of ``pu``; over no user they are undefined: ``None`` with the
    reason under ``"undefined"`` (NaN would be invalid JSON and fail every range check)."""
    out: dict = {"n_users": pu.height}
    for k in sorted({int(k) for k in ks}):
        for name in _METRICS:
            col = f"{name}@{k}"
            out[col] = float(pu.get_column(col).mean()) if pu.height else None
    if not pu.height:
        out["undefined"] = UNDEFINED[split]
    return out


def pooled_precision(pu: pl.DataFrame, k: int) -> float:
    """implicit-style precision: ``sum_u hits@K / sum_u min(K, |B_u|)``."""
    hits = pu.get_column(f"hits@{k}").sum()
    denom = np.minimum(k, pu.get_column("n_relevant").to_numpy()).sum()
    return float(hits / denom) if denom else float("nan")


def evaluate(
    recs: Frame,
    holdout: "Frame | Truth",
    ks: Sequence[int] = (5, 10, 20),
    *,
    history: Frame | None = None,
    users: Iterable[int] | pl.Series | pl.DataFrame | None = None,
) -> dict:
    """Mean top-K metrics over the evaluated users.

    Returns a flat dict ``{"n_users": n, "precision@K": .., "recall@K": ..,
    "map@K": .., "ndcg@K": .., "hit_rate@K": .., ...}`` for every K in ``ks``.

    With ``history`` the dict also holds ``"repeat"`` and ``"explore"``
    sub-dicts of the same shape. Definition: the recommendation lists are
    left unchanged; only the relevant set changes --
    ``repeat``: ``B_u ∩ H_u`` (target products the user had bought before),
    ``explore``: ``B_u \\ H_u`` (target products new to the user), where
    ``H_u`` = the user's ``history`` pairs. Users whose relevant set is empty
    for a split are excluded from that split's averages; its ``n_users`` is
    the number of users kept. A split with no user at all is undefined: its
    metrics are ``None`` and ``"undefined"`` gives the reason. Because lists
    are unchanged, a repeat hit counts as a miss in the ``explore`` precision
    (and vice versa): precision@K of the
    two splits measures how much of the list is spent on each kind of hit.

    ``holdout`` may be a `Truth` (`prepare_truth` with the history and users),
    for scoring many lists against one holdout without preparing it each time.
    """
    truth = holdout if isinstance(holdout, Truth) else prepare_truth(holdout, history=history, users=users)
    if truth is holdout and (history is not None or users is not None):
        raise ValueError("a prepared Truth already holds its history and users")
    ks = _checked_ks(ks)
    # the lists are cleaned once and scored against every part of the truth
    top = _clean_recs(recs, ks[-1])
    out = _summarise(_per_user(top, truth.parts["all"], ks), ks)
    for name in ("repeat", "explore"):
        if name in truth.parts:
            out[name] = _summarise(_per_user(top, truth.parts[name], ks), ks, name)
    return out


@dataclass(frozen=True)
class Truth:
    """A holdout prepared once for many `evaluate` calls (every method of a report is scored
    against the same one): the distinct relevant pairs of the evaluated users under ``"all"``
    and, with a history, their ``"repeat"`` and ``"explore"`` parts."""

    parts: dict[str, pl.DataFrame]


def prepare_truth(holdout: Frame, *, history: Frame | None = None, users=None) -> Truth:
    """The `Truth` that `evaluate(recs, holdout, history=history, users=users)` scores against."""
    rel = _relevant(holdout, users)
    parts = {"all": rel}
    if history is not None:
        hist_keys = _lazy(history).select(_key().alias("_key"))
        for name, how in (("repeat", "semi"), ("explore", "anti")):
            parts[name] = rel.lazy().join(hist_keys, on="_key", how=how).collect()
    return Truth(parts)


def coverage(
    recs: Frame,
    *,
    k: int,
    n_items: int,
    users: Iterable[int] | pl.Series | pl.DataFrame | None = None,
) -> dict:
    """Catalogue and user coverage of the top-K lists.

    * ``coverage_item`` = |distinct products in the top-K lists of ``users``|
      / ``n_items``
    * ``coverage_user_eval`` = share of ``users`` whose list has >= K items
      (rank <= K, distinct products)
    * ``n_distinct_items``, ``n_users`` (denominator of the user coverage).

    ``users`` defaults to the users present in ``recs``.
    """
    top = _clean_recs(recs, k).lazy()
    if users is not None:
        uf = _users_frame(users).collect()
        top = top.filter(_in("user_id", uf))
        n_users = uf.height
    else:
        n_users = top.select(pl.col("user_id").n_unique()).collect().item()
    stats = top.select(
        n_distinct=pl.col("product_id").n_unique(),
    ).collect()
    full = (
        top.group_by("user_id")
        .agg(n=pl.len())
        .filter(pl.col("n") >= k)
        .select(pl.len())
        .collect()
        .item()
    )
    n_distinct = int(stats.item(0, "n_distinct"))
    return {
        "coverage_item": n_distinct / n_items if n_items else float("nan"),
        "coverage_user_eval": full / n_users if n_users else float("nan"),
        "n_distinct_items": n_distinct,
        "n_users": int(n_users),
    }


def intra_list_diversity(
    recs: Frame,
    item_vectors_or_categories: pl.DataFrame | tuple[np.ndarray, np.ndarray],
    k: int,
    *,
    batch_users: int = 50_000,
) -> float:
    """Mean intra-list diversity of the top-K lists.

    ``ILD_u = mean over unordered pairs {i, j} of the top-K list of
    (1 - cos(v_i, v_j))``; returned value = mean of ``ILD_u`` over users whose
    list has >= 2 items with a known vector/category (others are skipped, items
    without a vector/category are dropped from the list).

    ``item_vectors_or_categories`` is either
    * a ``(product_ids, matrix)`` tuple: row ``r`` of ``matrix`` is the vector
      of ``product_ids[r]`` (e.g. ALS item factors). A zero vector has cosine 0
      with everything.
    * a ``pl.DataFrame`` with ``product_id`` and one category column (e.g.
      ``aisle_id``): one-hot vectors, i.e. ``1 - cos`` is 1 for two items of
      different categories and 0 for the same category; ILD_u is the share
      of pairs from different categories.

    Vectorised: with unit vectors ``u_i`` and ``s = sum_i u_i`` over a list of
    n items, ``sum_{i != j} cos_ij = |s|^2 - sum_i |u_i|^2``, so
    ``ILD_u = 1 - (|s|^2 - sum_i |u_i|^2) / (n (n - 1))``; ``s`` is computed
    for a batch of users with one sparse (users x items) @ (items x d) product.
    """
    top = _clean_recs(recs, k).lazy()
    if isinstance(item_vectors_or_categories, pl.DataFrame):
        cats = item_vectors_or_categories
        cat_col = next(c for c in cats.columns if c != "product_id")
        counts = (
            top.join(
                cats.lazy().select(
                    pl.col("product_id").cast(pl.Int64), pl.col(cat_col).alias("_cat")
                ),
                on="product_id",
                how="inner",
            )
            .group_by("user_id", "_cat")
            .agg(c=pl.len().cast(pl.Float64))
            .group_by("user_id")
            .agg(n=pl.col("c").sum(), same=(pl.col("c") * (pl.col("c") - 1)).sum())
            .filter(pl.col("n") >= 2)
            .select(ild=1.0 - pl.col("same") / (pl.col("n") * (pl.col("n") - 1)))
            .collect()
        )
        return float(counts.get_column("ild").mean()) if counts.height else float("nan")

    ids, mat = item_vectors_or_categories
    mat = np.asarray(mat, dtype=np.float64)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    unit = np.divide(mat, norms, out=np.zeros_like(mat), where=norms > 0)
    sq = (unit * unit).sum(axis=1)  # 1, or 0 for zero vectors
    index = pl.DataFrame(
        {
            "product_id": np.asarray(ids).astype(np.int64),
            "_row": np.arange(len(ids), dtype=np.int64),
        }
    ).lazy()
    rows = (
        top.join(index, on="product_id", how="inner")
        .with_columns(_u=pl.col("user_id").rank("dense").cast(pl.Int64) - 1)
        .select("_u", "_row")
        .collect()
    )
    if rows.height == 0:
        return float("nan")
    u = rows.get_column("_u").to_numpy()
    r = rows.get_column("_row").to_numpy()
    n_u = int(u.max()) + 1
    sel = sp.csr_matrix((np.ones(len(u)), (u, r)), shape=(n_u, len(ids)))
    n = np.asarray(sel.sum(axis=1)).ravel()
    sum_sq = sel @ sq
    ild_sum, ild_cnt = 0.0, 0
    for start in range(0, n_u, batch_users):
        block = sel[start : start + batch_users]
        s = block @ unit
        s2 = np.einsum("ij,ij->i", s, s)
        nb = n[start : start + batch_users]
        ok = nb >= 2
        ild = 1.0 - (s2[ok] - sum_sq[start : start + batch_users][ok]) / (nb[ok] * (nb[ok] - 1))
        ild_sum += float(ild.sum())
        ild_cnt += int(ok.sum())
    return ild_sum / ild_cnt if ild_cnt else float("nan")


def novelty(recs: Frame, item_popularity: pl.DataFrame, k: int) -> float:
    """Mean self-information of the recommended items.

    ``novelty_u = mean over items i of the top-K list of -log2(p_i)``, with
    ``p_i`` = share of (training) users who bought i, read from
    ``item_popularity`` (``product_id, p``; see
    ``insightflow_assets.evaluation.baselines.item_popularity``). Returned
    value = mean of ``novelty_u`` over users. Items without a positive ``p``
    (never bought in training) are skipped.
    """
    pop = item_popularity.lazy().select(
        pl.col("product_id").cast(pl.Int64), pl.col("p").cast(pl.Float64)
    ).filter(pl.col("p") > 0)
    per_user = (
        _clean_recs(recs, k)
        .lazy()
        .join(pop, on="product_id", how="inner")
        # join and group_by orders (and polars' parallel sums) vary between runs: summed in
        # one fixed order, with numpy, the float mean does not
        .sort("user_id", "rank")
        .group_by("user_id", maintain_order=True)
        .agg(si=(-pl.col("p").log(2)).mean())
        .collect()
    )
    return float(np.mean(per_user["si"].to_numpy())) if per_user.height else float("nan")
