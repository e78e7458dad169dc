"""The events form as the snapshot's three tables (pure polars; see `ingest.events_schema`).

An event log has no orders, so the visitor's **sessions** stand in for them: events of one
visitor with no gap longer than ``session_gap`` (30 minutes, the usual web-analytics rule) are one
session, and each (session, item) is one line carrying how many views, add-to-carts and
purchases it had. Only events before the cut-off become sessions (``prior`` orders); what the
visitor carted or bought in the holdout window after it becomes one ``train`` order per visitor
(the target the peer optimises), so the holdout, the models and the evaluation read the form
exactly as they read baskets. Visitors whose only events fall after the cut-off have a target
and no prior order: the cold visitors.

Products are the items, with their category (aisle = the leaf, department = the root of its
path) and availability as of the cut-off.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from insightflow_assets.ingest.events import EventsSnapshot
from insightflow_assets.ingest.events_schema import AVAILABLE, CATEGORY_PATH, COUNT_OF_EVENT, EVENT_COUNTS
from insightflow_assets.ingest.loading import InputError, Snapshot
from insightflow_assets.ingest.transactions import order_timing
from insightflow_assets.ratings.events import cutoff_split

_INT32_MAX = 2**31 - 1


def events_to_snapshot(
    snap: EventsSnapshot,
    *,
    cutoff: datetime | int | None = None,
    holdout_days: float | None = None,
    session_gap_minutes: float = 30.0,
) -> tuple[Snapshot, dict]:
    """(Snapshot, info) of an events-form input; a cut-off that leaves no training event or no
    target is an `InputError` naming events.csv's timestamp column."""
    if not session_gap_minutes > 0:
        raise InputError(f"instacart_snapshot config: session_gap_minutes must be > 0, got {session_gap_minutes!r}")
    _check_id_range(snap.events)
    try:
        split = cutoff_split(snap.events, cutoff, holdout_days=holdout_days)
    except ValueError as exc:
        raise InputError(f"events.csv: column timestamp: {exc}") from None
    lines = _session_lines(split.train, timedelta(minutes=session_gap_minutes))
    window = snap.events.filter((pl.col("ts") >= split.cutoff) & (pl.col("ts") < split.end))
    target_lines = _target_lines(window, split.truth)
    orders, order_products = _number_orders(lines, target_lines)
    products = _products(snap, split.cutoff, snap.events["item_id"].unique())
    info = {
        "form": "events",
        "cutoff": split.cutoff.isoformat(),
        "holdout_end": split.end.isoformat(),
        "sessions": int((orders["eval_set"] == "prior").sum()),
        "targets": int((orders["eval_set"] == "train").sum()),
        "cold_share": round(split.cold_share, 4),
        **{k: snap.info[k] for k in ("events", "visitors", "items", *COUNT_OF_EVENT) if k in snap.info},
    }
    return Snapshot(orders=orders, order_products=order_products, products=products), info


def _check_id_range(events: pl.DataFrame) -> None:
    for col, name in (("visitor_id", "visitorid"), ("item_id", "itemid")):
        lo, hi = events[col].min(), events[col].max()
        if lo is not None and (lo < 0 or hi > _INT32_MAX):
            raise InputError(f"events.csv: column {name}: ids must be in 0..{_INT32_MAX:,} (found {lo} .. {hi})")


def _counts() -> list[pl.Expr]:
    ev = pl.col("event").cast(pl.String)
    return [(ev == e).sum().cast(pl.Int32).alias(c) for e, c in COUNT_OF_EVENT.items()]


def _session_lines(train: pl.DataFrame, gap: timedelta) -> pl.DataFrame:
    """One row per (visitor, session, item): ``user_id, session, product_id, first_ts`` + counts.
    ``session`` numbers the visitor's sessions 1.. in time order."""
    ev = train.lazy().sort("visitor_id", "ts", "item_id")
    new = (pl.col("visitor_id") != pl.col("visitor_id").shift(1)) | ((pl.col("ts") - pl.col("ts").shift(1)) > gap)
    return (
        ev.with_columns(session=new.fill_null(True).cast(pl.Int32).cum_sum().over("visitor_id"))
        .group_by("visitor_id", "session", "item_id")
        .agg(pl.col("ts").min().alias("first_ts"), *_counts())
        .select(
            pl.col("visitor_id").cast(pl.Int32).alias("user_id"),
            "session",
            pl.col("item_id").cast(pl.Int32).alias("product_id"),
            "first_ts",
            *EVENT_COUNTS,
        )
        .collect()
    )


