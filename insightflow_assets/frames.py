"""Small polars helpers shared by the pure stage modules."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

Frame = pl.DataFrame | pl.LazyFrame

F32_TINY = 1.1754943508222875e-38  # smallest positive normal Float32: a decayed rating never underflows to 0


def lazy(frame: Frame) -> pl.LazyFrame:
    return frame.lazy() if isinstance(frame, pl.DataFrame) else frame


def user_ids(users: Any, dtype: pl.DataType = pl.Int32) -> pl.DataFrame:
    """Distinct, sorted ``user_id`` of a frame, series, array or iterable of ids."""
    if isinstance(users, pl.LazyFrame):
        users = users.select("user_id").collect()
    if isinstance(users, pl.DataFrame):
        s = users.get_column("user_id")
    elif isinstance(users, pl.Series):
        s = users
    else:
        s = pl.Series(np.asarray(users if isinstance(users, np.ndarray) else list(users)).ravel())
    return pl.DataFrame({"user_id": s.drop_nulls().cast(dtype)}).unique().sort("user_id")


def customer_codes(frame: Frame) -> pl.DataFrame | None:
    """``user_id, customer_code`` (one row per user) of a frame that carries the retailer's
    customer ids, i.e. orders whose ids the ingest had to number (`ingest.transactions`) and
    the tables built from them; None when it kept the ids as given (no such column)."""
    if "customer_code" not in lazy(frame).collect_schema().names():
        return None
    out = (
        lazy(frame)
        .select(pl.col("user_id").cast(pl.Int32), pl.col("customer_code").cast(pl.String))
        .unique("user_id")
    )
    return out.collect()
