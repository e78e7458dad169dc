"""The transactions input form: one row per order line, as most retailers export it (pure polars).

A ``transactions`` table (csv, csv.gz or parquet) with a customer id, an order/invoice id, a
timestamp (or a date) and a product id, optionally a quantity, a unit price, a product name and
a category, is turned into the same internal tables as the Instacart files (`Snapshot`), so every
downstream asset runs unchanged:

* orders: ``order_id`` (dense, by time), ``user_id``, ``order_number`` (1.. in time order per
  customer), ``eval_set`` (the customer's last order is ``train``, the target basket),
  ``days_since_prior_order`` (calendar days, capped at 30 like Instacart's), ``order_dow``
  (0 = Sunday), ``order_hour_of_day`` (null when the data has no time of day), plus
  ``order_ts`` (the real timestamp) and ``order_code`` (the original invoice id); when the
  customer ids had to be numbered (text, or integers past Int32), ``customer_code`` (the
  file's id) too, so the exports name customers as the retailer knows them;
* order lines: ``add_to_cart_order`` from the file's line order, ``reordered`` from the
  customer's history, ``quantity`` and ``unit_price`` when the file has them;
* products: ``product_code`` (the original id), a name, and the category as both aisle and
  department.

Lines that cannot be used are excluded and counted by reason (`EXCLUSION_REASONS`), never
silently; anything else wrong raises `InputError` naming the file and the column.
"""

from __future__ import annotations

import contextlib
import csv
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import polars as pl

from insightflow_assets.ingest.loading import (
    NULLS,
    READER_ERRORS,
    InputError,
    Snapshot,
    as_written,
    first_line,
    header_line,
    read_csv_checked,
    sniff_delimiter,
)

# Logical column -> the names looked for, in order, when the configuration maps none. A name
# matches whatever its case and separators ("Customer ID", "CUSTOMER_ID" and "customerId" are
# customer_id); an exact match wins. The UCI Online Retail (I and II) names are among them, so
# those files work as they are, and so are common names of other retail exports.
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    # WooCommerce's "Order Number", Shopify's "Email" and "Lineitem …" (folded: any case and
    # separators); Shopify's order column "Name" is mapped by hand, as "name" is a product's
    "customer_id": ("customer_id", "CustomerID", "Customer ID", "customer", "user_id", "client_id", "member_id",
                    "household_key", "shopper_id", "buyer_id", "customer_email", "email"),
    "order_id": ("order_id", "InvoiceNo", "Invoice", "invoice_id", "transaction_id", "basket_id", "receipt_id",
                 "ticket_id", "bill_no", "order", "order_no", "order_number"),
    "timestamp": ("timestamp", "InvoiceDate", "order_date", "datetime", "date", "created_at", "transaction_dt",
                  "transaction_date", "transaction_time", "purchase_date", "order_purchase_timestamp",
                  "order_datetime", "event_time"),
    "product_id": ("product_id", "StockCode", "sku", "item_id", "product_code", "article_id", "sku_id", "product",
                   "lineitem_sku"),
    "quantity": ("quantity", "Quantity", "qty", "units", "lineitem_quantity"),
    # not "sales_price": Ta-Feng's SALES_PRICE is the line's total, and M would multiply it again
    "unit_price": ("unit_price", "UnitPrice", "Price", "price", "selling_price", "lineitem_price"),
    "product_name": ("product_name", "Description", "lineitem_name", "name", "item_name", "product_title"),
    "category": ("category", "Category", "department", "product_category", "category_name"),
    # a time of day beside a date-only timestamp (POS exports' Date + Time, Dunnhumby's TRANS_TIME)
    "time": ("time", "Time", "trans_time", "order_time", "time_of_day"),
}
REQUIRED = ("customer_id", "timestamp", "product_id")
# Without an order column, a customer's lines with one timestamp are one order (one basket per
# checkout time; per day when the file has dates only).
DERIVED_ORDERS = "one order per customer and timestamp (the file has no order column)"


def _folded(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


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
# Tried in this order; a column that two of them read differently (01/12/2011: 12 January or
# 1 December?) is refused rather than guessed: `timestamp_format` settles it.
_TS_FORMATS = (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%.fZ", "%Y-%m-%d", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d",
    "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y",
)  # fmt: skip
_MIN_YEAR = 1900  # earlier years come from two-digit years read by %Y (12/1/10: year 10)
GAP_CAP = 30
T, U = TypeVar("T"), TypeVar("U")
_SAMPLE = 10_000  # first lines judged before the whole file is read one way or another


TIMESTAMP_UNITS = {"day": "d", "s": "s", "ms": "ms"}  # timestamp_unit -> polars' from_epoch unit


@dataclass(frozen=True)
class TransactionsSpec:
    """How to read a transactions table: column mapping and what counts as unusable."""

    columns: dict[str, str] = field(default_factory=dict)  # logical name -> name in the file
    cancel_prefixes: tuple[str, ...] = ("C",)
    non_product_codes: tuple[str, ...] = DEFAULT_NON_PRODUCT_CODES
    non_product_prefixes: tuple[str, ...] = DEFAULT_NON_PRODUCT_PREFIXES
    # integer times: days (e.g. a DAY column numbered from 1), Unix seconds or milliseconds;
    # None: dates and timestamps only (an integer is never guessed to be one or the other)
    timestamp_unit: str | None = None
    # strftime-style format of text timestamps (e.g. "%d/%m/%Y %H:%M"); None: the known formats
    timestamp_format: str | None = None
    # the decimal mark of quantities and prices: "," (dots group thousands), "." (no thousands
    # mark), None: a ';'-separated file with a decimal comma in any number column is ",", any
    # other file "." (`_decimal_point`; refused where it cannot tell)
    decimal_mark: str | None = None
    # a line equal in every mapped column to an earlier one: "drop" (a double export), or
    # "add" (a till that writes one line per scan: repeats add up like lines without a quantity)
    duplicate_lines: str = "drop"

    def __post_init__(self) -> None:
        if self.timestamp_unit not in (None, *TIMESTAMP_UNITS):
            raise InputError(f"transactions config: timestamp_unit {self.timestamp_unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}")
        if self.timestamp_format is not None:
            _check_format(self.timestamp_format)
        if self.duplicate_lines not in ("drop", "add"):
            raise InputError(f"transactions config: duplicate_lines {self.duplicate_lines!r} is not 'drop' or 'add'")
        if self.decimal_mark not in (None, ",", "."):
            raise InputError(f"transactions config: decimal_mark {self.decimal_mark!r} is not ',' or '.'")


def _check_format(fmt: str) -> None:
    """A format polars cannot use is the config's fault: say so in one line, before any file is read."""
    try:
        pl.Series(["2024-01-01"]).str.to_datetime(fmt, strict=False)
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"transactions config: timestamp_format {fmt!r} is not a usable format ({first_line(exc)})") from None


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
    folded: dict[str, str] = {}
    for c in found:
        folded.setdefault(_folded(c), c)  # the first column of a folded name (an exact match wins anyway)
    for logical, candidates in DEFAULT_NAMES.items():
        if logical in spec.columns:
            col = spec.columns[logical]
            if col not in found:
                raise InputError(f"{name}: missing column {col} (mapped to {logical}; found: {', '.join(found)})")
            out[logical] = col
            continue
        hit = next((c for c in candidates if c in found), None) or next(
            (folded[_folded(c)] for c in candidates if _folded(c) in folded), None
        )
        if hit is not None:
            out[logical] = hit
        elif logical in REQUIRED:
            raise InputError(
                f"{name}: missing column {logical} (looked for {', '.join(candidates)}; found: {', '.join(found)}); "
                "map it in the transactions config"
            )
    _refuse_twice_named(out, found, name)
    return out


def _refuse_twice_named(cols: dict[str, str], found: list[str], name: str) -> None:
    """Two columns of one name (a list price and a sale price both called UnitPrice): which one
    is meant cannot be told, and the reader would take the first. Polars names the second
    ``<name>_duplicated_0``."""
    for col in cols.values():
        copies = [c for c in found if c.startswith(f"{col}_duplicated_")]
        if copies:
            raise InputError(f"{name}: column {col} appears {len(copies) + 1} times in the header; "
                             "rename the one to use or drop the others")


def read_transactions(
    path: Path, spec: TransactionsSpec, display_name: str | None = None, encoding: str = "utf-8"
) -> pl.DataFrame:
    """Read the mapped columns under their logical names, typed; raise `InputError` when unreadable.

    Ids come back as Int32, Int64 or Categorical (see `_id_column`, `_read_simple`), which
    compare like the ids as text.
    Most files are read and typed in one pass (`_read_simple`); the others, and any file with a
    defect, take the careful path (`_typed`), which names the defect. A CSV file the reader
    cannot parse is looked into like the Instacart files (`read_csv_checked`), which names the
    line; ``encoding`` is the CSV file's text encoding.
    """
    name = display_name or Path(path).name
    if str(path).endswith(".parquet"):
        try:
            return _read_file(path, spec, name, is_parquet=True, decimal_comma=spec.decimal_mark == ",")
        except READER_ERRORS as exc:
            raise InputError(f"{name}: cannot be read ({first_line(exc)})") from None
    delimiter = sniff_delimiter(path, encoding)
    # Where ``;`` separates the fields, a comma in a number may be its decimal mark (Excel's
    # export in the locales that write 1.234,50); a tab says nothing about the locale.
    decimal_comma = delimiter == ";" if spec.decimal_mark is None else spec.decimal_mark == ","
    return read_csv_checked(
        path, name, encoding, lambda p: _read_file(p, spec, name, is_parquet=False, decimal_comma=decimal_comma), delimiter
    )


