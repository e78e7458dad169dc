"""Standard metadata (issue 13): every table asset carries ``dagster/row_count`` and
``dagster/column_schema`` (the UI's Columns section) with real types, checked against the stored
parquet file; every evaluation carries its headline metrics per method as float metadata.

Everything is read back from the instance's materialization events of one run of the graph
(the session's `small_run`), not from the run's in-memory result.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, AssetRecordsFilter, FloatMetadataValue, IntMetadataValue, TableSchemaMetadataValue

from insightflow_assets.evaluation.offline import HEADLINE_K, HEADLINE_METRICS
from insightflow_assets.selection.select import REPORTED
from resources.layout import artifact
from resources.table_metadata import COLUMN_SCHEMA, ROW_COUNT, TABLES, column_type

# The assets whose value is one table (a frame, or a folder holding one parquet file).
KNOWN_TABLES = {
    "raw_orders", "raw_order_products", "products", "orders_imputed", "ratings", "holdout",
    "user_recos", "user_seg", "segment_popularity", "nbr_model",
}  # fmt: skip


def materialized_metadata(small_run, name: str) -> dict:
    """The metadata of the asset's materialization on the run partition, from the event log."""
    records = small_run.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(name), asset_partitions=[small_run.run_key]), limit=1
    ).records
    assert records, f"{name} has no materialization on {small_run.run_key}"
    return dict(records[0].asset_materialization.metadata)


def parquet_files(small_run, name: str) -> dict[str, Path]:
    keys = artifact(name).keys(small_run.run_key)
    return {f: small_run.curated / k for f, k in keys.items() if f.endswith(".parquet")}


def table_assets(small_run) -> list[str]:
    """Every materialized asset whose stored value is one parquet table, from the layout: an
    asset added later is covered without being listed here."""
    names = sorted(small_run.outcome.materialized)
    return [n for n in names if len(parquet_files(small_run, n)) == 1]


def schema_of(meta: dict, key: str) -> list[tuple[str, str]]:
    value = meta[key]
    assert isinstance(value, TableSchemaMetadataValue), (key, value)
    return [(c.name, c.type) for c in value.value.columns]


def stored_schema(path: Path) -> list[tuple[str, str]]:
    return [(n, column_type(t)) for n, t in pl.read_parquet_schema(path).items()]


# --- the type names ----------------------------------------------------------------------------


def test_column_types_name_the_polars_dtype():
    cases = {
        pl.Int8: "int8", pl.UInt32: "uint32", pl.Float64: "float64", pl.String: "string",
        pl.Boolean: "bool", pl.Date: "date", pl.Datetime("us", "UTC"): "timestamp[us, UTC]",
        pl.Datetime("ns"): "timestamp[ns]", pl.Duration("ms"): "duration[ms]", pl.Decimal(10, 2): "decimal(10, 2)",
        pl.List(pl.Int32): "list<int32>", pl.Struct({"a": pl.Int8}): "struct<a: int8>", pl.Categorical: "categorical",
    }  # fmt: skip
    assert {str(t): column_type(t) for t in cases} == {str(t): name for t, name in cases.items()}


# --- tables ------------------------------------------------------------------------------------


def test_every_table_asset_is_found(small_run):
    assert set(table_assets(small_run)) >= KNOWN_TABLES


@pytest.mark.parametrize("name", sorted(KNOWN_TABLES))
def test_row_count_and_column_schema_match_the_stored_file(small_run, name):
    meta = materialized_metadata(small_run, name)
    (path,) = parquet_files(small_run, name).values()
    assert isinstance(meta[ROW_COUNT], IntMetadataValue)
    assert meta[ROW_COUNT].value == pl.read_parquet(path).height > 0
    assert schema_of(meta, COLUMN_SCHEMA) == stored_schema(path)


def test_every_table_asset_carries_the_standard_keys(small_run):
    missing = {n: [k for k in (ROW_COUNT, COLUMN_SCHEMA) if k not in materialized_metadata(small_run, n)] for n in table_assets(small_run)}
    assert {n: keys for n, keys in missing.items() if keys} == {}


