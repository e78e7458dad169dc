"""Dagster's standard table metadata for every stored frame: row count and column schema.

``dagster/row_count`` and ``dagster/column_schema`` are the keys the UI reads: the schema fills
an asset's Columns section and the count its row-count badge and plot. The IO manager adds
them for every parquet frame it stores, so no asset spells them (one source of truth).

Types are named after the polars dtype, in the lowercase spelling of Arrow and parquet tools
(``int32``, ``float64``, ``string``, ``timestamp[us, UTC]``, ``list<int32>``), so the Columns
tab says what a reader of the stored file gets.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import polars as pl
from dagster import MetadataValue, TableColumn, TableSchema

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
TABLES = "tables"  # the columns of each table of a several-table folder

_NAMED = {
    pl.Boolean: "bool",
    pl.String: "string",
    pl.Binary: "binary",
    pl.Date: "date",
    pl.Time: "time",
    pl.Categorical: "categorical",
    pl.Null: "null",
    pl.Object: "object",
}


def column_type(dtype: pl.DataType) -> str:
    """The column type shown in the UI for one polars dtype."""
    for base, name in _NAMED.items():
        if dtype == base:
            return name
    if isinstance(dtype, pl.Datetime):
        return f"timestamp[{dtype.time_unit}{', ' + dtype.time_zone if dtype.time_zone else ''}]"
    if isinstance(dtype, pl.Duration):
        return f"duration[{dtype.time_unit}]"
    if isinstance(dtype, pl.Decimal):
        return f"decimal({dtype.precision}, {dtype.scale})"
    if isinstance(dtype, (pl.List, pl.Array)):
        return f"list<{column_type(dtype.inner)}>"
    if isinstance(dtype, pl.Struct):
        return "struct<" + ", ".join(f"{f.name}: {column_type(f.dtype)}" for f in dtype.fields) + ">"
    if isinstance(dtype, pl.Enum):
        return "enum"
    return str(dtype).lower()  # the integer and float dtypes: int8 … uint64, float32, float64


def column_schema(schema: Mapping[str, pl.DataType]) -> TableSchema:
    return TableSchema(columns=[TableColumn(name=n, type=column_type(t)) for n, t in schema.items()])


def parquet_shape(data: bytes) -> tuple[int, pl.Schema]:
    """Row count and schema of a stored parquet file, from its footer (no data is decoded)."""
    rows = pl.scan_parquet(io.BytesIO(data)).select(pl.len()).collect().item()
    return rows, pl.read_parquet_schema(io.BytesIO(data))


def table_metadata(rows: int, schema: Mapping[str, pl.DataType]) -> dict[str, MetadataValue]:
    """The standard keys for an asset whose value is one table."""
    return {ROW_COUNT: MetadataValue.int(rows), COLUMN_SCHEMA: MetadataValue.table_schema(column_schema(schema))}


def folder_table_metadata(files: Mapping[str, bytes]) -> dict[str, MetadataValue]:
    """Table metadata for the parquet files of a several-file artifact.

    A folder with one table (the model's ``recs.parquet``) is that table to the UI, under the
    standard keys. With several (the exports), no one of them is *the* asset's table, so each
    gets a plottable ``<file> row_count`` and its columns in one ``tables`` entry
    (``{file: "name type, ..."}``): a `TableSchema` per file cost ~2 KB of event log each.
    """
    shapes = {name: parquet_shape(data) for name, data in files.items() if name.endswith(".parquet")}
    if len(shapes) == 1:
        (shape,) = shapes.values()
        return table_metadata(*shape)
    meta: dict[str, MetadataValue] = {}
    for name, (rows, _) in shapes.items():
        meta[f"{name} row_count"] = MetadataValue.int(rows)
    if shapes:
        meta[TABLES] = MetadataValue.json({name: columns_text(schema) for name, (_, schema) in shapes.items()})
    return meta


def columns_text(schema: Mapping[str, pl.DataType]) -> str:
    """``"user_id int32, product_id int32"``: a file's columns as the UI's Columns tab names them."""
    return ", ".join(f"{n} {column_type(t)}" for n, t in schema.items())
