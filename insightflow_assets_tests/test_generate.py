"""Tests for the synthetic Instacart generator (insightflow_assets.data.generate)."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from insightflow_assets.data.generate import (
    AISLES,
    DEPARTMENTS,
    SCHEMAS,
    generate_instacart,
    summarize,
    write_instacart,
)

TABLES = (
    "orders",
    "order_products__prior",
    "order_products__train",
    "products",
    "aisles",
    "departments",
)


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return generate_instacart(2_000, seed=7)


@pytest.fixture(scope="module")
def tables_mar() -> dict[str, pl.DataFrame]:
    """Missing values and Kaggle-style test users."""
    return generate_instacart(1_000, seed=11, missing_rate=0.2, test_share=0.25)


def _all_lines(t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Every line with its user and order_number, in purchase order."""
    lines = pl.concat([t["order_products__prior"], t["order_products__train"]])
    return lines.join(
        t["orders"].select("order_id", "user_id", "order_number"), on="order_id"
    ).sort("user_id", "order_number", "add_to_cart_order")


def test_tables_columns_and_dtypes(tables):
    assert tuple(tables) == TABLES
    for name in TABLES:
        assert dict(tables[name].schema) == SCHEMAS[name], name
    assert tables["aisles"].height == len(AISLES) == 134
    assert tables["departments"].height == len(DEPARTMENTS) == 21
    assert tables["departments"]["department"].to_list()[:4] == [
        "frozen", "other", "bakery", "produce",
    ]  # fmt: skip


def test_products_catalog(tables):
    products = tables["products"]
    assert products.height == 10_000  # 5 * n_users below 100k users
    assert products["product_id"].to_list() == list(range(1, products.height + 1))
    assert products["product_name"].n_unique() == products.height
    assert products["product_name"].null_count() == 0
    assert products["aisle_id"].is_between(1, 134).all()
    # department follows the aisle, as in Kaggle's aisle -> department mapping
    dept_of_aisle = {i + 1: d for i, (_, d) in enumerate(AISLES)}
    assert (
        products["aisle_id"].replace_strict(dept_of_aisle, return_dtype=pl.Int32)
        == products["department_id"]
    ).all()
    # every line refers to an existing product
    lines = pl.concat([tables["order_products__prior"], tables["order_products__train"]])
    assert lines["product_id"].is_in(products["product_id"].implode()).all()


def test_orders_per_user_and_numbering(tables):
    per_user = (
        tables["orders"]
        .group_by("user_id")
        .agg(
            n=pl.len(),
            lo=pl.col("order_number").min(),
            hi=pl.col("order_number").max(),
            distinct=pl.col("order_number").n_unique(),
        )
    )
    assert per_user.height == 2_000
    assert per_user["n"].is_between(4, 100).all()
    assert (per_user["lo"] == 1).all()
    assert (per_user["hi"] == per_user["n"]).all()
    assert (per_user["distinct"] == per_user["n"]).all()
    assert tables["orders"]["order_id"].n_unique() == tables["orders"].height


def test_days_since_prior_order(tables):
    orders = tables["orders"]
    first = orders.filter(pl.col("order_number") == 1)
    later = orders.filter(pl.col("order_number") > 1)
    assert first["days_since_prior_order"].null_count() == first.height
    gaps = later["days_since_prior_order"]
    assert gaps.null_count() == 0
    assert gaps.is_between(0, 30).all()
    assert (gaps == gaps.round(0)).all()
    assert 0.03 < (gaps == 30).mean() < 0.2  # Instacart's cap spike


def test_dow_and_hour_ranges(tables):
    orders = tables["orders"]
    assert orders["order_dow"].is_between(0, 6).all()
    assert orders["order_hour_of_day"].is_between(0, 23).all()
    assert orders["order_dow"].null_count() == 0
    assert orders["order_hour_of_day"].null_count() == 0


def test_last_order_is_train_with_lines(tables):
    orders = tables["orders"]
    last = orders.filter(pl.col("order_number") == pl.col("order_number").max().over("user_id"))
    assert (last["eval_set"] == "train").all()
    assert (orders.filter(pl.col("eval_set") == "train").height) == 2_000
    assert set(orders["eval_set"].unique()) == {"prior", "train"}
    train_ids = set(last["order_id"])
    assert set(tables["order_products__train"]["order_id"]) == train_ids
    prior_ids = set(orders.filter(pl.col("eval_set") == "prior")["order_id"])
    assert set(tables["order_products__prior"]["order_id"]) == prior_ids  # >= 1 line each


def test_lines_unique_and_cart_contiguous(tables):
    lines = pl.concat([tables["order_products__prior"], tables["order_products__train"]])
    assert not lines.select(pl.struct("order_id", "product_id").is_duplicated().any()).item()
    cart = lines.group_by("order_id").agg(
        n=pl.len(), lo=pl.col("add_to_cart_order").min(), hi=pl.col("add_to_cart_order").max()
    )
    assert (cart["lo"] == 1).all() and (cart["hi"] == cart["n"]).all()
    # Kaggle's file order
    assert tables["order_products__prior"]["order_id"].is_sorted()


