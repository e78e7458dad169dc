"""Directional basket pairs A→B ("B was added after A"), overall and per segment (pure numpy/polars).

From the baskets of a training window, each ordered by ``add_to_cart_order``:

* ``count(A→B)``: baskets where B was added within ``window`` positions after A. The window is
  the cap on pair explosion: a basket of n items gives at most ``n × window`` pairs instead of
  n²/2, so a 100-item basket costs as much as a 10-item one per line, and the pairs it keeps
  are the close ones, which carry the "goes with" signal;
* ``baskets(A)``: baskets of the window containing A; ``T``: baskets of the window;
* ``confidence = count / baskets(A)``, ``lift = count × T / (baskets(A) × baskets(B))``,
  ``npmi = ln(lift) / -ln(count / T)`` (normalised PMI, ≤ 1): the association beyond what the two
  products' popularity explains. Pairs under ``min_support`` baskets are dropped (a lift on two
  baskets is noise), and neighbours are ranked by npmi, so a best-seller is not everyone's
  neighbour.

Each (segment, product) keeps its ``max_neighbours`` best followers (``direction`` 0, A→?) and
its best predecessors (``direction`` 1, the reverse index ?→B). Segment -1 is every basket
("any segment"); a basket counts in its customer's ``user_seg`` segment as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from insightflow_assets.parallel import map_blocks
from insightflow_assets.ratings.build import target_orders

ANY = -1  # the segment id of the pairs over every basket
FORWARD, REVERSE = 0, 1

PAIRS_SCHEMA = {
    "segment": pl.Int8,
    "direction": pl.Int8,  # FORWARD: product → neighbour added after it; REVERSE: neighbour added before
    "product_id": pl.Int32,
    "neighbour_id": pl.Int32,
    "count": pl.Int32,
    "confidence": pl.Float32,
    "lift": pl.Float32,
    "npmi": pl.Float32,
    "rank": pl.Int16,
}
ITEMS_SCHEMA = {"segment": pl.Int8, "product_id": pl.Int32, "baskets": pl.Int32}


@dataclass(frozen=True)
class PairParams:
    window: int = 5  # B counts after A when at most this many positions later in the cart
    min_support: int = 3  # baskets
    max_neighbours: int = 100  # per (segment, product, direction)


def window_lines(orders: pl.DataFrame, lines: pl.DataFrame, user_seg: pl.DataFrame | None, *, back: int = 0) -> pl.DataFrame:
    """``order_id, segment, product_id`` of every training-window basket (orders before each
    customer's target; ``back=1``: before the validation basket), in add-to-cart order."""
    return cart_lines(_window_orders(orders, lines, back).select("order_id", "user_id"), lines, user_seg)


def validation_lines(orders: pl.DataFrame, lines: pl.DataFrame, user_seg: pl.DataFrame | None) -> pl.DataFrame:
    """`window_lines` of each customer's last basket of the window only (the validation basket
    of choose.validation_queries; order_id breaks invalid order_number ties): what the profile
    choice asks its queries from when the window is counted elsewhere (the Spark job)."""
    window = _window_orders(orders, lines, 0).join(lines.lazy().select("order_id").unique(), on="order_id", how="semi")
    last = (
        window.filter(pl.col("order_number") == pl.col("order_number").max().over("user_id"))
        .group_by("user_id").agg(pl.col("order_id").min())
    )  # fmt: skip
    return cart_lines(last.select("order_id", "user_id"), lines, user_seg)


def _window_orders(orders: pl.DataFrame, lines: pl.DataFrame, back: int) -> pl.LazyFrame:
    """``order_id, user_id, order_number`` of each customer's orders before the target."""
    targets = target_orders(orders, lines, back).select(pl.col("user_id").cast(pl.Int32), pl.col("order_number").alias("_t"))
    return (
        orders.lazy()
        .select("order_id", pl.col("user_id").cast(pl.Int32), "order_number")
        .join(targets.lazy(), on="user_id", how="inner")
        .filter(pl.col("order_number") < pl.col("_t"))
        .select("order_id", "user_id", "order_number")
    )


def cart_lines(chosen: pl.DataFrame | pl.LazyFrame, lines: pl.DataFrame, user_seg: pl.DataFrame | None) -> pl.DataFrame:
    """``order_id, segment, product_id`` of the ``chosen`` orders (``order_id, user_id``), each
    order's lines in add-to-cart order; the segment is the customer's (`ANY` without one).

    Ingest refuses a product listed twice in one order, so lines are not de-duplicated here. A
    null ``add_to_cart_order`` sorts after the order's known positions, in input line order
    (the file's line order is what the transactions form derives the cart order from anyway).
    """
    chosen = chosen.lazy().select("order_id", pl.col("user_id").cast(pl.Int32))
    if user_seg is not None:
        seg = user_seg.lazy().select(pl.col("user_id").cast(pl.Int32), pl.col("segment").cast(pl.Int8))
        chosen = chosen.join(seg, on="user_id", how="left")
    else:
        chosen = chosen.with_columns(segment=pl.lit(None, pl.Int8))
    cart = pl.col("add_to_cart_order") if "add_to_cart_order" in lines.columns else pl.lit(None, pl.Int64)
    # one Int64 sort key (order, cart position), sorted stably so that ties keep the input
    # line order: a single-column sort is several times cheaper than a multi-column one on
    # 32 M lines; 2**20 positions exceed any basket
    key = pl.col("order_id").cast(pl.Int64) * (1 << 21) + cart.cast(pl.Int64).fill_null(1 << 20)
    return (
        lines.lazy()
        .select("order_id", "product_id", key.alias("_key"))
        # the lines' order kept through the join: the stable sort below relies on it for ties
        # (lines of one order with no cart position keep the file's order)
        .join(chosen.select("order_id", "segment"), on="order_id", how="inner", maintain_order="left")
        .sort("_key", maintain_order=True)
        .select("order_id", pl.col("segment").fill_null(ANY), pl.col("product_id").cast(pl.Int32))
        .collect()
    )


def count_pairs(order_id: np.ndarray, item: np.ndarray, n_items: int, window: int) -> sp.csr_matrix:
    """Counts of ``a → b`` (B within ``window`` positions after A in one order) as an
    n_items × n_items CSR matrix; lines grouped by order in cart order."""
    rows, cols = [], []
    for d in range(1, window + 1):
        i = np.flatnonzero(order_id[d:] == order_id[:-d])
        rows.append(item[i])
        cols.append(item[i + d])
    bits = max(int(n_items).bit_length(), 1)  # shifts and masks: int64 division is slow
    code = np.concatenate([(r.astype(np.int64) << bits) | c for r, c in zip(rows, cols)]) if rows else np.empty(0, np.int64)
    del rows, cols
    # a (multi-threaded) sort and run lengths: cheaper than COO → CSR's duplicate summing or a
    # hash group-by on tens of millions of codes
    code = pl.Series(code).sort().to_numpy()
    start = np.flatnonzero(np.concatenate(([True], code[1:] != code[:-1]))) if code.size else np.empty(0, np.int64)
    count = np.diff(np.append(start, code.size)).astype(np.int32)
    code = code[start]
    a, b = (code >> bits).astype(np.int32), (code & ((1 << bits) - 1)).astype(np.int32)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(a, minlength=n_items))))
    return sp.csr_matrix((count, b, indptr), shape=(n_items, n_items))


