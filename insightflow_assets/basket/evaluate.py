"""Offline evaluation of basket completion with the PerNIR protocol (WSDM 2023) (pure).

Each evaluated basket (the customers' target baskets, or their validation baskets to tune on),
in add-to-cart order, gives one query per prefix size M in ``[m_min, m_max]`` (while the basket
has more than M items): its first M items are the basket, and the method's top-K (basket items
excluded) is scored against

* the next item (item M+1): Hit@K and MRR@K;
* the rest of the basket (items M+1…): Recall@K and Hit@K.

Metrics are averaged per prefix size, then over sizes (each size weighs the same). The methods
see only the training window: pairs, item counts and embeddings are built before each target.
"""

from __future__ import annotations

import warnings

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from insightflow_assets.basket.pairs import ANY, cart_lines
from insightflow_assets.ratings.build import target_orders
from insightflow_assets.basket.recommender import BasketModel

KS = (10, 20)


@dataclass(frozen=True)
class EvalParams:
    m_min: int = 1
    m_max: int = 10
    sample_baskets: int = 2000  # seeded sample of the evaluated baskets; 0 = all
    seed: int = 42


@dataclass
class Query:
    user_id: int
    segment: int | None
    prefix: np.ndarray  # product ids
    next_item: int
    rest: np.ndarray


def target_baskets(orders: pl.DataFrame, lines: pl.DataFrame, user_seg: pl.DataFrame | None, *, back: int = 0) -> pl.DataFrame:
    """``user_id, segment, products`` (list, add-to-cart order) of each customer's target basket
    (``back=1``: the validation basket)."""
    targets = target_orders(orders, lines, back).select("order_id", "user_id")
    return (
        cart_lines(targets, lines, user_seg)
        .join(targets.with_columns(pl.col("user_id").cast(pl.Int32)), on="order_id", how="left")
        .group_by("order_id", maintain_order=True)
        .agg(pl.col("user_id").first(), pl.col("segment").first(), products=pl.col("product_id"))
        .select("user_id", "segment", "products")
    )


def queries(baskets: pl.DataFrame, params: EvalParams) -> list[Query]:
    """The prefix queries of a seeded sample of the baskets with more than ``m_min`` items."""
    eligible = baskets.filter(pl.col("products").list.len() > params.m_min).sort("user_id")
    if params.sample_baskets and eligible.height > params.sample_baskets:
        eligible = eligible.sample(params.sample_baskets, seed=params.seed).sort("user_id")
    out = []
    for user, seg, products in eligible.iter_rows():
        items = np.asarray(products, np.int64)
        for m in range(params.m_min, min(params.m_max, items.size - 1) + 1):
            out.append(Query(int(user), None if seg is None or seg == ANY else int(seg), items[:m], int(items[m]), items[m:]))
    return out


def score_lists(qs: list[Query], lists: list[np.ndarray], ks=KS) -> dict[int, dict[str, float]]:
    """Per prefix size: the mean of hit/mrr (next item) and recall/hit (rest) at each K."""
    rows: dict[int, list[dict[str, float]]] = {}
    for q, top in zip(qs, lists):
        rec = {}
        for k in ks:
            head = top[:k]
            hit = np.flatnonzero(head == q.next_item)
            rec[f"hit@{k}"] = float(hit.size > 0)
            rec[f"mrr@{k}"] = 1.0 / (hit[0] + 1) if hit.size else 0.0
            found = np.isin(q.rest, head).sum()
            rec[f"recall_rest@{k}"] = found / q.rest.size
            rec[f"hit_rest@{k}"] = float(found > 0)
        rows.setdefault(q.prefix.size, []).append(rec)
    return {m: {key: float(np.mean([r[key] for r in rs])) for key in rs[0]} | {"queries": len(rs)} for m, rs in sorted(rows.items())}


def averaged(by_size: dict[int, dict[str, float]]) -> dict[str, float]:
    """The mean over prefix sizes of every metric (each size weighs the same)."""
    keys = [k for k in next(iter(by_size.values()), {}) if k != "queries"]
    return {k: float(np.mean([v[k] for v in by_size.values()])) for k in keys} | {
        "queries": int(sum(v["queries"] for v in by_size.values()))}


# --- the methods ----------------------------------------------------------------------------


def model_lists(model: BasketModel, qs: list[Query], k: int, profile, *, use_segment: bool = True) -> list[np.ndarray]:
    return [np.asarray(model.recommend(q.prefix, k, segment=q.segment if use_segment else None, profile=profile).product_ids)
            for q in qs]


def popularity_lists(model: BasketModel, qs: list[Query], k: int) -> list[np.ndarray]:
    top = model.ids[model.popular[ANY][: k + 64]]
    return [top[~np.isin(top, q.prefix)][:k] for q in qs]


def item_item_lists(ratings: pl.DataFrame, qs: list[Query], k: int, fallback: np.ndarray, neighbours: int = 100) -> list[np.ndarray]:
    """implicit's BM25 item-item model fitted on the window's customers × products; a prefix is
    scored as a one-row user (its items), its own items filtered; short lists topped up from
    ``fallback`` (global popularity)."""
    from implicit.nearest_neighbours import BM25Recommender
    from threadpoolctl import threadpool_limits

    ids = np.unique(ratings["product_id"].to_numpy())
    users, u = np.unique(ratings["user_id"].to_numpy(), return_inverse=True)
    matrix = sp.csr_matrix(
        (ratings["purchases"].to_numpy().astype(np.float32), (u, np.searchsorted(ids, ratings["product_id"].to_numpy()))),
        shape=(users.size, ids.size),
    )
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit's note that BM25 weighting hands it a COO matrix
        model = BM25Recommender(K=neighbours, num_threads=1)
        model.fit(matrix, show_progress=False)
    rows, cols = [], []
    for r, q in enumerate(qs):
        j = np.searchsorted(ids, q.prefix)
        ok = (j < ids.size) & (ids[np.minimum(j, ids.size - 1)] == q.prefix)
        rows += [r] * int(ok.sum())
        cols += j[ok].tolist()
    queries_m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(qs), ids.size))
    got, scores = model.recommend(np.arange(len(qs)), queries_m, N=k, filter_already_liked_items=True)
    out = []
    for q, row, sc in zip(qs, got, scores):
        mine = ids[row[(row >= 0) & (sc > -np.inf) & (sc > 0)]]
        fill = fallback[~np.isin(fallback, np.concatenate([q.prefix, mine]))]
        out.append(np.concatenate([mine, fill])[:k])
    return out


def evaluate(methods: dict[str, Callable[[list[Query], int], list[np.ndarray]]], qs: list[Query], ks=KS) -> dict:
    """``{"methods": {name: averaged}, "by_size": {name: {M: metrics}}}``."""
    k = max(ks)
    by_size = {name: score_lists(qs, run(qs, k), ks) for name, run in methods.items()}
    return {"methods": {name: averaged(b) for name, b in by_size.items()},
            "by_size": {name: {str(m): v for m, v in b.items()} for name, b in by_size.items()}}
