"""R/F/M of the events form read from its session tables (pure polars, no Dagster).

On the events form (`ingest.events_schema.is_events_form`) ``user_seg`` does not use the dated
definition of `segmentation.rfm`: an order there is a browsing session, and nearly all of them buy
nothing. It rebuilds an event frame from the **prior** sessions (``eval_set == "prior"``: the ones
before the cut-off; the ``train`` order holds the target and is never read) and hands it to
`segmentation.events_rfm.events_rfm_table`, so the semantics are that function's, per visitor:

* **R** ``recency_days``: days from the visitor's last session with a purchase (its ``order_ts``,
  the session's first event) to the reference time, or from their last session of any kind when
  they never bought. The reference is ``reference_time`` when given (``rfm.reference_date``; one
  before the latest prior session is refused), else the latest prior session's ``order_ts``.
* **F** ``frequency``: sessions with at least one purchase (a session is one purchase, as an
  order is one in the other forms).
* **M** ``monetary``: items bought: the sum of ``transactions`` over the visitor's session lines
  (the log has no price).

Visitors who never bought are kept (F = M = 0, R from their last session); ``users`` restricts
the population (e.g. to the ``ratings`` visitors) before the z-scores are taken over it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from insightflow_assets.frames import lazy, user_ids
from insightflow_assets.ingest.events import as_utc
from insightflow_assets.segmentation.events_rfm import events_rfm_table

__all__ = ["session_events", "session_reference", "session_rfm_table"]

Frame = pl.DataFrame | pl.LazyFrame


def _utc(col: str, dtype: pl.DataType) -> pl.Expr:
    # the snapshot's order_ts may be naive (UTC by contract) or aware; recency needs aware UTC
    tz = getattr(dtype, "time_zone", None)
    expr = pl.col(col).cast(pl.Datetime("ms", tz))
    return expr.dt.replace_time_zone("UTC") if tz is None else expr.dt.convert_time_zone("UTC")


def _prior_sessions(orders: Frame) -> pl.LazyFrame:
    """``order_id, visitor_id, ts`` of the sessions before the cut-off."""
    lf = lazy(orders)
    schema = lf.collect_schema()
    for col in ("order_id", "user_id", "eval_set", "order_ts"):
        if col not in schema:
            raise ValueError(f"orders: missing column {col} (the events form's sessions need it)")
    return lf.filter(pl.col("eval_set").cast(pl.String) == "prior").select(
        "order_id", pl.col("user_id").alias("visitor_id"), _utc("order_ts", schema["order_ts"]).alias("ts")
    )


def session_events(orders: Frame, lines: Frame, users: Any = None) -> pl.DataFrame:
    """The event frame `events_rfm_table` reads (``ts, visitor_id, event, transaction_id``): one
    ``view`` row per prior session (its last-event time for R) and one ``transaction`` row per
    purchased item (``transactions`` times each line), ``transaction_id`` = the session's order_id.
    """
    sessions = _prior_sessions(orders)
    if users is not None:
        sessions = sessions.join(user_ids(users).lazy().rename({"user_id": "visitor_id"}), on="visitor_id", how="semi")
    if "transactions" not in lazy(lines).collect_schema().names():
        raise ValueError("order_products: missing column transactions (the events form's purchase counts)")
    bought = (
        lazy(lines)
        .select("order_id", n=pl.col("transactions").fill_null(0).cast(pl.Int64))
        .filter(pl.col("n") > 0)
        .join(sessions, on="order_id", how="inner")
        .select("ts", "visitor_id", "order_id", pl.int_ranges(0, "n").alias("_i"))
        .explode("_i")
        .select("ts", "visitor_id", event=pl.lit("transaction"), transaction_id="order_id")
    )
    seen = sessions.select("ts", "visitor_id", event=pl.lit("view"), transaction_id=pl.lit(None, pl.Int64))
    return pl.concat([seen, bought.with_columns(pl.col("transaction_id").cast(pl.Int64))]).collect()


def session_reference(orders: Frame, reference_time: datetime | None = None) -> datetime:
    """Where R is measured to: ``reference_time`` (UTC) or the latest prior session's ``order_ts``."""
    latest = _prior_sessions(orders).select(pl.col("ts").max()).collect().item()
    if latest is None:
        raise ValueError("orders: no prior session with an order_ts, no reference time for recency")
    return latest if reference_time is None else as_utc(reference_time)


def session_rfm_table(
    orders: Frame, lines: Frame, *, users: Any = None, reference_time: datetime | None = None
) -> pl.DataFrame:
    """`events_rfm_table` over the prior sessions (module docstring), in `rfm.rfm_table`'s schema."""
    events = session_events(orders, lines, users)
    if events.height == 0:
        raise ValueError("orders: no prior session of the given users, nothing to segment")
    return events_rfm_table(events, reference_time=session_reference(orders, reference_time))
