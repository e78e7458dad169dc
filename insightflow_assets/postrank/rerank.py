"""Post-ranking of ALS candidates: popularity hybrid, MMR diversity, cold-start fill.

Pure numpy / polars (no Dagster import). Everything is vectorised across
users: candidates are laid out as a dense ``users x N`` array (N = longest
candidate list, 100 upstream) and the greedy MMR selection runs its ``k``
steps on a whole batch of users at once.

Pipeline for one user ``u`` with candidate list ``C_u`` (top-N ALS items):

1. **Hybrid relevance** ``rel = alpha * norm(als_score) + (1 - alpha) * norm(pop)``
   where ``norm`` is a per-user min-max over ``C_u``:
   ``(x - min) / (max - min)``; a constant list (``max == min``, e.g. a single
   candidate or a user who bought none of the candidates) normalises to 0 --
   it carries no ranking information (same convention as sklearn's
   ``MinMaxScaler``). ``pop`` is either the global popularity of the item
   (share of users who bought it; ``popularity_kind="global"``) or the user's
   own purchase count of the item, 0 if never bought (``"user"``).
2. **MMR**: greedily pick ``k`` items, each step maximising
   ``lambda * rel(i) - (1 - lambda) * max_{j chosen} sim(i, j)``
   (the first pick is the most relevant item). ``sim`` is the cosine of the
   ALS item factors (``similarity="factors"``) or 1 when the two products
   share the aisle / department, else 0 (``"aisle"`` / ``"department"``).
   ``mmr_lambda=1`` gives the plain hybrid order.
3. **Fill**: users with fewer than ``k`` candidates (or none: no training
   history) are topped up to ``k`` from the global popularity order, skipping
   products already in their list. Filled rows have ``source="popular"``
   when the user had some ALS candidates, ``"fallback"`` when none.

Output: ``user_id Int32, rank Int16 (1..k), product_id Int32, score
Float32, source String`` sorted by ``(user_id, rank)``; ``rank`` is
authoritative. ``score`` is the hybrid relevance ``rel`` (in [0, 1]) for
``"als"`` rows -- not necessarily monotone in rank once MMR reorders -- and
the item's global popularity for filled rows.

Ties are broken deterministically by ascending ``product_id`` (candidates of
a user are laid out in product_id order and ``argmax`` returns the first
maximum; the popularity order is popularity desc, product_id asc).

Performance (206,209 users + 5,000 cold users, N=100 candidates, k=20,
64 factors, 2 cores shared with other jobs): ``similarity="factors"``
6-10 s wall (~11 s CPU), ``"aisle"`` ~3 s, ``popularity_kind="user"`` +
factors ~8-12 s; ~0.5-0.9 GB on top of the inputs. Cost is dominated by the
``k`` batched cosine updates (``B x N x f`` per step).
"""

from __future__ import annotations

from typing import Any, Iterable, Literal

import numpy as np
import polars as pl

from insightflow_assets.parallel import map_blocks

__all__ = ["postrank", "POSTRANK_SCHEMA", "SOURCES"]

SOURCES = ("als", "popular", "fallback")

POSTRANK_SCHEMA = {
    "user_id": pl.Int32,
    "rank": pl.Int16,
    "product_id": pl.Int32,
    "score": pl.Float32,
    "source": pl.String,
}

_POP_COLUMNS = ("popularity", "p", "n_users")


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #
def _user_array(users: Any) -> np.ndarray:
    if isinstance(users, pl.DataFrame):
        users = users.get_column("user_id")
    if isinstance(users, pl.Series):
        arr = users.drop_nulls().to_numpy()
    elif isinstance(users, np.ndarray):
        arr = users.ravel()
    else:
        arr = np.asarray(list(users))
    return np.unique(arr.astype(np.int64)).astype(np.int32)


