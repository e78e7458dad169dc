"""The columns the events form adds to the snapshot tables (one owner for their names).

The events form (`ingest.events`) becomes the same three tables as the other forms, so every
stage runs on it unchanged; what only an event log has rides along in extra columns:

* ``raw_order_products``: ``views``, ``addtocarts``, ``transactions`` (Int32): how many events of
  each type the visitor had on the item in that session. Sessions (30 minutes without an event)
  before the cut-off are the ``prior`` orders; each visitor with carts or purchases after the
  cut-off has one ``train`` order holding those items (the target the peer optimises).
* ``products``: ``category_path`` (List[Int32], root first, the item's category last) and
  ``available`` (Int8 0/1, null when never stated), both as of the cut-off.

Stages that treat the form differently (ratings weights, R/F/M, category re-rank, the peer's
metrics) ask `is_events_form` of the table they already take as an input.
"""

from __future__ import annotations

import polars as pl

EVENT_COUNTS = ("views", "addtocarts", "transactions")
CATEGORY_PATH = "category_path"
AVAILABLE = "available"
# event type (ingest.events.EVENT_TYPES) -> its count column in raw_order_products
COUNT_OF_EVENT = {"view": "views", "addtocart": "addtocarts", "transaction": "transactions"}


def is_events_form(frame: pl.DataFrame | pl.LazyFrame) -> bool:
    """True for an events-form ``raw_order_products`` (its count columns) or ``products``
    (its category path)."""
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    return set(EVENT_COUNTS) <= set(names) or CATEGORY_PATH in names
