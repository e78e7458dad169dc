"""TIFU user vectors: repeat-aware, time-decayed item frequencies (pure polars / scipy).

TIFU-KNN (Hu, He, Gao & Zhang, SIGIR 2020, "Modeling Personalized Item
Frequency Information for Next-basket Recommendation") represents a user by
the multi-hot vectors of their past baskets, decayed twice:

* the user's baskets, in ``order_number`` order, are cut into groups of
  ``group_size`` consecutive baskets. Groups are formed **from the most recent
  basket backwards**: the last group is always complete and only the oldest
  group may be partial (t baskets give ``ceil(t / group_size)`` groups);
* within a group, basket b weighs ``within_decay ** (distance from the
  group's last basket)`` and the group vector is the *mean* over the group's
  baskets (a partial group divides by its own size);
* groups weigh ``group_decay ** (distance from the last group)`` and the user
  vector is the *mean* over the groups.

So every basket gets one scalar weight and the user vector is the weighted
sum of its baskets' multi-hot vectors -- one join and one group_by, no loop
over users and no dense users x items matrix.

Convention note: the paper's text calls the grouping parameter the group
size m. The authors' code (HaojiHu/TIFUKNN, ``group_history_list``) uses the
same argument as a *number of groups* (the history is split into that many
near-equal blocks) and decays baskets by their distance from the user's last
basket rather than from their group's last basket. We follow the paper's
text and the issue's spec (``group_size`` baskets per group, within-group
distance); ``group_size`` larger than every history makes the two agree.

Only baskets strictly before each user's ``cutoff`` order_number are used, so
the same function fits the model for the target basket (cutoff = target
order_number) and for validation (cutoff = the basket before the target).
Orders without lines (Kaggle "test" orders) are not baskets. An order lists
a product once (ingest validates this), so lines are multi-hot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from insightflow_assets.frames import lazy as _lazy

Frame = pl.DataFrame | pl.LazyFrame

__all__ = [
    "basket_weights",
    "BasketLayout",
    "basket_layout",
    "layout_vectors",
    "tifu_user_vectors",
    "target_cutoffs",
    "previous_basket_cutoffs",
]

def _check_params(group_size: int, within_decay: float, group_decay: float) -> None:
    if int(group_size) < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size!r}")
    for name, r in (("within_decay", within_decay), ("group_decay", group_decay)):
        if not 0.0 < r <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {r!r}")


def _baskets(orders: Frame, lines: Frame, cutoff: Frame | None) -> pl.LazyFrame:
    """order_id, user_id, order_number of the baskets (orders with lines)
    strictly before the user's cutoff; users absent from ``cutoff`` are dropped."""
    o = _lazy(orders).select(
        pl.col("order_id").cast(pl.Int64),
        pl.col("user_id").cast(pl.Int32),
        pl.col("order_number").cast(pl.Int32),
    )
    if cutoff is not None:
        cut = _lazy(cutoff).select(
            pl.col("user_id").cast(pl.Int32), pl.col("cutoff").cast(pl.Int32)
        )
        o = o.join(cut, on="user_id", how="inner").filter(
            pl.col("order_number") < pl.col("cutoff")
        )
    with_lines = _lazy(lines).select(pl.col("order_id").cast(pl.Int64))
    return o.join(with_lines, on="order_id", how="semi").select(
        "order_id", "user_id", "order_number"
    )


def basket_weights(
    orders: Frame,
    lines: Frame,
    cutoff: Frame | None = None,
    *,
    group_size: int = 3,
    within_decay: float = 0.9,
    group_decay: float = 0.7,
) -> pl.DataFrame:
    """One row per basket used by the model: ``order_id`` Int64, ``user_id``
    Int32, ``order_number`` Int32, ``back`` Int32 (0 = the user's most recent
    basket before the cutoff), ``group`` Int32 (0 = the most recent group) and
    ``weight`` Float64, the basket's share of the TIFU user vector::

        weight = within_decay ** (back % group_size) / size(group)
               * group_decay ** group / n_groups

    ``cutoff`` (``user_id, cutoff``) keeps baskets with ``order_number <
    cutoff``; None keeps every basket. Sorted by ``user_id, order_number``.
    """
    _check_params(group_size, within_decay, group_decay)
    return _weighted(_ordered_baskets(orders, lines, cutoff), group_size, within_decay, group_decay)


def _ordered_baskets(orders: Frame, lines: Frame, cutoff: Frame | None) -> pl.DataFrame:
    """``order_id, user_id, order_number, back, _n`` (the user's number of baskets),
    sorted by ``user_id, order_number``: the baskets, before any decay."""
    # integer row position of a basket within its user (sorted), via a global
    # index minus the index of the user's first row (cheaper than .over)
    idx = pl.int_range(0, pl.len(), dtype=pl.Int32)
    first = (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True)
    pos = idx - pl.when(first).then(idx).forward_fill()
    n = pl.len().over("user_id").cast(pl.Int32)
    return (
        _baskets(orders, lines, cutoff)
        .sort("user_id", "order_number")
        .with_columns(back=(n - 1 - pos).cast(pl.Int32), _n=n)
        .collect()
    )