def segment_pairs(
    order_id: np.ndarray, item: np.ndarray, segment: np.ndarray, n_items: int, window: int, min_support: int
) -> tuple[pl.DataFrame, dict]:
    """``segment, a, b, count`` for every segment and ANY (the sum), pairs of at least
    ``min_support`` baskets only, and the counts of the ANY matrix before that filter.

    Segment by segment: an order has one customer, so the segment's lines stay grouped by
    order, and the peak memory is a few segments' pairs (one per core), not all of them.
    Segments are counted in threads; their sum is taken in segment order."""
    segments = np.unique(segment)

    def one(s) -> tuple[sp.csr_matrix, pl.DataFrame | None]:
        m = segment == s
        counts = count_pairs(order_id[m], item[m], n_items, window)
        return counts, (_coo_frame(counts, int(s), min_support) if s != ANY else None)

    frames, overall = [], sp.csr_matrix((n_items, n_items), dtype=np.int32)
    for counts, frame in map_blocks(one, segments):
        overall = overall + counts
        if frame is not None:
            frames.append(frame)
    frames.append(_coo_frame(overall, ANY, min_support))
    stats = {"pair_occurrences": int(overall.sum()), "distinct_pairs": int(overall.nnz),
             "pairs_at_min_support": int((overall.data >= min_support).sum())}
    return pl.concat(frames), stats


