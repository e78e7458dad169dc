"""Parity: the Spark jobs (insightflow_assets/spark/jobs.py) compute what the polars stages compute.

One Spark application runs every task, launched through Dagster Pipes from a small asset defined
here (the JVM starts once: slow on a loaded 2-core machine); each test then reads a stored output
back and compares it with the polars function on the same inputs. Integers and ids must match
exactly; floats within a relative 1e-6 (Spark sums in another order; Float32 ratings 1e-5).
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from insightflow_assets.spark.launch import spark_missing

pytestmark = pytest.mark.skipif(spark_missing() is not None, reason=f"Spark parity needs java and pyspark: {spark_missing()}")

from dagster import AssetKey, AssetSpec, DagsterInstance, materialize, multi_asset  # noqa: E402

from insightflow_assets.basket.pairs import count_baskets, dense_items, window_lines  # noqa: E402
from insightflow_assets.ratings.build import build_holdout, build_ratings, order_days  # noqa: E402
from insightflow_assets.segmentation.popularity import segment_popularity  # noqa: E402
from insightflow_assets.segmentation.rfm import rfm_table, segment_users  # noqa: E402
from insightflow_assets.spark.launch import run_spark, run_spark_pipes  # noqa: E402

DECAY = {"half_life_days": 30.0, "min_item_interactions": 2, "min_user_interactions": 3}
BASKET = {"window": 3, "min_support": 2}


def _inputs(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The small dataset in the forms the stages read: orders_imputed (with is_first_order and
    the null gaps left in), all lines, a priced catalogue and a dated (transactions) form."""
    orders = tables["orders"].with_columns(is_first_order=pl.col("order_number") == 1)
    lines = pl.concat([tables["order_products__prior"], tables["order_products__train"]])
    priced = tables["products"].with_columns(price=(pl.col("product_id") % 97 * 0.37 + 0.99).round(2))
    days = order_days(orders).select("order_id", "day")
    dated = orders.join(days, on="order_id").with_columns(
        order_ts=pl.lit(datetime(2024, 1, 1))
        + pl.duration(days=pl.col("day").cast(pl.Int64), hours=pl.col("order_hour_of_day"), microseconds=pl.col("order_id") * 7919)
    ).drop("day")
    dated_lines = lines.with_columns(
        quantity=(pl.col("product_id") % 5 + 1).cast(pl.Int32),
        unit_price=pl.when(pl.col("order_id") % 11 == 0).then(None).otherwise(pl.col("product_id") % 13 * 0.25 + 0.1),
    )
    # cart positions partly unknown, lines shuffled: a null sorts after the known positions, in file order
    cart_lines = lines.sample(fraction=1.0, shuffle=True, seed=3).with_columns(
        add_to_cart_order=pl.when((pl.col("order_id") + pl.col("product_id")) % 6 == 0).then(None).otherwise("add_to_cart_order")
    )
    return {"orders": orders, "lines": lines, "products": tables["products"], "priced": priced,
            "dated": dated, "dated_lines": dated_lines, "cart_lines": cart_lines}  # fmt: skip


def _tasks(paths: dict[str, str], out) -> list[dict]:
    o, lines = paths["orders"], paths["lines"]
    task = lambda stage, name, inputs, **params: {  # noqa: E731
        "stage": stage, "asset_key": name, "inputs": inputs, "params": params, "output": str(out / name / f"{stage}.parquet"),
    }  # fmt: skip
    return [
        task("ratings", "ratings", {"orders": o, "order_products": [lines]}),
        task("ratings", "ratings_decay", {"orders": o, "order_products": lines}, **DECAY),
        task("ratings", "ratings_validation", {"orders": o, "order_products": lines}, back=1),
        task("holdout", "holdout", {"orders": o, "order_products": lines}),
        task("holdout", "holdout_validation", {"orders": o, "order_products": lines}, back=1),
        task("rfm", "rfm_priced", {"orders": o, "order_products": lines, "products": paths["priced"], "users": paths["ratings"]}),
        task("rfm", "rfm_items", {"orders": o, "order_products": lines, "products": paths["products"]}),
        task("rfm", "rfm_dated", {"orders": paths["dated"], "order_products": paths["dated_lines"], "users": paths["ratings"]}),
        task("segment_popularity", "segment_popularity", {"user_seg": paths["user_seg"], "ratings": paths["ratings"]}, top_n=20),
        task("basket_pair_counts", "basket_pair_counts", {"orders": o, "order_products": paths["cart_lines"],
             "user_seg": paths["user_seg"]}, **BASKET),  # fmt: skip
        task("basket_item_counts", "basket_item_counts", {"orders": o, "order_products": paths["cart_lines"],
             "user_seg": paths["user_seg"]}),  # fmt: skip
    ]


@pytest.fixture(scope="module")
def spark_run(tmp_path_factory, small_tables):
    """Inputs as parquet, the polars user_seg, then one Pipes-launched Spark run of every task."""
    root = tmp_path_factory.mktemp("spark_parity")
    frames = _inputs(small_tables)
    frames["ratings"] = build_ratings(frames["orders"], frames["lines"])
    frames["user_seg"] = segment_users(rfm_table(frames["orders"], frames["lines"], users=frames["ratings"]), k=3, seed=1)[0]
    paths = {}
    for name, frame in frames.items():
        paths[name] = str(root / "in" / f"{name}.parquet")
        (root / "in").mkdir(exist_ok=True)
        frame.write_parquet(paths[name])
    tasks = _tasks(paths, root / "out")

    @multi_asset(specs=[AssetSpec(t["asset_key"]) for t in tasks])
    def spark_stages(context):  # (a string annotation here would be refused)
        yield from run_spark_pipes(context, tasks).get_results()

    with DagsterInstance.ephemeral() as instance:
        result = materialize([spark_stages], instance=instance)
        assert result.success
        yield {"frames": frames, "tasks": {t["asset_key"]: t for t in tasks}, "instance": instance}


