"""Integration: the whole graph materialized through Dagster on generated data, on the local
store and on S3 (a moto server over HTTP), with the stored files read back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance

from insightflow_assets.model.als import AlsModel
from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import local_defs, s3_defs
from resources.layout import PROMOTION_LOCK

ROOT = Path(__file__).resolve().parents[1]
RUN_A = "run-20260301-101500"
RUN_B = "run-20260301-101501-second"


def relative_tree(keys, run_key: str) -> set[str]:
    stamp = run_key.removeprefix("run-")  # a run's folders carry its whole key (tag included)
    return {k.replace(stamp, "TS") for k in keys}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, small_clean_dir):
    """Two runs of the whole graph on the local store, in one Dagster instance."""
    curated = tmp_path_factory.mktemp("curated")
    home = tmp_path_factory.mktemp("dagster_home")
    defs = local_defs(small_clean_dir, curated)
    with DagsterInstance.local_temp(str(home)) as instance:
        first = run_graph(instance, run_key=RUN_A, defs=defs)
        snapshot = {p: p.read_bytes() for p in curated.rglob("*") if p.is_file()}
        second = run_graph(instance, run_key=RUN_B, defs=defs)
        partitions = instance.get_dynamic_partitions("runs")
    return {"curated": curated, "first": first, "second": second, "snapshot": snapshot, "partitions": partitions}


def _files(curated: Path, run_key: str) -> set[str]:
    stamp = run_key.removeprefix("run-")
    return {
        str(p.relative_to(curated))
        for p in curated.rglob("*")
        if p.is_file() and any(part.endswith("-" + stamp) for part in p.relative_to(curated).parts)
    }


def test_whole_graph_succeeds_with_every_blocking_check(local_run):
    for outcome in (local_run["first"], local_run["second"]):
        assert outcome.success, outcome.errors
        assert outcome.failed_error_checks == [], outcome.failed_error_checks
        names = {c["check"] for c in outcome.checks}
        assert {
            "orders_imputed_valid",
            "mice_not_worse_than_median",
            "ratings_valid",
            "als_factors_finite",
            "every_user_gets_k_items",
            "postrank_metrics_in_range",
        } <= names


def test_two_runs_are_two_partitions_and_neither_overwrites(local_run):
    assert set(local_run["partitions"]) >= {RUN_A, RUN_B}
    curated = local_run["curated"]
    a, b = _files(curated, RUN_A), _files(curated, RUN_B)
    assert a and relative_tree(a, RUN_A) == relative_tree(b, RUN_B)
    # the first run's files are byte-for-byte what they were before the second run
    # (only latest/ moves on, by design)
    first = [p for p in local_run["snapshot"] if "20260301-101500" in str(p)]
    assert len(first) == len(a)
    for path in first:
        assert path.read_bytes() == local_run["snapshot"][path], path


def test_written_tree_is_the_layout(local_run):
    tree = relative_tree(_files(local_run["curated"], RUN_A), RUN_A)
    assert {
        "after-MICE/run-TS/orders_imputed.parquet",
        "after-MICE/run-TS/mice_checks.json",
        "after-MICE/run-TS/mice_day30.png",
        "recsys/raw/run-TS/orders.parquet",
        "recsys/raw/run-TS/order_products.parquet",
        "recsys/raw/run-TS/products.parquet",
        "recsys/ratings/run-TS/ratings.parquet",
        "recsys/models/als-TS/factors.npz",
        "recsys/models/als-TS/params.json",
        "recsys/eval/als-TS/metrics.json",
        "recsys/eval/als-TS/coverage.json",
        "recsys/eval/als-postrank-TS/metrics.json",
        "recsys/eval/als-postrank-TS/coverage.json",
        "recsys/recos/run-TS/user_recos.parquet",
        "recsys/promoted/run-TS/index.json",  # the manifest it was promoted with, kept for rollbacks
    } <= tree


def test_imputed_orders_read_back(local_run, small_tables):
    curated = local_run["curated"]
    imputed = pl.read_parquet(curated / "after-MICE/run-20260301-101500/orders_imputed.parquet")
    raw = small_tables["orders"]
    assert imputed.height == raw.height
    assert set(imputed["order_id"].to_list()) == set(raw["order_id"].to_list())
    joined = raw.select("order_id", pl.col("order_hour_of_day").alias("raw_hour"), pl.col("days_since_prior_order").alias("raw_gap")).join(
        imputed, on="order_id"
    )
    # flags mark exactly the cells that were missing, and known values are untouched
    assert (joined["order_hour_of_day_imputed"] == joined["raw_hour"].is_null()).all()
    known = joined.filter(pl.col("raw_hour").is_not_null())
    assert (known["order_hour_of_day"] == known["raw_hour"]).all()
    assert imputed["order_hour_of_day_imputed"].sum() > 0
    # structural gap of first orders stays null, every other gap is filled and within 0-30
    assert imputed.filter(pl.col("is_first_order"))["days_since_prior_order"].null_count() == imputed["is_first_order"].sum()
    later = imputed.filter(~pl.col("is_first_order"))
    assert later["days_since_prior_order"].null_count() == 0
    assert later["days_since_prior_order"].is_between(0, 30).all()
    assert imputed["order_hour_of_day"].is_between(0, 23).all() and imputed["order_dow"].is_between(0, 6).all()
    # test orders have no lines: their basket size is imputed
    test_orders = imputed.filter(pl.col("eval_set") == "test")
    assert test_orders.height > 0 and test_orders["basket_size_imputed"].all()

    checks = json.loads((curated / "after-MICE/run-20260301-101500/mice_checks.json").read_text())
    gap = checks["mask_and_recover"]["days_since_prior_order"]
    assert gap["n_masked"] > 0 and gap["mice"]["rmse"] < gap["median"]["rmse"]
    assert 0 <= checks["day30"]["after"]["day30_share"] <= 1
    assert (curated / "after-MICE/run-20260301-101500/mice_day30.png").read_bytes()[:4] == b"\x89PNG"


def test_ratings_and_model_read_back(local_run, small_tables):
    curated = local_run["curated"]
    ratings = pl.read_parquet(curated / "recsys/ratings/run-20260301-101500/ratings.parquet")
    holdout = pl.read_parquet(curated / "recsys/holdout/run-20260301-101500/holdout.parquet")
    assert ratings.select("user_id", "product_id").n_unique() == ratings.height
    # only orders before each user's train order build ratings: purchases == prior lines
    assert ratings["purchases"].sum() == small_tables["order_products__prior"].height - _prior_lines_of_targets(small_tables)
    # holdout = the train baskets (+ last prior basket of users whose final order is test)
    train_users = small_tables["orders"].filter(pl.col("eval_set") == "train")["user_id"].n_unique()
    assert holdout["user_id"].n_unique() >= train_users

    folder = curated / "recsys/models/als-20260301-101500"
    model = AlsModel.from_files({p.name: p.read_bytes() for p in folder.iterdir()})
    assert set(model.user_ids.tolist()) == set(ratings["user_id"].unique().to_list())
    assert set(model.item_ids.tolist()) == set(ratings["product_id"].unique().to_list())
    assert np.isfinite(model.user_factors).all() and model.item_factors.shape[1] == 64


def _prior_lines_of_targets(tables) -> int:
    """Lines of users' last prior orders when that prior order is their target (final order is test)."""
    orders = tables["orders"]
    test_users = orders.filter(pl.col("eval_set") == "test")["user_id"]
    last_prior = (
        orders.filter(pl.col("user_id").is_in(test_users.implode()) & (pl.col("eval_set") == "prior"))
        .group_by("user_id")
        .agg(pl.col("order_id").sort_by("order_number").last())
    )
    return tables["order_products__prior"].filter(pl.col("order_id").is_in(last_prior["order_id"].implode())).height


