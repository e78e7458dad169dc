"""Reading and validating Instacart's files (pure polars; no Dagster).

Real exports differ in details the loader accepts: quoted or bare headers and strings,
``order_hour_of_day`` as ``8`` or ``"08"``, ``days_since_prior_order`` empty, ``NA`` or
``15.0``; ``.csv``, ``.csv.gz`` or ``.parquet``. Anything else wrong stops the run with
`InputError`, a one-line message naming the file and the column, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

NULLS = ["", "NA", "NaN", "nan", "null", "NULL", "None"]

# Target dtypes per table; ids fit Int32, small codes Int8/Int16.
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "orders": {
        "order_id": pl.Int32,
        "user_id": pl.Int32,
        "eval_set": pl.String,
        "order_number": pl.Int16,
        "order_dow": pl.Int8,
        "order_hour_of_day": pl.Int8,
        "days_since_prior_order": pl.Float32,
    },
    "order_products": {
        "order_id": pl.Int32,
        "product_id": pl.Int32,
        "add_to_cart_order": pl.Int16,
        "reordered": pl.Int8,
    },
    "products": {
        "product_id": pl.Int32,
        "product_name": pl.String,
        "aisle_id": pl.Int16,
        "department_id": pl.Int16,
    },
    "aisles": {"aisle_id": pl.Int16, "aisle": pl.String},
    "departments": {"department_id": pl.Int16, "department": pl.String},
}
# Missing values allowed here (MICE fills the order fields); nulls anywhere else are an error.
NULLABLE = {"order_dow", "order_hour_of_day", "days_since_prior_order", "add_to_cart_order", "reordered"}
OPTIONAL_COLUMNS = {"products": {"price": pl.Float64}}
RANGES = {
    "days_since_prior_order": (0, 30),
    "order_hour_of_day": (0, 23),
    "order_dow": (0, 6),
}
EVAL_SETS = ("prior", "train", "test")
_INT_LIMITS = {pl.Int8: (-128, 127), pl.Int16: (-32768, 32767), pl.Int32: (-(2**31), 2**31 - 1), pl.Int64: (-(2**63), 2**63 - 1)}


class InputError(ValueError):
    """Bad input data: the message names the file and the column."""


def schema_for(table: str) -> dict[str, pl.DataType]:
    return SCHEMAS["order_products" if table.startswith("order_products") else table]


def read_table(path: Path, table: str, display_name: str | None = None) -> pl.DataFrame:
    """Read one source file into the table's schema, or raise `InputError`."""
    name = display_name or Path(path).name
    schema = schema_for(table)
    optional = OPTIONAL_COLUMNS.get(table, {})
    is_parquet = str(path).endswith(".parquet")

    columns = _header(path, is_parquet, name)
    missing = [c for c in schema if c not in columns]
    if missing:
        raise InputError(f"{name}: missing column {missing[0]} (found: {', '.join(columns)})")
    wanted = {**schema, **{c: t for c, t in optional.items() if c in columns}}

    if is_parquet:
        raw = pl.read_parquet(path, columns=list(wanted))
        df = _cast_columns(raw, wanted, name)
    else:
        try:
            # Fast path: let the CSV reader parse the target types directly.
            df = pl.read_csv(
                path,
                columns=list(wanted),
                schema_overrides=_csv_read_types(wanted),
                null_values=NULLS,
                quote_char='"',
            )
            df = _cast_columns(df, wanted, name)
        except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
            # Slow path only to find and name the offending column and value.
            raw = pl.read_csv(path, columns=list(wanted), infer_schema=False, null_values=NULLS)
            df = _cast_columns(raw, wanted, name)

    if df.height == 0:
        raise InputError(f"{name}: the table is empty")
    for col in wanted:
        if col in NULLABLE or col in optional:
            continue
        n_null = df[col].null_count()
        if n_null:
            raise InputError(f"{name}: column {col}: {n_null} missing value(s)")
    return df


