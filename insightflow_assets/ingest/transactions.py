"""The transactions input form: one row per order line, as most retailers export it (pure polars).

A ``transactions`` table (csv, csv.gz or parquet) with a customer id, an order/invoice id, a
timestamp (or a date) and a product id, optionally a quantity, a unit price, a product name and
a category, is turned into the same internal tables as the Instacart files (`Snapshot`), so every
downstream asset runs unchanged:

* orders: ``order_id`` (dense, by time), ``user_id``, ``order_number`` (1.. in time order per
  customer), ``eval_set`` (the customer's last order is ``train``, the target basket),
  ``days_since_prior_order`` (calendar days, capped at 30 like Instacart's), ``order_dow``
  (0 = Sunday), ``order_hour_of_day`` (null when the data has no time of day), plus
  ``order_ts`` (the real timestamp) and ``order_code`` (the original invoice id);
* order lines: ``add_to_cart_order`` from the file's line order, ``reordered`` from the
  customer's history, ``quantity`` and ``unit_price`` when the file has them;
* products: ``product_code`` (the original id), a name, and the category as both aisle and
  department.

Lines that cannot be used are excluded and counted by reason (`EXCLUSION_REASONS`), never
silently; anything else wrong raises `InputError` naming the file and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from insightflow_assets.ingest.loading import NULLS, InputError, Snapshot

# Logical column -> the names looked for, in order, when the configuration maps none.
# The UCI Online Retail names are among them, so that file works as it is.
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "customer_id": ("customer_id", "CustomerID", "Customer ID", "customer", "user_id"),
    "order_id": ("order_id", "InvoiceNo", "Invoice", "invoice_id", "transaction_id"),
    "timestamp": ("timestamp", "InvoiceDate", "order_date", "datetime", "date", "created_at"),
    "product_id": ("product_id", "StockCode", "sku", "item_id"),
    "quantity": ("quantity", "Quantity", "qty"),
    "unit_price": ("unit_price", "UnitPrice", "Price", "price"),
    "product_name": ("product_name", "Description", "name"),
    "category": ("category", "Category", "department"),
}
REQUIRED = ("customer_id", "order_id", "timestamp", "product_id")

# Each excluded line is counted once, under the first reason that applies, in this order.
EXCLUSION_REASONS = (
    "no_customer_id",
    "cancellation",
    "non_product_code",
    "non_positive_quantity",
    "non_positive_price",
    "duplicate_line",
)
# UCI Online Retail's codes for postage, fees, manual adjustments, samples and vouchers.
DEFAULT_NON_PRODUCT_CODES = ("POST", "DOT", "M", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS")
DEFAULT_NON_PRODUCT_PREFIXES = ("gift_",)
_TS_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M", "%m/%d/%Y")
GAP_CAP = 30


@dataclass(frozen=True)
class TransactionsSpec:
    """How to read a transactions table: column mapping and what counts as unusable."""

    columns: dict[str, str] = field(default_factory=dict)  # logical name -> name in the file
    cancel_prefixes: tuple[str, ...] = ("C",)
    non_product_codes: tuple[str, ...] = DEFAULT_NON_PRODUCT_CODES
    non_product_prefixes: tuple[str, ...] = DEFAULT_NON_PRODUCT_PREFIXES


@dataclass
class TransactionsResult:
    snapshot: Snapshot
    excluded: dict[str, int]  # reason -> lines
    lines_in: int
    info: dict


def resolve_columns(found: list[str], spec: TransactionsSpec, name: str) -> dict[str, str]:
    """Logical name -> column of the file; a missing required column is an `InputError`."""
    unknown = sorted(set(spec.columns) - set(DEFAULT_NAMES))
    if unknown:
        raise InputError(f"{name}: column mapping names unknown field {unknown[0]} (known: {', '.join(DEFAULT_NAMES)})")
    out: dict[str, str] = {}
    for logical, candidates in DEFAULT_NAMES.items():
        if logical in spec.columns:
            col = spec.columns[logical]
            if col not in found:
                raise InputError(f"{name}: missing column {col} (mapped to {logical}; found: {', '.join(found)})")
            out[logical] = col
            continue
        hit = next((c for c in candidates if c in found), None)
        if hit is not None:
            out[logical] = hit
        elif logical in REQUIRED:
            raise InputError(
                f"{name}: missing column {logical} (looked for {', '.join(candidates)}; found: {', '.join(found)}); "
                "map it in the transactions config"
            )
    return out


def read_transactions(path: Path, spec: TransactionsSpec, display_name: str | None = None) -> pl.DataFrame:
    """Read the mapped columns under their logical names, typed; raise `InputError` when unreadable."""
    name = display_name or Path(path).name
    is_parquet = str(path).endswith(".parquet")
    try:
        found = list(pl.read_parquet_schema(path)) if is_parquet else pl.read_csv(path, n_rows=0, infer_schema=False).columns
    except Exception as exc:
        raise InputError(f"{name}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    cols = resolve_columns(found, spec, name)
    try:
        if is_parquet:
            raw = pl.read_parquet(path, columns=list(cols.values()))
        else:
            raw = _read_csv(path, cols)
    except Exception as exc:
        raise InputError(f"{name}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if raw.height == 0:
        raise InputError(f"{name}: the table is empty")
    out = raw.select(pl.col(c).alias(logical) for logical, c in cols.items())
    return _typed(out, cols, name)


def _read_csv(path: Path, cols: dict[str, str]) -> pl.DataFrame:
    # Fast path: numbers parsed by the reader; a bad value falls back to strings, where
    # `_number` finds it and names it.
    numeric = {cols[c]: t for c, t in (("quantity", pl.Int64), ("unit_price", pl.Float64)) if c in cols}
    text = {c: pl.String for c in cols.values() if c not in numeric}
    try:
        return pl.read_csv(path, columns=list(cols.values()), schema_overrides={**text, **numeric}, null_values=NULLS)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
        return pl.read_csv(path, columns=list(cols.values()), infer_schema=False, null_values=NULLS)


def _typed(df: pl.DataFrame, cols: dict[str, str], name: str) -> pl.DataFrame:
    """Ids as trimmed strings, quantity integer, price float, timestamp datetime; bad values named."""
    exprs = [_id_column(df, c).alias(c) for c in ("customer_id", "order_id", "product_id")]
    # Names and categories are kept as written (only the reader's null markers become null).
    exprs += [pl.col(c).cast(pl.String) for c in ("product_name", "category") if c in cols]
    df = df.with_columns(exprs)
    for col in REQUIRED:
        if df[col].null_count() == df.height:
            raise InputError(f"{name}: column {cols[col]}: no value at all (the {col} is required)")
    for col in ("order_id", "product_id"):
        if df[col].null_count():
            raise InputError(f"{name}: column {cols[col]}: {df[col].null_count()} missing value(s)")
    if "quantity" in cols:
        df = df.with_columns(_number(df, "quantity", pl.Int64, cols, name))
    if "unit_price" in cols:
        df = df.with_columns(_number(df, "unit_price", pl.Float64, cols, name))
    return df.with_columns(_timestamps(df["timestamp"], cols["timestamp"], name))


def _id_column(df: pl.DataFrame, col: str) -> pl.Expr:
    """Integer customer ids stay numbers (cheap); other ids become trimmed strings.

    Float ids (pandas writes 17850.0 for an integer column with gaps) count as integers.
    """
    s = df[col]
    if s.dtype.is_integer() or (s.dtype.is_float() and bool((s.drop_nulls() % 1 == 0).all())):
        return pl.col(col).cast(pl.Int64) if col == "customer_id" else pl.col(col).cast(pl.Int64).cast(pl.String)
    e = pl.col(col).cast(pl.String)
    if s.dtype != pl.String or bool(s.str.contains(r"^\s|\s$").any()):
        e = e.str.strip_chars()
    return pl.when(e.is_in(NULLS)).then(None).otherwise(e)


def _number(df: pl.DataFrame, col: str, dtype: pl.DataType, cols: dict[str, str], name: str) -> pl.Series:
    s = df[col]
    if s.dtype == dtype or (dtype == pl.Float64 and s.dtype.is_numeric()):
        return s.cast(dtype).alias(col)
    if s.dtype == pl.String:
        s = s.str.strip_chars()
        s = pl.Series(col, s).set(s.is_in(NULLS), None)
    parsed = s.cast(pl.Float64, strict=False)
    bad = s.filter(parsed.is_null() & s.is_not_null())
    if len(bad):
        raise InputError(f"{name}: column {cols[col]}: value {bad[0]!r} is not a number ({len(bad)} row(s))")
    if dtype == pl.Int64:
        frac = parsed.drop_nulls()
        frac = frac.filter(frac % 1 != 0)
        if len(frac):
            raise InputError(f"{name}: column {cols[col]}: value {frac[0]!r} is not an integer")
    return parsed.cast(dtype).alias(col)


def _timestamps(s: pl.Series, column: str, name: str) -> pl.Series:
    """Datetime (µs); strings are tried against common formats, the first that parses every value wins."""
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("us")).alias("timestamp")
    if isinstance(s.dtype, pl.Datetime):
        return s.dt.replace_time_zone(None).cast(pl.Datetime("us")).alias("timestamp")
    text = s.cast(pl.String).str.strip_chars()
    present = text.is_not_null()
    best, best_bad = None, None
    for fmt in _TS_FORMATS:
        parsed = text.str.to_datetime(fmt, strict=False, time_unit="us")
        n_bad = int((parsed.is_null() & present).sum())
        if n_bad == 0:
            return parsed.alias("timestamp")
        if best_bad is None or n_bad < best_bad:
            best, best_bad = parsed, n_bad
    example = text.filter(best.is_null() & present)[0]
    raise InputError(f"{name}: column {column}: value {example!r} is not a date or timestamp ({best_bad} row(s))")


def exclusion_reason(df: pl.DataFrame, spec: TransactionsSpec) -> pl.Expr:
    """The first reason each line cannot be used, or null (see `EXCLUSION_REASONS`).

    The code rules are evaluated once per distinct product / order id, not per line: a file
    has far fewer ids than lines, and string tests on every line dominate the ingest time.
    """
    cols = df.columns
    codes = df["product_id"].unique().drop_nulls()
    upper = codes.str.to_uppercase()
    bad = upper.is_in([c.upper() for c in spec.non_product_codes])
    for prefix in spec.non_product_prefixes:
        bad = bad | upper.str.starts_with(prefix.upper())
    orders = df["order_id"].unique().drop_nulls()
    cancelled = pl.Series([False] * len(orders), dtype=pl.Boolean)
    for prefix in spec.cancel_prefixes:
        cancelled = cancelled | orders.str.starts_with(prefix)
    rules = [
        ("no_customer_id", pl.col("customer_id").is_null()),
        ("no_timestamp", pl.col("timestamp").is_null()),
        ("cancellation", pl.col("order_id").is_in(orders.filter(cancelled).implode())),
        ("non_product_code", pl.col("product_id").is_in(codes.filter(bad).implode())),
        ("non_positive_quantity", (pl.col("quantity") <= 0) if "quantity" in cols else pl.lit(False)),
        ("non_positive_price", (pl.col("unit_price") <= 0) if "unit_price" in cols else pl.lit(False)),
    ]
    expr = pl.lit(None, dtype=pl.String)
    for reason, cond in reversed(rules):
        expr = pl.when(cond.fill_null(False)).then(pl.lit(reason)).otherwise(expr)
    return expr


def usable_lines(df: pl.DataFrame, spec: TransactionsSpec, name: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """The lines kept (file order preserved, ``_line`` = position in the file) and counts by reason."""
    tagged = df.with_row_index("_line").with_columns(exclusion_reason(df, spec).alias("_reason"))
    counts = {r: 0 for r in ("no_customer_id", "no_timestamp", *EXCLUSION_REASONS[1:])}
    for reason, n in tagged.group_by("_reason").len().iter_rows():
        if reason is not None:
            counts[reason] = int(n)
    kept = tagged.filter(pl.col("_reason").is_null()).drop("_reason")
    # duplicate_line is counted later, on integer keys (see `_order_lines`)
    if kept.height == 0:
        detail = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v)
        raise InputError(f"{name}: no usable line left (excluded: {detail})")
    return kept, counts


def derive_snapshot(path: Path, spec: TransactionsSpec | None = None, display_name: str | None = None) -> TransactionsResult:
    """Read, validate and turn a transactions table into the internal tables."""
    spec = spec or TransactionsSpec()
    name = display_name or Path(path).name
    df = read_transactions(path, spec, name)
    lines, excluded = usable_lines(df, spec, name)
    users, user_info = _user_ids(lines["customer_id"])
    # Integer keys early: grouping and joining 32 M lines on strings is what would be slow.
    lines = lines.with_columns(
        user_id=users,
        _okey=pl.col("order_id").cast(pl.Categorical).to_physical().cast(pl.Int64) + users.cast(pl.Int64) * _SHIFT,
        _pcat=pl.col("product_id").cast(pl.Categorical).to_physical(),
    )
    products, pmap = _products(lines)
    orders, omap = _orders(lines, name)
    lines = lines.drop("order_id", "product_id").join(pmap, on="_pcat", how="left").join(omap, on="_okey", how="left")
    order_products, merged, duplicates = _order_lines(lines)
    excluded["duplicate_line"] = duplicates
    has_time = _has_time_of_day(orders["order_ts"])
    if not has_time:
        orders = orders.with_columns(pl.lit(None, dtype=pl.Int8).alias("order_hour_of_day"))
    snap = Snapshot(orders=orders, order_products=order_products, products=products)
    info = {
        **user_info,
        "form": "transactions",
        "time_of_day": has_time,
        "repeated_product_lines_merged": merged,
        "first_ts": str(orders["order_ts"].min()),
        "last_ts": str(orders["order_ts"].max()),
    }
    return TransactionsResult(snap, excluded, df.height, info)


_SHIFT = 1 << 32


def _user_ids(customer: pl.Series) -> tuple[pl.Series, dict]:
    """Integer customer ids are kept; any other id is numbered 1.. in sorted order."""
    if customer.dtype.is_integer():
        as_int = customer
    else:
        as_float = customer.cast(pl.Float64, strict=False)  # "17850" and "17850.0" alike
        as_int = as_float.cast(pl.Int64, strict=False)
        as_int = as_int if as_float.null_count() == 0 and bool((as_float == as_int).all()) else None
    if as_int is not None and as_int.min() >= -(2**31) and as_int.max() < 2**31:
        return as_int.cast(pl.Int32).alias("user_id"), {"customer_ids": "as given"}
    ranks = customer.rank("dense").cast(pl.Int32)
    return ranks.alias("user_id"), {"customer_ids": "numbered 1.. in sorted order of the file's ids"}


def _products(lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Products (dense Int32 id in code order, name = first non-empty in the file, category as
    aisle and department) and the map from the lines' ``_pcat`` to ``product_id``."""
    has_name, has_cat = "product_name" in lines.columns, "category" in lines.columns
    agg = [
        pl.col("product_id").first().alias("product_code"),
        (pl.col("product_name").drop_nulls().first() if has_name else pl.lit(None, pl.String)).alias("product_name"),
        (pl.col("category").drop_nulls().first() if has_cat else pl.lit(None, pl.String)).alias("category"),
    ]
    prods = (
        lines.group_by("_pcat", maintain_order=True)  # lines are in file order: "first" is the file's first
        .agg(agg)
        .sort("product_code")
        .with_row_index("product_id", offset=1)
        .with_columns(
            pl.col("product_id").cast(pl.Int32),
            pl.col("product_name").fill_null(pl.col("product_code")),
            pl.col("category").fill_null("unknown"),
        )
    )
    cats = prods.select("category").unique().sort("category").with_row_index("aisle_id", offset=1)
    if cats.height > 32_767:
        raise InputError(f"transactions: column category: {cats.height:,} categories (at most 32,767)")
    out = (
        prods.join(cats.with_columns(pl.col("aisle_id").cast(pl.Int16)), on="category", how="left")
        .with_columns(department_id=pl.col("aisle_id"), aisle=pl.col("category"), department=pl.col("category"))
        .select("product_id", "product_name", "aisle_id", "department_id", "aisle", "department", "product_code")
        .sort("product_id")
    )
    return out, prods.select("_pcat", "product_id")


