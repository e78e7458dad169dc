"""The shared contract every registered recommender must meet (as implicit's RecommenderBase tests)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from insightflow_assets.imputation.mice import order_features
from insightflow_assets.ingest.loading import validate_snapshot
from insightflow_assets.ratings.build import build_ratings, training_baskets
from insightflow_assets.recommenders import REGISTRY, RECS_SCHEMA, TrainingWindow

# Small models so the contract runs in seconds; every other parameter is the model's default.
FAST = {"als": {"factors": 8, "iterations": 3}, "als_postrank": {"factors": 8, "iterations": 3}}


@pytest.fixture(scope="module")
def window(small_tables):
    tables = {k: v for k, v in small_tables.items()}
    names = {k: f"{k}.csv" for k in tables}
    snap = validate_snapshot(tables, names)
    orders = order_features(snap.orders, snap.order_products)
    ratings = build_ratings(orders, snap.order_products)
    return TrainingWindow(ratings=ratings, baskets=training_baskets(orders, snap.order_products))


def _fit(name: str, window: TrainingWindow):
    return REGISTRY[name](**FAST.get(name, {})).fit(window)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_recommendations_follow_the_contract(name, window):
    users = np.sort(window.ratings["user_id"].unique().to_numpy())[:50]
    unknown = np.array([-5], dtype=np.int32)
    recs = _fit(name, window).recommend(np.concatenate([users, unknown]), 10)
    assert dict(recs.schema) == RECS_SCHEMA
    # only the users asked for (an unknown one may get a non-personal list, or nothing)
    assert set(recs["user_id"].unique().to_list()) <= set(users.tolist()) | {-5}
    recs = recs.filter(pl.col("user_id") != -5)
    per_user = recs.group_by("user_id").agg(
        n=pl.len(), distinct=pl.col("product_id").n_unique(), ranks=pl.col("rank").sort()
    )
    assert per_user["n"].max() <= 10
    assert (per_user["n"] == per_user["distinct"]).all()
    assert all(r == list(range(1, len(r) + 1)) for r in per_user["ranks"].to_list())
    assert recs["source"].null_count() == 0
    # every user with history gets something; rank is authoritative, the score informative
    assert per_user.height == len(users)
    assert recs["score"].is_finite().all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_recommendations_are_deterministic(name, window):
    users = window.ratings["user_id"].unique().sort().head(40)
    a = _fit(name, window).recommend(users, 5)
    b = _fit(name, window).recommend(users, 5)
    assert a.select("user_id", "rank", "product_id", "source").equals(b.select("user_id", "rank", "product_id", "source"))
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_register_refuses_two_models_with_one_name():
    from insightflow_assets.recommenders.base import Recommender, register

    class Twin(Recommender):
        name, label = "p_topfreq", "twin"

        def fit(self, window):
            return self

        def _recommend(self, users, n):
            raise NotImplementedError

    with pytest.raises(ValueError, match="two recommenders"):
        register(Twin)


def test_a_window_from_orders_builds_the_same_baskets_on_first_read(small_tables, window):
    snap = validate_snapshot(dict(small_tables), {k: f"{k}.csv" for k in small_tables})
    orders = order_features(snap.orders, snap.order_products)
    lazy = TrainingWindow(ratings=window.ratings, orders=orders, lines=snap.order_products)
    assert lazy._baskets is None  # nothing built until a model reads them
    assert lazy.baskets.equals(window.baskets)
    with pytest.raises(ValueError, match="baskets"):
        TrainingWindow(ratings=window.ratings)


def test_tifu_fitted_from_orders_equals_fitted_from_baskets(small_tables, window):
    snap = validate_snapshot(dict(small_tables), {k: f"{k}.csv" for k in small_tables})
    orders = order_features(snap.orders, snap.order_products)
    # the lines shuffled: the vectors must not depend on their order
    lines = snap.order_products.sample(fraction=1.0, shuffle=True, seed=3)
    a = REGISTRY["tifu_knn"]().fit(window)
    b = REGISTRY["tifu_knn"]().fit(TrainingWindow(ratings=window.ratings, orders=orders, lines=lines))
    assert (a.vectors != b.vectors).nnz == 0 and a.vectors.dtype == b.vectors.dtype
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)


@pytest.mark.parametrize(
    "name, grid",
    [
        ("tifu_knn", [{"k_neighbors": 20, "alpha": 0.7}, {"k_neighbors": 50, "alpha": 0.7}, {"k_neighbors": 50, "alpha": 0.9}]),
        ("als_postrank", [{**FAST["als_postrank"], "postrank_alpha": a, "popularity_kind": kind}
                          for kind in ("global", "user") for a in (0.7, 0.3)]),
    ],
)
def test_recommend_many_equals_one_by_one(name, grid, window):
    """Configurations sharing one fit share work in `recommend_many`, never results."""
    first = REGISTRY[name](**grid[0]).fit(window)
    recs = [first] + [REGISTRY[name](**params).adopt(first, window) for params in grid[1:]]
    users = window.ratings["user_id"].unique().sort().head(60)
    together = type(first).recommend_many(recs, users, 10)
    for rec, got in zip(recs, together):
        assert got.equals(rec.recommend(users, 10))
