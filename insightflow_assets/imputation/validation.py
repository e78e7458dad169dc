"""What the imputation checks assert, as pure functions over `orders_imputed`."""

from __future__ import annotations

import polars as pl

# Field → (low, high); None = unbounded.
DOMAINS = {
    "days_since_prior_order": (0, 30),
    "order_hour_of_day": (0, 23),
    "order_dow": (0, 6),
    "basket_size": (1, None),
}


def unexpected_nulls(orders_imputed: pl.DataFrame) -> dict[str, int]:
    """Nulls left per imputed field; a first order's missing gap is structural and not counted."""
    out = {}
    for col in DOMAINS:
        nulls = pl.col(col).is_null()
        if col == "days_since_prior_order":
            nulls = nulls & ~pl.col("is_first_order")
        out[col] = int(orders_imputed.select(nulls.sum()).item())
    return out


def domain_violations(orders_imputed: pl.DataFrame) -> dict[str, int]:
    """Values outside each field's domain, or not whole numbers."""
    out = {}
    for col, (lo, hi) in DOMAINS.items():
        c = pl.col(col)
        bad = (c < lo) | (c.cast(pl.Float64) % 1 != 0)
        if hi is not None:
            bad = bad | (c > hi)
        out[col] = int(orders_imputed.select(bad.fill_null(False).sum()).item())
    return out