def test_reordered_matches_history(tables):
    lines = _all_lines(tables).with_columns(
        truth=(~pl.struct("user_id", "product_id").is_first_distinct()).cast(pl.Int8)
    )
    assert (lines["truth"] == lines["reordered"]).all()
    first_orders = lines.filter(pl.col("order_number") == 1)
    assert (first_orders["reordered"] == 0).all()


def test_realistic_marginals(tables):
    s = summarize(tables)
    assert s["users"] == 2_000 and s["products"] == 10_000
    assert 0.5 < s["reorder_share"] < 0.7
    assert 12 < s["mean_orders_per_user"] < 22
    assert 7 < s["mean_basket"] < 13
    assert s["orders"] == tables["orders"].height
    assert s["prior_lines"] + s["train_lines"] > 10 * s["users"]
    # popularity is skewed: the top 1 % of products take a large share of lines
    counts = tables["order_products__prior"]["product_id"].value_counts(sort=True)["count"]
    assert counts.head(counts.len() // 100).sum() / counts.sum() > 0.15


def test_deterministic_and_seed_sensitive():
    a = generate_instacart(300, seed=5, missing_rate=0.1, test_share=0.1)
    b = generate_instacart(300, seed=5, missing_rate=0.1, test_share=0.1)
    c = generate_instacart(300, seed=6, missing_rate=0.1, test_share=0.1)
    for name in TABLES:
        assert_frame_equal(a[name], b[name])
    assert not a["orders"].equals(c["orders"])
    assert not a["order_products__prior"].equals(c["order_products__prior"])
    assert not a["products"].equals(c["products"])


def test_missing_rate(tables_mar):
    orders = tables_mar["orders"]
    first = orders.filter(pl.col("order_number") == 1)
    later = orders.filter(pl.col("order_number") > 1)
    for col in ("order_dow", "order_hour_of_day", "days_since_prior_order"):
        share = later[col].null_count() / later.height
        assert 0.18 < share < 0.22, (col, share)
    assert first["order_dow"].null_count() == 0
    assert first["order_hour_of_day"].null_count() == 0
    assert first["days_since_prior_order"].null_count() == first.height
    # the three columns are hidden independently
    both = later.select(
        (pl.col("order_dow").is_null() & pl.col("order_hour_of_day").is_null()).mean()
    ).item()
    assert 0.02 < both < 0.06


def test_test_share(tables_mar):
    orders = tables_mar["orders"]
    test = orders.filter(pl.col("eval_set") == "test")
    train = orders.filter(pl.col("eval_set") == "train")
    assert test.height == 250 and train.height == 750
    assert test["user_id"].n_unique() == 250
    is_last = orders.filter(pl.col("order_number") == pl.col("order_number").max().over("user_id"))
    assert set(is_last["eval_set"].unique()) == {"train", "test"}
    test_ids = test["order_id"].implode()
    for name in ("order_products__prior", "order_products__train"):
        assert not tables_mar[name]["order_id"].is_in(test_ids).any()
    assert set(tables_mar["order_products__train"]["order_id"]) == set(train["order_id"])
    # test users still have their prior history
    prior_users = orders.filter(pl.col("eval_set") == "prior")["user_id"]
    assert test["user_id"].is_in(prior_users.implode()).all()


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_write_round_trip(tables_mar, tmp_path, fmt):
    out = tmp_path / "raw" / "instacart"
    paths = write_instacart(tables_mar, out, fmt=fmt)
    assert paths == [out / f"{name}.{fmt}" for name in TABLES]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp files
    for name, path in zip(TABLES, paths, strict=True):
        if fmt == "parquet":
            back = pl.read_parquet(path)
        else:
            back = pl.read_csv(path, schema_overrides=SCHEMAS[name])
        assert_frame_equal(back, tables_mar[name])


def test_write_overwrites_and_rejects_bad_format(tables_mar, tmp_path):
    small = {"aisles": tables_mar["aisles"]}
    write_instacart(small, tmp_path, fmt="csv")
    write_instacart({"aisles": tables_mar["aisles"].head(3)}, tmp_path, fmt="csv")
    assert pl.read_csv(tmp_path / "aisles.csv").height == 3
    with pytest.raises(ValueError):
        write_instacart(small, tmp_path, fmt="json")


def test_invalid_arguments():
    with pytest.raises(ValueError):
        generate_instacart(0)
    with pytest.raises(ValueError):
        generate_instacart(10, missing_rate=1.5)
    with pytest.raises(ValueError):
        generate_instacart(10, test_share=-0.1)
