"""Reading and validating Instacart's files (pure polars; no Dagster).

Real exports differ in details the loader accepts: quoted or bare headers and strings,
``order_hour_of_day`` as ``8`` or ``"08"``, ``days_since_prior_order`` empty, ``NA`` or
``15.0``; ``.csv``, ``.csv.gz`` or ``.parquet``. Anything else wrong stops the run with
`InputError`, a one-line message naming the file and the column (and the line, for a file
that cannot be parsed), before anything is written.

String values are kept as written: only the CSV quoting is undone, and only an empty field
is missing (a product may be called ``NA``). The null markers of `NULLS` apply to numbers.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import polars as pl

# Markers of a missing number; the string columns of Instacart's files keep these as written.
# Spreadsheets' and databases' gaps too: Excel's #N/A, N/A, a dash, MySQL's \N.
NULLS = ["", "NA", "NaN", "nan", "null", "NULL", "None", "#N/A", "N/A", "n/a", "-", "\\N"]
# What the readers raise on a file they cannot parse: polars' own errors, OSError (a truncated
# .gz) and, on some damaged parquet pages, a Rust panic that derives from BaseException only.
READER_ERRORS = (pl.exceptions.PolarsError, OSError, pl.exceptions.PanicException)
T = TypeVar("T")

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


def read_table(path: Path, table: str, display_name: str | None = None, encoding: str = "utf-8") -> pl.DataFrame:
    """Read one source file into the table's schema, or raise `InputError`.

    ``encoding`` is the text encoding of a CSV file (ignored for parquet).
    """
    name = display_name or Path(path).name
    if str(path).endswith(".parquet"):
        df = _read_parquet(path, table, name)
    else:
        df = _read_csv(path, table, name, encoding)

    if df.height == 0:
        raise InputError(f"{name}: the table is empty")
    optional = OPTIONAL_COLUMNS.get(table, {})
    for col in df.columns:
        if col in NULLABLE or col in optional:
            continue
        n_null = df[col].null_count()
        if n_null:
            raise InputError(f"{name}: column {col}: {n_null} missing value(s)")
    return df


def _wanted(columns: list[str], table: str, name: str) -> dict[str, pl.DataType]:
    """The columns to read and their target types; a missing required column is an error."""
    schema = schema_for(table)
    missing = [c for c in schema if c not in columns]
    if missing:
        raise InputError(f"{name}: missing column {missing[0]} (found: {', '.join(columns)})")
    optional = OPTIONAL_COLUMNS.get(table, {})
    return {**schema, **{c: t for c, t in optional.items() if c in columns}}


def _read_parquet(path: Path, table: str, name: str) -> pl.DataFrame:
    try:
        columns = list(pl.read_parquet_schema(path))
    except READER_ERRORS as exc:  # not a parquet file at all, or a damaged footer
        raise InputError(f"{name}: cannot be read ({first_line(exc)})") from None
    wanted = _wanted(columns, table, name)
    try:
        raw = pl.read_parquet(path, columns=list(wanted))
    except READER_ERRORS as exc:
        raise InputError(_damaged_parquet(path, list(wanted), name, exc)) from None
    return _cast_columns(raw, wanted, name)


def _damaged_parquet(path: Path, columns: list[str], name: str, exc: BaseException) -> str:
    # Pages are compressed per column: reading them one at a time finds the damaged column.
    for col in columns:
        try:
            pl.read_parquet(path, columns=[col])
        except READER_ERRORS as col_exc:
            return f"{name}: column {col}: the data is damaged ({first_line(col_exc)})"
    return f"{name}: cannot be read ({first_line(exc)})"


def _read_csv(path: Path, table: str, name: str, encoding: str) -> pl.DataFrame:
    return read_csv_checked(path, name, encoding, lambda p: _read_csv_file(p, table, name))


def sniff_delimiter(path: Path, encoding: str = "utf-8") -> str:
    """The header's field separator: ``,`` unless the first line holds more ``;`` or tabs than
    commas (Excel's export in many European locales writes ``;``)."""
    header = header_line(path, encoding)
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


# Byte-order marks that say the encoding (Excel's "Unicode Text" is UTF-16 with one): longest first.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def file_encoding(path: Path, encoding: str) -> str:
    """``encoding``, or UTF-16/32 where the file starts with their byte-order mark and the config
    says UTF-8 (the default): the mark says it, nothing is guessed."""
    if not is_utf8(encoding):
        return encoding
    with open_bytes(path) as raw:
        head = raw.read(4)
    return next((enc for bom, enc in _BOMS if head.startswith(bom)), encoding)


def _is_wide(encoding: str) -> bool:
    """UTF-16/32: a line end is not the byte 0x0A, so the bytes cannot be split into lines first."""
    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


def header_line(path: Path, encoding: str) -> str:
    """The CSV file's first line as text (no byte-order mark)."""
    encoding = file_encoding(path, encoding)
    with open_bytes(path) as raw:
        if not _is_wide(encoding):
            return raw.readline().decode(encoding, errors="replace").lstrip("\ufeff")
        try:
            line = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="").readline()
        except UnicodeError:  # "utf-16" without a byte-order mark: the reading says so in one line
            return ""
    return line.lstrip("\ufeff")