def _orders(lines: pl.DataFrame, name: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One order per (customer, invoice), numbered in time order (the last one is the target),
    and the map from the lines' ``_okey`` to ``order_id`` / ``order_number``."""
    orders = (
        lines.group_by("_okey")
        .agg(pl.col("user_id").first(), pl.col("order_id").first().alias("order_code"), order_ts=pl.col("timestamp").min())
        .sort("order_ts", "order_code", "user_id")
        .with_row_index("order_id", offset=1)
        .with_columns(pl.col("order_id").cast(pl.Int32))
        .sort("user_id", "order_ts", "order_id")
    )
    first = (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True)
    orders = orders.with_columns(
        order_number=_block_position(first),
        _prev=pl.when(first).then(None).otherwise(pl.col("order_ts").shift(1)),
    )
    if orders["order_number"].max() > 32_767:
        raise InputError(f"{name}: a customer has more than 32,767 orders")
    gap = (pl.col("order_ts").dt.date() - pl.col("_prev").dt.date()).dt.total_days()
    last = (pl.col("user_id") != pl.col("user_id").shift(-1)).fill_null(True)
    out = orders.select(
        "order_id",
        "user_id",
        pl.when(last).then(pl.lit("train")).otherwise(pl.lit("prior")).alias("eval_set"),
        pl.col("order_number").cast(pl.Int16),
        (pl.col("order_ts").dt.weekday() % 7).cast(pl.Int8).alias("order_dow"),  # 0 = Sunday
        pl.col("order_ts").dt.hour().cast(pl.Int8).alias("order_hour_of_day"),
        gap.clip(0, GAP_CAP).cast(pl.Float32).alias("days_since_prior_order"),
        "order_ts",
        "order_code",
    )
    return out, orders.select("_okey", "order_id", pl.col("order_number").cast(pl.Int16))


def _block_position(first: pl.Expr) -> pl.Expr:
    """1-based position within runs of rows that start where ``first`` is true (a sorted frame);
    cheaper than ``int_range().over()`` on tens of millions of rows."""
    idx = pl.int_range(0, pl.len(), dtype=pl.Int64)
    return idx - pl.when(first).then(idx).forward_fill() + 1


def _order_lines(lines: pl.DataFrame) -> tuple[pl.DataFrame, int, int]:
    """Order lines, lines merged and exact duplicates dropped.

    An exact duplicate (every mapped column equal to an earlier line: a double export) repeats
    its (order, product) pair, so only the few repeated pairs are compared; the other lines of a
    repeated pair are merged into one (quantities summed).
    """
    pair = pl.col("order_id").cast(pl.Int64) * _SHIFT + pl.col("product_id").cast(pl.Int64)
    lines = lines.with_columns(_pair=pair)
    repeated = lines.select(pl.col("_pair").is_duplicated()).to_series()
    merged = duplicates = 0
    if repeated.any():
        rep = lines.filter(repeated).sort("_line")
        distinct = rep.select(pl.struct(pl.exclude("_line")).is_first_distinct()).to_series()
        duplicates = int((~distinct).sum())
        grouped = _merge_repeated(rep.filter(distinct))
        merged = int(distinct.sum()) - grouped.height
        lines = pl.concat([lines.filter(~repeated).select(grouped.columns), grouped], how="vertical_relaxed")
    # order ids follow time and each customer's order numbers, so in (order_id, file line)
    # order a (customer, product) is a reorder exactly when it is not its first occurrence.
    user_product = pl.col("user_id").cast(pl.Int64) * _SHIFT + pl.col("product_id").cast(pl.Int64)
    out = lines.sort(pl.col("order_id").cast(pl.Int64) * _SHIFT + pl.col("_line").cast(pl.Int64)).with_columns(
        add_to_cart_order=_block_position((pl.col("order_id") != pl.col("order_id").shift(1)).fill_null(True)).cast(pl.Int16),
        reordered=(~user_product.is_first_distinct()).cast(pl.Int8),
    )
    extra = [pl.col("quantity").cast(pl.Int32)] if "quantity" in out.columns else []
    extra += [pl.col("unit_price")] if "unit_price" in out.columns else []
    return out.select("order_id", "product_id", "add_to_cart_order", "reordered", *extra), merged, duplicates


def _merge_repeated(lines: pl.DataFrame) -> pl.DataFrame:
    keep = ["_pair", "_line", "order_id", "product_id", "user_id"]
    agg = [pl.col("_line").min(), pl.col("order_id").first(), pl.col("product_id").first(), pl.col("user_id").first()]
    if "quantity" in lines.columns:
        agg.append(pl.col("quantity").sum())
        keep.append("quantity")
    if "unit_price" in lines.columns:
        qty = pl.col("quantity") if "quantity" in lines.columns else pl.lit(1)
        agg.append(((pl.col("unit_price") * qty).sum() / qty.sum()).alias("unit_price"))
        keep.append("unit_price")
    return lines.group_by("_pair").agg(agg).select(keep)


def _has_time_of_day(ts: pl.Series) -> bool:
    """A log of dates only (every timestamp at midnight) has no time of day."""
    return bool((ts.dt.hour().cast(pl.Int32) * 3600 + ts.dt.minute().cast(pl.Int32) * 60 + ts.dt.second() != 0).any())