def _coo_frame(counts: sp.csr_matrix, segment: int, min_support: int) -> pl.DataFrame:
    coo = counts.tocoo()
    keep = coo.data >= min_support
    coo = sp.coo_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=coo.shape)
    return pl.DataFrame(
        {"segment": np.full(coo.nnz, segment, np.int8), "a": coo.row.astype(np.int32), "b": coo.col.astype(np.int32),
         "count": coo.data.astype(np.int32)}
    )


def basket_counts(item: np.ndarray, segment: np.ndarray, first: np.ndarray, n_items: int) -> tuple[pl.DataFrame, dict[int, int]]:
    """Baskets containing each item per segment and ANY (``first`` marks each order's first
    line), and the number of baskets per segment."""
    segs = np.unique(segment)
    slot = np.searchsorted(segs, segment).astype(np.int64)
    per = np.bincount(slot * n_items + item, minlength=segs.size * n_items).reshape(segs.size, n_items)
    frames = [_nonzero_counts(per[k], int(s)) for k, s in enumerate(segs) if s != ANY]
    frames.append(_nonzero_counts(per.sum(axis=0), ANY))
    orders = np.bincount(slot[first], minlength=segs.size)
    totals = {int(s): int(orders[k]) for k, s in enumerate(segs) if s != ANY}
    totals[ANY] = int(first.sum())
    return pl.concat(frames), totals


def _nonzero_counts(counts: np.ndarray, segment: int) -> pl.DataFrame:
    a = np.flatnonzero(counts).astype(np.int32)
    return pl.DataFrame({"segment": np.full(a.size, segment, np.int8), "a": a, "baskets": counts[a].astype(np.int32)})


def dense_items(product_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, item)``: the sorted distinct product ids and each line's index into them."""
    if product_id.size and 0 <= product_id.min() and product_id.max() < 1 << 26:
        # a lookup table: linear, where np.unique sorts 32 M ids
        seen = np.bincount(product_id) > 0
        lut = np.cumsum(seen, dtype=np.int32) - 1
        return np.flatnonzero(seen).astype(np.int32), lut[product_id]
    ids, item = np.unique(product_id, return_inverse=True)
    return ids.astype(np.int32), item.astype(np.int32).ravel()