def _weighted(baskets: pl.DataFrame, group_size: int, within_decay: float, group_decay: float) -> pl.DataFrame:
    """`basket_weights` of `_ordered_baskets`."""
    m = int(group_size)
    n, g = pl.col("_n"), pl.col("back") // m
    size = pl.min_horizontal(pl.lit(m, pl.Int32), n - g * m)  # oldest group may be partial
    return (
        baskets.lazy()
        .with_columns(group=g.cast(pl.Int32), _n_groups=(n + m - 1) // m, _size=size)
        .with_columns(
            weight=(
                pl.lit(float(within_decay)).pow(pl.col("back") % m)
                / pl.col("_size")
                * pl.lit(float(group_decay)).pow(pl.col("group"))
                / pl.col("_n_groups")
            )
        )
        .select("order_id", "user_id", "order_number", "back", "group", "weight")
        .collect()
    )


@dataclass(frozen=True)
class BasketLayout:
    """Everything of the TIFU vectors but the decays: the baskets (`_ordered_baskets`),
    the row of each basket's user, and the lines as a runs x items multi-hot matrix with
    the basket of each run. Decay settings fitted on one window share it."""

    baskets: pl.DataFrame
    users: np.ndarray
    user_row: np.ndarray
    run_basket: np.ndarray
    lines: sp.csr_matrix
    items: np.ndarray


def basket_layout(
    orders: Frame, lines: Frame, cutoff: Frame | None = None, *, item_ids: np.ndarray | None = None
) -> BasketLayout:
    """The `BasketLayout` of the baskets before each cutoff (arguments as `tifu_user_vectors`)."""
    b = _ordered_baskets(orders, lines, cutoff)
    lf = lines.collect() if isinstance(lines, pl.LazyFrame) else lines
    oid = _ints(lf.get_column("order_id"))
    pid = _ints(lf.get_column("product_id"))
    users, user_row = np.unique(b.get_column("user_id").to_numpy(), return_inverse=True)
    # runs of equal order_id; keep the lines of runs whose order is a used basket
    starts = np.flatnonzero(np.r_[True, oid[1:] != oid[:-1]]) if oid.size else np.empty(0, np.int64)
    basket = _positions(b.get_column("order_id").to_numpy(), oid[starts])
    lens = np.diff(np.r_[starts, oid.size])
    del oid
    pid = pid[np.repeat(basket >= 0, lens)]
    basket, lens = basket[basket >= 0], lens[basket >= 0]
    items = _unique(pid) if item_ids is None else _unique(np.asarray(item_ids))
    cols = _positions(items, pid)
    del pid
    if (cols < 0).any():  # products outside the given catalogue
        lens = np.bincount(np.repeat(np.arange(lens.size), lens)[cols >= 0], minlength=lens.size)
        cols = cols[cols >= 0]
    lmat = sp.csr_matrix(
        (np.ones(cols.size, np.float32), cols.astype(np.int32), np.r_[0, np.cumsum(lens)]),
        shape=(lens.size, items.size),
    )
    return BasketLayout(baskets=b, users=users, user_row=user_row, run_basket=basket, lines=lmat, items=items)


def layout_vectors(
    layout: BasketLayout, *, group_size: int = 3, within_decay: float = 0.9, group_decay: float = 0.7
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """`tifu_user_vectors` of a `basket_layout`: the decays' basket weights times the lines."""
    _check_params(group_size, within_decay, group_decay)
    w = _weighted(layout.baskets, group_size, within_decay, group_decay)
    rmat = _run_weights(w, layout.user_row, layout.run_basket, layout.users.size)
    x = sp.csr_matrix(rmat @ layout.lines, dtype=np.float32)
    x.sort_indices()
    return x, layout.users.astype(np.int32), layout.items.astype(np.int32)


def tifu_user_vectors(
    orders: Frame,
    lines: Frame,
    cutoff: Frame | None = None,
    *,
    group_size: int = 3,
    within_decay: float = 0.9,
    group_decay: float = 0.7,
    item_ids: np.ndarray | None = None,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """TIFU user vectors as a users x items CSR matrix (float32).

    ``orders``: ``order_id, user_id, order_number``; ``lines``: ``order_id,
    product_id``; ``cutoff``: ``user_id, cutoff`` (None: all baskets).
    Returns ``(vectors, user_ids, item_ids)``: row r is the user
    ``user_ids[r]``, column c the product ``item_ids[c]``, both sorted
    ascending int32. Users without a basket before their cutoff have no row.
    ``item_ids`` (a catalogue) fixes the columns; products outside it are
    dropped. Entry (u, i) = sum of the weights (``basket_weights``) of u's
    baskets containing i, so it is > 0 exactly when u bought i before.

    Built as one sparse product ``R @ L``: ``L`` holds the lines as they come
    (one row per run of equal ``order_id``, so nothing is sorted or copied
    but the item column) and ``R`` (users x runs) the basket weights. That
    replaces a 32 M-row join + group_by (14 s, +1.5 GB at Instacart scale).
    """
    _check_params(group_size, within_decay, group_decay)
    layout = basket_layout(orders, lines, cutoff, item_ids=item_ids)
    return layout_vectors(layout, group_size=group_size, within_decay=within_decay, group_decay=group_decay)


def _run_weights(w: pl.DataFrame, user_row: np.ndarray, basket: np.ndarray, n_users: int) -> sp.csr_matrix:
    """``R`` (users x runs): each run's basket weight in its user's row.

    A user's entries are stored oldest basket first (``w`` is sorted by user, order_number),
    and the sparse product adds them in stored order: the float32 sums are then the same
    whatever order the lines come in (raw order lines, or baskets sorted by user)."""
    order = np.argsort(basket, kind="stable")
    rows = user_row[basket[order]]
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_users))]
    data = w.get_column("weight").to_numpy()[basket[order]].astype(np.float32)
    return sp.csr_matrix((data, order.astype(np.int32), indptr), shape=(n_users, basket.size))