def _read_file(path: Path, spec: TransactionsSpec, name: str, is_parquet: bool, decimal_comma: bool = False) -> pl.DataFrame:
    """`read_transactions` of one file; the reader's own errors (`READER_ERRORS`) propagate."""
    schema = pl.read_parquet_schema(path) if is_parquet else None
    found = list(schema) if schema is not None else pl.read_csv(path, n_rows=0, infer_schema=False).columns
    cols = resolve_columns(found, spec, name)
    for col in cols.values():
        if schema is not None and schema[col].is_nested():
            raise InputError(f"{name}: column {col} holds {schema[col]} values, not one value per line")
    if not is_parquet:
        _refuse_scientific_ids(_scan_csv(path, cols, typed=False).head(_SAMPLE).collect(), cols, name)
    # numbers that may carry a decimal comma or thousands dots are read as text, then decided
    plain = spec.timestamp_unit is None and not decimal_comma
    simple = _read_simple(path, cols, is_parquet, spec.timestamp_format) if plain else None
    if simple is not None:
        return _finished(simple, cols, name, spec)
    raw = pl.read_parquet(path, columns=list(cols.values())) if is_parquet else _read_csv(path, cols, typed=not decimal_comma)
    if raw.height == 0:
        raise InputError(f"{name}: the table is empty")
    out = raw.select(pl.col(c).alias(logical) for logical, c in cols.items())
    del raw
    # Readers return many chunks; sorts, gathers and grouping run far faster on one.
    typed = _typed(out, cols, name, spec.timestamp_unit, decimal_comma, spec.timestamp_format, spec.decimal_mark == ",")
    return _finished(typed.rechunk(), cols, name, spec)


def _finished(df: pl.DataFrame, cols: dict[str, str], name: str, spec: TransactionsSpec) -> pl.DataFrame:
    """What both reads end with: the time column folded in, the ids checked past the first
    lines, and every line with its order."""
    df = _with_time_of_day(df, cols, name, mapped="time" in spec.columns)
    return _with_orders(_no_scientific_ids(df, cols, name))


# how Excel (and pandas) print a long number: 6.01200E+15, 6,01200E+15 in a decimal-comma locale
_SCIENTIFIC = r"^\s*[+-]?\d[.,]\d+[eE][+-]?\d+\s*$"


def _refuse_scientific_ids(sample: pl.DataFrame, cols: dict[str, str], name: str) -> None:
    """Ids written in scientific notation stop the ingest in one line: distinct customers (or
    orders, products) would silently become one."""
    for c in (c for c in ("customer_id", "order_id", "product_id") if c in cols):
        _refuse_scientific(sample[cols[c]], cols[c], name)


def _refuse_scientific(ids: pl.Series, column: str, name: str) -> None:
    values = ids.drop_nulls()
    hit = values.filter(values.str.contains(_SCIENTIFIC))
    if hit.len():
        raise InputError(f"{name}: column {column}: value {hit[0]!r} is an id in scientific notation (a spreadsheet's "
                         f"display of a long number: its last digits are lost); export the column as text")


_TIME_FORMATS = ("%H:%M:%S", "%H:%M", "%I:%M:%S %p", "%I:%M %p", "%H:%M:%S%.f")


def _with_time_of_day(df: pl.DataFrame, cols: dict[str, str], name: str, mapped: bool = False) -> pl.DataFrame:
    """A separate time column added to a timestamp that holds dates only (else ignored: the
    timestamp's own time wins); the column is dropped either way. Times are text (08:26,
    8:26 PM, 08:26:00) or HHMM numbers (Dunnhumby's 1631). A column found by its name that
    holds no times is left out (the file has no time of day then); one ``mapped`` in the
    config stops the ingest in one line."""
    if "time" not in df.columns:
        return df
    if _has_time_of_day(df["timestamp"].drop_nulls()):
        return df.drop("time")
    try:
        since_midnight = _time_of_day(df["time"], cols["time"], name)
    except InputError:
        if mapped:
            raise
        return df.drop("time")
    # a blank time leaves the line at its date (midnight), as a date-only file reads
    return df.with_columns((pl.col("timestamp") + since_midnight.fill_null(timedelta(0))).alias("timestamp")).drop("time")


def _time_of_day(s: pl.Series, column: str, name: str) -> pl.Series:
    """Each value's time since midnight (a Duration); an unreadable one stops in one line."""
    text = s.cast(pl.String).str.strip_chars().replace("", None)
    hhmm = text.str.contains(r"^\d{1,4}$")
    if bool(hhmm.fill_null(True).all()):  # HHMM numbers: 1631 is 16:31, 5 is 00:05
        n = text.cast(pl.Int32)
        hours, minutes = n // 100, n % 100
        bad = text.filter((hours > 23) | (minutes > 59))
        if len(bad):
            raise InputError(f"{name}: column {column}: value {bad[0]!r} is not a time of day (HHMM)")
        return pl.select(pl.duration(hours=hours, minutes=minutes, time_unit="us")).to_series()
    for fmt in _TIME_FORMATS:
        t = text.str.to_time(fmt, strict=False)
        if t.null_count() == text.null_count():
            return t.cast(pl.Duration("us"))
    bad = text.filter(text.str.to_time(_TIME_FORMATS[1], strict=False).is_null() & text.is_not_null())
    raise InputError(f"{name}: column {column}: value {bad[0]!r} is not a time of day (e.g. 08:26, 8:26 PM or 0826)")


def _no_scientific_ids(df: pl.DataFrame, cols: dict[str, str], name: str) -> pl.DataFrame:
    """`_refuse_scientific_ids` past the first lines: on the distinct values of every id column
    read as text (those read as numbers hold none)."""
    for c in ("customer_id", "order_id", "product_id"):
        if c in cols and df[c].dtype in (pl.Categorical, pl.String):
            _refuse_scientific(df[c].unique().cast(pl.String), cols[c], name)
    return df


def _with_orders(df: pl.DataFrame) -> pl.DataFrame:
    """The lines with an ``order_id``: the file's, or `DERIVED_ORDERS` (dense ids; lines without
    a customer or a timestamp are excluded later for that reason anyway)."""
    if "order_id" in df.columns:
        return _order_fields_filled(df)
    return df.with_columns(order_id=pl.struct("customer_id", "timestamp").rank("dense").cast(pl.Int64))


def _order_fields_filled(df: pl.DataFrame) -> pl.DataFrame:
    """Shopify's export (and others') write the customer and the time on an order's first line
    only: a line missing either takes its order's, where the order's other lines hold exactly
    one value. An order no line of which names a customer (a guest's) stays without one."""
    fills = []
    for c in ("customer_id", "timestamp"):
        if df[c].null_count():
            known = pl.col(c).drop_nulls()
            one = known.n_unique().over("order_id") == 1
            fills.append(pl.when(pl.col(c).is_null() & one).then(known.first().over("order_id")).otherwise(pl.col(c)).alias(c))
    return df.with_columns(fills) if fills else df


def header_notes(path: Path, spec: TransactionsSpec, encoding: str = "utf-8") -> dict[str, str]:
    """What the derivation notes about the file's header, read once: `DERIVED_ORDERS` when it
    has no order column, and a separator other than a comma."""
    notes: dict[str, str] = {}
    if str(path).endswith(".parquet"):
        found = list(pl.read_parquet_schema(path))
    else:
        delimiter = sniff_delimiter(path, encoding)
        found = next(csv.reader([header_line(path, encoding)], delimiter=delimiter))
        if delimiter != ",":
            notes["separator"] = delimiter
    if "order_id" not in resolve_columns(found, spec, Path(path).name):
        notes["orders"] = DERIVED_ORDERS
    return notes


def _csv_types(cols: dict[str, str]) -> dict[str, pl.DataType]:
    numeric = {cols[c]: t for c, t in (("quantity", pl.Int64), ("unit_price", pl.Float64)) if c in cols}
    return {**{c: pl.String for c in cols.values() if c not in numeric}, **numeric}


# Every field is read, not only the mapped ones: the reader finds a row with more fields than
# the header only then (`read_csv_checked` then names its line).
_EVERY_FIELD = pl.QueryOptFlags(projection_pushdown=False)


def _scan_csv(path: Path, cols: dict[str, str], typed: bool) -> pl.LazyFrame:
    """The mapped columns of a CSV file, numbers typed or all as text.

    No null markers: only an empty field is missing, so a product named ``NA`` keeps its name;
    the markers of `NULLS` are applied to ids, numbers and timestamps when they are typed.
    """
    types = {"schema_overrides": _csv_types(cols)} if typed else {"infer_schema": False}
    # a row with none of the mapped fields is a blank line (a file ending in one is common)
    return pl.scan_csv(path, **types).select(list(cols.values())).filter(pl.any_horizontal(pl.all().is_not_null()))


def _read_csv(path: Path, cols: dict[str, str], typed: bool = True) -> pl.DataFrame:
    # Fast path: numbers parsed by the reader; a bad value falls back to strings, where
    # `_number` finds it and names it.
    if typed:
        try:
            return _scan_csv(path, cols, typed=True).collect(optimizations=_EVERY_FIELD)
        except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
            pass
    return _scan_csv(path, cols, typed=False).collect(optimizations=_EVERY_FIELD)