def test_column_types_are_real_types_not_the_default_string(small_run):
    orders = dict(schema_of(materialized_metadata(small_run, "orders_imputed"), COLUMN_SCHEMA))
    assert orders["order_id"].startswith("int") and orders["eval_set"] == "string"
    assert orders["days_since_prior_order"].startswith("float")
    assert orders["order_dow_imputed"] == "bool"
    ratings = dict(schema_of(materialized_metadata(small_run, "ratings"), COLUMN_SCHEMA))
    assert ratings["rating"].startswith("float") and ratings["user_id"].startswith("int")


def test_each_parquet_file_of_a_folder_has_its_own_entries(small_run):
    """The exports hold several tables: none is *the* asset's, so each is described by name:
    a plottable row count and its columns with their real types in the ``tables`` entry."""
    meta = materialized_metadata(small_run, "exports")
    files = parquet_files(small_run, "exports")
    assert len(files) > 1 and ROW_COUNT not in meta and COLUMN_SCHEMA not in meta
    assert set(meta[TABLES].value) == set(files)
    for name, path in files.items():
        assert meta[f"{name} row_count"].value == pl.read_parquet(path).height, name
        assert meta[TABLES].value[name] == ", ".join(f"{n} {t}" for n, t in stored_schema(path)), name


# --- evaluations: plottable headline metrics -----------------------------------------------------


def _stored_json(small_run, name: str, file: str) -> dict:
    return json.loads((small_run.curated / artifact(name).keys(small_run.run_key)[file]).read_text())


@pytest.mark.parametrize("name", ["als_eval", "als_postrank"])
def test_evaluations_carry_every_methods_headline_metrics_as_floats(small_run, name):
    """Every method's headline metrics are plottable floats, each on one asset: als_eval's
    methods there, the ones als_postrank adds (the post-rank, the exported list) on it."""
    meta = materialized_metadata(small_run, name)
    methods = _stored_json(small_run, name, "metrics.json")["methods"]
    if name == "als_postrank":
        evaluated = _stored_json(small_run, "als_eval", "metrics.json")["methods"]
        assert not any(key.startswith(f"{m} ") for m in evaluated for key in meta)  # not twice
        methods = {m: v for m, v in methods.items() if m not in evaluated}
        assert "als_postrank" in methods
    else:
        assert len(methods) >= 5
    expected = {
        f"{m} {metric}@{HEADLINE_K}": float(scores[f"{metric}@{HEADLINE_K}"])
        for m, scores in methods.items()
        for metric in HEADLINE_METRICS
        if scores.get(f"{metric}@{HEADLINE_K}") is not None  # undefined metrics are listed, not plotted
    }
    assert len(expected) >= 3 * len(methods) - 3 and expected
    for key, value in expected.items():
        assert isinstance(meta[key], FloatMetadataValue), key
        assert meta[key].value == pytest.approx(value), key


def test_model_selection_carries_every_methods_validation_metrics_as_floats(small_run):
    meta = materialized_metadata(small_run, "model_selection")
    best = _stored_json(small_run, "model_selection", "selection.json")["best_per_method"]
    assert len(best) >= 5
    for method, scores in best.items():
        for metric in REPORTED:
            key = f"validation_{method}_{metric}"
            assert isinstance(meta[key], FloatMetadataValue), key
            assert meta[key].value == pytest.approx(scores[metric]), key


def test_outside_a_step_the_io_manager_reports_its_metadata_as_output_metadata(tmp_path):
    """In a run the table metadata goes to the materialization alone (test_charts checks the
    log); a bare output context, with no materialization to attach it to, still receives it."""
    from dagster import build_output_context

    from resources import CuratedIOManager, LocalStorage

    frame = pl.DataFrame({"user_id": [1, 2, 3], "rating": [1.0, 2.0, 0.5]})
    context = build_output_context(asset_key=AssetKey("ratings"), partition_key="run-20260101-000000")
    CuratedIOManager(storage=LocalStorage(root=str(tmp_path))).handle_output(context, frame)
    meta = context.get_logged_metadata()
    assert meta[ROW_COUNT].value == 3 and [c.name for c in meta[COLUMN_SCHEMA].schema.columns] == ["user_id", "rating"]
    assert pl.read_parquet(tmp_path / artifact("ratings").keys("run-20260101-000000")["ratings.parquet"]).equals(frame)