def _popularity_table(popularity: pl.DataFrame, products: pl.DataFrame | None) -> pl.DataFrame:
    """``product_id Int32, popularity Float64`` in fill order
    (popularity desc, product_id asc). Products of the catalogue absent from
    ``popularity`` are appended with popularity 0."""
    col = next((c for c in _POP_COLUMNS if c in popularity.columns), None)
    if col is None:
        raise ValueError(f"popularity needs product_id and one of {_POP_COLUMNS}")
    pop = (
        popularity.select(
            pl.col("product_id").cast(pl.Int32),
            pl.col(col).cast(pl.Float64).fill_null(0.0).alias("popularity"),
        )
        .drop_nulls("product_id")
        .group_by("product_id")
        .agg(pl.col("popularity").max())
    )
    if products is not None and "product_id" in products.columns:
        extra = (
            products.select(pl.col("product_id").cast(pl.Int32))
            .drop_nulls()
            .unique()
            .join(pop, on="product_id", how="anti")
            .with_columns(popularity=pl.lit(0.0, dtype=pl.Float64))
        )
        pop = pl.concat([pop, extra])
    return pop.sort(["popularity", "product_id"], descending=[True, False])


class _IdMap:
    """Vectorised ``id -> value`` lookup (``default`` when absent): a dense
    table when the ids are small non-negative ints (product ids), else a
    binary search."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, default: Any):
        keys = np.asarray(keys).astype(np.int64)
        values = np.asarray(values)
        self.default = default
        self.dtype = values.dtype
        self.table = None
        if keys.size and keys.min() >= 0 and keys.max() < max(4 * keys.size, 1 << 20):
            self.table = np.full(int(keys.max()) + 1, default, dtype=values.dtype)
            self.table[keys] = values
        else:
            order = np.argsort(keys, kind="stable")
            self.keys, self.values = keys[order], values[order]

    def __call__(self, query: np.ndarray) -> np.ndarray:
        query = np.asarray(query)
        if self.table is not None:
            ok = (query >= 0) & (query < self.table.size)
            if ok.all():
                return self.table[query]
            out = np.full(query.shape, self.default, dtype=self.dtype)
            out[ok] = self.table[query[ok]]
            return out
        out = np.full(query.shape, self.default, dtype=self.dtype)
        if self.keys.size == 0 or query.size == 0:
            return out
        pos = np.minimum(np.searchsorted(self.keys, query), self.keys.size - 1)
        hit = self.keys[pos] == query
        out[hit] = self.values[pos[hit]]
        return out


def _pair_key(users: np.ndarray, products: np.ndarray) -> np.ndarray:
    """int64 key ordered like (user_id, product_id)."""
    return users.astype(np.int64) * (1 << 32) + (products.astype(np.int64) + (1 << 31))


def _minmax_rows(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row min-max over the valid cells; constant rows -> 0; invalid -> 0."""
    lo = np.where(valid, x, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, x, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    ok = np.isfinite(span) & (span > 0)
    safe = np.where(ok, span, 1.0)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    out = np.where(ok, (x - lo) / safe, 0.0)
    return np.where(valid, out, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- #
# candidate layout
# --------------------------------------------------------------------------- #
def _layout(
    candidates: pl.DataFrame, user_arr: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense ``(users with candidates) x N`` arrays.

    Returns ``(cand_users, P, S)``: ``cand_users`` sorted user ids, ``P`` the
    product ids (int32, -1 = padding) sorted ascending within each row with
    the padding at the end, ``S`` the ALS scores (float32). Only users in
    ``user_arr`` are kept; duplicate (user, product) rows keep the max score.
    """
    cand = candidates.select(
        pl.col("user_id").cast(pl.Int32),
        pl.col("product_id").cast(pl.Int32),
        pl.col("score").cast(pl.Float32),
    ).drop_nulls(["user_id", "product_id"])
    cu = cand["user_id"].to_numpy()
    if cu.size and not (cu[1:] >= cu[:-1]).all():
        cand = cand.sort("user_id", maintain_order=True)
        cu = cand["user_id"].to_numpy()
    cp = cand["product_id"].to_numpy()
    cs = cand["score"].fill_nan(None).to_numpy()
    cs = np.asarray(cs, dtype=np.float32)
    empty = (np.empty(0, np.int32), np.empty((0, 0), np.int32), np.empty((0, 0), np.float32))
    if cu.size == 0:
        return empty

    nan_fill = np.float32(np.nanmin(cs)) if np.isfinite(cs).any() else np.float32(0.0)
    # runs of equal user ids
    starts = np.flatnonzero(np.r_[True, cu[1:] != cu[:-1]])
    counts = np.diff(np.r_[starts, cu.size])
    run_users = cu[starts]
    pos = np.minimum(np.searchsorted(user_arr, run_users), max(user_arr.size - 1, 0))
    keep_run = (user_arr.size > 0) & (user_arr[pos] == run_users) if user_arr.size else np.zeros(
        run_users.size, bool
    )
    if not keep_run.all():
        keep_row = np.repeat(keep_run, counts)
        cu, cp, cs = cu[keep_row], cp[keep_row], cs[keep_row]
        starts, counts, run_users = starts[keep_run], counts[keep_run], run_users[keep_run]
        starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    if cu.size == 0:
        return empty
    n_rows, N = run_users.size, int(counts.max())
    row_of = np.repeat(np.arange(n_rows), counts)
    col_of = np.arange(cu.size) - np.repeat(starts, counts)

    P = np.full((n_rows, N), np.iinfo(np.int32).max, dtype=np.int32)  # pad sorts last
    P[row_of, col_of] = cp
    S = np.zeros((n_rows, N), dtype=np.float32)
    S[row_of, col_of] = np.where(np.isnan(cs), nan_fill, cs)
    del row_of, col_of
    # order each row by product id (padding last) -> ties break by product_id
    if N > 1:
        o = np.argsort(P, axis=1, kind="stable")
        P = np.take_along_axis(P, o, axis=1)
        S = np.take_along_axis(S, o, axis=1)
        del o
        pad = np.iinfo(np.int32).max
        dup = (P[:, 1:] == P[:, :-1]) & (P[:, 1:] != pad)
        if dup.any():  # rare: merge duplicates keeping the max score
            r, c = np.nonzero(dup)
            for rr, cc in zip(r[::-1], c[::-1]):  # right to left handles chains
                S[rr, cc] = max(S[rr, cc], S[rr, cc + 1])
                S[rr, cc + 1] = 0.0
                P[rr, cc + 1] = pad
            o = np.argsort(P, axis=1, kind="stable")
            P = np.take_along_axis(P, o, axis=1)
            S = np.take_along_axis(S, o, axis=1)
    P[P == np.iinfo(np.int32).max] = -1
    return run_users.astype(np.int32), P, S


# --------------------------------------------------------------------------- #
# MMR (vectorised over a batch of users)
# --------------------------------------------------------------------------- #
def _mmr_batch(
    rel: np.ndarray,  # (B, N) float32, hybrid relevance
    valid: np.ndarray,  # (B, N) bool
    k: int,
    lam: float,
    item_vecs: np.ndarray | None,  # (B, N, f) unit vectors (factors similarity)
    groups: np.ndarray | None,  # (B, N) int group ids, <0 = unknown (aisle/department)
) -> np.ndarray:
    """Greedy MMR; returns (B, k) column indices into the batch, -1 = nothing left.

    All users of the batch advance one greedy step at a time:
    ``obj = lam * rel - (1 - lam) * max_sim`` with already chosen / padding
    cells at -inf; ``argmax`` picks the first maximum, i.e. the smallest
    product_id among ties (rows are in product_id order).
    """
    B, N = rel.shape
    picks = np.full((B, k), -1, dtype=np.int64)
    if B == 0 or N == 0:
        return picks
    rows = np.arange(B)
    neg_inf = np.float32(-np.inf)
    base = np.where(valid, np.float32(lam) * rel, neg_inf).astype(np.float32)  # -inf = not available
    w_sim = np.float32(1.0 - lam)
    use_div = w_sim > 0 and (item_vecs is not None or groups is not None)
    max_sim = np.empty((B, N), dtype=np.float32) if use_div else None
    obj = np.empty((B, N), dtype=np.float32)
    k_eff = min(k, N)

    for step in range(k_eff):
        if step == 0 or not use_div:
            j = base.argmax(axis=1)
        else:
            np.multiply(max_sim, w_sim, out=obj)
            np.subtract(base, obj, out=obj)
            j = obj.argmax(axis=1)
        got = base[rows, j] > neg_inf
        if not got.any():
            break
        picks[:, step] = np.where(got, j, -1)
        base[rows, j] = neg_inf
        if not use_div or step == k_eff - 1:
            continue
        if item_vecs is not None:
            chosen = item_vecs[rows, j]  # (B, f)
            sim = np.einsum("bnf,bf->bn", item_vecs, chosen)
        else:
            g = groups[rows, j][:, None]
            sim = ((groups == g) & (g >= 0)).astype(np.float32)
        if step == 0:
            max_sim[...] = sim
        else:
            np.maximum(max_sim, sim, out=max_sim)
    return picks


# --------------------------------------------------------------------------- #
# main entry point
# --------------------------------------------------------------------------- #
def postrank(
    candidates: pl.DataFrame,
    *,
    k: int,
    users: Iterable[int] | np.ndarray | pl.Series | pl.DataFrame,
    popularity: pl.DataFrame,
    alpha: float = 0.7,
    mmr_lambda: float = 0.8,
    similarity: Literal["factors", "aisle", "department"] = "factors",
    item_factors: np.ndarray | Any | None = None,
    item_ids: np.ndarray | None = None,
    products: pl.DataFrame | None = None,
    popularity_kind: Literal["global", "user"] = "global",
    user_popularity: pl.DataFrame | None = None,
    batch_size: int = 2048,
    num_threads: int = 0,
) -> pl.DataFrame:
    """Re-rank ALS candidates into exactly ``k`` recommendations per user.

    Parameters
    ----------
    candidates: ``user_id, product_id, score`` (+ ``rank``, unused) -- the
        top-N ALS candidates per user. Users not in ``users`` are ignored;
        duplicate (user, product) rows keep the highest score; a NaN score
        counts as the lowest score of the input.
    k: list length per user.
    users: the users to produce lists for (ids; Series / array / iterable /
        DataFrame with ``user_id``).
    popularity: global popularity, ``product_id`` plus ``popularity`` (or
        ``p`` / ``n_users`` as produced by ``evaluation.baselines.item_popularity``).
        Used for the hybrid when ``popularity_kind="global"`` and always for
        the fill order.
    alpha: weight of the normalised ALS score in the hybrid (1 = pure ALS).
    mmr_lambda: MMR trade-off (1 = pure relevance, no diversity).
    similarity: ``"factors"`` (cosine of ALS item factors; needs
        ``item_factors`` + ``item_ids``, or an ``AlsModel`` as ``item_factors``),
        ``"aisle"`` or ``"department"`` (needs ``products`` with
        ``product_id, aisle_id, department_id``; products without a known
        aisle / department, or without factors, are similar to nothing).
    products: catalogue; also extends the fill order with never-bought
        products (popularity 0).
    popularity_kind: ``"global"`` or ``"user"`` (needs ``user_popularity``:
        ``user_id, product_id, purchases``; 0 when the user never bought it).
    batch_size: users per vectorised MMR batch (memory per in-flight batch
        ~ ``batch_size * N * (f + 12) * 4`` bytes: ~60 MB for 2048 x 100 x 64).
    num_threads: worker threads running batches concurrently (numpy releases
        the GIL); 0 = all usable cores.
    """
    if k <= 0:
        return pl.DataFrame(schema=POSTRANK_SCHEMA)
    if k > np.iinfo(np.int16).max:
        raise ValueError("k must fit the Int16 rank column (<= 32767)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    if not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError("mmr_lambda must be in [0, 1]")
    if similarity not in ("factors", "aisle", "department"):
        raise ValueError(f"unknown similarity {similarity!r}")
    if popularity_kind not in ("global", "user"):
        raise ValueError(f"unknown popularity_kind {popularity_kind!r}")
    if popularity_kind == "user" and user_popularity is None:
        raise ValueError('popularity_kind="user" needs user_popularity')

    # ---- similarity inputs (validated before any heavy work) ----
    unit = fac_map = group_map = None
    if similarity == "factors":
        if item_factors is not None and hasattr(item_factors, "item_factors"):
            item_ids = item_factors.item_ids if item_ids is None else item_ids
            item_factors = item_factors.item_factors
        if item_factors is None or item_ids is None:
            raise ValueError('similarity="factors" needs item_factors and item_ids')
        F = np.asarray(item_factors, dtype=np.float32)
        norms = np.linalg.norm(F, axis=1, keepdims=True)
        unit = np.vstack(
            [F / np.where(norms > 0, norms, 1.0), np.zeros((1, F.shape[1]), np.float32)]
        ).astype(np.float32)  # last row: zero vector for products without factors
        fac_map = _IdMap(np.asarray(item_ids), np.arange(F.shape[0], dtype=np.int32), F.shape[0])
    else:
        if products is None:
            raise ValueError(f'similarity="{similarity}" needs products')
        gcol = "aisle_id" if similarity == "aisle" else "department_id"
        if gcol not in products.columns:
            gcol = similarity  # fall back to the name column
        pg = (
            products.select(
                pl.col("product_id").cast(pl.Int32),
                pl.col(gcol).rank("dense").cast(pl.Int32).alias("g"),  # nulls stay null
            )
            .drop_nulls("product_id")
            .unique("product_id", keep="first")
        )
        group_map = _IdMap(pg["product_id"].to_numpy(), pg["g"].fill_null(-1).to_numpy(), -1)

    user_arr = _user_array(users)
    pop_table = _popularity_table(popularity, products)
    pop_ids_sorted = pop_table["product_id"].to_numpy()
    pop_vals_sorted = pop_table["popularity"].to_numpy()
    pop_map = _IdMap(pop_ids_sorted, pop_vals_sorted.astype(np.float32), np.float32(0.0))

    # ---- candidates: dense (user x N) layout, rows in product_id order ----
    cand_users, P, S = _layout(candidates, user_arr)
    n_rows, N = P.shape
    valid = P >= 0

    if popularity_kind == "global":
        POP = pop_map(P)
    else:
        up = user_popularity.select(
            pl.col("user_id").cast(pl.Int32),
            pl.col("product_id").cast(pl.Int32),
            pl.col("purchases").cast(pl.Float32).fill_null(0.0),
        ).drop_nulls(["user_id", "product_id"])
        up = up.join(
            pl.DataFrame({"user_id": pl.Series(cand_users, dtype=pl.Int32)}), on="user_id", how="semi"
        )
        ukey = _pair_key(up["user_id"].to_numpy(), up["product_id"].to_numpy())
        uval = up["purchases"].to_numpy()
        if ukey.size and not (ukey[1:] > ukey[:-1]).all():
            sorted_up = (
                up.group_by(["user_id", "product_id"])
                .agg(pl.col("purchases").sum())
                .sort(["user_id", "product_id"])
            )
            ukey = _pair_key(sorted_up["user_id"].to_numpy(), sorted_up["product_id"].to_numpy())
            uval = sorted_up["purchases"].to_numpy()
        POP = np.zeros((n_rows, N), dtype=np.float32)
        if ukey.size and n_rows:
            # queries come out sorted (rows by user, columns by product): fast search
            q = _pair_key(np.broadcast_to(cand_users[:, None], P.shape)[valid], P[valid])
            pos = np.minimum(np.searchsorted(ukey, q), ukey.size - 1)
            POP[valid] = np.where(ukey[pos] == q, uval[pos], np.float32(0.0))
            del q, pos

    # ---- hybrid + MMR, batch by batch (threads) ----
    k_als = min(k, N)
    sel_pid = np.full((n_rows, k), -1, dtype=np.int32)
    sel_score = np.zeros((n_rows, k), dtype=np.float32)
    batch_size = max(int(batch_size), 1)
    diversify = mmr_lambda < 1.0 and k_als > 1

    def run(b0: int) -> None:
        b1 = min(b0 + batch_size, n_rows)
        v = valid[b0:b1]
        rel = (
            np.float32(alpha) * _minmax_rows(S[b0:b1], v)
            + np.float32(1.0 - alpha) * _minmax_rows(POP[b0:b1], v)
        ).astype(np.float32)
        pid = P[b0:b1]
        vecs = groups = None
        if diversify:
            if unit is not None:
                vecs = unit[fac_map(pid)]  # (B, N, f); padding -> zero vector
            else:
                groups = group_map(pid)
        picks = _mmr_batch(rel, v, k_als, mmr_lambda, vecs, groups)
        ok = picks >= 0
        rr = np.arange(b1 - b0)[:, None]
        pc = np.where(ok, picks, 0)
        sel_pid[b0:b1, :k_als] = np.where(ok, pid[rr, pc], -1)
        sel_score[b0:b1, :k_als] = np.where(ok, rel[rr, pc], 0.0)

    map_blocks(run, range(0, n_rows, batch_size), int(num_threads) if num_threads and num_threads > 0 else None)
    del P, S, POP, valid

    # ---- assemble: ALS rows for users with candidates, fill for the rest ----
    n_users = user_arr.size
    out_pid = np.full((n_users, k), -1, dtype=np.int32)
    out_score = np.zeros((n_users, k), dtype=np.float32)
    out_src = np.zeros((n_users, k), dtype=np.int8)  # 0 als, 1 popular, 2 fallback
    pos = np.searchsorted(user_arr, cand_users)
    out_pid[pos] = sel_pid
    out_score[pos] = sel_score
    has_cands = np.zeros(n_users, dtype=bool)
    has_cands[pos] = True
    del sel_pid, sel_score

    n_have = (out_pid >= 0).sum(axis=1)
    short = np.flatnonzero(n_have < k)
    if short.size and pop_ids_sorted.size:
        L = min(2 * k, pop_ids_sorted.size)  # k needed + at most k-1 skipped
        top = pop_ids_sorted[:L].astype(np.int32)
        top_pop = pop_vals_sorted[:L].astype(np.float32)
        for c0 in range(0, short.size, 65536):  # bound the (S, L, k) temporary
            sh = short[c0 : c0 + 65536]
            have = out_pid[sh]  # (S, k): ALS picks first, then -1
            m = n_have[sh]
            in_list = (top[None, :, None] == have[:, None, :]).any(axis=2)  # (S, L)
            free = ~in_list
            order_free = np.cumsum(free, axis=1) - 1  # position among free items
            take = free & (order_free < (k - m)[:, None])
            srow, scol = np.nonzero(take)
            dest = m[srow] + order_free[srow, scol]
            urow = sh[srow]
            out_pid[urow, dest] = top[scol]
            out_score[urow, dest] = top_pop[scol]
            out_src[urow, dest] = np.where(has_cands[urow], 1, 2)

    filled = out_pid >= 0  # contiguous from rank 1
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int16), (n_users, k))
    uids = np.broadcast_to(user_arr[:, None], (n_users, k))
    return pl.DataFrame(
        {
            "user_id": pl.Series(uids[filled], dtype=pl.Int32),
            "rank": pl.Series(ranks[filled], dtype=pl.Int16),
            "product_id": pl.Series(out_pid[filled], dtype=pl.Int32),
            "score": pl.Series(out_score[filled], dtype=pl.Float32),
            "source": pl.Series(out_src[filled], dtype=pl.Int8),
        }
    ).with_columns(
        pl.col("source").replace_strict(dict(enumerate(SOURCES)), return_dtype=pl.String)
    )