def _read_simple(path: Path, cols: dict[str, str], is_parquet: bool, fmt: str | None = None) -> pl.DataFrame | None:
    """The typed table in one pass, when the first lines show a simple layout (`_simple_plan`);
    None when they do not, or when the whole file turns out otherwise: the careful path then
    reads the file again. The text of the ids and timestamps is never held in full.

    Integers that fit Int32 in the first lines are read as Int32 (half the memory to fill and
    copy); when a later value does not fit, the cast fails and the file is read again with Int64.
    """
    lf = pl.scan_parquet(path) if is_parquet else _scan_csv(path, cols, typed=True)
    lf = lf.select(pl.col(c).alias(logical) for logical, c in cols.items())
    try:
        sample = lf.head(_SAMPLE).collect()
        for narrow in (True, False):
            plan = _simple_plan(sample, narrow, fmt)
            if plan is None:
                return None
            exprs, bad, text_ints = plan
            df = lf.with_columns(*exprs, pl.any_horizontal(pl.lit(False), *bad).alias("_bad"))
            try:
                df = df.collect(engine="streaming", optimizations=pl.QueryOptFlags() if is_parquet else _EVERY_FIELD)
                break
            except pl.exceptions.InvalidOperationError:  # e.g. a later integer beyond Int32
                if not narrow:
                    raise
    except (Exception, pl.exceptions.PanicException):
        return None
    if df.height == 0 or df["_bad"].any() or any(df[c].null_count() for c in ("order_id", "product_id") if c in df.columns):
        return None
    if any(df[c].null_count() == df.height for c in ("customer_id", "timestamp")):
        return None
    return _tidy_ids(df.drop("_bad"), text_ints).rechunk()


def _simple_plan(sample: pl.DataFrame, narrow: bool, fmt: str | None = None) -> tuple[list[pl.Expr], list[pl.Expr], set[str]] | None:
    """How to type each column in the one-pass read, judged on the first lines: the typing
    (integers narrowed to Int32 when ``narrow``, see `_narrowed`), expressions true on a line
    the careful path would type differently, and the ids read from text as integers. None when
    a column needs the careful path."""
    exprs, bad, text_ints = [], [], set()
    for c in (c for c in ("customer_id", "order_id", "product_id") if c in sample.columns):
        plan = _simple_id(sample[c], c, narrow)
        if plan is None:
            return None
        exprs.append(plan[0].alias(c))
        bad += plan[1]
        if plan[1] and sample[c].dtype == pl.String:
            text_ints.add(c)
    ts = _simple_timestamp(sample["timestamp"], fmt)
    if ts is None:
        return None
    exprs.append(ts[0].alias("timestamp"))
    bad += ts[1]
    if "quantity" in sample.columns and sample["quantity"].dtype not in _EXACT_INTS:
        return None
    if "unit_price" in sample.columns and not sample["unit_price"].dtype.is_numeric():
        return None
    if "quantity" in sample.columns:
        exprs.append(_narrowed(pl.col("quantity").cast(pl.Int64), sample["quantity"], narrow).alias("quantity"))
    exprs += [_price(pl.col("unit_price"))] if "unit_price" in sample.columns else []
    exprs += [pl.col(c).cast(pl.String).replace("", None) for c in ("product_name", "category") if c in sample.columns]
    return exprs, bad, text_ints


# Integer types whose values `_number` keeps exactly (it reads them through Float64).
_EXACT_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
_INT32 = (-(2**31), 2**31 - 1)


def _narrowed(as_int: pl.Expr, sample: pl.Series, narrow: bool) -> pl.Expr:
    """``as_int`` (Int64) as Int32 when ``narrow`` and the sample's values fit it, else as it is.

    The cast is strict: a later value that does not fit fails the read (`_read_simple` then
    reads with Int64), which costs less than a validity and a flag per line.
    """
    lo, hi = sample.cast(pl.Int64, strict=False).min(), sample.cast(pl.Int64, strict=False).max()
    if not narrow or lo is None or lo < _INT32[0] or hi > _INT32[1]:
        return as_int
    return as_int.cast(pl.Int32)


def _simple_id(s: pl.Series, col: str, narrow: bool) -> tuple[pl.Expr, list[pl.Expr]] | None:
    """Typing of one id column for the one-pass read (the same as `_id_column`'s, but integers
    narrowed to Int32 when they fit, see `_narrowed`) and the expressions that send the file
    to the careful path."""
    c = pl.col(col)
    if s.dtype == pl.UInt64:  # the careful path reads it (`_past_int64`)
        return None
    if s.dtype.is_integer():
        return _narrowed(c.cast(pl.Int64), s, narrow), []
    if s.dtype.is_float():
        as_int = c.cast(pl.Int64, strict=False)
        return as_int, [c.is_not_null() & (~(c % 1 == 0) | as_int.is_null())]
    if s.dtype != pl.String:
        return None
    if _plain_integers(s, _INT32 if col == "customer_id" else None) is None:
        return c.cast(pl.Categorical), []
    as_int = c.cast(pl.Int64, strict=False)
    # text below "1" is the rare sign, space, leading zero, "0" or negative id: when the first
    # lines hold none, that one comparison stands for `_not_plain` (a later "0" or negative id
    # then takes the careful path, which keeps it as it is)
    not_plain = _not_plain(c) if bool((s < "1").any()) else c < "1"
    # a missing order or product id sends the file to the careful path anyway (it names it)
    failed = [as_int.is_null() & c.is_not_null()] if col == "customer_id" else []
    return _narrowed(as_int, s, narrow), [*failed, not_plain]


def _simple_timestamp(s: pl.Series, fmt: str | None = None) -> tuple[pl.Expr, list[pl.Expr]] | None:
    """Typing of the timestamp for the one-pass read (the same as `_timestamps`'); a line the
    careful path would refuse (unreadable, or before `_MIN_YEAR`) sends the file there."""
    ts = pl.col("timestamp")
    if s.dtype == pl.Date:
        return ts.cast(pl.Datetime("us")), []
    if isinstance(s.dtype, pl.Datetime):
        return ts.dt.replace_time_zone(None).cast(pl.Datetime("us")), []
    fmt = (fmt or _sample_format(s)) if s.dtype == pl.String else None
    if fmt is None:
        return None
    # see `_timestamps_quick`: untrimmed text reads the same or not at all
    parsed = ts.str.to_datetime(fmt, strict=False, time_unit="us")
    parsed = parsed.dt.replace_time_zone(None) if "%z" in fmt else parsed  # as `_utc_wall`
    return parsed, [parsed.is_null() & ts.is_not_null(), parsed.dt.year() < _MIN_YEAR]


def _tidy_ids(df: pl.DataFrame, text_ints: set[str]) -> pl.DataFrame:
    """What the one-pass read leaves to check: text ids that need trimming or hold null
    markers, and customer ids read as integers that do not fit Int32 (ranked as text)."""
    for c in (c for c in ("customer_id", "order_id", "product_id") if c in df.columns):
        s = df[c]
        if s.dtype == pl.Categorical and _needs_cleaning(s.unique().cast(pl.String)):
            df = df.with_columns(_id_column(s.cast(pl.String), c))
        elif c == "customer_id" and c in text_ints and not (-(2**31) <= s.min() and s.max() < 2**31):
            df = df.with_columns(s.cast(pl.String).cast(pl.Categorical))
    return df


def _typed(
    df: pl.DataFrame, cols: dict[str, str], name: str, unit: str | None = None, decimal_comma: bool = False,
    fmt: str | None = None, comma_given: bool = False,
) -> pl.DataFrame:
    """Ids as keys (`_id_column`), quantity integer, price float, timestamp datetime; bad values
    named. ``decimal_comma``: numbers may be written ``1.234,50`` (`_decimal_point`)."""
    # One column at a time, so that each column's text is freed once it is typed.
    for c in (c for c in ("customer_id", "order_id", "product_id") if c in cols):
        df = df.with_columns(_id_column(df[c], c))
    # Names and categories are kept as written: only an empty one is missing.
    df = df.with_columns(as_written(df[c].cast(pl.String)) for c in ("product_name", "category") if c in cols)
    if df["timestamp"].dtype == pl.String:
        df = df.with_columns(pl.col("timestamp").replace(NULLS, None))
    for col in REQUIRED:
        if df[col].null_count() == df.height:
            raise InputError(f"{name}: column {cols[col]}: no value at all (the {col} is required)")
    for col in (c for c in ("order_id", "product_id") if c in cols):
        if df[col].null_count():
            raise InputError(f"{name}: column {cols[col]}: {df[col].null_count()} missing value(s){_where_missing(df[col])}")
    # a decimal comma in one number column sets the file's locale: dots in the others group thousands
    comma_locale = decimal_comma and (comma_given or any(_has_decimal_comma(df[c]) for c in ("quantity", "unit_price") if c in cols))
    if "quantity" in cols:
        df = df.with_columns(_number(df, "quantity", pl.Int64, cols, name, decimal_comma, comma_locale))
    if "unit_price" in cols:
        df = df.with_columns(_number(df, "unit_price", pl.Float64, cols, name, decimal_comma, comma_locale))
    return df.with_columns(_timestamps(df["timestamp"], cols["timestamp"], name, unit, fmt))


