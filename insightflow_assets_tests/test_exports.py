"""Exports: cohorts, per-segment Top-K, cohort recommendations and the LLM JSONL lines."""

from __future__ import annotations

import copy
import json

import numpy as np
import polars as pl
import pytest

from insightflow_assets.data.generate import generate_instacart
from insightflow_assets.exports.build import (
    EXPORT_FILES,
    bedrock_schema,
    build_exports,
    jsonl_text,
    reason_for,
    segment_topn_frame,
    user_recos_frame,
    users_high_value_frame,
    users_random_frame,
    validate_bedrock_lines,
    write_exports,
)
from insightflow_assets.imputation.mice import order_features
from insightflow_assets.ratings.build import build_ratings
from insightflow_assets.segmentation.popularity import segment_popularity
from insightflow_assets.segmentation.rfm import rfm_table, segment_users

K = 5


@pytest.fixture(scope="module")
def world() -> dict:
    t = generate_instacart(300, seed=1)
    lines = pl.concat([t["order_products__prior"], t["order_products__train"]])
    orders = order_features(t["orders"], lines)
    products = (
        t["products"]
        .join(t["aisles"], on="aisle_id", how="left")
        .join(t["departments"], on="department_id", how="left")
        .sort("product_id")
    )
    ratings = build_ratings(orders, lines)
    user_seg, centroids, _ = segment_users(rfm_table(orders, lines, users=ratings), k=5, seed=42)
    seg_pop = segment_popularity(user_seg, ratings, top_n=100)
    # post-ranked lists: user_id % 7 == 0 -> none at all, % 3 == 0 -> only 2 items;
    # the others 10 items (ALS-like from their own ratings, then popular / fallback)
    pop = ratings.group_by("product_id").agg(n=pl.len()).sort(["n", "product_id"], descending=[True, False])
    own = (
        ratings.sort(["user_id", "rating", "product_id"], descending=[False, True, False])
        .with_columns(r=pl.int_range(pl.len()).over("user_id"))
        .filter(pl.col("r") < 6)
        .select("user_id", "product_id", source=pl.lit("als"))
    )
    filler = (
        user_seg.select("user_id")
        .join(pop.head(12).select("product_id"), how="cross")
        .with_columns(source=pl.when(pl.col("user_id") % 2 == 0).then(pl.lit("popular")).otherwise(pl.lit("fallback")))
    )
    user_recos = (
        pl.concat([own, filler])
        .unique(subset=["user_id", "product_id"], keep="first", maintain_order=True)
        .with_columns(rank=(pl.int_range(pl.len()).over("user_id") + 1).cast(pl.Int16))
        .filter(pl.col("rank") <= 10)
        .filter(pl.col("user_id") % 7 != 0)
        .filter((pl.col("user_id") % 3 != 0) | (pl.col("rank") <= 2))
        .select(
            pl.col("user_id").cast(pl.Int32), "rank", pl.col("product_id").cast(pl.Int32),
            score=pl.lit(0.5, pl.Float32), source="source",
        )
    )  # fmt: skip
    return dict(
        user_seg=user_seg, centroids=centroids, seg_pop=seg_pop, ratings=ratings,
        user_recos=user_recos, products=products,
    )  # fmt: skip


@pytest.fixture(scope="module")
def exports(world) -> dict:
    w = world
    return build_exports(
        w["user_seg"], w["centroids"], w["seg_pop"], w["ratings"], w["user_recos"], w["products"],
        hv_n=40, rand_n=60, topn_per_segment=K, seed=42,
    )  # fmt: skip


def _user_seg(hv: list[float]) -> pl.DataFrame:
    n = len(hv)
    return pl.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype=np.int32),
            "recency_days": np.zeros(n), "frequency": np.ones(n, dtype=np.int32), "monetary": np.ones(n),
            "r_z": np.zeros(n), "f_z": np.zeros(n), "m_z": np.zeros(n),
            "segment": np.zeros(n, dtype=np.int8), "segment_label": ["average"] * n, "hv": hv,
        }
    )  # fmt: skip


