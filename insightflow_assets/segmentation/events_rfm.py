"""RFM of the events form (pure polars, no Dagster), in `segmentation.rfm.rfm_table`'s schema so
the KMeans segmentation reads it unchanged.

Per visitor, over their events up to the reference time (default: the latest event; pass the
cut-off with the training events of `ratings.events.cutoff_split`):

* **R** ``recency_days`` (Float64): fractional days from the visitor's last purchase to the
  reference, or from their last event of any kind when they never bought;
* **F** ``frequency`` (Int32): purchases, counted as distinct ``transaction_id`` (a basket of
  several items bought together is one purchase, as an order is one in the other forms);
* **M** ``monetary`` (Float64): items bought (transaction events). The log has no price, so
  money cannot be measured: M counts items, as the Instacart form's M counts order lines.

Unlike `rfm_table` (which keeps F >= 1), visitors who never bought are kept (F = M = 0, R from
their last view or cart) unless ``buyers_only``: on RetailRocket-shaped data they are ~99 % of
the visitors, and recency is what tells them apart. z-scores: `rfm.add_z_scores` over the
returned visitors.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from insightflow_assets.ratings.events import MS_PER_DAY, reference_of
from insightflow_assets.segmentation.rfm import RFM_COLUMNS, add_z_scores

__all__ = ["events_rfm_table"]


def events_rfm_table(
    events: pl.DataFrame,
    *,
    reference_time: datetime | int | None = None,
    buyers_only: bool = False,
) -> pl.DataFrame:
    """``user_id Int32, recency_days, frequency Int32, monetary, r_z, f_z, m_z`` per visitor,
    sorted by ``user_id`` (module docstring). A reference before the latest event is refused
    (recency would be negative)."""
    ref = reference_of(events, reference_time)
    buy = pl.col("event").cast(pl.String) == "transaction"
    last_buy = pl.col("ts").filter(buy).max()
    rfm = (
        events.lazy()
        .group_by("visitor_id")
        .agg(
            _last=pl.coalesce(last_buy, pl.col("ts").max()),
            frequency=pl.col("transaction_id").filter(buy).n_unique().cast(pl.Int32),
            monetary=buy.sum().cast(pl.Float64),
        )
        .with_columns(
            recency_days=(pl.lit(ref) - pl.col("_last")).dt.total_milliseconds().cast(pl.Float64) / MS_PER_DAY
        )
    )
    if buyers_only:
        rfm = rfm.filter(pl.col("frequency") >= 1)
    return (
        rfm.sort("visitor_id")
        .pipe(add_z_scores)
        .select(pl.col("visitor_id").cast(pl.Int32).alias("user_id"), *RFM_COLUMNS[1:])
        .collect()
    )