def _id_column(s: pl.Series, col: str) -> pl.Series:
    """Integer ids stay numbers (cheap); other ids become trimmed strings, held as Categorical.

    Float ids (pandas writes 17850.0 for an integer column with gaps) count as integers, and so
    does text that is plainly an integer (`_plain_integers`): it prints back as the same text.
    Customer ids as text stay text unless they fit Int32 (`_user_ids` ranks larger ones as text).
    """
    if _past_int64(s):  # a 64-bit hash as UInt64: its digits are the id
        return s.cast(pl.String).cast(pl.Categorical).alias(col)
    if s.dtype.is_integer() or (s.dtype.is_float() and bool((s.drop_nulls() % 1 == 0).all())):
        return s.cast(pl.Int64).alias(col)
    if s.dtype == pl.String:
        as_int = _plain_integers(s, (-(2**31), 2**31 - 1) if col == "customer_id" else None)
        if as_int is not None:
            return as_int.alias(col)
        # Trimming and null markers are checked on the distinct ids, not on every line.
        cat = s.cast(pl.Categorical)
        if not _needs_cleaning(cat.unique().cast(pl.String)):
            return cat.alias(col)
    e = pl.col(col).cast(pl.String)
    if s.dtype != pl.String or bool(s.str.contains(r"^\s|\s$").any()):
        e = e.str.strip_chars()
    return s.to_frame(col).select(pl.when(e.is_in(NULLS)).then(None).otherwise(e).cast(pl.Categorical).alias(col)).to_series()


def _past_int64(s: pl.Series) -> bool:
    return s.dtype == pl.UInt64 and (s.max() or 0) > 2**63 - 1


def _plain_integers(s: pl.Series, bounds: tuple[int, int] | None) -> pl.Series | None:
    """The text as Int64 when every value is an integer written plainly (no sign, space or
    leading zero, so it prints back the same) within ``bounds``, else None.

    A sample is tried first: ids that are not numbers usually show in the first lines.
    """
    for part in (s.head(_SAMPLE), s):
        as_int = part.cast(pl.Int64, strict=False)
        if as_int.null_count() != part.null_count() or bool(part.to_frame("s").select(_not_plain(pl.col("s")).any()).item()):
            return None
    lo, hi = as_int.min(), as_int.max()
    if bounds is not None and lo is not None and not (bounds[0] <= lo and hi <= bounds[1]):
        return None
    return as_int


def _not_plain(text: pl.Expr) -> pl.Expr:
    """A sign or leading zero: the integer would not print back as the same text.

    For text that casts to an integer, as ``+`` < ``-`` < ``0`` < ``1`` < ``9`` < ``:``: a plain
    integer is ``0`` or starts with ``1``-``9`` or with ``-1``-``-9``. Comparisons of whole
    strings are several times cheaper than ``starts_with`` tests on tens of millions of ids.
    """
    return (text < "1") & (text != "0") & ~((text >= "-1") & (text < "-:"))


def _needs_cleaning(ids: pl.Series) -> bool:
    return bool(ids.str.contains(r"^\s|\s$").any() or ids.is_in(NULLS).any())


def _number(
    df: pl.DataFrame, col: str, dtype: pl.DataType, cols: dict[str, str], name: str, decimal_comma: bool = False,
    comma_locale: bool = False,
) -> pl.Series:
    s = df[col]
    if dtype == pl.Float64 and s.dtype.is_numeric():
        return _price(s.cast(dtype)).alias(col)
    if s.dtype == dtype:
        return s.alias(col)
    if s.dtype == pl.String:
        s = s.str.strip_chars()
        s = pl.Series(col, s).set(s.is_in(NULLS), None)
        if decimal_comma:
            s = _decimal_point(s, f"{name}: column {cols[col]}", comma_locale)
    parsed = s.cast(pl.Float64, strict=False)
    bad = s.filter(parsed.is_null() & s.is_not_null())
    if len(bad):
        raise InputError(f"{name}: column {cols[col]}: value {bad[0]!r} is not a number ({len(bad)} row(s))")
    if dtype == pl.Float64:
        return _price(parsed).alias(col)
    parsed = parsed.fill_nan(None)  # NaN (pandas' missing value in a float column) is missing
    if (parsed.drop_nulls() % 1 != 0).any():
        # weighed goods (1.235 kg of apples): the quantity stays as written, in Float64
        return parsed.alias(col)
    return parsed.cast(dtype).alias(col)


# 1,5 / -12,50 / 1.234,50 / 1234,5: a comma decimal mark, dots (if any) grouping thousands
_DECIMAL_COMMA = r"^[+-]?(\d+|\d{1,3}(\.\d{3})+),\d+$"
_THOUSANDS = r"^[+-]?\d{1,3}(\.\d{3})+$"  # 1.000 / 12.345.678 beside decimal commas


def _where_missing(s: pl.Series) -> str:
    """Where the first gap is, counted in the rows with data (blank lines are not rows); the
    last row alone is most often a total or footer line."""
    first = int(s.is_null().arg_true()[0])
    if s.null_count() == 1 and first == s.len() - 1:
        return f", in the last row ({s.len():,}): a total or footer line? drop it"
    return f", the first in data row {first + 1:,}"


def _has_decimal_comma(s: pl.Series) -> bool:
    return s.dtype == pl.String and bool(s.drop_nulls().str.strip_chars().str.contains(_DECIMAL_COMMA).any())


def _decimal_point(s: pl.Series, where: str, comma_locale: bool = False) -> pl.Series:
    """A column written with decimal commas, with decimal points (``1.234,50`` -> ``1234.50``,
    ``1.000`` -> ``1000``), decided for the whole column: one without any decimal comma is left
    as it is (a point is a decimal point), unless another number column of the file has decimal
    commas (``comma_locale``: a German export's quantity ``1.500`` beside prices ``2,50`` is
    1500, not 1.5 kg). A value with a lone point beside decimal commas is refused in one line,
    as it could be either."""
    text = s.drop_nulls()
    comma = text.str.contains(_DECIMAL_COMMA)
    if not comma.any() and not comma_locale:
        # a ';' file (a decimal-comma locale's export) without any decimal comma: 1.200 is
        # 1200 there, or 1.2 from a program writing points; a dot that groups nothing (1.5) settles it
        dotted = text.filter(text.str.contains(".", literal=True))
        if len(dotted) and dotted.str.contains(_THOUSANDS).all():
            raise InputError(f"{where}: value {dotted[0]!r} could be {dotted[0].replace('.', '')} (a dot grouping "
                             f"thousands) or a decimal; set the ingest config decimal_mark to ',' or '.'")
        return s
    dotted = text.filter(~comma & text.str.contains(".", literal=True) & ~text.str.contains(_THOUSANDS))
    if len(dotted):
        other = repr(text.filter(comma)[0]) if comma.any() else "another column's"
        raise InputError(f"{where}: value {dotted[0]!r} has a decimal point where others have a decimal comma ({other})")
    return s.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True)


def _price(price: pl.Expr | pl.Series) -> pl.Expr | pl.Series:
    """A float price; NaN (the reader parses ``NaN`` and ``nan``) is a missing price."""
    return price.cast(pl.Float64).fill_nan(None)


def _timestamps(s: pl.Series, column: str, name: str, unit: str | None = None, fmt: str | None = None) -> pl.Series:
    """Datetime (µs). Text is read with ``fmt``, else with the known formats (`_TS_FORMATS`) that
    read every value: refused when two of them disagree (day/month order) or none reads all;
    with ``unit`` (`TIMESTAMP_UNITS`) the values are integers in that unit since 1970."""
    if unit is not None:
        return _epoch_times(s, column, name, unit)
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("us")).alias("timestamp")
    if isinstance(s.dtype, pl.Datetime):
        return s.dt.replace_time_zone(None).cast(pl.Datetime("us")).alias("timestamp")
    quick = _timestamps_quick(s, fmt)
    if quick is not None:
        return _checked_years(quick, s, column, name)
    text = s.cast(pl.String).str.strip_chars()
    if fmt is None:
        # a UTC offset (Shopify's "2024-05-01 10:00:00 +0200", ISO's "+01:00" or "Z") is dropped:
        # the shop's wall time is kept, as from a time-zone-aware parquet column; a given
        # timestamp_format is applied to the text as written
        text = text.str.replace(_UTC_OFFSET, "")
    present = text.is_not_null()
    best, best_bad, readers = None, None, []
    for f in (fmt,) if fmt else _TS_FORMATS:
        parsed = _read_as(text, f)
        n_bad = int((parsed.is_null() & present).sum())
        if n_bad == 0 and not any(parsed.equals(other) for _, other in readers):
            readers.append((f, parsed))
        if best_bad is None or n_bad < best_bad:
            best, best_bad = parsed, n_bad
    if len(readers) > 1:
        (f1, p1), (f2, p2) = readers[:2]
        example = text.filter(p1 != p2)[0]
        raise InputError(f"{name}: column {column}: value {example!r} reads as {f1!r} and as {f2!r}: set the ingest "
                         f"config timestamp_format to the one the file uses")
    if readers:
        return _checked_years(readers[0][1].alias("timestamp"), text, column, name)
    example = text.filter(best.is_null() & present)[0]
    hint = "; integer times need the ingest config timestamp_unit (day, s or ms)" if example.lstrip("-").isdigit() else ""
    hint = hint or ("" if fmt else "; other formats: set the ingest config timestamp_format (e.g. '%d.%m.%Y %H:%M')")
    read_as = f" in the timestamp_format {fmt!r}" if fmt else ""
    raise InputError(f"{name}: column {column}: value {example!r} is not a date or timestamp{read_as} ({best_bad} row(s)){hint}")


_UTC_OFFSET = r"\s*(?:[+-]\d{2}:?\d{2}|Z)$"