# --------------------------------------------------------------------------- #
# cohorts
# --------------------------------------------------------------------------- #
def test_high_value_is_exactly_the_top_hv_users(world):
    user_seg = world["user_seg"]
    hv = users_high_value_frame(user_seg, hv_n=40)
    assert hv.height == 40
    order = np.lexsort((user_seg["user_id"].to_numpy(), -user_seg["hv"].to_numpy()))
    assert hv["user_id"].to_list() == user_seg["user_id"].to_numpy()[order[:40]].tolist()
    assert hv["hv"].min() >= user_seg.filter(~pl.col("user_id").is_in(hv["user_id"].implode()))["hv"].max()
    # ties by user_id; fewer users than asked -> all of them
    tied = _user_seg([0.5, 2.0, 0.5, 0.5, -1.0])
    assert users_high_value_frame(tied, hv_n=3)["user_id"].to_list() == [2, 1, 3]
    assert users_high_value_frame(tied, hv_n=50).height == 5


def test_random_cohort_is_seeded(world):
    user_seg = world["user_seg"]
    a = users_random_frame(user_seg, rand_n=60, seed=42)
    assert a.height == 60 and a["user_id"].n_unique() == 60
    ids = np.sort(user_seg["user_id"].to_numpy())
    expected = np.sort(ids[np.random.default_rng(42).choice(ids.size, size=60, replace=False)])
    assert a["user_id"].to_list() == expected.tolist()
    shuffled = user_seg.sample(fraction=1.0, shuffle=True, seed=9)
    assert users_random_frame(shuffled, rand_n=60, seed=42).equals(a)
    assert not users_random_frame(user_seg, rand_n=60, seed=43)["user_id"].equals(a["user_id"])
    assert users_random_frame(user_seg, rand_n=10_000, seed=42).height == user_seg.height


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #
def test_export_files_and_row_counts(world, exports):
    assert tuple(exports) == EXPORT_FILES
    cents = world["centroids"]
    assert exports["overview.csv"].columns == [
        "segment", "segment_label", "users", "share", "recency_days", "frequency", "monetary",
    ]  # fmt: skip
    assert exports["overview.csv"].height == cents.height == 5
    assert exports["overview.csv"]["users"].sum() == world["user_seg"].height
    assert exports["centroids.parquet"].equals(cents)
    assert exports["users_high_value.parquet"].height == 40
    assert exports["users_random.parquet"].height == 60

    top = exports["segment_topn.parquet"]
    assert top.height == 5 * K
    assert top.group_by("segment").agg(pl.col("rank")).sort("segment")["rank"].to_list() == [list(range(1, K + 1))] * 5
    assert top["product_name"].null_count() == 0 and top["aisle"].null_count() == 0
    assert top.join(world["seg_pop"], on=["segment", "product_id", "rank"], how="anti").height == 0
    assert top.select("segment", "segment_label").unique().sort("segment").equals(cents.select("segment", "segment_label"))

    recos = exports["user_recos.csv"]
    assert recos.equals(exports["user_recos.parquet"])
    assert recos.height == (40 + 60) * K
    per_user = recos.group_by("cohort", "user_id").agg(
        ranks=pl.col("rank"), n_products=pl.col("product_id").n_unique()
    )
    assert per_user.height == 100
    assert all(r == list(range(1, K + 1)) for r in per_user["ranks"].to_list())
    assert (per_user["n_products"] == K).all()
    assert set(recos["cohort"]) == {"high_value", "random"}
    assert set(recos["source"]) <= {"als", "popular", "fallback", "segment_top"}
    assert recos.select("product_name", "aisle", "department").null_count().sum_horizontal().item() == 0


def test_user_recos_keep_personal_order_and_fill_from_segment(world, exports):
    recos = exports["user_recos.csv"]
    personal = world["user_recos"]
    seg_top = exports["segment_topn.parquet"]
    for uid in recos["user_id"].unique().to_list():
        mine = recos.filter((pl.col("user_id") == uid) & (pl.col("cohort") == recos.filter(pl.col("user_id") == uid)["cohort"][0]))
        own = personal.filter(pl.col("user_id") == uid).sort("rank")["product_id"].to_list()[:K]
        assert mine["product_id"].to_list()[: len(own)] == own  # personal first, in rank order
        filled = mine.filter(pl.col("source") == "segment_top")
        assert filled.height == K - len(own)
        seg = mine["segment"][0]
        seg_products = seg_top.filter(pl.col("segment") == seg).sort("rank")["product_id"].to_list()
        expected_fill = [p for p in seg_products if p not in own][: K - len(own)]
        assert filled["product_id"].to_list() == expected_fill
    # users without personal lists exist in the cohorts and are filled entirely
    assert (recos["user_id"] % 7 == 0).any()
    assert recos.filter(pl.col("user_id") % 7 == 0)["source"].unique().to_list() == ["segment_top"]