def normalise(pairs: pl.DataFrame, items: pl.DataFrame, totals: dict[int, int], params: PairParams, n_items: int,
              only: np.ndarray | None = None) -> pl.DataFrame:
    """Confidence / lift / npmi of the supported pairs, and the top ``max_neighbours`` each way
    (of the items marked in ``only`` when given).

    Pairs with lift ≤ 1 (npmi ≤ 0) are dropped: bought together less than chance, they are no
    complements. Numpy lookups by item index, not joins: this runs on ~10 M pairs."""
    out = []
    for (s,), part in pairs.group_by("segment", maintain_order=True):
        per = np.zeros(n_items, np.float64)
        mine = items.filter(pl.col("segment") == s)
        per[mine["a"].to_numpy()] = mine["baskets"].to_numpy()
        a, b, count = (part[c].to_numpy() for c in ("a", "b", "count"))
        total = float(totals[int(s)])
        lift = count * total / (per[a] * per[b])
        p_ab = count / total
        with np.errstate(divide="ignore", invalid="ignore"):
            # -ln p(AB) is 0 only when every basket holds the pair: then the association is total
            npmi = np.where(p_ab < 1.0, np.log(lift) / -np.log(p_ab), 1.0)
        keep = npmi > 0
        a, b, count, lift, npmi = a[keep], b[keep], count[keep], lift[keep], npmi[keep]
        scored = dict(count=count, confidence=count / per[a], lift=lift, npmi=npmi)
        for direction, (item, neighbour) in ((FORWARD, (a, b)), (REVERSE, (b, a))):
            rows = np.flatnonzero(only[item]) if only is not None else slice(None)
            order, rank = _top(item[rows], npmi[rows], params.max_neighbours)
            order = rows[order] if only is not None else order
            out.append(pl.DataFrame({
                "segment": np.full(order.size, s, np.int8), "direction": np.full(order.size, direction, np.int8),
                "product_id": item[order], "neighbour_id": neighbour[order],
                **{k: v[order] for k, v in scored.items()}, "rank": rank,
            }))
    if not out:
        return pl.DataFrame(schema=PAIRS_SCHEMA)
    return pl.concat([f.select([pl.col(c).cast(t) for c, t in PAIRS_SCHEMA.items()]) for f in out])


