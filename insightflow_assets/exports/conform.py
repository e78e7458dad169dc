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


def conform_segmentation(
    user_seg: pl.DataFrame, segment_popularity: pl.DataFrame, run_key: str, *, strict: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The stored segmentation outputs held to their schemas, errors naming the stored file."""
    from insightflow_assets.segmentation.popularity import SEGMENT_POPULARITY_SCHEMA
    from insightflow_assets.segmentation.rfm import USER_SEG_SCHEMA
    from resources.layout import artifact

    seg = conform(user_seg, USER_SEG_SCHEMA, artifact("user_seg").keys(run_key)["user_seg.parquet"], strict=strict)
    pop = conform(
        segment_popularity,
        SEGMENT_POPULARITY_SCHEMA,
        artifact("segment_popularity").keys(run_key)["segment_popularity.parquet"],
        strict=strict,
    )
    return seg, pop