def _read_as(text: pl.Series, fmt: str) -> pl.Series:
    """``text`` read with ``fmt``; a value that is only its date part is that day at midnight
    (Excel writes a midnight time as the date alone, beside the other rows' times), when the
    format reads some value with its time: a column of dates alone is for the date formats."""
    parsed = _utc_wall(text.str.to_datetime(fmt, strict=False, time_unit="us"))
    if " %H" in fmt and text.null_count() < parsed.null_count() < len(text):
        parsed = parsed.fill_null(text.str.to_datetime(fmt.split(" %H")[0], strict=False, time_unit="us"))
    return parsed


def _utc_wall(parsed: pl.Series) -> pl.Series:
    """Times read with ``%z`` come back in UTC with a time zone: the UTC wall time, like every
    other timestamp of the snapshot (naive)."""
    return parsed.dt.replace_time_zone(None) if getattr(parsed.dtype, "time_zone", None) else parsed


def _checked_years(parsed: pl.Series, text: pl.Series, column: str, name: str) -> pl.Series:
    """``parsed``, refused in one line when a year is before `_MIN_YEAR`: a two-digit year read
    by ``%Y`` (12/1/10 is year 10), not a date a retailer has."""
    early = parsed.dt.year() < _MIN_YEAR
    if early.any():
        example = text.filter(early)[0]
        raise InputError(f"{name}: column {column}: value {example!r} reads as the year {parsed.dt.year().filter(early)[0]}: "
                         f"two-digit years are not guessed, set the ingest config timestamp_format (e.g. '%m/%d/%y %H:%M')")
    return parsed


def _epoch_times(s: pl.Series, column: str, name: str, unit: str) -> pl.Series:
    """Integers in ``unit`` since 1970-01-01 as Datetime (µs); a value that is not one is named."""
    text = s.cast(pl.String).str.strip_chars()
    ints = text.cast(pl.Int64, strict=False)
    bad = ints.is_null() & text.is_not_null()
    if bad.any():
        raise InputError(f"{name}: column {column}: value {text.filter(bad)[0]!r} is not an integer time "
                         f"in {unit} (timestamp_unit; {int(bad.sum())} row(s))")
    _check_epoch_range(ints, column, name, unit)
    return pl.from_epoch(ints, time_unit=TIMESTAMP_UNITS[unit]).cast(pl.Datetime("us")).alias("timestamp")


_UNIT_SECONDS = {"day": 86_400, "s": 1, "ms": 0.001}
_EPOCH_FLOOR = 1990  # seconds or milliseconds that all fall before it are in a smaller unit


def _check_epoch_range(ints: pl.Series, column: str, name: str, unit: str) -> None:
    """Integer times in ``unit`` that cannot be dates of a purchase log stop in one line: one
    after next year (a larger unit read as this one), or, in seconds or milliseconds, all of
    them before 1990 (a smaller unit). Days from 1 up are allowed: some logs number their days."""
    lo, hi = ints.min(), ints.max()
    if lo is None:
        return
    last = datetime.now(timezone.utc).year + 1
    top = (datetime(last + 1, 1, 1, tzinfo=timezone.utc).timestamp()) / _UNIT_SECONDS[unit]
    floor = datetime(_EPOCH_FLOOR, 1, 1, tzinfo=timezone.utc).timestamp() / _UNIT_SECONDS[unit]
    where = f"{name}: column {column}"
    if hi >= top or lo <= -top:
        raise InputError(f"{where}: value {hi if hi >= top else lo} in {unit} since 1970 is after {last} or far "
                         f"before 1970: is timestamp_unit right (day, s or ms)?")
    if unit != "day" and hi < floor:
        raise InputError(f"{where}: every value read in {unit} since 1970 falls before {_EPOCH_FLOOR} (largest {hi}): "
                         f"is timestamp_unit right (day, s or ms)?")


def _timestamps_quick(s: pl.Series, fmt: str | None = None) -> pl.Series | None:
    """The parse `_timestamps` would pick, in one pass over the column, or None when unsure.

    A format that fails on a sample fails on the column, so the formats that read the sample
    are the only candidates: one of them (or several that agree on it) is tried on the column.
    The text is not trimmed: a value reads the same with or without surrounding spaces, or not
    at all (then the full search decides).
    """
    fmt = (fmt or _sample_format(s)) if s.dtype == pl.String else None
    if fmt is None:
        return None
    parsed = _utc_wall(s.str.to_datetime(fmt, strict=False, time_unit="us"))
    return parsed.alias("timestamp") if parsed.null_count() == s.null_count() else None


def _sample_format(s: pl.Series) -> str | None:
    """The first format that reads every value among the first lines, unless another one
    reads them all differently (then only the whole column can tell: None)."""
    sample = s.head(_SAMPLE).drop_nulls().str.strip_chars()
    found: list[tuple[str, pl.Series]] = []
    for f in _TS_FORMATS:
        parsed = sample.str.to_datetime(f, strict=False, time_unit="us")
        if parsed.null_count() == 0:
            if found and not parsed.equals(found[0][1]):
                return None
            found.append((f, parsed))
    return found[0][0] if found else None


def exclusion_reason(df: pl.DataFrame, spec: TransactionsSpec) -> pl.Expr | None:
    """The first reason each line cannot be used, as its index in `_REASONS`, or null; None
    when no line is excluded.

    The code rules are evaluated once per distinct product / order id, not per line: a file
    has far fewer ids than lines, and string tests on every line dominate the ingest time.
    """
    # a prefix then digits only (UCI's C536379): "CA-2016-152156" or a GUID is an order
    bad_orders = _ids_matching(df, "order_id", spec.cancel_prefixes, (), upper=False, digits_after=True)
    bad_products = _ids_matching(df, "product_id", spec.non_product_prefixes, spec.non_product_codes, upper=True)
    rules = [
        pl.col("customer_id").is_null() if df["customer_id"].null_count() else None,
        pl.col("timestamp").is_null() if df["timestamp"].null_count() else None,
        pl.col("order_id").is_in(bad_orders.implode()) if len(bad_orders) else None,
        pl.col("product_id").is_in(bad_products.implode()) if len(bad_products) else None,
        _if_any(df, "quantity", pl.col("quantity") <= 0),
        _if_any(df, "unit_price", pl.col("unit_price") <= 0),
    ]
    if all(rule is None for rule in rules):
        return None
    expr = pl.lit(None, dtype=pl.UInt8)
    for i, cond in reversed(list(enumerate(rules))):
        if cond is not None:
            expr = pl.when(cond.fill_null(False)).then(pl.lit(i, dtype=pl.UInt8)).otherwise(expr)
    return expr


def _ids_matching(df: pl.DataFrame, col: str, prefixes: tuple[str, ...], codes: tuple[str, ...], upper: bool,
                  digits_after: bool = False) -> pl.Series:
    """The distinct ids of ``col`` that start with one of ``prefixes`` (followed by digits only
    with ``digits_after``) or equal one of ``codes``.

    Integer ids print as digits: unless a rule is digits too, none can match, and the ids
    are not even listed.
    """
    ids = df[col]
    if ids.dtype.is_integer() and not any(re.fullmatch(r"-?\d*", r) for r in (*prefixes, *codes)):
        return ids.head(0)
    ids = df.lazy().select(pl.col(col).unique()).collect().to_series()
    text = ids.cast(pl.String).str.to_uppercase() if upper else ids.cast(pl.String)
    hit = text.is_in([c.upper() if upper else c for c in codes])
    for prefix in prefixes:
        p = prefix.upper() if upper else prefix
        starts = text.str.starts_with(p)
        hit = hit | (starts & text.str.slice(len(p)).str.contains(r"^\d+$") if digits_after else starts)
    return ids.filter(hit)


_REASONS = ("no_customer_id", "no_timestamp", *EXCLUSION_REASONS[1:-1])


def _if_any(df: pl.DataFrame, col: str, cond: pl.Expr) -> pl.Expr | None:
    return cond if col in df.columns and bool(df.select(cond.any()).item()) else None


def usable_lines(df: pl.DataFrame, spec: TransactionsSpec, name: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """The lines kept (file order preserved) and counts by reason."""
    counts = {r: 0 for r in (*_REASONS, "duplicate_line")}
    reason = exclusion_reason(df, spec)
    if reason is None:
        kept = df
    else:
        tagged = df.with_columns(reason.alias("_reason"))
        for code, n in tagged.group_by("_reason").len().iter_rows():
            if code is not None:
                counts[_REASONS[code]] = int(n)
        kept = tagged.filter(pl.col("_reason").is_null()).drop("_reason")
    # duplicate_line is counted later (see `_order_lines`)
    if kept.height == 0:
        detail = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v)
        raise InputError(f"{name}: no usable line left (excluded: {detail})")
    return kept, counts


def derive_snapshot(
    path: Path, spec: TransactionsSpec | None = None, display_name: str | None = None, encoding: str = "utf-8"
) -> TransactionsResult:
    """Read, validate and turn a transactions table into the internal tables."""
    spec = spec or TransactionsSpec()
    name = display_name or Path(path).name
    df = read_transactions(path, spec, name, encoding)
    lines_in = df.height
    lines, excluded = usable_lines(df, spec, name)
    del df
    with _plain_pages():
        snap, info = _derive(lines, excluded, name, add_repeats=spec.duplicate_lines == "add")
    info.update(header_notes(path, spec, encoding))
    return TransactionsResult(snap, excluded, lines_in, info)