def _header(path: Path, is_parquet: bool, name: str) -> list[str]:
    try:
        if is_parquet:
            return list(pl.read_parquet_schema(path))
        return pl.read_csv(path, n_rows=0, infer_schema=False).columns
    except Exception as exc:  # unreadable, not a CSV/parquet at all
        raise InputError(f"{name}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _csv_read_types(wanted: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    # Integers parse as Int64 (a quoted "08" included); anything odd such as "8.0" fails the
    # fast path and is handled, and named, by the slow string path.
    return {c: (pl.Int64 if t in _INT_LIMITS else (pl.Float64 if t == pl.Float32 else t)) for c, t in wanted.items()}


def _cast_columns(raw: pl.DataFrame, wanted: dict[str, pl.DataType], name: str) -> pl.DataFrame:
    out = []
    for col, dtype in wanted.items():
        s = raw[col]
        if s.dtype == pl.String:
            s = s.str.strip_chars().str.strip_chars('"')
            s = s.set(s.is_in(NULLS), None) if s.null_count() < len(s) else s
        target = dtype
        try:
            if dtype in _INT_LIMITS and s.dtype.is_integer():
                lo, hi = _INT_LIMITS[target]
                if s.min() is not None and (s.min() < lo or s.max() > hi):
                    bad = s.filter((s < lo) | (s > hi))[0]
                    raise InputError(f"{name}: column {col}: value {bad} is out of range")
                s = s.cast(target, strict=True)
            elif dtype in _INT_LIMITS:
                as_float = s.cast(pl.Float64, strict=True)
                frac = as_float.drop_nulls()
                bad = frac.filter((frac % 1) != 0)
                if len(bad):
                    raise InputError(f"{name}: column {col}: value {bad[0]!r} is not an integer")
                info = _INT_LIMITS[target]
                over = frac.filter((frac < info[0]) | (frac > info[1]))
                if len(over):
                    raise InputError(f"{name}: column {col}: value {over[0]:g} is out of range")
                s = as_float.cast(target, strict=True)
            else:
                s = s.cast(target, strict=True)
        except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
            bad_value = _first_bad(raw[col], target)
            raise InputError(
                f"{name}: column {col}: value {bad_value!r} is not a valid {_kind(target)}"
            ) from None
        out.append(s.alias(col))
    return pl.DataFrame(out)


def _first_bad(s: pl.Series, dtype: pl.DataType):
    probe = s.cast(pl.String).str.strip_chars().str.strip_chars('"')
    cast = probe.cast(pl.Float64 if dtype != pl.String else pl.String, strict=False)
    bad = probe.filter(cast.is_null() & probe.is_not_null() & ~probe.is_in(NULLS))
    return bad[0] if len(bad) else None


def _kind(dtype: pl.DataType) -> str:
    return "integer" if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64) else str(dtype).lower()


@dataclass
class Snapshot:
    """The validated input set of one run."""

    orders: pl.DataFrame
    order_products: pl.DataFrame
    products: pl.DataFrame


