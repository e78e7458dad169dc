"""``strict_parquet``: how stored inputs are held to the schema the exports expect."""

from __future__ import annotations

import polars as pl


class SchemaDriftError(ValueError):
    """A stored input's columns or dtypes are not what this code expects."""


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType], where: str, *, strict: bool) -> pl.DataFrame:
    """Select ``schema``'s columns of ``frame``.

    strict: every column must exist with exactly its dtype (extra columns are allowed but
    ignored); otherwise raise with a one-line message naming the file (``where``) and column.
    lenient: missing columns are still an error, dtypes are cast.
    """
    for col, dtype in schema.items():
        if col not in frame.columns:
            raise SchemaDriftError(f"{where}: missing column {col}")
        if strict and frame.schema[col] != dtype:
            raise SchemaDriftError(f"{where}: column {col} is {frame.schema[col]}, expected {dtype} (strict_parquet)")
    return frame.select(pl.col(c).cast(t) for c, t in schema.items())