def read_csv_checked(path: Path, name: str, encoding: str, read: Callable[[Path], T], delimiter: str = ",") -> T:
    """``read(path)`` for a CSV file, or, when the reader cannot parse it (`READER_ERRORS`) or it
    is in another encoding than UTF-8 or separated by another ``delimiter``, ``read`` of its
    checked copy (`utf8_copy`, comma-separated).

    The copy names the line of a real defect (damaged gzip, bytes not valid in the encoding, a
    row with more fields than the header), or, when there is none (e.g. a bare `"` inside a
    field, which polars refuses), is a re-quoted UTF-8 file the reader can parse. Both input
    forms read their CSV files through here.
    """
    encoding = file_encoding(path, encoding)
    _refuse_unreadable_layouts(path, name, encoding)
    if is_utf8(encoding) and delimiter == ",":
        try:
            return read(path)
        except READER_ERRORS:
            pass  # looked into below, outside the handler so the one-line error has no chained cause
    with utf8_copy(path, name, encoding, delimiter) as copy:
        try:
            return read(copy)
        except READER_ERRORS as exc:
            raise InputError(f"{name}: cannot be read ({first_line(exc)})") from None


# Files that are not text whatever their name: a workbook saved over a .csv, or zipped.
_NOT_CSV = {
    b"PK\x03\x04": "a ZIP archive (an .xlsx workbook is one)",
    b"\xd0\xcf\x11\xe0": "an Excel 97-2003 workbook (.xls)",
    b"PAR1": "a parquet file (name it .parquet)",
}


def _refuse_unreadable_layouts(path: Path, name: str, encoding: str) -> None:
    """One line naming what the file is (read from its first 64 KiB, a .gz unpacked), not
    "bytes that are not valid utf-8" and the encoding."""
    try:
        with open_bytes(path) as raw:
            head = raw.read(1 << 16)
    except (EOFError, OSError, zlib.error):  # a damaged .gz: the reading names its line
        return
    for magic, what in _NOT_CSV.items():
        if head.startswith(magic):
            raise InputError(f"{name}: is {what}, not CSV text; save the sheet as CSV (UTF-8), unzip it or rename it")
    if b"\r" in head and b"\n" not in head:
        raise InputError(f"{name}: its lines end in a carriage return only (Excel's 'CSV (Macintosh)'), so it reads "
                         "as one line; save it as CSV with Windows or Unix line ends")
    if is_utf8(encoding) and len(head) >= 8 and head[:512].count(b"\x00") * 3 > len(head[:512]):
        raise InputError(f"{name}: has a NUL byte beside every letter, as UTF-16 text without a byte-order mark does; "
                         "set the ingest config encoding to utf-16-le (or utf-16-be)")


def _read_csv_file(path: Path, table: str, name: str) -> pl.DataFrame:
    wanted = _wanted(pl.read_csv(path, n_rows=0, infer_schema=False).columns, table, name)
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
        # Slow path, all text: finds and names the value the fast path could not type. No null
        # markers here: `_cast_columns` applies them to the number columns only.
        raw = pl.read_csv(path, columns=list(wanted), infer_schema=False, quote_char='"')
        return _cast_columns(raw, wanted, name)
    return _strings_as_written(path, df, wanted)


