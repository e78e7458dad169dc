"""What the imputation checks assert, as pure functions over `orders_imputed`."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

# Field → (low, high); None = unbounded.
DOMAINS = {
    "days_since_prior_order": (0, 30),
    "order_hour_of_day": (0, 23),
    "order_dow": (0, 6),
    "basket_size": (1, None),
}
GAP = "days_since_prior_order"


def _expected(col: str) -> pl.Expr:
    """Rows where the field should hold a value: a first order's gap is structurally null."""
    return ~pl.col("is_first_order") if col == GAP else pl.lit(True)


def unknown_fields(orders_imputed: pl.DataFrame) -> list[str]:
    """Fields never observed, so left null by MICE: null wherever a value is expected, none imputed.

    Known values are never altered, so a field that had any observed value cannot
    be all null after imputation; the flag test guards against a field that MICE
    should have filled but did not (that is an incomplete imputation, not unknown).
    """
    out = []
    for col in DOMAINS:
        rows = orders_imputed.filter(_expected(col))
        flag = f"{col}_imputed"
        imputed = flag in rows.columns and bool(rows[flag].fill_null(False).any())
        if rows.height and rows[col].null_count() == rows.height and not imputed:
            out.append(col)
    return out


def unexpected_nulls(orders_imputed: pl.DataFrame, unknown: Iterable[str] | None = None) -> dict[str, int]:
    """Nulls left per imputed field.

    Not counted: a first order's missing gap (structural) and the fields in
    ``unknown`` (never observed, so deliberately not imputed; derived with
    :func:`unknown_fields` when not given), which are left out of the result.
    """
    skip = set(unknown_fields(orders_imputed) if unknown is None else unknown)
    out = {}
    for col in DOMAINS:
        if col in skip:
            continue
        nulls = pl.col(col).is_null() & _expected(col)
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


# One customer above both bars is a shared account (a till's guest or walk-in id, a B2B
# account), not a shopper: its orders dominate popularity and its "recommendations" reach no one.
DOMINANT_SHARE = 0.05  # of all orders
DOMINANT_RATIO = 20.0  # times the median customer's orders


def dominant_customer(orders: pl.DataFrame) -> dict:
    """The customer with the most orders: its orders, share of all orders, the median customer's
    orders, and whether it is above both `DOMINANT_SHARE` and `DOMINANT_RATIO`."""
    per = orders.group_by("user_id").len()
    if per.height == 0:
        return {"user_id": None, "orders": 0, "share": 0.0, "median_orders": 0.0, "dominant": False}
    top = per.sort(["len", "user_id"], descending=[True, False]).row(0, named=True)
    share, median = top["len"] / orders.height, float(per["len"].median())
    return {"user_id": int(top["user_id"]), "orders": int(top["len"]), "share": round(share, 4),
            "median_orders": median, "dominant": share > DOMINANT_SHARE and top["len"] > DOMINANT_RATIO * median}
