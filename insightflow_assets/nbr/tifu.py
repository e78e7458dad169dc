"""TIFU-KNN next-basket recommendations (pure numpy / scipy / polars, no Dagster).

``p_u = alpha * u + (1 - alpha) * mean(u_nn)`` over the user's ``k_neighbors``
nearest users (never the user itself), then the top-``n`` items by ``p_u``:

* items the user bought before (``u > 0``; ``source = "repeat"``) score
  ``alpha * u + (1 - alpha) * m``;
* items the user never bought (``source = "neighbors"``) score
  ``(1 - alpha) * m`` and come only from the neighbours (``m > 0``).

``m`` is never materialised for all users: per block of neighbourhood
clusters (see ``neighbors``) the neighbour *sums* are dense rows over the
items; each user gathers them at its own items, and its explore items are the
first not-owned entries of the cluster's sorted row (taking ``n + |own|``
entries always leaves ``n`` not-owned ones, so the top-``n`` is exact for the
given neighbour lists). Users without history get nothing: the caller tops up.

Output: the project's ``recs`` schema (``user_id`` Int32, ``rank`` Int32
1-based, ``product_id`` Int32, ``score`` Float32, sorted by ``user_id, rank``;
ties by product_id asc) plus ``source`` (Enum ``repeat`` / ``neighbors``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from insightflow_assets.frames import user_ids as _user_ids
from insightflow_assets.parallel import map_blocks
from insightflow_assets.nbr.neighbors import (
    cluster_centroids,
    micro_clusters,
    nearest,
    search_space,
)

__all__ = [
    "TifuParams", "Neighbourhoods", "SOURCE", "tifu_knn_recommend", "tifu_knn_recommend_many",
    "neighbour_lists", "score_users", "score_users_alphas",
]

SOURCE = pl.Enum(["repeat", "neighbors"])
_REPEAT, _NEIGHBORS = 0, 1
_KEY_SHIFT = 1 << 32  # (user, item) -> one int64 key; item indices < 2**32


@dataclass(frozen=True)
class TifuParams:
    """Hyper-parameters. Decays, alpha, k and the group size: the paper's
    Instacart values (Hu et al. 2020: 900 neighbours, r_b 0.9, r_g 0.7,
    alpha 0.9, m 3). The rest choose how neighbours are searched (see
    ``neighbors``): a 32-d SVD space and clusters of ~64 users. Measured on
    a validation split of 206 k generated users (benchmarks/bench_nbr.py
    --design): top-10 lists agree 98.9 % with exact per-user kNN on the sparse
    vectors and map@10 is within 0.001, while the fit + top-20 of every user
    takes ~26 s instead of ~2,000 s (exact) or ~550 s (SVD, per user)."""

    group_size: int = 3
    within_decay: float = 0.9
    group_decay: float = 0.7
    k_neighbors: int = 900
    alpha: float = 0.9
    neighbor_space: str = "svd"
    metric: str = "euclidean"
    dim: int = 32
    cluster_size: int = 64
    seed: int = 42

    def vector_kwargs(self) -> dict:
        return {"group_size": self.group_size, "within_decay": self.within_decay, "group_decay": self.group_decay}

    def knn_kwargs(self) -> dict:
        d = asdict(self)
        return {key: d[key] for key in ("k_neighbors", "alpha", "neighbor_space", "metric", "dim", "cluster_size", "seed")}


@dataclass(frozen=True)
class Neighbourhoods:
    """Neighbour lists of the clusters that hold the requested users.

    ``labels[r]``: cluster of user row r (all users); ``clusters``: sorted ids
    of the clusters searched; ``lists[i]``: the ``k + 1`` user rows nearest to
    the centroid of ``clusters[i]``, best first. A member reads the first k
    entries of its cluster's list, skipping itself (then the (k+1)-th counts).
    """

    labels: np.ndarray
    clusters: np.ndarray
    lists: np.ndarray

    @property
    def k(self) -> int:
        return max(self.lists.shape[1] - 1, 0)


def neighbour_lists(
    vectors: sp.csr_matrix,
    rows: np.ndarray | None = None,
    *,
    k_neighbors: int = 900,
    neighbor_space: str = "svd",
    metric: str = "euclidean",
    dim: int = 32,
    cluster_size: int = 64,
    seed: int = 42,
    factors: np.ndarray | None = None,
    space: tuple | None = None,
    labels: np.ndarray | None = None,
) -> Neighbourhoods:
    """Search the neighbour lists for the user rows ``rows`` (None: all).

    Candidates are always all users of ``vectors``; k is capped at
    n_users - 1. Only the clusters holding ``rows`` are searched. ``space``:
    a ``search_space(...)`` result to reuse (then the space arguments are
    ignored); ``labels``: a ``micro_clusters(space points, cluster_size,
    seed)`` result to reuse."""
    n = vectors.shape[0]
    k = int(max(0, min(int(k_neighbors), n - 1)))
    if space is None:
        space = search_space(vectors, neighbor_space, metric=metric, dim=dim, factors=factors, seed=seed)
    pts, bias = space
    if labels is None:
        labels = micro_clusters(pts, cluster_size, seed=seed)
    clusters = np.unique(labels if rows is None else labels[rows])
    if int(labels.max(initial=-1)) + 1 == n:  # one user per cluster: the user is the query
        queries = pts[clusters]
    else:
        queries = cluster_centroids(pts, labels, int(labels.max()) + 1)[clusters]
    lists = nearest(queries, pts, bias, k + 1) if k > 0 else np.empty((clusters.size, 0), np.int32)
    return Neighbourhoods(labels=labels, clusters=clusters, lists=lists)


def _query_rows(user_ids: np.ndarray, users) -> np.ndarray:
    """Sorted rows of the requested users that have a vector."""
    if users is None:
        return np.arange(user_ids.size, dtype=np.int64)
    q = _user_ids(users, pl.Int64).get_column("user_id").to_numpy()
    pos = np.minimum(np.searchsorted(user_ids, q), max(user_ids.size - 1, 0))
    return pos[(user_ids.size > 0) & (user_ids[pos] == q)].astype(np.int64)


def tifu_knn_recommend(
    vectors: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    users: Iterable[int] | pl.Series | pl.DataFrame | np.ndarray | None,
    n: int,
    *,
    k_neighbors: int = 900,
    alpha: float = 0.9,
    neighbor_space: str = "svd",
    metric: str = "euclidean",
    dim: int = 32,
    cluster_size: int = 64,
    seed: int = 42,
    factors: np.ndarray | None = None,
) -> pl.DataFrame:
    """Top-``n`` TIFU-KNN items for ``users`` (None: every user with a vector).

    ``vectors, user_ids, item_ids`` as returned by ``tifu_user_vectors``;
    ``factors`` (with ``neighbor_space="factors"``) one row per vector row.
    Neighbours are searched among all users of ``vectors`` (``neighbour_lists``);
    only the requested users are scored (``score_users``). Returns the
    ``recs`` schema plus ``source``; deterministic for a seed. Users without
    a vector get no rows.
    """
    config = {"k_neighbors": k_neighbors, "alpha": alpha, "neighbor_space": neighbor_space, "metric": metric,
              "dim": dim, "cluster_size": cluster_size, "seed": seed}
    return tifu_knn_recommend_many(vectors, user_ids, item_ids, users, n, [config], factors=factors)[0]


def tifu_knn_recommend_many(
    vectors: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    users: Iterable[int] | pl.Series | pl.DataFrame | np.ndarray | None,
    n: int,
    configs: list[dict],
    *,
    factors: np.ndarray | None = None,
) -> list[pl.DataFrame]:
    """``tifu_knn_recommend`` of several configurations (``TifuParams.knn_kwargs()``
    dicts, missing keys at their defaults) on the same vectors and users; each
    list is exactly what its own call returns. What configurations agree on is
    computed once: the search space and micro-clusters, the neighbour lists of
    one k, and the neighbour sums of every alpha of one k (model selection
    tries a grid of k and alpha on one set of vectors)."""
    x = _csr(vectors)
    rows = _query_rows(np.asarray(user_ids, dtype=np.int64), users)
    if n <= 0 or rows.size == 0 or x.shape[1] == 0:
        return [_empty() for _ in configs]
    full = [{**TifuParams().knn_kwargs(), **c} for c in configs]
    out: list[pl.DataFrame] = [_empty()] * len(full)
    spaces: dict[tuple, tuple] = {}
    labels: dict[tuple, np.ndarray] = {}
    for hood, members in _by_neighbourhood(full).items():
        c = dict(hood)
        space_key = (c["neighbor_space"], c["metric"], c["dim"], c["seed"])
        if space_key not in spaces:
            spaces[space_key] = search_space(
                x, c["neighbor_space"], metric=c["metric"], dim=c["dim"], factors=factors, seed=c["seed"]
            )
        label_key = (*space_key, c["cluster_size"])
        if label_key not in labels:
            labels[label_key] = micro_clusters(spaces[space_key][0], c["cluster_size"], seed=c["seed"])
        hoods = neighbour_lists(x, rows, **c, factors=factors, space=spaces[space_key], labels=labels[label_key])
        alphas = [full[i]["alpha"] for i in members]
        for i, frame in zip(members, score_users_alphas(x, user_ids, item_ids, rows, hoods, n, alphas)):
            out[i] = frame
    return out


def _by_neighbourhood(configs: list[dict]) -> dict[tuple, list[int]]:
    """Indices of the configurations per neighbourhood (everything but alpha), in order."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(tuple(sorted((k, v) for k, v in c.items() if k != "alpha")), []).append(i)
    return groups