def _strings_as_written(path: Path, df: pl.DataFrame, wanted: dict[str, pl.DataType]) -> pl.DataFrame:
    """The fast path's null markers also hit the string columns (a product named ``NA``); the
    few string columns that got a null are read again as written."""
    cols = [c for c, t in wanted.items() if t == pl.String and df[c].null_count()]
    if not cols:
        return df
    text = pl.read_csv(path, columns=cols, infer_schema=False, quote_char='"')
    return df.with_columns(as_written(text[c]) for c in cols)


def as_written(s: pl.Series) -> pl.Series:
    # Only a truly empty field is missing: no stripping, no null markers.
    return s.replace("", None)


def first_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line (polars adds hints on further lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


class _BadBytes(Exception):
    def __init__(self, line_no: int, raw: bytes, error: UnicodeDecodeError):
        self.line_no, self.raw, self.error = line_no, raw, error


@contextlib.contextmanager
def utf8_copy(path: Path, name: str, encoding: str = "utf-8", delimiter: str = ",") -> Iterator[Path]:
    """A checked, re-quoted UTF-8 copy of a CSV file (plain, even when the source is gzipped).

    Reads the file line by line and raises `InputError` naming the line (and column) of its
    first defect: damaged gzip data, bytes not valid in ``encoding``, a row with more fields
    than the header. A bare ``"`` inside an unquoted field is kept as a character.
    """
    with tempfile.TemporaryDirectory(prefix="insightflow-csv-") as tmp:
        copy = Path(tmp) / "copy.csv"
        with open_bytes(path) as raw, copy.open("w", encoding="utf-8", newline="") as out:
            _recode(raw, out, name, encoding, delimiter)
        yield copy


def open_bytes(path: Path):
    import gzip

    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _recode(raw, out, name: str, encoding: str, delimiter: str = ",") -> None:
    reader = csv.reader(_decoded_lines(raw, name, encoding), delimiter=delimiter)  # strict=False: bare quotes kept
    writer = csv.writer(out, lineterminator="\n")
    header: list[str] = []
    try:
        for record in reader:
            if not header:
                header = record
            elif len(record) > len(header):
                extra = len(record) - len(header)
                raise InputError(
                    f"{name}: line {reader.line_num}: {len(record)} fields, the header has {len(header)} "
                    f"(the row has {extra} extra field{'s' if extra > 1 else ''})"
                )
            writer.writerow(record)
    except _BadBytes as bad:
        raise InputError(_bad_bytes_message(bad, header, name, encoding, delimiter)) from None
    except csv.Error as exc:
        # e.g. "field larger than field limit": text decoded in the wrong encoding has no line ends
        hint = "" if is_utf8(encoding) else "; check the ingest config encoding"
        raise InputError(f"{name}: line {reader.line_num}: {exc}{hint}") from None


def _decoded_lines(raw, name: str, encoding: str) -> Iterator[str]:
    if _is_wide(encoding):
        yield from _wide_lines(raw, name, encoding)
        return
    # A UTF-8 byte-order mark (Excel writes one) is not part of the first column name.
    first = "utf-8-sig" if is_utf8(encoding) else encoding
    n = 0
    lines = iter(raw)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error) as exc:  # a truncated or damaged .gz
            raise InputError(f"{name}: the file is truncated or damaged after line {n:,} ({first_line(exc)})") from None
        n += 1
        try:
            yield line.decode(first if n == 1 else encoding)
        except UnicodeDecodeError as exc:
            raise _BadBytes(n, line, exc) from None


def _wide_lines(raw, name: str, encoding: str) -> Iterator[str]:
    """UTF-16/32 text decoded as a stream, then cut into lines (the byte-order mark dropped)."""
    n = 0
    try:
        for line in io.TextIOWrapper(raw, encoding=encoding, newline=""):
            n += 1
            yield line.lstrip("\ufeff") if n == 1 else line
    except UnicodeError as exc:  # bad bytes, or "utf-16"/"utf-32" on a file without a byte-order mark
        where = f"line {n + 1:,}" if n else "the first line"
        raise InputError(f"{name}: {where}: not valid {codecs.lookup(encoding).name} text ({exc.reason if hasattr(exc, 'reason') else exc}); "
                         "check the ingest config encoding (utf-16-le or utf-16-be where the file has no byte-order mark)") from None