def validate_snapshot(tables: dict[str, pl.DataFrame], names: dict[str, str]) -> Snapshot:
    """Cross-table checks and the joins that make the run's snapshot.

    `tables` holds the frames read by `read_table`, keyed by Kaggle stem; `names` the file
    names to put in error messages.
    """
    orders = tables["orders"]
    n = names["orders"]

    bad_sets = orders.filter(~pl.col("eval_set").is_in(EVAL_SETS))["eval_set"]
    if len(bad_sets):
        raise InputError(f"{n}: column eval_set: value {bad_sets[0]!r} is not one of {', '.join(EVAL_SETS)}")
    for col, (lo, hi) in RANGES.items():
        out = orders.filter((pl.col(col) < lo) | (pl.col(col) > hi))[col]
        if len(out):
            raise InputError(f"{n}: column {col}: value {out[0]} is outside {lo}–{hi} ({len(out)} row(s))")
    dup = orders.filter(pl.col("order_id").is_duplicated())["order_id"]
    if len(dup):
        raise InputError(f"{n}: column order_id: duplicate value {dup[0]} ({len(dup)} rows)")
    if (orders["order_number"] < 1).any():
        raise InputError(f"{n}: column order_number: values must be ≥ 1")

    products = tables["products"]
    pn = names["products"]
    dup = products.filter(pl.col("product_id").is_duplicated())["product_id"]
    if len(dup):
        raise InputError(f"{pn}: column product_id: duplicate value {dup[0]}")
    for ref, table in (("aisle_id", "aisles"), ("department_id", "departments")):
        known = tables[table]
        dup = known.filter(pl.col(ref).is_duplicated())[ref]
        if len(dup):
            raise InputError(f"{names[table]}: column {ref}: duplicate value {dup[0]}")
        unknown = products.join(known, on=ref, how="anti")[ref]
        if len(unknown):
            raise InputError(f"{pn}: column {ref}: {len(unknown)} product(s) point at unknown {table} (e.g. {unknown[0]})")
    products = (
        products.join(tables["aisles"], on="aisle_id", how="left")
        .join(tables["departments"], on="department_id", how="left")
        .sort("product_id")
    )

    lines = []
    for stem in ("order_products__prior", "order_products__train"):
        if stem not in tables:
            continue
        op = tables[stem]
        on = names[stem]
        unknown = op.join(orders.select("order_id"), on="order_id", how="anti")["order_id"]
        if len(unknown):
            raise InputError(f"{on}: column order_id: {len(unknown)} line(s) point at unknown orders (e.g. {unknown[0]})")
        unknown = op.join(products.select("product_id"), on="product_id", how="anti")["product_id"]
        if len(unknown):
            raise InputError(
                f"{on}: column product_id: {len(unknown)} line(s) point at unknown products (e.g. {unknown[0]})"
            )
        lines.append(op)
    order_products = pl.concat(lines, how="vertical")
    # One Int64 key per line; counting distinct keys is ~6x cheaper than is_duplicated on
    # 32 M rows, and the slow search for an example only runs when there is a duplicate.
    key = order_products["order_id"].cast(pl.Int64) * (1 << 32) + order_products["product_id"].cast(pl.Int64)
    if key.n_unique() < key.len():
        first = order_products.filter(key.is_duplicated()).row(0, named=True)
        raise InputError(
            f"{names['order_products__prior']}: column product_id: product {first['product_id']} "
            f"appears twice in order {first['order_id']}"
        )
    return Snapshot(orders=orders.sort(["user_id", "order_number"]), order_products=order_products, products=products)


def pick_source_files(keys: list[str], where: str) -> dict[str, str]:
    """Map each Kaggle stem to the one file that holds it (``.csv``, ``.csv.gz`` or ``.parquet``),
    or, for the transactions form, ``{"transactions": key}``.

    ``keys`` are the object keys found at the clean location (top level only); ``where`` names
    the location in messages.
    """
    from resources.layout import OPTIONAL_SOURCE_TABLES, SOURCE_SUFFIXES, SOURCE_TABLES, TRANSACTIONS_TABLE

    top = {k for k in keys if "/" not in k}
    chosen: dict[str, str] = {}
    transactions = [TRANSACTIONS_TABLE + s for s in SOURCE_SUFFIXES if TRANSACTIONS_TABLE + s in top]
    if transactions:
        instacart = sorted(k for k in top for stem in SOURCE_TABLES if k in {stem + s for s in SOURCE_SUFFIXES})
        if instacart:
            raise InputError(f"{where}: holds both {transactions[0]} and Instacart files ({instacart[0]}); keep one input form")
        if len(transactions) > 1:
            raise InputError(f"{where}: {TRANSACTIONS_TABLE} is there as {' and '.join(transactions)}; keep one")
        return {TRANSACTIONS_TABLE: transactions[0]}
    for stem in SOURCE_TABLES:
        found = [stem + s for s in SOURCE_SUFFIXES if stem + s in top]
        if len(found) > 1:
            raise InputError(f"{where}: {stem} is there as {' and '.join(found)}; keep one")
        if found:
            chosen[stem] = found[0]
        elif stem not in OPTIONAL_SOURCE_TABLES:
            raise InputError(
                f"{where}: missing file {stem}.csv (or .csv.gz / .parquet), "
                f"or a {TRANSACTIONS_TABLE}.csv for the transactions form"
            )
    return chosen
