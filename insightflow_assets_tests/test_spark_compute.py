"""The `compute: spark` setting: the same assets, computed by the Spark job through Dagster Pipes.

The small graph up to ratings, holdout, user_seg and segment_popularity runs twice on the same
generated data, once per engine, each into a store of its own (one module-scoped run each: the
Spark one starts a JVM per Spark asset, slow on a loaded 2-core machine). The tests read what
each run stored back and compare: ids and integers exactly, floats within a relative 1e-6
(Spark sums in another order); then the metadata and the checks of the Spark run.
"""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from insightflow_assets.spark.launch import spark_missing

pytestmark = pytest.mark.skipif(spark_missing() is not None, reason=f"compute: spark needs java and pyspark: {spark_missing()}")

from dagster import AssetKey, AssetSelection, DagsterInstance  # noqa: E402

from insightflow_assets.runner import run_graph  # noqa: E402
from insightflow_assets_tests.conftest import local_defs  # noqa: E402
from resources import Compute, LocalStorage, build_resources  # noqa: E402
from resources.layout import artifact  # noqa: E402

RUN = "run-20260402-000000"
SPARK_ASSETS = ("ratings", "holdout", "user_seg", "segment_popularity")
SORT = {"ratings": ["user_id", "product_id"], "holdout": ["user_id", "product_id"], "user_seg": ["user_id"],
        "segment_popularity": ["segment", "rank"]}  # fmt: skip


def _selection(defs) -> list[str]:
    """The Spark assets and everything upstream of them."""
    keys = AssetSelection.assets(*SPARK_ASSETS).upstream().resolve(defs.resolve_asset_graph())
    return sorted(k.to_user_string() for k in keys)


def _run(clean_dir, curated, compute: Compute):
    defs = local_defs(clean_dir, curated, compute=compute)
    with DagsterInstance.ephemeral() as inst:
        outcome = run_graph(inst, run_key=RUN, defs=defs, selection=_selection(defs))
    assert outcome.ok, outcome.errors
    return SimpleNamespace(outcome=outcome, defs=defs, store=LocalStorage(root=str(curated)))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, small_clean_dir):
    return _run(small_clean_dir, tmp_path_factory.mktemp("local_curated"), Compute())


@pytest.fixture(scope="module")
def engines(tmp_path_factory, small_clean_dir, local_run):
    spark = _run(small_clean_dir, tmp_path_factory.mktemp("spark_curated"), Compute(engine="spark"))
    return SimpleNamespace(local=local_run, spark=spark)


def _stored(run, name: str) -> pl.DataFrame:
    (key,) = artifact(name).keys(RUN).values()
    return pl.read_parquet(run.store.read_bytes(key))


@pytest.mark.parametrize("name", SPARK_ASSETS)
def test_spark_stores_what_local_stores(engines, name):
    local, spark = _stored(engines.local, name), _stored(engines.spark, name)
    assert local.height > 0
    assert_frame_equal(spark.sort(SORT[name]), local.sort(SORT[name]), rel_tol=1e-6, abs_tol=1e-9)
    if name == "user_seg":  # KMeans (scikit-learn, in the step) on the same R/F/M: the same segments
        assert spark["segment"].n_unique() >= 2
        assert_frame_equal(spark.select("user_id", "segment"), local.select("user_id", "segment"), check_exact=True)


def test_metadata_names_the_engine(engines):
    """Same node, same metadata keys; engine says which one computed it."""
    for name in SPARK_ASSETS:
        got, want = engines.spark.outcome.materialized[name], engines.local.outcome.materialized[name]
        assert got["engine"] == "spark" and want["engine"] == "local", name
        assert got["spark_seconds"] > 0, name
        assert set(want) - {"engine"} <= set(got), name  # every local key (path, row count, schema, ...) too
        assert got["dagster/row_count"] == _stored(engines.spark, name).height, name
        assert got["dagster/column_schema"] == want["dagster/column_schema"], name
    for name in ("raw_orders", "orders_imputed"):  # upstream of the switch: untouched
        assert "engine" not in engines.spark.outcome.materialized[name]


def test_checks_ran_and_passed_on_spark_outputs(engines):
    graph = engines.spark.defs.resolve_asset_graph()
    expected = {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys
                if k.asset_key.to_user_string() in SPARK_ASSETS}  # fmt: skip
    ran = {f"{c['asset']}:{c['check']}": c["passed"] for c in engines.spark.outcome.checks}
    # ratings_valid, user_seg_valid (its three conditions) and segment_popularity_bounded
    assert len(expected) >= 3 and expected <= set(ran)
    assert all(ran[k] for k in expected), {k: ran[k] for k in expected}


def test_bad_compute_setting_is_one_line(local_run, small_clean_dir, monkeypatch):
    """At load (the env var) and at run time (the resource): one line naming the setting, and
    the stored ratings of the run left as they were."""
    monkeypatch.setenv("INSIGHTFLOW_COMPUTE", "hadoop")
    with pytest.raises(ValueError, match=r"^INSIGHTFLOW_COMPUTE must be 'local' or 'spark', not 'hadoop'$"):
        build_resources()
    monkeypatch.delenv("INSIGHTFLOW_COMPUTE")
    (key,) = artifact("ratings").keys(RUN).values()
    before = local_run.store.read_bytes(key)
    defs = local_defs(small_clean_dir, local_run.store.root, compute=Compute(engine="hadoop"))
    with DagsterInstance.ephemeral() as inst:
        outcome = run_graph(inst, run_key=RUN, defs=defs, selection=["ratings"])
    assert not outcome.success
    assert outcome.errors == ["ValueError: compute.engine (INSIGHTFLOW_COMPUTE) must be 'local' or 'spark', not 'hadoop'"]
    assert local_run.store.read_bytes(key) == before


def test_spark_without_java_fails_in_one_line(local_run, small_clean_dir, monkeypatch):
    monkeypatch.setattr("insightflow_assets.spark.engine.spark_missing", lambda: "java is not installed (make spark-deps)")
    (key,) = artifact("holdout").keys(RUN).values()
    before = local_run.store.read_bytes(key)
    defs = local_defs(small_clean_dir, local_run.store.root, compute=Compute(engine="spark"))
    with DagsterInstance.ephemeral() as inst:
        outcome = run_graph(inst, run_key=RUN, defs=defs, selection=["holdout"])
    assert outcome.errors == ["RuntimeError: compute.engine is 'spark' but java is not installed (make spark-deps)"]
    assert outcome.failed_steps == ["holdout"]
    assert local_run.store.read_bytes(key) == before