def _bad_bytes_message(bad: _BadBytes, header: list[str], name: str, encoding: str, delimiter: str = ",") -> str:
    # latin-1 maps every byte to one character, so the line splits into fields whatever it holds
    # (at the file's own delimiter: a `;` line read at commas is one field, the first column)
    fields = next(csv.reader([bad.raw.decode("latin-1")], delimiter=delimiter), [])
    where, shown = "", bad.raw.decode(encoding, errors="backslashreplace").strip()
    for i, field in enumerate(fields):
        try:
            field.encode("latin-1").decode(encoding)
        except UnicodeDecodeError:
            column = header[i] if i < len(header) else f"field {i + 1}"
            where, shown = f" column {column}:", field.encode("latin-1").decode(encoding, errors="backslashreplace")
            break
    hint = (
        "save the file as UTF-8, or set the ingest config encoding (e.g. latin-1) to the one it was written in"
        if is_utf8(encoding)
        else "check the ingest config encoding"
    )
    return f"{name}: line {bad.line_no}:{where} bytes that are not valid {codecs.lookup(encoding).name} ('{shown}'); {hint}"


def _csv_read_types(wanted: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    # Integers parse as Int64 (a quoted "08" included); anything odd such as "8.0" fails the
    # fast path and is handled, and named, by the slow string path.
    return {c: (pl.Int64 if t in _INT_LIMITS else (pl.Float64 if t == pl.Float32 else t)) for c, t in wanted.items()}


def _cast_columns(raw: pl.DataFrame, wanted: dict[str, pl.DataType], name: str) -> pl.DataFrame:
    out = []
    for col, dtype in wanted.items():
        s = raw[col]
        if s.dtype == pl.String and dtype == pl.String:
            s = as_written(s)
        elif s.dtype == pl.String:
            # A number may come padded or quoted twice ("08", ' 7'); its null markers are `NULLS`.
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
        raise InputError(_twice_in_order(first["order_id"], first["product_id"], tables, names))
    return Snapshot(orders=orders.sort(["user_id", "order_number"]), order_products=order_products, products=products)


def _twice_in_order(order_id: int, product_id: int, tables: dict[str, pl.DataFrame], names: dict[str, str]) -> str:
    """The message for a product twice in one order, naming the file(s) that hold the lines:
    the train file, the prior file, or both when each holds one of them."""
    files = [
        names[stem]
        for stem in ("order_products__prior", "order_products__train")
        if stem in tables
        and tables[stem].filter((pl.col("order_id") == order_id) & (pl.col("product_id") == product_id)).height
    ]
    return f"{' and '.join(files)}: column product_id: product {product_id} appears twice in order {order_id}"


def one_file(top: set[str], stem: str, suffixes: tuple[str, ...], where: str) -> str | None:
    """The one key of ``top`` holding ``stem`` (``stem`` + a suffix), None when there is none;
    two (e.g. a.csv and a.csv.gz) are an `InputError`: which one is meant is not guessed."""
    found = [stem + s for s in suffixes if stem + s in top]
    if len(found) > 1:
        raise InputError(f"{where}: {stem} is there as {' and '.join(found)}; keep one")
    return found[0] if found else None


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
        return {TRANSACTIONS_TABLE: one_file(top, TRANSACTIONS_TABLE, SOURCE_SUFFIXES, where)}
    for stem in SOURCE_TABLES:
        found = one_file(top, stem, SOURCE_SUFFIXES, where)
        if found:
            chosen[stem] = found
        elif stem not in OPTIONAL_SOURCE_TABLES:
            raise InputError(
                f"{where}: missing file {stem}.csv (or .csv.gz / .parquet), "
                f"or a {TRANSACTIONS_TABLE}.csv for the transactions form"
            )
    return chosen