def test_evaluation_read_back(local_run):
    curated = local_run["curated"]
    metrics = json.loads((curated / "recsys/eval/als-20260301-101500/metrics.json").read_text())
    assert {"als", "baseline", "lift", "baselines", "finished_at_utc"} <= set(metrics)
    assert set(metrics["baselines"]) == {"p_topfreq", "gp_topfreq"}
    for k in (5, 10, 20):
        for m in ("precision", "recall", "map", "ndcg", "hit_rate"):
            assert 0.0 <= metrics["als"][f"{m}@{k}"] <= 1.0
    assert {"repeat", "explore"} <= set(metrics["als"])
    base = metrics["baseline"]["map@10"]
    assert metrics["lift"]["map@10"] == pytest.approx((metrics["als"]["map@10"] - base) / base)
    ranking = metrics["winner"]["ranking"]
    assert set(metrics["methods"]) == {"als", "tifu_knn", "lightfm", "baseline", "p_topfreq", "gp_topfreq"}
    assert metrics["methods"]["als"] == metrics["als"]
    assert metrics["winner"]["value"] == max(v["map@10"] for v in metrics["methods"].values())
    assert set(ranking) == set(metrics["methods"])
    cov = json.loads((curated / "recsys/eval/als-20260301-101500/coverage.json").read_text())
    assert 0 < cov["coverage_item"] <= 1 and cov["coverage_user_eval"] == 1.0