def test_user_in_both_cohorts_appears_twice(world):
    tiny = world["user_seg"].sort(["hv", "user_id"], descending=[True, False]).head(3)
    hv = users_high_value_frame(tiny, hv_n=3)
    rnd = users_random_frame(tiny, rand_n=2, seed=1)
    seg_top = segment_topn_frame(world["seg_pop"], world["products"], world["centroids"], topn_per_segment=K)
    out = user_recos_frame(hv, rnd, world["user_recos"], seg_top, world["products"], topn_per_segment=K)
    assert out.height == (3 + 2) * K
    assert out.group_by("user_id").len()["len"].max() == 2 * K


# --------------------------------------------------------------------------- #
# LLM lines
# --------------------------------------------------------------------------- #
def test_bedrock_lines_validate_against_schema(world, exports):
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(bedrock_schema())
    lines = exports["bedrock_inputs.jsonl"]
    assert len(lines) == 100
    assert [d["cohort"] for d in lines] == ["high_value"] * 40 + ["random"] * 60
    assert [d["user_id"] for d in lines[:40]] == exports["users_high_value.parquet"]["user_id"].to_list()
    assert validate_bedrock_lines(lines) == []
    # round-trips through JSON Lines
    text = jsonl_text(lines)
    assert [json.loads(x) for x in text.splitlines()] == lines

    line = lines[0]
    assert len(line["recommendations"]) == K and 1 <= len(line["top_products"]) <= 5
    # top products = most bought before the target, by purchases
    mine = world["ratings"].filter(pl.col("user_id") == line["user_id"]).sort(
        ["purchases", "product_id"], descending=[True, False]
    )
    assert [p["product_id"] for p in line["top_products"]] == mine["product_id"].to_list()[:5]
    assert [p["purchases"] for p in line["top_products"]] == mine["purchases"].to_list()[:5]
    # reasons follow the source, repurchases say so
    bought = dict(zip(mine["product_id"].to_list(), mine["purchases"].to_list()))
    for d in lines:
        for rec in d["recommendations"]:
            assert rec["reason"]
    for rec in line["recommendations"]:
        n = bought.get(rec["product_id"], 0)
        assert rec["reason"] == reason_for(rec["source"], n, line["segment"]["label"])
    reasons = {r["reason"] for d in lines for r in d["recommendations"]}
    assert any(r.startswith("bought ") for r in reasons)
    assert any(r.startswith("popular in your segment '") for r in reasons)


def test_broken_lines_are_reported(exports):
    lines = copy.deepcopy(exports["bedrock_inputs.jsonl"][:3])
    del lines[1]["rfm"]["hv"]
    lines[2]["cohort"] = "vip"
    lines[2]["recommendations"][0]["source"] = "magic"
    errors = validate_bedrock_lines(lines)
    assert len(errors) == 3
    assert errors[0].startswith("line 1 ") and "$.rfm" in errors[0] and "'hv'" in errors[0]
    assert any(e.startswith("line 2 ") and "$.cohort" in e for e in errors)
    assert any("$.recommendations[0].source" in e for e in errors)
    assert validate_bedrock_lines([{"user_id": 1}])  # missing everything else


def test_reason_strings():
    assert reason_for("als", 7) == "bought 7 times before"
    assert reason_for("segment_top", 1) == "bought once before"
    assert reason_for("segment_top", 0, "champions") == "popular in your segment 'champions'"
    assert reason_for("als") == "people with similar baskets buy it"
    assert reason_for("popular") == reason_for("fallback") == "popular overall"


def test_write_exports(tmp_path, exports):
    paths = write_exports(exports, tmp_path)
    assert sorted(p.name for p in paths) == sorted(EXPORT_FILES)
    csv = pl.read_csv(tmp_path / "user_recos.csv")
    parquet = pl.read_parquet(tmp_path / "user_recos.parquet")
    assert csv.height == parquet.height == 100 * K
    assert csv["product_id"].to_list() == parquet["product_id"].to_list()
    assert len((tmp_path / "bedrock_inputs.jsonl").read_text().splitlines()) == 100
    assert pl.read_csv(tmp_path / "overview.csv").height == 5