def _top(item: np.ndarray, npmi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``n`` best npmi per item, by item then npmi descending, and their 1-based ranks.

    One int64 sort key (item, npmi quantised to 2**-30): much cheaper than a two-key sort; ties
    keep the input order (neighbour index ascending), so the result is deterministic."""
    q = np.round((1.0 - np.clip(npmi, 0.0, 1.0)) * (1 << 30)).astype(np.int64)
    order = np.argsort(item.astype(np.int64) * (1 << 31) + q, kind="stable")
    sorted_item = item[order]
    start = np.ones(order.size, bool)
    start[1:] = sorted_item[1:] != sorted_item[:-1]
    idx = np.arange(order.size)
    rank = idx - np.maximum.accumulate(np.where(start, idx, 0)) + 1
    keep = rank <= n
    return order[keep], rank[keep].astype(np.int16)


@dataclass
class Counted:
    """The supported pair counts of a set of baskets before normalising (dense item indices):
    ``pairs`` (segment, a, b, count), ``items`` (segment, a, baskets), baskets per segment."""

    pairs: pl.DataFrame
    items: pl.DataFrame
    totals: dict[int, int]
    stats: dict


def count_baskets(order_id: np.ndarray, item: np.ndarray, segment: np.ndarray, n_items: int, window: int,
                  min_support: int) -> Counted:
    """`Counted` of the lines (grouped by order, in cart order)."""
    pairs, stats = segment_pairs(order_id, item, segment, n_items, window, min_support)
    first = np.ones(order_id.size, bool)
    first[1:] = order_id[1:] != order_id[:-1]
    items, totals = basket_counts(item, segment, first, n_items)
    return Counted(pairs, items, totals, stats)


def minus(total: Counted, part: Counted, min_support: int, focus: np.ndarray, n_items: int) -> Counted:
    """``total − part`` (``part``: a subset of the baskets, counted without a minimum support)
    for the pairs touching a ``focus`` item, at ``min_support``.

    Counts are additive over baskets, so the pairs before the validation baskets are the window's
    minus theirs: no second pass over the window. A pair under the support in ``total`` is under
    it in any subset, so ``total``'s supported pairs are enough. Numpy codes, not a join: the
    window has millions of pairs; its row order is kept (npmi ties rank by it, as in a direct count)."""
    mark = np.zeros(n_items, bool)
    mark[focus] = True
    bits = max(int(n_items).bit_length(), 1)

    def near(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        seg, a, b, count = (frame[c].to_numpy() for c in ("segment", "a", "b", "count"))
        keep = mark[a] | mark[b]
        seg, a, b = seg[keep], a[keep], b[keep]
        code = ((seg.astype(np.int64) + 1) << (2 * bits)) | (a.astype(np.int64) << bits) | b
        return code, seg, np.stack([a, b]), count[keep]

    code, seg, ab, count = near(total.pairs)
    part_code, _, _, part_count = near(part.pairs)
    order = np.argsort(part_code, kind="stable")
    part_code, part_count = part_code[order], part_count[order]
    at = np.minimum(np.searchsorted(part_code, code), max(part_code.size - 1, 0))
    found = (part_code[at] == code) if part_code.size else np.zeros(code.size, bool)
    count = count - np.where(found, part_count[at] if part_code.size else 0, 0)
    keep = count >= min_support
    pairs = pl.DataFrame({"segment": seg[keep], "a": ab[0][keep], "b": ab[1][keep], "count": count[keep].astype(np.int32)})
    items = (
        total.items.join(part.items.rename({"baskets": "_part"}), on=["segment", "a"], how="left", maintain_order="left")
        .select("segment", "a", (pl.col("baskets") - pl.col("_part").fill_null(0)).alias("baskets"))
        .filter(pl.col("baskets") > 0)
    )
    totals = {s: n - part.totals.get(s, 0) for s, n in total.totals.items()}
    return Counted(pairs, items, totals, {})


def _encoded(baskets: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids, item = dense_items(baskets["product_id"].to_numpy())
    return ids, item, baskets["order_id"].to_numpy(), baskets["segment"].to_numpy().astype(np.int8)


def _finish(counted: Counted, ids: np.ndarray, params: PairParams, only: np.ndarray | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`PAIRS_SCHEMA` and `ITEMS_SCHEMA` frames (product ids) of the counts (neighbours of the
    items marked in ``only`` when given)."""
    pairs = normalise(counted.pairs, counted.items, counted.totals, params, max(len(ids), 1), only)
    to_id = pl.Series(ids.astype(np.int32))
    pairs = pairs.with_columns(product_id=to_id.gather(pairs["product_id"]), neighbour_id=to_id.gather(pairs["neighbour_id"]))
    items = counted.items.select("segment", to_id.gather(counted.items["a"]).alias("product_id"), "baskets").sort("segment", "product_id")
    return pairs.select([pl.col(c).cast(t) for c, t in PAIRS_SCHEMA.items()]), items.select(
        [pl.col(c).cast(t) for c, t in ITEMS_SCHEMA.items()]
    )


def _check(params: PairParams) -> None:
    if params.window < 1 or params.min_support < 1 or params.max_neighbours < 1:
        raise ValueError(f"basket pairs: window, min_support and max_neighbours must be >= 1, got {params}")


def _info(lines: int, ids: np.ndarray, counted: Counted, pairs: pl.DataFrame, params: PairParams) -> dict:
    return {"lines": lines, "baskets": counted.totals, "products": int(len(ids)), **counted.stats,
            "stored_rows": pairs.height, **params.__dict__}


def build_pairs(baskets: pl.DataFrame, params: PairParams = PairParams()) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """``(pairs, items, info)`` from `window_lines`' frame: `PAIRS_SCHEMA` rows, `ITEMS_SCHEMA` rows
    (baskets per segment and product) and the counts behind them."""
    _check(params)
    ids, item, order_id, segment = _encoded(baskets)
    counted = count_baskets(order_id, item, segment, max(len(ids), 1), params.window, params.min_support)
    pairs, items = _finish(counted, ids, params)
    return pairs, items, _info(baskets.height, ids, counted, pairs, params)


def build_pairs_split(
    baskets: pl.DataFrame, held_out: np.ndarray, focus: np.ndarray, params: PairParams = PairParams()
) -> tuple[tuple[pl.DataFrame, pl.DataFrame, dict], tuple[pl.DataFrame, pl.DataFrame]]:
    """`build_pairs` of the whole window, and the ``(pairs, items)`` of the window without the
    ``held_out`` lines (a boolean per line: the validation baskets), kept for the ``focus``
    product ids only (the items of the queries that will be asked of them: their neighbours
    are complete)."""
    _check(params)
    ids, item, order_id, segment = _encoded(baskets)
    n_items = max(len(ids), 1)
    counted = count_baskets(order_id, item, segment, n_items, params.window, params.min_support)
    m = held_out
    part = count_baskets(order_id[m], item[m], segment[m], n_items, params.window, 1)
    return _split(counted, part, ids, focus, params, baskets.height)


def build_pairs_counted(
    window: tuple[pl.DataFrame, pl.DataFrame], held_out: tuple[pl.DataFrame, pl.DataFrame], stats: dict,
    focus: np.ndarray, params: PairParams = PairParams(),
) -> tuple[tuple[pl.DataFrame, pl.DataFrame, dict], tuple[pl.DataFrame, pl.DataFrame]]:  # fmt: skip
    """`build_pairs_split` from counts made elsewhere (the Spark job), in product ids: ``window``
    and ``held_out`` are each ``(pair counts, item counts)`` (``segment, product_id,
    neighbour_id, count`` at ``min_support``, the held-out ones at 1; ``segment, product_id,
    baskets, segment_baskets``); ``stats``: the window's ``pair_occurrences`` and
    ``distinct_pairs`` before the support."""
    _check(params)
    pairs, items = window
    ids = np.unique(items["product_id"].to_numpy()).astype(np.int32)
    counted = counted_of(pairs, items, ids)
    counted.stats = {"pair_occurrences": int(stats["pair_occurrences"]), "distinct_pairs": int(stats["distinct_pairs"]),
                     "pairs_at_min_support": int((counted.pairs["segment"] == ANY).sum())}
    lines = int(items.filter(pl.col("segment") == ANY)["baskets"].sum())  # ingest refuses a product twice in one order
    return _split(counted, counted_of(*held_out, ids), ids, focus, params, lines)


def counted_of(pairs: pl.DataFrame, items: pl.DataFrame, ids: np.ndarray) -> Counted:
    """`Counted` of product-id counts (see `build_pairs_counted`) over the dense indices of
    ``ids``, in `count_baskets`' row order (segments ascending, ANY last; then a, b): npmi ties
    rank by it."""
    last = [pl.col("segment") == ANY, "segment"]
    index = lambda s: np.searchsorted(ids, s.to_numpy()).astype(np.int32)  # noqa: E731
    p = pairs.sort([*last, "product_id", "neighbour_id"])
    i = items.sort([*last, "product_id"])
    totals = i.unique(["segment"], keep="first", maintain_order=True)
    return Counted(
        pl.DataFrame({"segment": p["segment"].cast(pl.Int8), "a": index(p["product_id"]), "b": index(p["neighbour_id"]),
                      "count": p["count"].cast(pl.Int32)}),
        pl.DataFrame({"segment": i["segment"].cast(pl.Int8), "a": index(i["product_id"]), "baskets": i["baskets"].cast(pl.Int32)}),
        {int(s): int(n) for s, n in zip(totals["segment"], totals["segment_baskets"])},
        {},
    )  # fmt: skip


def _split(counted: Counted, part: Counted, ids: np.ndarray, focus: np.ndarray, params: PairParams,
           lines: int) -> tuple[tuple[pl.DataFrame, pl.DataFrame, dict], tuple[pl.DataFrame, pl.DataFrame]]:  # fmt: skip
    n_items = max(len(ids), 1)
    pos = np.searchsorted(ids, focus)
    keep = pos[(pos < ids.size) & (ids[np.minimum(pos, ids.size - 1)] == focus)] if ids.size else pos[:0]
    only = np.zeros(n_items, bool)
    only[keep] = True
    before = _finish(minus(counted, part, params.min_support, keep.astype(np.int64), n_items), ids, params, only)
    pairs, items = _finish(counted, ids, params)
    return (pairs, items, _info(lines, ids, counted, pairs, params)), before


def expected_npmi(count: int, n_a: int, n_b: int, total: int) -> float:
    """npmi of one pair from its counts (the formula of `normalise`, for readers and tests)."""
    if count >= total:
        return 1.0
    return math.log(count * total / (n_a * n_b)) / -math.log(count / total)