def _derive(lines: pl.DataFrame, excluded: dict[str, int], name: str, add_repeats: bool = False) -> tuple[Snapshot, dict]:
    """The internal tables from the usable lines; counts the duplicate lines into ``excluded``.

    Without a quantity column each line is one unit (H&M's and Olist's logs write a row per
    item): a product's lines in one order add up to its quantity, and no line is a duplicate.
    ``add_repeats`` (config ``duplicate_lines: add``): the same with a quantity column, for a
    till that writes a line per scan."""
    users, user_info, codes = _user_ids(lines["customer_id"])
    no_quantity = "quantity" not in lines.columns
    units = no_quantity or add_repeats
    lines = lines.with_columns(users, *([pl.lit(1, pl.Int32).alias("quantity")] if no_quantity else []))
    (products, line_products), (orders, line_orders) = _in_parallel(lambda: _products(lines), lambda: _orders(lines, name))
    if codes is not None:
        orders = orders.join(codes, on="user_id", how="left", maintain_order="left")
    order_products, merged, duplicates = _order_lines(lines, line_orders, line_products, name, units)
    excluded["duplicate_line"] = duplicates
    has_time = _has_time_of_day(orders["order_ts"])
    if not has_time:
        orders = orders.with_columns(pl.lit(None, dtype=pl.Int8).alias("order_hour_of_day"))
    info = {
        **user_info,
        "form": "transactions",
        "time_of_day": has_time,
        "repeated_product_lines_merged": merged,
        **({"quantity": "one unit per line (the file has no quantity column)"} if no_quantity else {}),
        **({"duplicate_lines": "added up (config duplicate_lines: add)"} if add_repeats else {}),
        "first_ts": str(orders["order_ts"].min()),
        "last_ts": str(orders["order_ts"].max()),
    }
    return Snapshot(orders=orders, order_products=order_products, products=products), info


@contextlib.contextmanager
def _plain_pages() -> Iterator[None]:
    """numpy asks the kernel for huge pages for its large arrays; where the kernel then compacts
    memory at the first touch (THP defrag ``madvise``, a common default), a fresh array of tens
    of millions of values costs several times its arithmetic in system time. The derivation
    allocates many such arrays once each: plain pages while it runs (a private numpy switch;
    without it nothing changes)."""
    switch = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    before = switch(False) if switch else None
    try:
        yield
    finally:
        if switch:
            switch(before)


_SHIFT = 1 << 32


def _user_ids(customer: pl.Series) -> tuple[pl.Series, dict, pl.DataFrame | None]:
    """Integer customer ids from 0 to Int32's top are kept; any other id (text, a negative
    placeholder such as a POS guest's -1, past Int32) is numbered 1.. in sorted order, and then
    the third value maps each number back to the file's id (``user_id``, ``customer_code``).

    Text ids are judged and numbered once per distinct id, then mapped to the lines.
    """
    if customer.dtype.is_integer():
        lo, hi = customer.min(), customer.max()
        if lo >= 0 and hi < 2**31:
            return customer.cast(pl.Int32).alias("user_id"), {"customer_ids": "as given"}, None
        distinct = _distinct(customer).sort()  # numbered in numeric order
        number = pl.int_range(1, distinct.len() + 1, dtype=pl.Int32, eager=True)
        return _numbered_ids(customer, distinct, number, distinct.cast(pl.String))
    distinct = customer.unique()
    text = distinct.cast(pl.String)
    as_float = text.cast(pl.Float64, strict=False)  # "17850" and "17850.0" alike
    as_int = as_float.cast(pl.Int64, strict=False)
    if bool(text.str.contains("@", literal=True).all()):
        # e-mail addresses as customer ids (Shopify's Email): Ann@x.org and ann@x.org are one customer
        text = text.str.to_lowercase()
    # pandas' float spelling of an integer id is that id: 17850.0 is 17850
    digits = as_int.cast(pl.String)
    text = pl.select(pl.when(text == digits + ".0").then(digits).otherwise(text)).to_series()
    # ...but an id is kept as a number only as the number is written: "00017850" (a loyalty
    # card) and "017850" are other customers than 17850
    integral = as_int.null_count() == 0 and bool((text == digits).all())  # past Int64: null, so text
    if integral and as_int.min() >= 0 and as_int.max() < 2**31:
        return _lookup(customer, distinct, as_int.cast(pl.Int32)).alias("user_id"), {"customer_ids": "as given"}, None
    return _numbered_ids(customer, distinct, text.rank("dense").cast(pl.Int32), text)


def _numbered_ids(
    customer: pl.Series, distinct: pl.Series, number: pl.Series, text: pl.Series
) -> tuple[pl.Series, dict, pl.DataFrame]:
    """Each line's ``number`` (that of its id in ``distinct``) and the map back to ``text``, the
    ids as the file spells them, which raw_orders keeps as ``customer_code`` for the exports."""
    codes = pl.DataFrame({"user_id": number, "customer_code": text}).unique("user_id", maintain_order=True)
    return _lookup(customer, distinct, number).alias("user_id"), _NUMBERED, codes


_NUMBERED = {"customer_ids": "numbered 1.. in sorted order of the file's ids; raw_orders.customer_code keeps them"}


def _lookup(keys: pl.Series, table: pl.Series, values: pl.Series) -> pl.Series:
    """``values[i]`` for each key equal to ``table[i]`` (keys integers or Categorical); every key
    is in the table (callers build it from the keys).

    Small non-negative keys index a dense array (`_take`: no validity); others go through a join.
    """
    k, t = keys.to_physical(), table.to_physical()
    lo, hi = t.min(), t.max()
    if lo is not None and lo >= 0 and hi < 2 * len(keys) + 1_000_000 and not values.null_count() and not k.null_count():
        dense = np.zeros(hi + 1, dtype=values.to_numpy().dtype)
        dense[t.to_numpy()] = values.to_numpy()
        return pl.Series(values.name, _take(dense, k.to_numpy()), dtype=values.dtype)
    right = pl.DataFrame({"k": t, "v": values})
    return k.to_frame("k").join(right, on="k", how="left", maintain_order="left")["v"].alias(values.name)