def _target_lines(window: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """The truth pairs with their events in the holdout window, as lines of one session each."""
    pairs = (
        window.lazy()
        .select(
            pl.col("visitor_id").cast(pl.Int32).alias("user_id"),
            pl.col("item_id").cast(pl.Int32).alias("product_id"),
            "ts",
            "event",
        )
        .join(truth.lazy(), on=["user_id", "product_id"], how="semi")
        .group_by("user_id", "product_id")
        .agg(pl.col("ts").min().alias("first_ts"), *_counts())
    )
    return pairs.with_columns(session=pl.lit(None, pl.Int32)).collect()


def _number_orders(lines: pl.DataFrame, target_lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """raw_orders and raw_order_products: sessions then the target, per visitor in time order."""
    cols = ["user_id", "session", "product_id", "first_ts", *EVENT_COUNTS]
    every = pl.concat([lines.select(cols), target_lines.select(cols)]).lazy()
    is_target = pl.col("session").is_null()
    keys = (
        every.group_by("user_id", "session")
        .agg(order_ts=pl.col("first_ts").min())
        .sort("user_id", "order_ts", pl.col("session").is_null())
        .with_columns(
            order_id=pl.int_range(1, pl.len() + 1, dtype=pl.Int32),
            order_number=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("user_id"),
            _prev=pl.col("order_ts").shift(1).over("user_id"),
        )
        .collect()
    )
    if keys["order_number"].max() > 32_767:
        raise InputError("events.csv: column visitorid: a visitor has more than 32,767 sessions")
    orders = keys.select(
        "order_id",
        "user_id",
        pl.when(is_target).then(pl.lit("train")).otherwise(pl.lit("prior")).alias("eval_set"),
        pl.col("order_number").cast(pl.Int16),
        *order_timing(),
        "order_ts",
    )
    ids = keys.lazy().select("user_id", "session", "order_id", "order_number")
    order_products = (
        every.join(ids, on=["user_id", "session"], how="left", nulls_equal=True)
        .sort("order_id", "first_ts", "product_id")
        .with_columns(
            add_to_cart_order=pl.int_range(1, pl.len() + 1, dtype=pl.Int16).over("order_id"),
            # bought (viewed, carted) by the visitor in an earlier session
            reordered=(pl.col("order_number").rank("min").over("user_id", "product_id") > 1).cast(pl.Int8),
        )
        .select("order_id", "product_id", "add_to_cart_order", "reordered", *EVENT_COUNTS)
        .collect()
    )
    return orders, order_products


def _products(snap: EventsSnapshot, cutoff: datetime, items: pl.Series) -> pl.DataFrame:
    """Every item of the log with its category (as aisle / department ids and names), category
    path and availability as of the cut-off."""
    paths = snap.paths_at(cutoff)
    avail = snap.available_at(cutoff).select(pl.col("item_id").cast(pl.Int32).alias("product_id"), AVAILABLE)
    prods = (
        items.cast(pl.Int32).alias("product_id").sort().to_frame()
        .join(paths, on="product_id", how="left")
        .join(avail, on="product_id", how="left")
        .with_columns(
            leaf=pl.col(CATEGORY_PATH).list.last(),
            root=pl.col(CATEGORY_PATH).list.first(),
        )
    )
    names = pl.concat([prods["leaf"], prods["root"]]).drop_nulls().unique().sort()
    if names.len() > 32_766:
        raise InputError(f"category_tree.csv: column categoryid: {names.len():,} categories in use (at most 32,766)")
    code = pl.DataFrame({"cat": names, "code": pl.int_range(1, names.len() + 1, dtype=pl.Int16, eager=True)})

    def coded(col: str, id_name: str, label: str) -> list[pl.Expr]:
        return [
            pl.col(col).replace_strict(code["cat"], code["code"], default=0, return_dtype=pl.Int16).alias(id_name),
            pl.when(pl.col(col).is_null()).then(pl.lit("unknown")).otherwise(pl.format("category {}", pl.col(col))).alias(label),
        ]

    return prods.select(
        "product_id",
        pl.format("item {}", pl.col("product_id")).alias("product_name"),
        *coded("leaf", "aisle_id", "aisle"),
        *coded("root", "department_id", "department"),
        pl.col("product_id").cast(pl.String).alias("product_code"),
        pl.col(CATEGORY_PATH).cast(pl.List(pl.Int32)),
        pl.col(AVAILABLE).cast(pl.Int8),
    ).select("product_id", "product_name", "aisle_id", "department_id", "aisle", "department", "product_code", CATEGORY_PATH, AVAILABLE)
