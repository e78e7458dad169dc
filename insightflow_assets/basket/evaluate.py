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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from insightflow_assets.basket.pairs import ANY, cart_lines, dense_items
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
    return baskets_of(cart_lines(targets, lines, user_seg), targets)


def baskets_of(carts: pl.DataFrame, targets: pl.DataFrame) -> pl.DataFrame:
    """``user_id, segment, products`` of the ``targets`` (``order_id, user_id``) among `cart_lines`' rows."""
    return (
        carts.join(targets.select("order_id", pl.col("user_id").cast(pl.Int32)), on="order_id", how="inner",
                   maintain_order="left")  # each cart stays in add-to-cart order
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
    return profile_lists(model, qs, k, [profile], use_segment=use_segment)[0]


def profile_lists(model: BasketModel, qs: list[Query], k: int, profiles: list, *, use_segment: bool = True) -> list[list[np.ndarray]]:
    """Each profile's top-``k`` list of every query (`BasketModel.recommend_profiles`: one
    candidate pool per query for the profiles that share pool parameters)."""
    got = [model.recommend_profiles(q.prefix, k, segment=q.segment if use_segment else None, profiles=profiles) for q in qs]
    return [[np.asarray(r[i].product_ids) for r in got] for i in range(len(profiles))]


def popularity_lists(model: BasketModel, qs: list[Query], k: int) -> list[np.ndarray]:
    top = model.ids[model.popular[ANY][: k + 64]]
    return [top[~np.isin(top, q.prefix)][:k] for q in qs]


def item_item_lists(ratings: pl.DataFrame, qs: list[Query], k: int, fallback: np.ndarray, neighbours: int = 100) -> list[np.ndarray]:
    """implicit's BM25 item-item model over the window's customers × products; a prefix is scored
    as a one-row user (its items) by implicit's scorer, its own items filtered; short lists
    topped up from ``fallback`` (global popularity).

    A one-row user made of the prefix reads only the similarity rows of the prefix's items, so
    only those rows are computed (`knn_rows`, implicit's BM25 weighting and top-``neighbours``
    rule): the lists equal those of a fit over every product, at the cost of the evaluated
    baskets' items instead of the whole catalogue."""
    from implicit.nearest_neighbours import BM25Recommender, NearestNeighboursScorer, bm25_weight
    from threadpoolctl import threadpool_limits

    matrix, ids = user_item_matrix(ratings)
    rows, cols = [], []
    for r, q in enumerate(qs):
        j = np.searchsorted(ids, q.prefix)
        ok = (j < ids.size) & (ids[np.minimum(j, ids.size - 1)] == q.prefix)
        rows += [r] * int(ok.sum())
        cols += j[ok].tolist()
    model = BM25Recommender(K=neighbours, num_threads=1)
    weighted = bm25_weight(matrix.T, model.K1, model.B).T.tocsr()  # what BM25Recommender.fit weighs
    model.similarity = knn_rows(weighted, np.unique(np.asarray(cols, np.int64)), neighbours)
    model.scorer = NearestNeighboursScorer(model.similarity)  # as ItemItemRecommender.fit sets it
    queries_m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(qs), ids.size))
    with threadpool_limits(1, "blas"):  # the house rule for implicit
        got, scores = model.recommend(np.arange(len(qs)), queries_m, N=k, filter_already_liked_items=True)
    out = []
    for q, row, sc in zip(qs, got, scores):
        mine = ids[row[(row >= 0) & (sc > -np.inf) & (sc > 0)]]
        fill = fallback[~np.isin(fallback, np.concatenate([q.prefix, mine]))]
        out.append(np.concatenate([mine, fill])[:k])
    return out


def user_item_matrix(ratings: pl.DataFrame) -> tuple[sp.csr_matrix, np.ndarray]:
    """Customers × products purchase counts (CSR) and the product id of each column."""
    users, u = dense_items(ratings["user_id"].to_numpy())
    ids, col = dense_items(ratings["product_id"].to_numpy())
    data = ratings["purchases"].to_numpy().astype(np.float32)
    return sp.csr_matrix((data, (u, col)), shape=(users.size, ids.size)), ids


def knn_rows(weighted: sp.csr_matrix, items: np.ndarray, neighbours: int, chunk: int = 256) -> sp.csr_matrix:
    """The item × item similarity of implicit's `all_pairs_knn` (dot products of the columns of
    ``weighted``, each row's ``neighbours`` best, the item itself included), for the rows
    ``items`` only; the other rows are empty."""
    n = weighted.shape[1]
    left = weighted.tocsc()[:, items].T.tocsr()
    indptr, indices, data = [0], [], []
    # rows in chunks: one chunk's products stay small whatever the number of items
    for lo in range(0, items.size, chunk):
        block = (left[lo: lo + chunk] @ weighted).tocsr()
        for r in range(block.shape[0]):
            a, b = block.indptr[r], block.indptr[r + 1]
            cols, vals = block.indices[a:b], block.data[a:b]
            if vals.size > neighbours:
                top = np.argpartition(-vals, neighbours - 1)[:neighbours]
                cols, vals = cols[top], vals[top]
            indices.append(cols)
            data.append(vals)
            indptr.append(indptr[-1] + cols.size)
    counts = np.zeros(n + 1, np.int64)
    counts[items + 1] = np.diff(indptr)
    return sp.csr_matrix(
        (np.concatenate(data) if data else np.empty(0), np.concatenate(indices) if indices else np.empty(0, np.int32),
         np.cumsum(counts)), shape=(n, n))


def evaluate(methods: dict[str, Callable[[list[Query], int], list[np.ndarray]]], qs: list[Query], ks=KS) -> dict:
    """``{"methods": {name: averaged}, "by_size": {name: {M: metrics}}}``."""
    k = max(ks)
    by_size = {name: score_lists(qs, run(qs, k), ks) for name, run in methods.items()}
    return {"methods": {name: averaged(b) for name, b in by_size.items()},
            "by_size": {name: {str(m): v for m, v in b.items()} for name, b in by_size.items()}}