def test_strict_parquet_refuses_drift_and_lenient_casts():
    from insightflow_assets.exports.conform import SchemaDriftError, conform

    schema = {"user_id": pl.Int32, "hv": pl.Float64}
    drifted = pl.DataFrame({"user_id": [1, 2], "hv": [0.5, 0.1], "extra": ["a", "b"]})  # user_id is Int64
    with pytest.raises(SchemaDriftError, match=r"user_seg\.parquet: column user_id is Int64, expected Int32"):
        conform(drifted, schema, "recsys/user_seg/run-x/user_seg.parquet", strict=True)
    fixed = conform(drifted, schema, "user_seg.parquet", strict=False)
    assert fixed.schema == pl.Schema(schema) and fixed["user_id"].to_list() == [1, 2]
    with pytest.raises(SchemaDriftError, match="missing column hv"):
        conform(drifted.drop("hv"), schema, "user_seg.parquet", strict=False)


def test_bedrock_example_in_metadata_keeps_the_shape_with_short_lists():
    from insightflow_assets.exports.build import shortened

    line = {"user_id": 7, "segment": {"id": 1, "label": "champions"}, "recommendations": [1, 2, 3, 4],
            "top_products": [{"product_id": 9}, {"product_id": 8}, {"product_id": 5}]}
    short = shortened(line)
    assert short == {"user_id": 7, "segment": {"id": 1, "label": "champions"}, "recommendations": [1, 2],
                     "top_products": [{"product_id": 9}, {"product_id": 8}]}
    assert line["recommendations"] == [1, 2, 3, 4]  # the stored line is not touched


def test_exports_name_customers_and_products_by_the_retailers_ids(world):
    """Where the ingest numbered customers (user_recos carries their customer_code, from the
    orders) and products (products' product_code), every export says the retailer's ids beside
    the numbers; where it kept them as given, the codes are the ids themselves."""
    w = world
    recos = w["user_recos"].with_columns(customer_code=pl.format("C-{}", pl.col("user_id").cast(pl.String).str.zfill(5)))
    products = w["products"].with_columns(product_code=pl.format("SKU{}", pl.col("product_id")))
    args = (w["user_seg"], w["centroids"], w["seg_pop"], w["ratings"])
    coded = build_exports(*args, recos, products, hv_n=40, rand_n=60, topn_per_segment=K, seed=42)
    plain = build_exports(*args, w["user_recos"], w["products"], hv_n=40, rand_n=60, topn_per_segment=K, seed=42)
    listed = set(recos["user_id"])  # a user without a list (none in a run) keeps the number

    def code(u: int) -> str:
        return f"C-{u:05d}" if u in listed else str(u)

    for name in ("users_high_value.parquet", "users_random.parquet", "user_recos.csv"):
        frame = coded[name]
        assert frame["customer_code"].to_list() == [code(u) for u in frame["user_id"]], name
        assert frame["customer_code"].str.starts_with("C-").sum() >= frame.height // 2, name
        assert plain[name]["customer_code"].to_list() == [str(u) for u in plain[name]["user_id"]], name
        # the same rows either way: the codes are added, nothing else moves
        assert frame.drop("customer_code", "product_code", strict=False).equals(
            plain[name].drop("customer_code", "product_code", strict=False)), name
    for name in ("segment_topn.parquet", "user_recos.csv"):
        assert coded[name]["product_code"].to_list() == [f"SKU{p}" for p in coded[name]["product_id"]]
        assert plain[name]["product_code"].to_list() == [str(p) for p in plain[name]["product_id"]]
    lines = coded["bedrock_inputs.jsonl"]
    assert validate_bedrock_lines(lines) == []
    assert all(d["customer_code"] == code(d["user_id"]) for d in lines)
    items = [p for d in lines for p in d["top_products"] + d["recommendations"]]
    assert items and all(p["product_code"] == f"SKU{p['product_id']}" for p in items)
    # a line without the customer's code is refused by the schema
    del lines[0]["customer_code"]
    assert any("customer_code" in e for e in validate_bedrock_lines(lines[:1]))