def _ints(s: pl.Series) -> np.ndarray:
    """An id column as int32 when it fits (half the memory of int64), else int64."""
    if s.dtype in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16):
        return s.cast(pl.Int32).to_numpy()
    lo, hi = s.min(), s.max()
    small = s.len() == 0 or (lo >= -(1 << 31) and hi < (1 << 31))
    return s.cast(pl.Int32 if small else pl.Int64).to_numpy()


def _small_ids(a: np.ndarray) -> bool:
    return a.size > 0 and int(a.min()) >= 0 and int(a.max()) < max(4 * a.size, 1 << 22)


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique ids (a bincount for small non-negative ids: O(n), no sort)."""
    if _small_ids(a):
        seen = np.zeros(int(a.max()) + 1, dtype=bool)
        seen[a] = True
        return np.flatnonzero(seen).astype(np.int64)
    return np.unique(a).astype(np.int64)


def _positions(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query in the unique ``keys`` (any order), -1 if absent.
    A dense table when ids are small non-negative ints, else a sorted search."""
    keys = np.asarray(keys, dtype=np.int64)
    out = np.full(query.shape, -1, dtype=np.int32 if keys.size < (1 << 31) else np.int64)
    if keys.size == 0 or query.size == 0:
        return out
    lo, hi = int(keys.min()), int(keys.max())
    if lo >= 0 and hi < max(4 * (keys.size + query.size), 1 << 22):
        table = np.full(hi + 1, -1, dtype=out.dtype)
        table[keys] = np.arange(keys.size)
        qlo, qhi = int(query.min()), int(query.max())
        if qlo >= 0 and qhi <= hi:  # the common case: one gather, no masks
            return table[query]
        ok = (query >= 0) & (query <= hi)
        out[ok] = table[query[ok]]
        return out
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], query), keys.size - 1)
    hit = keys[order][pos] == query
    out[hit] = order[pos[hit]]
    return out


def target_cutoffs(orders: Frame, order_products: Frame, back: int = 0) -> pl.DataFrame:
    """``user_id, cutoff``: each user's target order_number, by the project's
    rule (``ratings.build.target_orders``: the ``eval_set == "train"`` order,
    else the last order with lines; ``back=1``: the validation basket before
    it). Fitting with it uses exactly the baskets the ``ratings`` (built with
    the same ``back``) use."""
    from insightflow_assets.ratings.build import target_orders

    lf = _lazy(orders)
    cols = lf.collect_schema().names()
    extra = []
    if "is_first_order" not in cols:
        extra.append((pl.col("order_number") == 1).alias("is_first_order"))
    if "days_since_prior_order" not in cols:  # days are not used for the cutoff
        extra.append(pl.lit(None, pl.Float32).alias("days_since_prior_order"))
    if "eval_set" not in cols:
        extra.append(pl.lit("prior").alias("eval_set"))
    t = target_orders(lf.with_columns(extra) if extra else lf, order_products, back)
    return t.select(pl.col("user_id").cast(pl.Int32), pl.col("order_number").cast(pl.Int32).alias("cutoff"))


def previous_basket_cutoffs(orders: Frame, lines: Frame, cutoff: Frame) -> pl.DataFrame:
    """``user_id, cutoff, order_id``: for validation, each user's last basket
    strictly before ``cutoff`` becomes the new cutoff (its lines are the
    validation basket; the model then sees only the baskets before it).
    Users with no basket before their cutoff are left out."""
    return (
        _baskets(orders, lines, cutoff)
        .sort("user_id", "order_number")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("order_number").last().alias("cutoff"), pl.col("order_id").last())
        .collect()
    )