def _csr(vectors) -> sp.csr_matrix:
    x = sp.csr_matrix(vectors, dtype=np.float32)
    x.sort_indices()
    return x


def score_users(
    vectors: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    rows: np.ndarray,
    hoods: Neighbourhoods,
    n: int,
    *,
    alpha: float = 0.9,
    cluster_block: int = 64,
) -> pl.DataFrame:
    """Top-``n`` of ``p = alpha u + (1 - alpha) mean(u_nn)`` for the user rows
    ``rows`` (their clusters must be in ``hoods``), ``cluster_block`` clusters
    at a time (memory ~ 2 x cluster_block x n_items float64)."""
    return score_users_alphas(vectors, user_ids, item_ids, rows, hoods, n, [alpha], cluster_block=cluster_block)[0]


def score_users_alphas(
    vectors: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    rows: np.ndarray,
    hoods: Neighbourhoods,
    n: int,
    alphas: list[float],
    *,
    cluster_block: int = 64,
) -> list[pl.DataFrame]:
    """``score_users`` for every alpha of ``alphas``: the neighbour sums and each
    user's candidates (own items, explore items) do not depend on alpha, so a
    block computes them once and ranks them once per alpha."""
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    x = _csr(vectors)
    rows = np.asarray(rows, dtype=np.int64)
    if n <= 0 or rows.size == 0:
        return [_empty() for _ in alphas]
    pos = np.searchsorted(hoods.clusters, hoods.labels[rows])
    order = np.argsort(pos, kind="stable")
    rows, pos = rows[order], pos[order]

    def block(s: int) -> list | None:
        lo, hi = np.searchsorted(pos, [s, s + cluster_block])
        if hi == lo:
            return None
        cands = _block_candidates(x, rows[lo:hi], pos[lo:hi] - s, hoods.lists[s : s + cluster_block], int(n))
        return [_blend(rows[lo:hi], cands, alpha, int(n)) for alpha in alphas]

    # blocks are independent, so they run on every core; their results keep block order
    done = [b for b in map_blocks(block, range(0, hoods.clusters.size, cluster_block)) if b is not None]
    return [_frame([b[i] for b in done], np.asarray(user_ids), np.asarray(item_ids)) for i in range(len(alphas))]


