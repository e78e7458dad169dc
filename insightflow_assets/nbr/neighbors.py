"""Neighbour search for TIFU-KNN: spaces, micro-clusters and blocked top-k (numpy / scipy).

The paper ranks neighbours by the euclidean distance between TIFU vectors.
For a query q, ``||q - b||^2 = ||q||^2 + ||b||^2 - 2 q.b``, so ranking the
candidates b by ``2 q.b - ||b||^2`` is the same ranking; it is one inner
product of the augmented vectors ``[2q, 1]`` and ``[b, -||b||^2]``, which lets
BLAS + implicit's heap top-k do the search. The spaces:

* ``"exact"``: the sparse TIFU vectors themselves (q.b by sparse products);
  exact, for small data and for measuring the approximations.
* ``"svd"``: q.b is approximated by the dot product of the ``dim``-dimensional
  truncated-SVD codes (``X V``), while ``||b||^2`` stays the exact norm of the
  sparse vector: only the cross term is approximated.
* ``"factors"``: a caller-given embedding aligned with the users (e.g. ALS
  user factors), euclidean on it.

With ``metric="cosine"`` the TIFU vectors are L2-normalised before the space
is built, so ``-||b||^2`` is constant and the ranking is by cosine.

Why micro-clusters: at Instacart scale (206 k users) the search is not the
only cost, the neighbour *mean* is: 900 neighbours x ~65 items each is ~58 k
sparse accumulations and a ~20-30 k-item row per user, ~1.2e10 operations,
~400 s in scipy for all users (measured: ~4 s per 2,000 users). A smaller
candidate pool would only cut the search. Per-user search costs ~135 s in a
32-d space and ~1,700 s exact. So users are grouped into micro-clusters of
~``cluster_size`` users (a few Lloyd iterations in the search space); one
neighbour list is searched and summed per cluster, from its centroid, over
*all* users: 3,223 lists instead of 206 k. A cluster (~64 users) is much
smaller than a 900-user neighbourhood, so the centroid's list serves its
members; each member swaps itself out of it. ``cluster_size=1`` gives every
user its own list (the paper's per-user kNN).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from insightflow_assets.parallel import map_blocks

__all__ = ["search_space", "micro_clusters", "cluster_centroids", "nearest"]

SPACES = ("exact", "svd", "factors")
METRICS = ("euclidean", "cosine")
# Effort of the approximate search: power iterations of the randomized SVD and Lloyd steps of the
# micro-clusters. Two of each instead of four scored the same on validation at 206,209 users
# (TIFU-KNN map@10 0.2644 / 0.2643 / 0.2641 vs 0.2639 / 0.2642 / 0.2640 over the grid; README
# "TIFU-KNN") for 7 CPU s less per fit.
SVD_POWER_ITERATIONS = 2
LLOYD_ITERATIONS = 2


def _row_norms2(x: np.ndarray | sp.csr_matrix) -> np.ndarray:
    if sp.issparse(x):
        return np.asarray(x.multiply(x).sum(axis=1), dtype=np.float64).ravel()
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def search_space(
    vectors: sp.csr_matrix,
    space: str,
    *,
    metric: str = "euclidean",
    dim: int = 32,
    factors: np.ndarray | None = None,
    seed: int = 42,
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """The points to search and each candidate's bias.

    Returns ``(points, bias)``: ``points`` is the sparse matrix (``"exact"``)
    or a float32 array (n_users x d); ``bias[b] = -||b||^2`` of the vector the
    distance is meant on (the sparse TIFU vector for exact/svd), so that
    ``2 q.points[b] + bias[b]`` ranks candidates like ``-||q - b||^2``.
    """
    if space not in SPACES:
        raise ValueError(f"neighbor_space must be one of {SPACES}, got {space!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if space == "factors":
        if factors is None or factors.shape[0] != vectors.shape[0]:
            raise ValueError("neighbor_space='factors' needs one factor row per user row")
        pts = np.ascontiguousarray(factors, dtype=np.float32)
        if metric == "cosine":
            pts = pts / np.maximum(np.sqrt(_row_norms2(pts)), 1e-12)[:, None].astype(np.float32)
        return pts, -_row_norms2(pts)
    x = vectors.astype(np.float32)
    if metric == "cosine":
        norms = np.sqrt(_row_norms2(x))
        x = sp.diags((1.0 / np.maximum(norms, 1e-12)).astype(np.float32)) @ x
    bias = -_row_norms2(x)
    if space == "exact":
        return sp.csr_matrix(x), bias
    return _svd_codes(sp.csr_matrix(x), dim, seed), bias


def _svd_codes(x: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
    """``X V_d`` (= U_d S_d): the projection of every vector on the top ``dim``
    right singular vectors; dot products of codes approximate q.b."""
    from sklearn.utils.extmath import randomized_svd

    d = int(max(1, min(dim, min(x.shape) - 1)))
    if min(x.shape) <= 1:
        return np.asarray(x.toarray(), dtype=np.float32)
    # one BLAS thread: multi-threaded QR/GEMM change the last bits with the
    # core count, and the codes must not (the heavy part, sparse products,
    # is single-threaded in scipy anyway)
    with threadpool_limits(1, "blas"):
        u, s, _ = randomized_svd(x, d, n_iter=SVD_POWER_ITERATIONS, random_state=seed)
    return np.ascontiguousarray(u * s, dtype=np.float32)


def _member_matrix(labels: np.ndarray, n_clusters: int) -> sp.csr_matrix:
    """clusters x users, 1/size for every member: ``M @ points`` = centroids."""
    size = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    w = (1.0 / np.maximum(size, 1.0))[labels]
    n = labels.size
    return sp.csr_matrix((w, (labels, np.arange(n))), shape=(n_clusters, n))


def cluster_centroids(points, labels: np.ndarray, n_clusters: int):
    """Mean point of every cluster (dense float32, or sparse for exact)."""
    c = _member_matrix(labels, n_clusters) @ points
    return sp.csr_matrix(c, dtype=np.float32) if sp.issparse(c) else np.asarray(c, np.float32)


def _inner(q, pts) -> np.ndarray:
    """Dense float32 ``q @ pts.T`` for dense or sparse operands."""
    out = q @ pts.T
    return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float32)


def micro_clusters(
    points, cluster_size: int, *, seed: int = 42, iterations: int = LLOYD_ITERATIONS, block: int = 8192
) -> np.ndarray:
    """Cluster label (int32, 0..C-1) of every user: ``C = ceil(n / cluster_size)``
    seeded random users as initial centres, then ``iterations`` Lloyd steps in
    the search space (euclidean). Empty clusters are dropped and labels
    renumbered. ``cluster_size <= 1``: every user is its own cluster."""
    n = points.shape[0]
    if cluster_size <= 1 or n <= 1:
        return np.arange(n, dtype=np.int32)
    n_clusters = int(-(-n // int(cluster_size)))
    rng = np.random.default_rng(seed)
    centres = points[np.sort(rng.choice(n, n_clusters, replace=False))]
    labels = np.zeros(n, dtype=np.int32)
    for _ in range(max(int(iterations), 1)):
        half_c2 = (0.5 * _row_norms2(centres)).astype(np.float32)

        def assign(s: int, centres=centres, half_c2=half_c2) -> None:
            # argmax of x.c - ||c||^2 / 2 == nearest centre
            scores = _inner(points[s : s + block], centres)
            scores -= half_c2
            labels[s : s + block] = np.argmax(scores, axis=1)

        map_blocks(assign, range(0, n, block))
        used, labels = np.unique(labels, return_inverse=True)
        labels = labels.astype(np.int32)
        centres = cluster_centroids(points, labels, used.size)
    return labels


def nearest(
    queries, points, bias: np.ndarray, k: int, *, batch: int = 256
) -> np.ndarray:
    """Indices (int32, queries x k) of the k candidates with the largest
    ``2 q.p + bias`` (= nearest in euclidean), best first.

    Dense spaces: implicit's C++ top-k (BLAS matmul + heap, GIL released) on
    the augmented vectors, ``batch`` queries per call, one BLAS thread per
    worker and one worker per core (deterministic: each batch is computed
    alone). Sparse (exact) space: blocked sparse products, exact ranking
    with ties broken by candidate index.
    """
    k = int(min(k, points.shape[0]))
    nq = queries.shape[0]
    out = np.empty((nq, k), dtype=np.int32)
    if k == 0 or nq == 0:
        return out
    if sp.issparse(points):
        step = max(1, int(2e7 // max(points.shape[0], 1)))
        for s in range(0, nq, step):
            out[s : s + step] = _exact_topk(2.0 * _inner(queries[s : s + step], points).astype(np.float64) + bias, k)
        return out
    from implicit.cpu.topk import topk

    cand = np.ascontiguousarray(np.c_[points, bias], dtype=np.float32)
    qry = np.ascontiguousarray(np.c_[2.0 * queries, np.ones(nq)], dtype=np.float32)

    def run(s: int) -> None:
        ids, _ = topk(cand, qry[s : s + batch], k, num_threads=1)
        out[s : s + batch] = ids

    map_blocks(run, range(0, nq, batch))
    return out


def _exact_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns of every row by score desc, then column index asc."""
    n = scores.shape[1]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (scores.shape[0], 1))
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    out = np.empty((scores.shape[0], k), dtype=np.int32)
    for r in range(scores.shape[0]):  # ties at the cut: take every tied column, lowest first
        cols = np.flatnonzero(scores[r] >= kth[r])
        order = np.lexsort((cols, -scores[r, cols]))[:k]
        out[r] = cols[order]
    return out