def _take(dense: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``dense[idx]`` (``idx`` within bounds), a block of indices at a time: numpy converts
    indices of another type than int64 (Int32 ids, Categorical codes) to a fresh int64 array,
    which on tens of millions of lines costs more in page faults than the lookup itself."""
    out = np.empty(len(idx), dtype=dense.dtype)
    for i in range(0, len(idx), _BLOCK):
        # "clip" writes straight into ``out`` ("raise" buffers it); the indices are in bounds
        np.take(dense, idx[i : i + _BLOCK], out=out[i : i + _BLOCK], mode="clip")
    return out


_BLOCK = 1 << 20


def _distinct(ids: pl.Series) -> pl.Series:
    """The distinct ids; small non-negative integers are marked in a dense array, not hashed."""
    lo, hi = ids.min(), ids.max()
    if ids.dtype.is_integer() and lo >= 0 and hi < 2 * len(ids) + 1_000_000 and not ids.null_count():
        seen, x = np.zeros(hi + 1, dtype=bool), ids.to_numpy()
        for i in range(0, len(x), _BLOCK):  # a block at a time: see `_take`
            seen[x[i : i + _BLOCK]] = True
        return pl.Series(ids.name, np.flatnonzero(seen)).cast(ids.dtype)
    return ids.to_frame().lazy().select(pl.col(ids.name).unique()).collect().to_series()


def _products(lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """Products (dense Int32 id in code order, name = first non-empty in the file, category as
    aisle and department) and each line's ``product_id``."""
    has_name, has_cat = "product_name" in lines.columns, "category" in lines.columns
    agg = [
        (pl.col("product_name").drop_nulls().first() if has_name else pl.lit(None, pl.String)).alias("product_name"),
        (pl.col("category").drop_nulls().first() if has_cat else pl.lit(None, pl.String)).alias("category"),
    ]
    if has_name or has_cat:  # lines are in file order: "first" is the file's first
        keyed = lines.lazy().group_by("product_id", maintain_order=True).agg(agg).collect()
    else:
        keyed = _distinct(lines["product_id"]).to_frame().with_columns(agg)
    prods = (
        keyed.with_columns(product_code=pl.col("product_id").cast(pl.String))
        .rename({"product_id": "_key"})
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
    return out, _lookup(lines["product_id"], prods["_key"], prods["product_id"])


def _orders(lines: pl.DataFrame, name: str) -> tuple[pl.DataFrame, pl.Series]:
    """One order per (customer, invoice), numbered in time order (the last one is the target),
    and each line's ``order_id``."""
    orders = _order_groups(lines, ["order_id"])
    # Usually an invoice belongs to one customer: then the invoice alone is the order's key.
    single = bool((orders["user_id"] == orders["_other_user"]).all())
    keys = ["order_id"] if single else ["order_id", "user_id"]
    orders = orders if single else _order_groups(lines, keys)
    reused = orders.filter(pl.col("_last") - pl.col("order_ts") > _ONE_ORDER_SPAN).select(keys)
    if reused.height:  # an invoice number used again on other days: one order per day
        return _orders(_by_day(lines, reused, keys), name)
    orders = orders.drop("_last").rename({"order_id": "_key"})
    orders = _in_time_order(orders, single).with_row_index("order_id", offset=1).with_columns(pl.col("order_id").cast(pl.Int32))
    if single:
        line_orders = _lookup(lines["order_id"], orders["_key"], orders["order_id"])
    else:
        right = orders.select(pl.col("_key").alias("order_id"), "user_id", pl.col("order_id").alias("_order"))
        line_orders = lines.select(keys).join(right, on=keys, how="left", maintain_order="left")["_order"]
    # in order_id order, a stable sort by customer gives each customer's orders in time order
    by_user = _stable_order(orders["user_id"].cast(pl.Int64) - int(orders["user_id"].min()))
    return _numbered(orders.gather(by_user), name), line_orders.alias("order_id")


_ONE_ORDER_SPAN = timedelta(days=1)  # an order's lines further apart are orders of other days


def _by_day(lines: pl.DataFrame, reused: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``lines`` with the order ids in ``reused`` (keyed by ``keys``) suffixed by each line's
    date (``123@2011-03-01``): the id a till numbered again, or a system reset, months later."""
    flagged = lines.select(keys).join(reused.with_columns(_reused=pl.lit(True)), on=keys, how="left",
                                      maintain_order="left")["_reused"].fill_null(False)
    code = pl.col("order_id").cast(pl.String)
    day = pl.format("{}@{}", code, pl.col("timestamp").dt.date())
    return lines.with_columns(order_id=pl.when(flagged).then(day).otherwise(code).cast(pl.Categorical))


def _in_time_order(orders: pl.DataFrame, single: bool) -> pl.DataFrame:
    """Orders sorted by time, ties by the order code as text, then by customer.

    Integer codes unique to one customer each (the usual invoice numbers) take a cheaper way
    than a sort on (timestamp, text): the codes' text order from arithmetic (`_text_order`),
    then a stable sort by the timestamp (`_time_key`), both sorts of single integers.
    """
    key = orders["_key"]
    if not (single and key.dtype.is_integer() and key.min() >= 0 and key.max() < 10**17):
        return orders.sort("order_ts", pl.col("_key").cast(pl.String), "user_id")
    by_code = _stable_order(_text_order(key.cast(pl.Int64)))  # distinct keys
    by_time = _stable_order(_time_key(orders["order_ts"].gather(by_code)))
    return orders.gather(by_code.gather(by_time))


def _time_key(ts: pl.Series) -> pl.Series:
    """Non-negative integers in the order of the timestamps; in seconds when every timestamp is
    a whole second (the usual case), so that they pack with positions into one int64 (a
    dense rank would cost a sort more)."""
    t = ts.cast(pl.Int64) - ts.cast(pl.Int64).min()
    return t // 1_000_000 if bool((t % 1_000_000 == 0).all()) else t


def _text_order(ids: pl.Series) -> pl.Series:
    """For non-negative integers below 10**17, a key that sorts them as their decimal text
    ("10" < "9"): the digits left-aligned to a fixed width, then the length ("1" < "10")."""
    width = len(str(ids.max()))
    x = ids.to_numpy()
    length = np.searchsorted(10 ** np.arange(1, width, dtype=np.int64), x, side="right") + 1
    key = (10 ** np.arange(width, -1, -1, dtype=np.int64))[length]  # 10 ** (width - length)
    key *= x
    key *= 32
    key += length
    return pl.Series(ids.name, key)


def _order_groups(lines: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    users = [pl.col("user_id").min(), pl.col("user_id").max().alias("_other_user")] if "user_id" not in keys else []
    last = pl.col("timestamp").max()
    starts = _run_starts(lines["order_id"]) if keys == ["order_id"] else None
    if starts is not None and len(starts) <= lines.height // 4:
        # an order's lines usually come together: summarise each run of lines, then group the runs
        lines = _run_summary(lines, starts)
        if _all_distinct(lines["order_id"]):  # each order is one run: the runs are the orders
            return lines.rename({"timestamp": "order_ts"})
        users, last = [pl.col("user_id").min(), pl.col("_other_user").max()], pl.col("_last").max()
    # one chunk: the orders are gathered several times
    return lines.lazy().group_by(keys).agg(*users, order_ts=pl.col("timestamp").min(), _last=last).collect().rechunk()


def _run_summary(lines: pl.DataFrame, starts: np.ndarray) -> pl.DataFrame:
    """Per run of lines (starting at ``starts``): its order id, smallest and largest customer id,
    earliest and latest time."""
    users, ts = lines["user_id"].to_numpy(), lines["timestamp"].to_numpy()
    return pl.DataFrame({
        "order_id": lines["order_id"].gather(starts),
        "user_id": np.minimum.reduceat(users, starts),
        "_other_user": np.maximum.reduceat(users, starts),
        "timestamp": np.minimum.reduceat(ts, starts),
        "_last": np.maximum.reduceat(ts, starts),
    })


def _all_distinct(ids: pl.Series) -> bool:
    x = np.sort(ids.to_physical().to_numpy())
    return not (x[1:] == x[:-1]).any()


def _run_starts(ids: pl.Series) -> np.ndarray:
    """Positions where a run of equal ids starts."""
    x = ids.to_physical().to_numpy()
    starts = np.empty(len(x), dtype=bool)  # one array, not a comparison and a copy
    starts[:1] = True
    np.not_equal(x[1:], x[:-1], out=starts[1:])
    return np.flatnonzero(starts)


def _numbered(orders: pl.DataFrame, name: str) -> pl.DataFrame:
    """Order number, previous order's gap, weekday and hour; orders sorted by customer and time."""
    first = (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True)
    orders = orders.with_columns(
        order_number=_block_position(first),
        _prev=pl.when(first).then(None).otherwise(pl.col("order_ts").shift(1)),
    )
    if orders["order_number"].max() > 32_767:
        raise InputError(f"{name}: a customer has more than 32,767 orders")
    last = (pl.col("user_id") != pl.col("user_id").shift(-1)).fill_null(True)
    return orders.select(
        "order_id",
        "user_id",
        pl.when(last).then(pl.lit("train")).otherwise(pl.lit("prior")).alias("eval_set"),
        pl.col("order_number").cast(pl.Int16),
        *order_timing(),
        "order_ts",
        pl.col("_key").cast(pl.String).alias("order_code"),
    )


def order_timing(prev: str = "_prev") -> list[pl.Expr]:
    """Instacart's timing columns from ``order_ts`` and the previous order's time ``prev``:
    ``order_dow`` (0 = Sunday), ``order_hour_of_day`` and ``days_since_prior_order`` (calendar
    days, capped at `GAP_CAP`; null on a first order). Derived forms (transactions, events) share it."""
    gap = (pl.col("order_ts").dt.date() - pl.col(prev).dt.date()).dt.total_days()
    return [
        (pl.col("order_ts").dt.weekday() % 7).cast(pl.Int8).alias("order_dow"),
        pl.col("order_ts").dt.hour().cast(pl.Int8).alias("order_hour_of_day"),
        gap.clip(0, GAP_CAP).cast(pl.Float32).alias("days_since_prior_order"),
    ]


def _block_position(first: pl.Expr) -> pl.Expr:
    """1-based position within runs of rows that start where ``first`` is true (a sorted frame);
    cheaper than ``int_range().over()`` on tens of millions of rows."""
    idx = pl.int_range(0, pl.len(), dtype=pl.Int64)
    return idx - pl.when(first).then(idx).forward_fill() + 1


def _order_lines(kept: pl.DataFrame, order_id: pl.Series, product_id: pl.Series, name: str,
                 units: bool = False) -> tuple[pl.DataFrame, int, int]:
    """Order lines, lines merged and exact duplicates dropped.

    An exact duplicate (every mapped column equal to an earlier line: a double export) repeats
    its (order, product) pair; the other lines of a repeated pair are merged into one
    (quantities summed), which takes the place of the pair's first line. With ``units`` (each
    line one unit) no line is a duplicate: every line of a pair is merged.
    """
    extra = [c for c in ("quantity", "unit_price") if c in kept.columns]
    # order ids follow time and each customer's order numbers: (order, file line) is the output order
    perm = _by_order(order_id)
    keys = pl.DataFrame([kept["user_id"], order_id, product_id]).gather(perm)
    rest, (repeated, reordered) = _in_parallel(
        lambda: kept.select(extra).gather(perm).with_columns(perm) if extra else perm.to_frame(), lambda: _pair_flags(keys)
    )
    lines = keys.hstack(rest).with_columns(reordered=reordered)
    merged = duplicates = 0
    if len(repeated):
        lines, merged, duplicates = _merge_pairs(lines, repeated, kept, units)
    out = lines.with_columns(_cart_positions(lines["order_id"], name))
    cast = [_quantity_int32(out["quantity"], name)] if "quantity" in out.columns else []
    cast += [pl.col("unit_price")] if "unit_price" in out.columns else []
    return out.select("order_id", "product_id", "add_to_cart_order", "reordered", *cast), merged, duplicates


def _quantity_int32(quantity: pl.Series, name: str) -> pl.Series:
    """The line quantities as stored (Int32), or a one-line error for a line (or a product's
    lines merged in one order) above Int32: a data error, not an order size. Fractional
    quantities (weighed goods) are stored as Float64, as written."""
    if quantity.dtype.is_float():
        return quantity.cast(pl.Float64)
    top = quantity.max()
    if top is not None and top > _INT32[1]:
        n = int((quantity > _INT32[1]).sum())
        raise InputError(
            f"{name}: column quantity: {n:,} order line(s) above {_INT32[1]:,} (largest {top:,}); "
            "fix or drop those lines"
        )
    return quantity.cast(pl.Int32)


def _cart_positions(order_id: pl.Series, name: str) -> pl.Series:
    """1.. within each order, for lines sorted by order (Int16, as Instacart's cart positions);
    an order of more lines stops in one line."""
    lengths = np.diff(_run_starts(order_id), append=len(order_id))
    if len(lengths) and lengths.max() > _CART_MAX:
        raise InputError(f"{name}: column order_id: an order has {int(lengths.max()):,} lines (at most {_CART_MAX:,} "
                         f"per order): is the order column an order, not a day or a store?")
    return pl.Series("add_to_cart_order", _ranges(np.ones(len(lengths), dtype=np.int64), lengths, np.int16))


_CART_MAX = 32_767


def _by_order(order_id: pl.Series) -> pl.Series:
    """The lines' positions (in file order) sorted by order, file order kept within an order.

    A file usually keeps an order's lines together: then the runs are sorted, not the lines.
    """
    starts = _run_starts(order_id)
    if len(starts) > len(order_id) // 4:
        perm = _stable_order(order_id)
    else:
        runs = pl.DataFrame({"order_id": order_id.gather(starts), "_start": starts})
        runs = runs.with_columns(_end=pl.col("_start").shift(-1, fill_value=len(order_id)))
        runs = runs.gather(_stable_order(runs["order_id"]))
        lengths = (runs["_end"] - runs["_start"]).to_numpy()
        perm = pl.Series(_ranges(runs["_start"].to_numpy(), lengths, _IDX))
    # gathers convert any other index type first, line by line
    return perm.cast(pl.get_index_type()).alias("_line")


# numpy's type for polars' row positions (gathers take no other)
_IDX = np.uint32 if pl.get_index_type() == pl.UInt32 else np.uint64


def _ranges(firsts: np.ndarray, lengths: np.ndarray, dtype: type) -> np.ndarray:
    """``firsts[0], firsts[0] + 1, ...`` (``lengths[0]`` values), then ``firsts[1], ...`` (lengths
    positive), in one array of ``dtype``: a cumulative sum of steps, in place (modular in
    ``dtype``, so exact for values that fit it). `pl.int_ranges` builds lists, several arrays."""
    step = np.ones(int(lengths.sum()), dtype=dtype)
    if len(lengths):
        jumps = firsts.astype(np.int64)
        jumps[1:] -= firsts[:-1] + lengths[:-1] - 1
        step[np.cumsum(lengths[:-1])] = jumps[1:].astype(dtype)
        step[0] = dtype(firsts[0])
        np.cumsum(step, dtype=dtype, out=step)
    return step


def _in_parallel(background: Callable[[], T], foreground: Callable[[], U]) -> tuple[T, U]:
    """Both results, ``background`` computed in a second thread: polars and numpy release the
    GIL, so two steps that would each leave a core idle share the cores."""
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(background)
        now = foreground()
        return later.result(), now


def _stable_order(key: pl.Series) -> pl.Series:
    """Positions sorted by ``key`` (non-negative integers), ties in position order."""
    return _sorted_with_positions(key)[1]


def _sorted_with_positions(key: pl.Series | np.ndarray) -> tuple[pl.Series, pl.Series]:
    """``key`` (non-negative integers; an int64 array is sorted in place) sorted, ties in
    position order, and the positions it came from.

    Key and position packed into one integer sort several times faster than an arg-sort. The
    packing works in place in one array: on tens of millions of lines, each new array costs
    more in page faults than its arithmetic.
    """
    n = len(key)
    bits = max(1, (n - 1).bit_length())
    if int(key.max()) < 2 ** (62 - bits):
        packed = key if isinstance(key, np.ndarray) else key.cast(pl.Int64).to_numpy(writable=True)
        packed <<= bits
        for i in range(0, n, _BLOCK):  # positions a block at a time: no n-value temporary
            packed[i : i + _BLOCK] |= np.arange(i, min(i + _BLOCK, n), dtype=np.int64)
        packed.sort()  # the packed values are distinct, so any sort is stable
        pos = np.empty(n, dtype=_IDX)
        np.bitwise_and(packed, (1 << bits) - 1, out=pos, casting="unsafe")
        packed >>= bits
        return pl.Series(getattr(key, "name", ""), packed), pl.Series(pos)
    key = pl.Series(key)
    perm = key.to_frame("k").select(pl.arg_sort_by("k", pl.int_range(0, pl.len()))).to_series()
    return key.gather(perm), perm


def _pair_flags(lines: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """For lines in (order, file line) order: the positions of the lines whose (order, product)
    pair repeats, and for each line whether it is a reorder (the customer bought the product
    in an earlier order).

    A stable sort by (customer, product) puts each customer's lines of a product together in
    order, so both answers come from comparing neighbours rather than hashing every line.
    """
    up, perm = _sorted_with_positions(_user_product_key(lines))
    key, pos = up.to_numpy(), perm.to_numpy()
    order = lines["order_id"].gather(perm).to_numpy()
    same_up = key[1:] == key[:-1]
    same_pair = order[1:] == order[:-1]
    same_pair &= same_up  # the next line repeats this line's pair
    del key, order, up
    reo = np.zeros(len(pos), dtype=np.int8)
    np.greater(same_up, same_pair, out=reo[1:])  # same customer and product, not the same order: bought earlier
    reordered = np.empty(len(pos), dtype=np.int8)
    reordered[pos] = reo
    rep = np.zeros(len(pos), dtype=bool)
    rep[1:] = same_pair
    rep[:-1] |= same_pair
    return pl.Series(pos[rep]), pl.Series("reordered", reordered)


def _user_product_key(lines: pl.DataFrame) -> pl.Series | np.ndarray:
    """customer * products + product, from 0: an int64 array built in place when the keys fit
    it, else UInt64 (cannot overflow); `_sorted_with_positions` checks the range it packs."""
    span = int(lines["product_id"].max()) + 1
    lo, hi = int(lines["user_id"].min()), int(lines["user_id"].max())
    if (hi - lo + 1) * span < 2**62:
        key = lines["user_id"].to_numpy().astype(np.int64)
        key -= lo
        key *= span
        key += lines["product_id"].to_numpy()
        return key
    users = (lines["user_id"].cast(pl.Int64) - lo).cast(pl.UInt64)
    return users * span + lines["product_id"].cast(pl.UInt64)


def _merge_pairs(lines: pl.DataFrame, repeated: pl.Series, kept: pl.DataFrame, units: bool = False) -> tuple[pl.DataFrame, int, int]:
    """Drop exact duplicates among the lines of repeated pairs (at positions ``repeated``; none
    with ``units``), merge the rest into the pair's first line; the lines merged and the
    duplicates dropped."""
    rep = lines.gather(repeated).select("_line", "order_id", "product_id", "user_id", _pos=repeated).sort("_line")
    # the customer as numbered (user_id), not as spelt: 17850.0 and 17850 on two equal lines are one customer
    rep = rep.hstack(kept.drop("user_id", "order_id", "product_id", "customer_id", strict=False).gather(rep["_line"]))
    distinct = (pl.repeat(True, rep.height, eager=True) if units
                else rep.select(pl.struct(pl.exclude("_line", "_pos")).is_first_distinct()).to_series())
    grouped = _merge_repeated(rep.drop("_pos").filter(distinct))
    merged = int(distinct.sum()) - grouped.height
    # the merged line takes the place of the pair's first line; the others go
    first = rep.select("_line", "_pos").join(grouped.select(pl.exclude(_MERGE_KEYS)), on="_line")
    # quantities widen to Int64: a merged sum above Int32 is reported by `_quantity_int32`, never wrapped
    cols = [c for c in first.columns if c not in ("_line", "_pos")]
    wide = {c: _summable(lines[c].dtype) if c == "quantity" else lines[c].dtype for c in cols}
    updates = [lines[c].cast(wide[c]).scatter(first["_pos"], first[c].cast(wide[c])) for c in cols]
    dropped = rep.filter(~pl.col("_line").is_in(grouped["_line"].implode()))["_pos"]
    keep = pl.repeat(True, lines.height, eager=True).scatter(dropped, False)
    return lines.with_columns(updates).filter(keep), merged, int((~distinct).sum())


_MERGE_KEYS = ("_pair", "order_id", "product_id", "user_id")


def _summable(quantity: pl.DataType) -> pl.DataType:
    """What quantities are summed in: Int64 for whole units, Float64 for weighed goods."""
    return pl.Float64 if quantity.is_float() else pl.Int64


def _merge_repeated(lines: pl.DataFrame) -> pl.DataFrame:
    keep = ["_pair", "_line", "order_id", "product_id", "user_id"]
    lines = lines.with_columns(_pair=pl.col("order_id").cast(pl.Int64) * _SHIFT + pl.col("product_id").cast(pl.Int64))
    agg = [pl.col("_line").min(), pl.col("order_id").first(), pl.col("product_id").first(), pl.col("user_id").first()]
    # summed as Int64 whatever the lines hold (Int32 after a narrowed read): a sum too large
    # fails when it is written back, never wraps
    qty = pl.col("quantity").cast(_summable(lines["quantity"].dtype)) if "quantity" in lines.columns else pl.lit(1)
    if "quantity" in lines.columns:
        agg.append(qty.sum())
        keep.append("quantity")
    if "unit_price" in lines.columns:
        agg.append(((pl.col("unit_price") * qty).sum() / qty.sum()).alias("unit_price"))
        keep.append("unit_price")
    return lines.group_by("_pair").agg(agg).select(keep)


def _has_time_of_day(ts: pl.Series) -> bool:
    """A log of dates only (every timestamp at midnight) has no time of day."""
    # a second or more past midnight (microseconds; numpy's modulo of an earlier date is positive)
    return bool((ts.to_numpy().view(np.int64) % 86_400_000_000 >= 1_000_000).any())