def _neighbour_sums(x: sp.csr_matrix, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense ``A`` = sum of the first k vectors of every list, ``B`` = A + the
    (k+1)-th (the list for a member that is among the first k), and k."""
    c, k1 = lists.shape
    k = k1 - 1
    if k <= 0:
        z = np.zeros((c, x.shape[1]), dtype=np.float64)
        return z, z, 0
    # the k neighbours' rows gathered, each entry added into its cluster's dense row: one
    # bincount instead of a sparse product (whose symbolic pass and sparse result cost ~3x)
    sub = x[lists[:, :k].ravel()]
    cluster = np.repeat(np.repeat(np.arange(c, dtype=np.int64), k), np.diff(sub.indptr))
    a = np.bincount(cluster * x.shape[1] + sub.indices, weights=sub.data, minlength=c * x.shape[1])
    a = a.reshape(c, x.shape[1])
    return a, a + x[lists[:, k]].toarray(), k


def _block_candidates(x, urows, local, lists, n):
    """What the users ``urows`` (their cluster = ``local`` into ``lists``) can be
    recommended, before alpha: own items ``(u, item, own value, neighbour sum)``,
    the first n explore items ``(u, item, neighbour sum)`` and k."""
    a, b, k = _neighbour_sums(x, lists)
    # a member among its cluster's first k neighbours swaps itself for the (k+1)-th
    keys = np.sort((np.arange(lists.shape[0])[:, None] * x.shape[0] + lists[:, :k]).ravel())
    ukey = local * x.shape[0] + urows
    if keys.size:
        inlist = keys[np.minimum(np.searchsorted(keys, ukey), keys.size - 1)] == ukey
    else:  # no neighbour at all (k = 0: a single user to learn from)
        inlist = np.zeros(ukey.shape, dtype=bool)
    variant = local * 2 + inlist  # row of the stacked [A_c, B_c] sums the user reads
    sums = np.empty((2 * lists.shape[0], x.shape[1]))
    sums[0::2], sums[1::2] = a, b
    sub = x[urows]
    own_u = np.repeat(np.arange(urows.size), np.diff(sub.indptr))
    own_i, own_v = sub.indices.astype(np.int64), sub.data.astype(np.float64)
    m_own = sums[variant[own_u], own_i] - np.where(inlist[own_u], own_v, 0.0)
    explore = _explore(sums, variant, own_u * _KEY_SHIFT + own_i, np.diff(sub.indptr), n, x.shape[1])
    return (own_u, own_i, own_v, m_own), explore, k


def _blend(urows, cands, alpha, n):
    """Top-n of ``alpha u + (1 - alpha) m / k`` over a block's candidates."""
    (own_u, own_i, own_v, m_own), (ex_u, ex_i, ex_s), k = cands
    own_s = alpha * own_v + (1.0 - alpha) * m_own / max(k, 1)
    ex_s = (1.0 - alpha) * ex_s / max(k, 1)
    return _top_n(
        urows,
        np.r_[own_u, ex_u], np.r_[own_i, ex_i], np.r_[own_s, ex_s],
        np.r_[np.full(own_u.size, _REPEAT, np.int8), np.full(ex_u.size, _NEIGHBORS, np.int8)],
        n,
    )


def _explore(sums, variant, own_keys, n_own, n, n_items):
    """Per user, the first ``n`` not-owned items of its sums row with a
    positive sum, best first, as (user, item, sum) arrays.

    Rows are sorted once up to ``n + max own`` entries (enough for anyone);
    users read a short prefix first and only those who own too many of it
    read further, so the per-user work stays ~3n instead of n + max own."""
    used, row = np.unique(variant, return_inverse=True)
    items, vals = _sorted_prefix(sums[used], int(min(n_items, n + (n_own.max() if n_own.size else 0))))
    users = np.arange(variant.size)
    u, j, v, done = _first_not_owned(items, vals, row, users, own_keys, n, min(3 * n, items.shape[1]), n_own)
    if not done.all():
        rest = users[~done]
        depth = int(min(items.shape[1], n + n_own[rest].max()))
        u2, j2, v2, _ = _first_not_owned(items, vals, row[rest], rest, own_keys, n, depth, n_own[rest])
        keep = done[u]
        u, j, v = np.r_[u[keep], u2], np.r_[j[keep], j2], np.r_[v[keep], v2]
    return u, j, v


def _sorted_prefix(rows: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The t best entries of every row: (items, values), value desc then item
    asc. Entries tied with the t-th value are taken lowest item first, so the
    prefix is exactly the head of the fully sorted row (argpartition alone
    would pick an arbitrary subset of a tie at the cut)."""
    c, n_items = rows.shape
    if t < n_items:
        kth = -np.partition(-rows, t - 1, axis=1)[:, t - 1 : t]
        above = rows > kth
        tied = rows == kth
        tied &= np.cumsum(tied, axis=1) <= t - above.sum(axis=1, keepdims=True)
        part = np.nonzero(above | tied)[1].reshape(c, t)
    else:
        part = np.tile(np.arange(n_items), (c, 1))
    vals = np.take_along_axis(rows, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _first_not_owned(items, vals, row, users, own_keys, n, depth, n_own):
    """Walk the first ``depth`` entries of each user's row; returns (user,
    item, value) of the first n not-owned positive ones and, per user,
    whether that answer is final (n found, row exhausted, or deep enough)."""
    it, va = items[row, :depth], vals[row, :depth]
    keys = users[:, None].astype(np.int64) * _KEY_SHIFT + it
    pos = np.minimum(np.searchsorted(own_keys, keys), max(own_keys.size - 1, 0))
    ok = ~((own_keys.size > 0) & (own_keys[pos] == keys)) & (va > 0)
    found = np.cumsum(ok, axis=1)
    ok &= found <= n
    done = (found[:, -1] >= n) | (va[:, -1] <= 0) | (depth >= n + n_own) | (depth >= items.shape[1])
    r, c = np.nonzero(ok)
    return users[r], it[r, c].astype(np.int64), va[r, c], done


def _top_n(urows, u, item, score, source, n):
    """Keep each user's n best candidates (score desc, item index asc)."""
    top = (
        pl.DataFrame({"u": u, "item": item, "score": score, "source": source})
        .filter(pl.col("score") > 0)  # p = 0 (alpha 0 or 1 at the edges) is no recommendation
        .sort(["u", "score", "item"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("u"))
        .filter(pl.col("rank") <= n)
    )
    return (
        urows[top.get_column("u").to_numpy()],
        top.get_column("rank").to_numpy(),
        top.get_column("item").to_numpy(),
        top.get_column("score").to_numpy(),
        top.get_column("source").to_numpy(),
    )


def _frame(parts, user_ids, item_ids) -> pl.DataFrame:
    if not parts:
        return _empty()
    r, rank, item, score, source = (np.concatenate(c) for c in zip(*parts))
    order = np.lexsort((rank, r))
    return pl.DataFrame(
        {
            "user_id": pl.Series(user_ids[r[order]], dtype=pl.Int32),
            "rank": pl.Series(rank[order], dtype=pl.Int32),
            "product_id": pl.Series(item_ids[item[order]], dtype=pl.Int32),
            "score": pl.Series(score[order], dtype=pl.Float32),
            "source": pl.Series(source[order]).replace_strict(
                {_REPEAT: "repeat", _NEIGHBORS: "neighbors"}, return_dtype=SOURCE
            ),
        }
    )


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"user_id": pl.Int32, "rank": pl.Int32, "product_id": pl.Int32, "score": pl.Float32, "source": SOURCE}
    )