def _stored(spark_run, name: str) -> pl.DataFrame:
    return pl.read_parquet(spark_run["tasks"][name]["output"])


@pytest.mark.parametrize("name,params", [("ratings", {}), ("ratings_decay", DECAY), ("ratings_validation", {"back": 1})])
def test_ratings_match_polars(spark_run, name, params):
    f = spark_run["frames"]
    expected = build_ratings(f["orders"], f["lines"], **params)
    got = _stored(spark_run, name)
    assert got.height > 0 and got.height == expected.height
    assert_frame_equal(got, expected, rel_tol=1e-5)  # rating is Float32


@pytest.mark.parametrize("name,back", [("holdout", 0), ("holdout_validation", 1)])
def test_holdout_matches_polars(spark_run, name, back):
    f = spark_run["frames"]
    expected = build_holdout(f["orders"], f["lines"], back=back)
    assert expected.height > 0
    assert_frame_equal(_stored(spark_run, name), expected, check_exact=True)


def test_rfm_matches_polars_instacart_and_dated(spark_run):
    f = spark_run["frames"]
    users = f["ratings"].select("user_id").unique()
    expected = {
        "rfm_priced": rfm_table(f["orders"], f["lines"], f["priced"], users=users),
        "rfm_items": rfm_table(f["orders"], f["lines"], f["products"]),
        "rfm_dated": rfm_table(f["dated"], f["dated_lines"], users=users),
    }
    for name, want in expected.items():
        got = _stored(spark_run, name)
        assert want.height > 0, name
        assert_frame_equal(got, want, rel_tol=1e-6, abs_tol=1e-9), name
    # the null gaps were filled with the median, not left null or zero
    assert f["orders"]["days_since_prior_order"].null_count() > 0
    assert _stored(spark_run, "rfm_items")["recency_days"].null_count() == 0


def test_segment_popularity_matches_polars(spark_run):
    f = spark_run["frames"]
    expected = segment_popularity(f["user_seg"], f["ratings"], top_n=20)
    assert expected["segment"].n_unique() == 3
    assert_frame_equal(_stored(spark_run, "segment_popularity"), expected, rel_tol=1e-9)


def _basket_counts(f: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The polars counts (pairs.window_lines, pairs.count_baskets) in product ids."""
    wl = window_lines(f["orders"], f["cart_lines"], f["user_seg"])
    ids, item = dense_items(wl["product_id"].to_numpy())
    counted = count_baskets(wl["order_id"].to_numpy(), item, wl["segment"].to_numpy().astype(np.int8), len(ids),
                            BASKET["window"], BASKET["min_support"])  # fmt: skip
    to_id = pl.Series(ids)
    pairs = counted.pairs.select("segment", to_id.gather(counted.pairs["a"]).alias("product_id"),
                                 to_id.gather(counted.pairs["b"]).alias("neighbour_id"), "count")  # fmt: skip
    items = counted.items.select("segment", to_id.gather(counted.items["a"]).alias("product_id"), "baskets").with_columns(
        segment_baskets=pl.col("segment").replace_strict(counted.totals, return_dtype=pl.Int32)
    )
    return pairs, items


def test_basket_counts_match_polars(spark_run):
    """Pairs within the cart window (nulls in add_to_cart_order last, in line order), per segment
    and overall, at min_support; baskets per segment and product, and per segment."""
    f = spark_run["frames"]
    assert f["cart_lines"]["add_to_cart_order"].null_count() > 0  # the null ordering is exercised
    pairs, items = _basket_counts(f)
    assert pairs["segment"].n_unique() == 4 and pairs.height > 0  # three segments and ANY
    for name, want, keys in (("basket_pair_counts", pairs, ["segment", "product_id", "neighbour_id"]),
                             ("basket_item_counts", items, ["segment", "product_id"])):  # fmt: skip
        got = _stored(spark_run, name)
        assert_frame_equal(got, want.sort(keys), check_exact=True)  # integers only: no tolerance


def test_pipes_reports_every_materialization(spark_run):
    """The Spark job's report_asset_materialization calls reach the event log with their metadata."""
    instance = spark_run["instance"]
    for name, task in spark_run["tasks"].items():
        event = instance.get_latest_materialization_event(AssetKey(name))
        assert event is not None, name
        meta = event.asset_materialization.metadata
        assert meta["engine"].value == "spark"
        assert meta["path"].value == task["output"]
        assert meta["rows"].value == _stored(spark_run, name).height


def test_no_pipes_run_and_bad_input(spark_run, tmp_path):
    """Outside Dagster the same job runs from a spec file; a missing column fails in one line
    naming file and column, and leaves the stored output as it was."""
    task = dict(spark_run["tasks"]["holdout"], output=str(tmp_path / "holdout.parquet"), asset_key=None)
    bad_orders = tmp_path / "orders.parquet"
    spark_run["frames"]["orders"].drop("eval_set").write_parquet(bad_orders)
    bad = dict(task, inputs=dict(task["inputs"], orders=str(bad_orders)))
    # one JVM for both: the good task runs and stores, then the bad one fails
    with pytest.raises(RuntimeError, match=re.escape(f"orders input {bad_orders}: column 'eval_set' is missing")):
        run_spark([task, bad])
    assert_frame_equal(pl.read_parquet(task["output"]), _stored(spark_run, "holdout"), check_exact=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holdout.parquet", "orders.parquet"]
    json.dumps(task)  # the spec stays plain JSON