def test_same_run_on_s3_writes_the_same_relative_keys(local_run, s3_buckets, small_clean_dir, instance):
    s3, clean, curated_bucket = s3_buckets
    client = s3.get_client()
    for f in small_clean_dir.iterdir():
        client.upload_file(str(f), clean, f"instacart/{f.name}")
    outcome = run_graph(instance, run_key=RUN_A, defs=s3_defs(s3, clean, curated_bucket, prefix="insightflow"))
    assert outcome.success, outcome.errors
    # every asset check ran on the S3 store too, and no ERROR-severity check failed
    assert len(outcome.checks) == len(local_run["first"].checks)
    assert outcome.failed_error_checks == [], outcome.failed_error_checks
    keys = [o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=curated_bucket) for o in p.get("Contents", [])]
    assert all(k.startswith("insightflow/") for k in keys)
    s3_tree = {k.removeprefix("insightflow/") for k in keys}
    assert "after-MICE/run-20260301-101500/orders_imputed.parquet" in s3_tree
    assert "recsys/models/als-20260301-101500/factors.npz" in s3_tree
    run_tree = {k for k in s3_tree if "20260301-101500" in k}
    assert run_tree == _files(local_run["curated"], RUN_A)
    # everything else is the promoted latest/ entry, exactly as on the local store
    local_latest = {str(p.relative_to(local_run["curated"])) for p in local_run["curated"].rglob("*") if p.is_file() and "latest" in p.parts}
    # the promotion lock: an flock file that stays on disk by design, an object released on S3
    assert PROMOTION_LOCK in local_latest and PROMOTION_LOCK not in s3_tree
    assert s3_tree - run_tree == local_latest - {PROMOTION_LOCK}
    assert "recsys/latest/index.json" in local_latest and "recsys/user_seg/latest/user_seg.parquet" in local_latest
    # the values are the same as the local run's (same data, same seeds)
    body = client.get_object(Bucket=curated_bucket, Key="insightflow/after-MICE/run-20260301-101500/orders_imputed.parquet")["Body"].read()
    import io

    s3_imputed = pl.read_parquet(io.BytesIO(body))
    local_imputed = pl.read_parquet(local_run["curated"] / "after-MICE/run-20260301-101500/orders_imputed.parquet")
    assert s3_imputed.equals(local_imputed)


