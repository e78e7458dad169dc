"""The `compute: spark` setting: the same assets, computed by the Spark job through Dagster Pipes.

The small graph up to ratings, holdout, user_seg, segment_popularity and basket_pairs runs twice
on the same generated data, once per engine (the snapshot's lines checked on Spark in the second), each into a store of its own (one module-scoped run each: the
Spark one starts a JVM per Spark asset, slow on a loaded 2-core machine). The tests read what
each run stored back and compare: ids and integers exactly, floats within a relative 1e-6
(Spark sums in another order); then the metadata and the checks of the Spark run.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from insightflow_assets.spark.launch import spark_missing

pytestmark = pytest.mark.skipif(spark_missing() is not None, reason=f"compute: spark needs java and pyspark: {spark_missing()}")

from dagster import AssetExecutionContext, AssetKey, AssetSelection, DagsterInstance  # noqa: E402

from insightflow_assets.ingest.loading import InputError, read_table, validate_snapshot  # noqa: E402
from insightflow_assets.ingest.spark_lines import lines_task  # noqa: E402
from insightflow_assets.runner import run_graph  # noqa: E402
from insightflow_assets.spark import engine as spark_engine  # noqa: E402
from insightflow_assets.spark.launch import run_spark  # noqa: E402
from insightflow_assets_tests.conftest import local_defs  # noqa: E402
from insightflow_assets_tests.test_ingest import INGEST, _replace, write_tiny  # noqa: E402
from insightflow_assets_tests.test_ingest import RUN as INGEST_RUN  # noqa: E402
from resources import Compute, LocalStorage, build_resources  # noqa: E402
from resources.io_manager import CuratedIOManager  # noqa: E402
from resources.layout import SOURCE_TABLES, artifact  # noqa: E402

RUN = "run-20260402-000000"
SPARK_ASSETS = ("ratings", "holdout", "user_seg", "segment_popularity")
# also on Spark: the snapshot's lines checks (instacart_snapshot) and basket_pairs' counts
SELECTED = (*SPARK_ASSETS, "basket_pairs")
SORT = {"ratings": ["user_id", "product_id"], "holdout": ["user_id", "product_id"], "user_seg": ["user_id"],
        "segment_popularity": ["segment", "rank"]}  # fmt: skip


def _selection(defs) -> list[str]:
    """The Spark assets and everything upstream of them."""
    keys = AssetSelection.assets(*SELECTED).upstream().resolve(defs.resolve_asset_graph())
    return sorted(k.to_user_string() for k in keys)


# LightFM on one thread (bit-reproducible): basket_pairs' profile choice scores with its vectors
ONE_THREAD = {"ops": {"lightfm_model": {"config": {"num_threads": 1}}}}


LINES = ("orders_imputed", "raw_order_products")


@contextlib.contextmanager
def _lines_reads(curated: Path):
    """``(step, table, how)`` each time a step reads the order lines' data: loaded through the IO
    manager, or a scan of their stored files collected with columns (``one column`` when only
    one; a row count reads only the parquet footer: ``PROJECT 0/…``, not counted); and
    ``(step, path, "spark output")`` for each output a Spark task is told to write."""
    reads: list[tuple[str, str, str]] = []
    files = {name: str(curated / next(iter(artifact(name).keys(RUN).values()))) for name in LINES}
    load_run, collect, launch = CuratedIOManager.load_run, pl.LazyFrame.collect, spark_engine.run_spark_pipes

    def step() -> str:
        with contextlib.suppress(Exception):
            return AssetExecutionContext.get().op_def.name
        return "?"

    def recording_load(self, name, run_key):
        if name in LINES:
            reads.append((step(), name, "loaded"))
        return load_run(self, name, run_key)

    def recording_collect(self, *args, **kwargs):
        plan = self.explain()
        how = "one column" if "PROJECT 1/" in plan else "collected"
        reads.extend((step(), name, how) for name, path in files.items()
                     if path in plan and "PROJECT 0/" not in plan)  # fmt: skip
        return collect(self, *args, **kwargs)

    def recording_launch(context, tasks, **kwargs):
        reads.extend((step(), task["output"], "spark output") for task in tasks)
        return launch(context, tasks, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CuratedIOManager, "load_run", recording_load)
        mp.setattr(pl.LazyFrame, "collect", recording_collect)
        mp.setattr(spark_engine, "run_spark_pipes", recording_launch)
        yield reads


def _run(clean_dir, curated, compute: Compute):
    defs = local_defs(clean_dir, curated, compute=compute)
    with DagsterInstance.ephemeral() as inst, _lines_reads(curated) as reads:
        outcome = run_graph(inst, run_key=RUN, defs=defs, selection=_selection(defs), run_config=ONE_THREAD)
    assert outcome.ok, outcome.errors
    return SimpleNamespace(outcome=outcome, defs=defs, store=LocalStorage(root=str(curated)), lines_reads=reads)


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


def test_spark_steps_never_hold_the_lines(engines):
    """Under spark the switched steps hand the order lines to the job by path: they read their
    schema and row count, never their data (scans, `common.lean_step`). The local engine's same
    steps do read them, which shows the recording sees a read when there is one."""
    def by(run):
        return {(s, name) for s, name, how in run.lines_reads if s in SPARK_ASSETS and how != "spark output"}

    assert {("ratings", "raw_order_products"), ("holdout", "orders_imputed"), ("user_seg", "raw_order_products")} <= by(engines.local)
    assert not [r for r in engines.local.lines_reads if r[0] in SPARK_ASSETS and r[2] == "loaded"]  # scanned
    assert by(engines.spark) == set(), engines.spark.lines_reads
    # basket_pairs: the job counts the pairs and hands back the validation baskets' lines; the
    # step reads the orders' ids and numbers and one column of the lines (cart positions missing)
    basket = {(name, how) for s, name, how in engines.spark.lines_reads if s == "basket_pairs" and how != "spark output"}
    assert basket <= {("orders_imputed", "collected"), ("raw_order_products", "one column")}, basket
    assert ("raw_order_products", "collected") in {(n, h) for s, n, h in engines.local.lines_reads if s == "basket_pairs"}


def test_spark_outputs_go_through_the_curated_storage(engines):
    """Without a `scratch` setting the job writes its outputs into a folder of the curated
    storage (which a cluster's driver can reach too), one folder per application, removed after."""
    root = Path(engines.spark.store.uri())
    outputs = [out for _, out, how in engines.spark.lines_reads if how == "spark output"]
    assert len(outputs) >= 8  # ratings, holdout, rfm, segment_popularity, basket_pairs' four counts, …
    assert all(Path(out).parent.parent == root / "scratch" and Path(out).parent.name.startswith("spark-")
               for out in outputs), outputs  # fmt: skip
    assert not (root / "scratch").exists()


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


# --- basket_pairs: Spark counts, polars finishes ---------------------------------------------


def _basket_file(run, name: str) -> bytes:
    return run.store.read_bytes(artifact("basket_pairs").keys(RUN)[name])


@pytest.mark.parametrize("name", ["pairs.parquet", "items.parquet"])
def test_basket_pairs_store_the_same_files(engines, name):
    """Counted by the Spark job, normalised, ranked and chosen on polars: the stored frames equal
    the local run's, row order included (integers, and floats computed from equal counts)."""
    local, spark = (pl.read_parquet(_basket_file(r, name)) for r in (engines.local, engines.spark))
    assert local.height > 0
    assert_frame_equal(spark, local, check_exact=True)


def test_basket_pairs_metadata_and_choice(engines):
    got, want = engines.spark.outcome.materialized["basket_pairs"], engines.local.outcome.materialized["basket_pairs"]
    assert got["engine"] == "spark" and want["engine"] == "local"
    assert got["spark_seconds"] > 0 and got["spark_master"] == "local[2]"
    assert set(want) - {"engine"} <= set(got)
    for key in ("stored_pairs", "distinct_pairs", "pairs_at_min_support", "cart_order_missing_lines", "active_profile"):
        assert got[key] == want[key], key  # distinct_pairs: the job's own stats, before the support
    assert got["profile_choice"] == want["profile_choice"]  # the same validation scores
    local, spark = (json.loads(_basket_file(r, "params.json")) for r in (engines.local, engines.spark))
    assert {k: v for k, v in spark.items() if k != "seconds"} == {k: v for k, v in local.items() if k != "seconds"}
    assert _basket_file(engines.spark, "profiles.json") == _basket_file(engines.local, "profiles.json")


# --- the snapshot's lines checks on Spark ----------------------------------------------------


def test_snapshot_lines_checked_on_spark(engines):
    """The same snapshot either way; the Spark run's lines were checked by the job."""
    got, want = engines.spark.outcome.materialized["raw_order_products"], engines.local.outcome.materialized["raw_order_products"]
    assert got["engine"] == "spark" and want["engine"] == "local" and got["spark_seconds"] > 0
    for name in ("raw_orders", "raw_order_products", "products"):
        (key,) = artifact(name).keys(RUN).values()
        assert engines.spark.store.read_bytes(key) == engines.local.store.read_bytes(key), name


def test_spark_lines_check_fails_as_local_and_stores_nothing(tmp_path):
    """A line pointing at an unknown product: under spark only the job checks the lines' references
    (polars skips them), so this fails when the Spark check is gone. Same one line as locally,
    and the run's stored snapshot left as it was."""
    good, bad = write_tiny(tmp_path / "good"), write_tiny(tmp_path / "bad", **_replace("order_products__train.csv", "3,1,1,1", "3,77,1,1"))
    curated = tmp_path / "curated"
    with DagsterInstance.ephemeral() as inst:
        assert run_graph(inst, run_key=INGEST_RUN, defs=local_defs(good, curated), selection=INGEST).ok
        before = {p: p.read_bytes() for p in curated.rglob("*") if p.is_file()}
        local = run_graph(inst, run_key=INGEST_RUN, defs=local_defs(bad, tmp_path / "other"), selection=INGEST)
        spark = run_graph(inst, run_key=INGEST_RUN, defs=local_defs(bad, curated, compute=Compute(engine="spark")),
                          selection=INGEST)  # fmt: skip
    assert len(local.errors) == 1
    assert local.errors[0].endswith("InputError: order_products__train.csv: column product_id: 1 line(s) point at unknown products (e.g. 77)")
    assert not spark.success and spark.errors == local.errors
    assert {p: p.read_bytes() for p in curated.rglob("*") if p.is_file()} == before


def test_spark_lines_checks_give_the_local_messages(tmp_path):
    """Each check of the job's validate_lines (one JVM for all cases) against the message polars
    gives for the same files: missing id column, missing id, unknown order, unknown product, a
    product twice in one order (in one file, and across the two)."""
    cases = {
        "missing column": ("order_products__train.csv", "order_id,", "order,"),
        "missing id": ("order_products__prior.csv", "2,1,1,1", "2,,1,1"),
        "unknown order": ("order_products__prior.csv", "2,1,1,1", "99,1,1,1"),
        "unknown product": ("order_products__train.csv", "3,1,1,1", "3,77,1,1"),
        "twice in prior": ("order_products__prior.csv", "4,2,1,0\n", "4,2,1,0\n1,1,3,0\n"),
        "twice across files": ("order_products__prior.csv", "4,2,1,0\n", "4,2,1,0\n3,1,2,0\n"),
    }
    tasks, expected = [], {}
    for i, (case, (name, old, new)) in enumerate(cases.items()):
        clean = write_tiny(tmp_path / f"case{i}", **_replace(name, old, new))
        chosen = {stem: f"{stem}.csv" for stem in SOURCE_TABLES}
        expected[case] = _local_message(clean, chosen)
        inputs, params = lines_task(chosen, lambda key: str(clean / key))
        tasks.append({"stage": "validate_lines", "inputs": inputs, "params": params, "output": str(tmp_path / f"v{i}.parquet")})
    run_spark(tasks)
    got = {case: pl.read_parquet(t["output"])["problem"][0] for case, t in zip(cases, tasks)}
    assert got == expected
    assert "order_products__prior.csv and order_products__train.csv" in expected["twice across files"]


def _local_message(clean, chosen: dict[str, str]) -> str:
    try:
        validate_snapshot({stem: read_table(clean / key, stem, display_name=key) for stem, key in chosen.items()}, chosen)
    except InputError as exc:
        return str(exc)
    raise AssertionError("the local checks passed")
