"""Deterministic synthetic generator of RetailRocket-shaped event logs (the ``events`` input form).

Writes the four files of the RetailRocket e-commerce data set (same names, columns and order):

* ``events.csv``: ``timestamp`` (ms since the epoch), ``visitorid``, ``event`` (view,
  addtocart or transaction), ``itemid``, ``transactionid`` (only on transactions);
* ``item_properties_part1.csv`` and ``item_properties_part2.csv``: ``timestamp, itemid,
  property, value`` weekly snapshots; ``categoryid`` and ``available`` (0/1) among opaque,
  hashed-looking properties; some items move category, availability toggles;
* ``category_tree.csv``: ``categoryid, parentid`` (roots have an empty parent), depth ≤ 6.

Everything is vectorised numpy/polars, so RetailRocket's size (1.4 M visitors, 2.7 M events,
417 k items) generates in seconds.

Generative story (plausible shape, not tuned to favour any recommender):

* catalog: a category tree of depth ≤ 6; items get a Zipf-like popularity (random rank times a
  category appeal), so a few items dominate; ~15 % of items have no properties at all;
* visitors: a heavy-tailed number of events (median one), two favourite categories (those of
  popularity-drawn items, so popular categories win), a taste for them, and a buying
  propensity (most visitors never buy);
* each visitor's events are views: a fresh item (in a favourite category or by popularity) or
  a revisit of the item last seen fresh; some views are followed by an add-to-cart of the same
  item (a few carts replace their view), most purchases follow a cart of the same item;
  purchases of a visitor within 30 minutes share a ``transactionid``;
* availability: each item with properties starts available or not and toggles at some weekly
  snapshots; views may hit an unavailable item, but carts and purchases happen only on items
  whose ``available`` is 1 as of the cart's or purchase's own time (items without properties are
  never carted), with the rates raised so the shares stay RetailRocket's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from insightflow_assets.data.generate import build_sampler, draw_products, write_instacart
from insightflow_assets.ingest.events import EVENT_TYPES  # the reader's contract: kind indexes it

__all__ = ["EVENT_TYPES", "FULL_SIZE", "generate_events", "generate_events_tables", "summarize_events"]

# RetailRocket's headline counts: the size `generate_events(visitors=FULL_SIZE["visitors"])` targets.
FULL_SIZE = {"visitors": 1_407_580, "events": 2_756_101, "items": 417_053, "categories": 1_669}

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
T0_MS = 1_430_622_000_000  # 2015-05-03 03:00 UTC, RetailRocket's first event
SPAN_MS = 138 * DAY_MS  # to 2015-09-18
N_WEEKS = SPAN_MS // WEEK_MS + 2  # property snapshots, the first one a week before the first event

# Calibration knobs (set so the full-size marginals land near RetailRocket's: ~1.96 events per
# visitor, median 1; 96.7 % views, 2.5 % add-to-cart, 0.8 % purchases).
_EVENTS_PARETO_A, _EVENTS_PARETO_SCALE, _MAX_EVENTS = 1.7, 0.9, 7_757
_SHARE_CART, _SHARE_BUY = 0.0250, 0.0081
_CART_WITHOUT_VIEW = 0.10  # share of carts that replace their view instead of following it
_BUY_WITHOUT_CART = 0.10  # share of purchases that follow a plain view
_REVISIT = 0.35  # a non-first view repeats the visitor's last fresh item
_DEPTH_SHARES = (0.02, 0.12, 0.33, 0.33, 0.14, 0.06)  # categories per depth 1..6: mean ~3.5
_NO_PROPERTIES = 0.15  # items with no property rows (RetailRocket: ~79 % of event items have one)
_MOVES_CATEGORY, _AVAILABLE_FIRST, _TOGGLES_MEAN = 0.05, 0.9, 0.6
_OPAQUE = ("888", "790", "364", "6", "283")  # RetailRocket-like property ids, values hashed
_BASKET_GAP_MS = 30 * 60_000


def generate_events(out_dir: str | Path, visitors: int = 20_000, seed: int = 42, opaque_properties: int = 5) -> dict:
    """Write the four events-form CSV files to ``out_dir`` (each atomically); return counts."""
    tables = generate_events_tables(visitors, seed, opaque_properties)
    write_instacart(tables, out_dir, fmt="csv")
    return summarize_events(tables)


def generate_events_tables(visitors: int = 20_000, seed: int = 42, opaque_properties: int = 5) -> dict[str, pl.DataFrame]:
    """The four events-form tables for ``visitors`` visitors, deterministically by ``seed``.

    opaque_properties: how many hashed properties besides categoryid and available; each is on
        ~80 % of the items with properties (RetailRocket has ~1,100 of them, 20 M rows: about 40
        gives its row count at full size).
    """
    if visitors < 10:
        raise ValueError("visitors must be >= 10")
    if opaque_properties < 0:
        raise ValueError("opaque_properties must be >= 0")
    rng = np.random.default_rng(seed)
    scale = visitors / FULL_SIZE["visitors"]
    # FULL_SIZE["items"] counts items with properties, as RetailRocket's 417 k do.
    n_items = max(200, round(FULL_SIZE["items"] / (1 - _NO_PROPERTIES) * scale))
    n_cats = max(30, min(FULL_SIZE["categories"], round(FULL_SIZE["categories"] * scale**0.5)))
    parent = _category_tree(rng, n_cats)
    item_cat, sampler = _items(rng, n_items, n_cats)
    has = np.flatnonzero(rng.random(n_items) >= _NO_PROPERTIES)
    avail_rows, in_stock = _availability(rng, has, n_items)
    visitor, item, kind, ts = _events(rng, visitors, item_cat, sampler, in_stock)

    # Public ids: random, gappy, unrelated to popularity (as RetailRocket's are).
    item_code = rng.choice(int(n_items * 1.12), n_items, replace=False).astype(np.int64)
    cat_code = rng.permutation(n_cats).astype(np.int64)
    visitor_code = rng.permutation(visitors).astype(np.int64)
    events = _events_frame(visitor_code[visitor], item_code[item], kind, ts)
    properties = _properties(rng, item_cat, n_cats, has, avail_rows, item_code, cat_code, opaque_properties)
    cut = int(properties.height * 0.53)  # RetailRocket's part1 holds a bit over half the rows
    parent_code = pl.Series("parentid", cat_code[np.maximum(parent, 0)]).set(pl.Series(parent < 0), None)
    tree = pl.DataFrame([pl.Series("categoryid", cat_code), parent_code]).sample(fraction=1.0, shuffle=True, seed=seed)
    return {
        "events": events,
        "item_properties_part1": properties.head(cut),
        "item_properties_part2": properties.slice(cut),
        "category_tree": tree,
    }


def summarize_events(tables: dict[str, pl.DataFrame]) -> dict:
    """Headline counts of an events-form data set (generated or real)."""
    ev = tables["events"]
    per_visitor = ev.group_by("visitorid").len()["len"]
    by_type = dict(ev.group_by("event").len().iter_rows())
    props = pl.concat([t for k, t in tables.items() if k.startswith("item_properties")])
    return {
        "events": ev.height,
        "visitors": per_visitor.len(),
        "items": ev["itemid"].n_unique(),
        **{f"{t}s" if t != "addtocart" else "addtocarts": by_type.get(t, 0) for t in EVENT_TYPES},
        "transaction_ids": ev["transactionid"].n_unique() - int(ev["transactionid"].null_count() > 0),
        "median_events_per_visitor": float(per_visitor.median()),
        "max_events_per_visitor": int(per_visitor.max()),
        "property_rows": props.height,
        "items_with_properties": props["itemid"].n_unique(),
        "categories": tables["category_tree"].height,
    }


def _category_tree(rng: np.random.Generator, n_cats: int) -> np.ndarray:
    """Parent index per category (-1 for roots), categories ordered by depth, depth ≤ 6."""
    shares = np.array(_DEPTH_SHARES)
    sizes = np.maximum(1, np.floor(shares / shares.sum() * n_cats)).astype(np.int64)
    sizes[2] += n_cats - sizes.sum()  # the remainder goes to the widest level
    start = np.concatenate([[0], np.cumsum(sizes)])
    parent = np.full(n_cats, -1, np.int64)
    for d in range(1, len(sizes)):  # six levels: a loop over depth, not over categories
        lo, hi = start[d - 1], start[d]
        # Skewed choice of parents: some categories are broad, many have one or two children.
        w = rng.lognormal(0.0, 1.0, hi - lo)
        parent[start[d] : start[d + 1]] = lo + rng.choice(hi - lo, sizes[d], p=w / w.sum())
    return parent


def _items(rng: np.random.Generator, n_items: int, n_cats: int):
    """Latent category per item (every category gets one) and the popularity sampler."""
    size_w = rng.lognormal(0.0, 1.0, n_cats)
    cat = np.concatenate([np.arange(n_cats), rng.choice(n_cats, n_items - n_cats, p=size_w / size_w.sum())])
    cat = rng.permutation(cat).astype(np.int32)  # sizes give at least as many items as categories
    appeal = rng.lognormal(0.0, 0.8, n_cats)
    weight = (rng.permutation(n_items) + 20.0) ** -1.1 * appeal[cat]
    return cat, build_sampler(cat, weight, n_cats)


def _events(rng: np.random.Generator, n_visitors: int, item_cat: np.ndarray, sampler, in_stock: np.ndarray):
    """(visitor, item, kind, ts) per event; kind indexes `EVENT_TYPES`; carts and purchases only
    where ``in_stock`` (see `_availability`) is 1."""
    n0 = 1 + np.minimum(np.floor(rng.pareto(_EVENTS_PARETO_A, n_visitors) * _EVENTS_PARETO_SCALE), _MAX_EVENTS - 1)
    n0 = n0.astype(np.int64)
    visitor = np.repeat(np.arange(n_visitors), n0)
    first = np.cumsum(n0) - n0
    pos = np.arange(visitor.size) - first[visitor]

    # Items: favourite categories are those of popularity-drawn items.
    fav = item_cat[draw_products(rng, sampler, np.full(2 * n_visitors, -1))].reshape(n_visitors, 2)
    taste = rng.beta(3.0, 2.0, n_visitors)
    fresh = (pos == 0) | (rng.random(visitor.size) >= _REVISIT)
    v = visitor[fresh]
    in_fav = rng.random(v.size) < taste[v]
    item = np.zeros(visitor.size, np.int32)
    item[fresh] = draw_products(rng, sampler, np.where(in_fav, fav[v, rng.integers(0, 2, v.size)], -1))
    last_fresh = np.maximum.accumulate(np.where(fresh, np.arange(visitor.size), 0))
    item = item[last_fresh]  # a revisit repeats the latest fresh item (a visitor's first is fresh)

    ts = _view_times(rng, visitor, first, n0)
    buyer = rng.gamma(0.3, 1 / 0.3, n_visitors)  # buying propensity: most near zero
    return _add_carts_and_purchases(rng, visitor, item, ts, buyer[visitor], in_stock)


def _view_times(rng: np.random.Generator, visitor: np.ndarray, first: np.ndarray, n0: np.ndarray) -> np.ndarray:
    """ms timestamps: a start per visitor, then gaps within a session (minutes) or between
    sessions (days); a visitor whose history would overrun the log is squeezed into it."""
    n = visitor.size
    gap = np.where(rng.random(n) < 0.85, rng.exponential(90_000.0, n), rng.exponential(4.0 * DAY_MS, n))
    gap[first] = 0.0
    offset = np.cumsum(gap)
    offset -= offset[first][visitor]
    length = offset[first + n0 - 1]
    start = rng.random(n0.size) * SPAN_MS
    room = SPAN_MS - start
    squeeze = np.where(length > room, room / np.maximum(length, 1.0), 1.0)
    return (T0_MS + start[visitor] + offset * squeeze[visitor]).astype(np.int64)


def _add_carts_and_purchases(rng, visitor, item, ts, propensity, in_stock):
    """Turn some views into view→cart(→purchase) chains of the same item, at the target shares,
    each cart and purchase on an item available at its own time."""
    n0, end = visitor.size, T0_MS + SPAN_MS
    # Every view gets candidate cart and purchase times; the availability at those times decides.
    replace = rng.random(n0) < _CART_WITHOUT_VIEW  # a cart here replaces its view
    c_ts = np.where(replace, ts, np.minimum(ts + 1_000 + rng.exponential(60_000.0, n0).astype(np.int64), end))
    gap = 2_000 + rng.exponential(300_000.0, n0).astype(np.int64)
    b_cart_ts, b_view_ts = np.minimum(c_ts + gap, end), np.minimum(ts + gap, end)
    ok_cart, ok_b_cart, ok_b_view = (_available(in_stock, item, t) for t in (c_ts, b_cart_ts, b_view_ts))

    # Solve for per-view rates so carts and purchases end at their shares of ALL events; dividing
    # by the (propensity-weighted) share of eligible views keeps them there despite availability.
    x = 1.0 / (1.0 - _SHARE_CART * (1 - _CART_WITHOUT_VIEW) - _SHARE_BUY)
    w = propensity / propensity.mean()
    cart = ok_cart & (rng.random(n0) < np.minimum(0.9, _SHARE_CART * x * w / _share(ok_cart * w)))
    p_after_cart = _SHARE_BUY * (1 - _BUY_WITHOUT_CART) / _SHARE_CART / _share(ok_b_cart[cart])
    buy_after_cart = cart & ok_b_cart & (rng.random(n0) < p_after_cart)
    rate_view = _SHARE_BUY * _BUY_WITHOUT_CART * x * w / _share(ok_b_view * w)
    buy_after_view = ~cart & ok_b_view & (rng.random(n0) < np.minimum(0.9, rate_view))

    kind = np.where(cart & replace, 1, 0).astype(np.int8)  # the base event: a view or a cart in its place
    c_src = np.flatnonzero(cart & ~replace)
    b_src = np.flatnonzero(buy_after_cart | buy_after_view)
    b_ts = np.where(buy_after_cart, b_cart_ts, b_view_ts)[b_src]
    src = np.concatenate([np.arange(n0), c_src, b_src])
    kind = np.concatenate([kind, np.ones(c_src.size, np.int8), np.full(b_src.size, 2, np.int8)])
    return visitor[src], item[src], kind, np.concatenate([ts, c_ts[c_src], b_ts])


def _share(values: np.ndarray) -> float:
    """Mean of ``values``, at least a small floor (a rate divided by it stays finite)."""
    return max(float(values.mean()) if values.size else 1.0, 1e-3)


def _available(in_stock: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """True where ``item`` is available as of ``ts``: the value of the latest weekly snapshot not
    after it (the reader's as-of rule); snapshot w is at ``T0_MS - WEEK_MS + w * WEEK_MS``."""
    return in_stock[item, (ts - (T0_MS - WEEK_MS)) // WEEK_MS] == 1


def _events_frame(visitor: np.ndarray, item: np.ndarray, kind: np.ndarray, ts: np.ndarray) -> pl.DataFrame:
    """The events table in time order, with one ``transactionid`` per visitor's basket
    (purchases within `_BASKET_GAP_MS` of the previous one)."""
    df = pl.DataFrame({"timestamp": ts, "visitorid": visitor, "kind": kind, "itemid": item}).sort(
        "timestamp", "visitorid", "kind", "itemid"
    )
    buys = df.with_row_index("row").filter(pl.col("kind") == 2).sort("visitorid", "timestamp")
    new_basket = (
        (buys["visitorid"].diff() != 0) | (buys["timestamp"].diff() > _BASKET_GAP_MS)
    ).fill_null(True)
    basket = buys.select("row", "timestamp").with_columns(basket=new_basket.cum_sum())
    # Ids numbered by each basket's first purchase time, as a shop would issue them.
    first = basket.group_by("basket").agg(pl.col("timestamp").min()).sort("timestamp", "basket")
    first = first.with_columns(transactionid=pl.int_range(pl.len(), dtype=pl.Int64))
    tid = basket.join(first.select("basket", "transactionid"), on="basket").select("row", "transactionid")
    df = df.with_row_index("row").join(tid, on="row", how="left").sort("row")
    return df.select(
        "timestamp",
        "visitorid",
        pl.Series("event", EVENT_TYPES).gather(df["kind"]),
        "itemid",
        "transactionid",
    )


def _availability(rng: np.random.Generator, has: np.ndarray, n_items: int):
    """Weekly ``available`` rows (item, week, value) of the items with properties, and the same
    history as an item × week matrix (1 available, 0 not, -1 never stated).

    Each item has a row at week 0 and at its toggle weeks, each toggle flipping the value.
    """
    toggles = rng.poisson(_TOGGLES_MEAN, has.size)
    t_item = np.repeat(has, toggles)
    t_week = rng.integers(1, N_WEEKS, t_item.size)
    avail = pl.DataFrame({"i": np.concatenate([has, t_item]), "w": np.concatenate([np.zeros(has.size, np.int64), t_week])})
    avail = avail.unique().sort("i", "w").with_columns(flips=pl.int_range(pl.len()).over("i"))
    a_item, a_week = avail["i"].to_numpy(), avail["w"].to_numpy()
    first_value = (rng.random(n_items) < _AVAILABLE_FIRST).astype(np.int8)
    a_value = (first_value[a_item] + avail["flips"].to_numpy()) % 2  # each later row flips it

    changed = np.zeros((n_items, N_WEEKS), np.int8)
    changed[a_item, a_week] = 1
    flips = np.cumsum(changed, axis=1, dtype=np.int8) - 1  # rows so far, the week-0 one not a flip
    in_stock = (first_value[:, None] + flips) % 2
    in_stock[flips < 0] = -1  # no row yet: items without properties
    return (a_item, a_week, a_value), in_stock


def _properties(rng, item_cat, n_cats, has, avail_rows, item_code, cat_code, n_opaque: int) -> pl.DataFrame:
    """Weekly property snapshots: categoryid (some items move), available (`_availability`'s
    rows), opaque ones."""
    snap = T0_MS - WEEK_MS + np.arange(N_WEEKS, dtype=np.int64) * WEEK_MS
    movers = has[rng.random(has.size) < _MOVES_CATEGORY]
    cat_rows = (
        np.concatenate([has, movers]),
        np.concatenate([np.zeros(has.size, np.int64), rng.integers(1, N_WEEKS, movers.size)]),
        cat_code[np.concatenate([item_cat[has], rng.integers(0, n_cats, movers.size)])],
    )
    a_item, a_week, a_value = avail_rows
    frames = [
        _rows(snap, item_code, "categoryid", *cat_rows[:2], pl.Series(cat_rows[2]).cast(pl.String)),
        _rows(snap, item_code, "available", a_item, a_week, pl.Series(a_value).cast(pl.String)),
    ]
    for prop in (_OPAQUE + tuple(str(1_000 + k) for k in range(n_opaque)))[:n_opaque]:
        who = has[rng.random(has.size) < 0.8]
        value = _hashed(rng, who.size, numeric=prop == "790")
        frames.append(_rows(snap, item_code, prop, who, rng.integers(0, 3, who.size), value))
    out = pl.concat(frames)
    return out.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(2**31)))


def _rows(snap, item_code, prop: str, item: np.ndarray, week: np.ndarray, value: pl.Series) -> pl.DataFrame:
    return pl.DataFrame(
        {"timestamp": snap[week], "itemid": item_code[item], "property": pl.repeat(prop, item.size, eager=True), "value": value}
    )


def _hashed(rng, n: int, numeric: bool) -> pl.Series:
    """RetailRocket hashes property values into tokens; numbers come as ``n<value>.000``."""
    num = pl.Series(rng.integers(1, 5_000, n)).cast(pl.String)
    if numeric:
        return "n" + num + ".000"
    tokens = [pl.Series(rng.integers(1, 1_400_000, n)).cast(pl.String) for _ in range(2)]
    return tokens[0] + " n" + num + ".000 " + tokens[1]