def test_dagster_definitions_validate():
    # no argument: [tool.dagster] in pyproject.toml; then the module; then workspace.yaml
    for args in ([], ["-m", "insightflow_assets.definitions"], ["-w", str(ROOT / "workspace.yaml")]):
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_new_run_registers_a_partition(tmp_path):
    env = {"DAGSTER_HOME": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    exe = str(Path(sys.executable).parent / "insightflow")
    keys = [subprocess.run([exe, "new-run", "--tag", "ci"], env=env, capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)]
    assert all(re.fullmatch(r"run-\d{8}-\d{6}-ci", k) for k in keys) and keys[0] != keys[1]
    listed = subprocess.run([exe, "runs"], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listed) == sorted(keys)
    bad = subprocess.run([exe, "new-run", "--tag", "Bad/Tag"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid run key" in bad.stderr


def test_postranked_recommendations_read_back(local_run, small_tables):
    curated = local_run["curated"]
    recos = pl.read_parquet(curated / "recsys/recos/run-20260301-101500/user_recos.parquet")
    users = small_tables["orders"]["user_id"].unique()
    assert set(recos["user_id"].unique().to_list()) == set(users.to_list())
    per_user = recos.group_by("user_id").agg(n=pl.len(), distinct=pl.col("product_id").n_unique())
    assert (per_user["n"] == 20).all() and (per_user["distinct"] == 20).all()
    assert set(recos["source"].unique().to_list()) <= {"als", "repeat", "neighbors", "popular", "fallback"}
    # users without any training order (their only order with lines is the target) fall back to popularity
    ratings = pl.read_parquet(curated / "recsys/ratings/run-20260301-101500/ratings.parquet")
    cold = set(users.to_list()) - set(ratings["user_id"].unique().to_list())
    cold_rows = recos.filter(pl.col("user_id").is_in(list(cold)))
    assert (cold_rows["source"] == "fallback").all()
    # "repeat" means bought before, always
    bought = ratings.select("user_id", "product_id", _b=pl.lit(True))
    repeats = recos.filter(pl.col("source") == "repeat").join(bought, on=["user_id", "product_id"], how="left")
    assert repeats["_b"].fill_null(False).all()

    metrics = json.loads((curated / "recsys/eval/als-postrank-20260301-101500/metrics.json").read_text())
    als = json.loads((curated / "recsys/eval/als-20260301-101500/metrics.json").read_text())
    selection = json.loads((curated / "recsys/eval/selection-20260301-101500/selection.json").read_text())
    # the exports come from the validation winner, and the report says which
    assert metrics["exported_method"]["method"] == selection["winner"]["method"]
    winner = selection["winner"]["method"]
    exported, own = metrics["methods"]["exported"], metrics["methods"][winner]
    if winner in ("tifu_knn", "gp_topfreq"):  # complete lists: the same numbers
        assert exported["map@10"] == pytest.approx(own["map@10"], abs=1e-9)
    assert metrics["method"] == "als_postrank"
    # the same users and the same baseline as als_eval
    assert metrics["n_users_evaluated"] == als["n_users_evaluated"]
    assert metrics["baseline"] == als["baseline"]
    div = metrics["diversity"]
    for method in ("als_postrank", "als"):
        assert 0 < div[method]["ild"] <= 2 and div[method]["novelty"] > 0


def test_segmentation_read_back_and_stable_across_runs(local_run):
    curated = local_run["curated"]
    a = pl.read_parquet(curated / "recsys/user_seg/run-20260301-101500/user_seg.parquet")
    b = pl.read_parquet(curated / f"recsys/user_seg/{RUN_B}/user_seg.parquet")
    ratings = pl.read_parquet(curated / "recsys/ratings/run-20260301-101500/ratings.parquet")
    assert set(a["user_id"].to_list()) == set(ratings["user_id"].unique().to_list())
    assert a.equals(b)  # same data, same seed: same segments, same ids, same labels
    # higher is better: the most recent users have the highest r_z
    assert a.sort("recency_days")["r_z"][0] == a["r_z"].max()
    assert (a["hv"] - (0.4 * a["r_z"] + 0.3 * a["f_z"] + 0.3 * a["m_z"])).abs().max() < 1e-9
    # segment 0 has the highest mean hv, ids ordered by it
    means = a.group_by("segment").agg(pl.col("hv").mean()).sort("segment")["hv"].to_list()
    assert means == sorted(means, reverse=True)
    # k chosen in [3, 8] (RfmParams defaults), recorded in the diagnostics; no segment below 2 %
    diag = json.loads((curated / "recsys/debug/user-seg-20260301-101500/diag/metrics.json").read_text())
    assert diag["rfm_definition"] == "instacart" and diag["k_selection"]["chosen_k"] in range(3, 9)
    assert a["segment"].n_unique() == a["segment_label"].n_unique() == diag["k"] >= 1
    assert (a.group_by("segment").len()["len"] / a.height).min() >= 0.02

    pop = pl.read_parquet(curated / "recsys/segment_popularity/run-20260301-101500/segment_popularity.parquet")
    assert pop.group_by("segment").len()["len"].max() <= 100 and (pop["lift"] > 0).all()
    # lift arithmetic against the ratings, for one (segment, product)
    row = pop.filter(pl.col("rank") == 1).row(0, named=True)
    joined = ratings.join(a.select("user_id", "segment"), on="user_id")
    seg_rows = joined.filter(pl.col("segment") == row["segment"])
    share = seg_rows.filter(pl.col("product_id") == row["product_id"])["purchases"].sum() / seg_rows["purchases"].sum()
    overall = joined.filter(pl.col("product_id") == row["product_id"])["purchases"].sum() / joined["purchases"].sum()
    assert row["lift"] == pytest.approx(share / overall)

    charts = curated / "recsys/eval_charts/rfm_analysis-20260301-101500"
    index = json.loads((charts / "index.json").read_text())
    assert set(index["files"]) == {"cluster_profiles.png", "pca_segments.png", "seg_pop_lift.png"}
    assert index["run_key"] == RUN_A and index["params"]["pca_sample"] == 50_000
    assert all((charts / f).read_bytes()[:4] == b"\x89PNG" for f in index["files"])


def test_exports_read_back(local_run):
    from insightflow_assets.exports.build import validate_bedrock_lines

    curated = local_run["curated"]
    data = curated / "recsys/exports/run-20260301-101500/data"
    seg = pl.read_parquet(curated / "recsys/user_seg/run-20260301-101500/user_seg.parquet")
    hv = pl.read_parquet(data / "users_high_value.parquet")
    assert hv["user_id"].to_list() == seg.sort(["hv", "user_id"], descending=[True, False]).head(150)["user_id"].to_list()
    assert pl.read_parquet(data / "users_random.parquet").height == 150
    overview = pl.read_csv(data / "overview.csv")
    assert overview["users"].sum() == seg.height and overview.height == seg["segment"].n_unique()
    top = pl.read_parquet(data / "segment_topn.parquet")
    assert (top.group_by("segment").len()["len"] == 5).all() and top["product_name"].null_count() == 0
    recos_csv = pl.read_csv(data / "user_recos.csv")
    recos = pl.read_parquet(data / "user_recos.parquet")
    assert recos.height == recos_csv.height == (150 + 150) * 5
    assert set(recos["cohort"].unique().to_list()) == {"high_value", "random"}
    lines = [json.loads(line) for line in (data / "bedrock_inputs.jsonl").read_text().splitlines()]
    assert len(lines) == 300 and validate_bedrock_lines(lines) == []
    first = lines[0]
    assert first["cohort"] == "high_value" and len(first["recommendations"]) == 5
    assert all(r["reason"] and r["product_name"] for r in first["recommendations"])


def test_segment_popularity_can_be_left_out_by_selection(tmp_path, small_clean_dir, instance):
    """The seed's --skip_seg_pop: select user_seg without segment_popularity."""
    curated = tmp_path / "curated"
    outcome = run_graph(
        instance,
        run_key=RUN_A,
        defs=local_defs(small_clean_dir, curated),
        selection=["raw_orders", "raw_order_products", "products", "orders_imputed", "ratings", "user_seg"],
    )
    assert outcome.ok, outcome.errors
    assert (curated / "recsys/user_seg/run-20260301-101500/user_seg.parquet").exists()
    assert not (curated / "recsys/segment_popularity").exists()
