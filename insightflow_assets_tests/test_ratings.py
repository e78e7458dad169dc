"""Hand-computed tests for insightflow_assets.ratings.build."""

from __future__ import annotations

import math

import polars as pl
import pytest

from insightflow_assets.ratings.build import (
    build_holdout,
    build_ratings,
    order_days,
    target_orders,
)

A, B, C, D, E, F = 101, 102, 103, 104, 105, 106

# (order_id, user_id, eval_set, order_number, days_since_prior_order)
_ORDERS = [
    # user 1: three priors + a train order. days 0, 7, 10, 20 -> target day 20
    (11, 1, "prior", 1, None),
    (12, 1, "prior", 2, 7.0),
    (13, 1, "prior", 3, 3.0),
    (14, 1, "train", 4, 10.0),
    # user 2: two priors + a test order (no lines) -> target = order 22 (day 5)
    (21, 2, "prior", 1, None),
    (22, 2, "prior", 2, 5.0),
    (23, 2, "test", 3, 8.0),
    # user 3: a single prior order with lines + test -> target = 31, no ratings
    (31, 3, "prior", 1, None),
    (32, 3, "test", 2, 4.0),
    # user 4: first order with an imputed (non-null) gap that must count as 0
    (41, 4, "prior", 1, 9.0),
    (42, 4, "train", 2, 6.0),
]
# (order_id, product_id)
_LINES = [
    (11, A), (11, B),
    (12, A),
    (13, A), (13, C),
    (14, A), (14, D),
    (21, A), (21, E),
    (22, E),
    (31, F), (31, A),
    (41, B),
    (42, B), (42, C),
]


def _orders() -> pl.DataFrame:
    df = pl.DataFrame(
        _ORDERS,
        schema={
            "order_id": pl.Int32,
            "user_id": pl.Int32,
            "eval_set": pl.String,
            "order_number": pl.Int16,
            "days_since_prior_order": pl.Float32,
        },
        orient="row",
    ).with_columns(
        order_dow=pl.lit(1, pl.Int8),
        order_hour_of_day=pl.lit(10, pl.Int8),
        basket_size=pl.lit(1, pl.Int32),
        is_first_order=pl.col("order_number") == 1,
        days_since_prior_order_imputed=pl.lit(False),
    )
    # shuffled rows: functions must not rely on input order
    return df.sample(fraction=1.0, shuffle=True, seed=7)


def _lines() -> pl.DataFrame:
    return pl.DataFrame(
        _LINES, schema={"order_id": pl.Int32, "product_id": pl.Int32}, orient="row"
    ).with_columns(
        add_to_cart_order=pl.lit(1, pl.Int16), reordered=pl.lit(0, pl.Int8)
    ).sample(fraction=1.0, shuffle=True, seed=3)


def test_order_days():
    d = order_days(_orders())
    got = {r["order_id"]: r["day"] for r in d.iter_rows(named=True)}
    assert got == {
        11: 0, 12: 7, 13: 10, 14: 20,
        21: 0, 22: 5, 23: 13,
        31: 0, 32: 4,
        41: 0, 42: 6,  # first-order gap of 9 ignored
    }
    assert d.columns == ["order_id", "user_id", "order_number", "day"]


def test_target_orders():
    t = target_orders(_orders(), _lines())
    assert t.select("user_id", "order_id", "order_number", "day").rows() == [
        (1, 14, 4, 20.0),
        (2, 22, 2, 5.0),
        (3, 31, 1, 0.0),
        (4, 42, 2, 6.0),
    ]


def test_build_holdout():
    h = build_holdout(_orders(), _lines())
    assert h.schema == pl.Schema({"user_id": pl.Int32, "product_id": pl.Int32})
    assert h.rows() == [(1, A), (1, D), (2, E), (3, A), (3, F), (4, B), (4, C)]


def test_build_ratings_counts():
    r = build_ratings(_orders(), _lines())
    assert r.schema == pl.Schema(
        {
            "user_id": pl.Int32,
            "product_id": pl.Int32,
            "purchases": pl.Int32,
            "rating": pl.Float32,
            "last_day_before_target": pl.Int32,
        }
    )
    # user 1: A in orders 11,12,13 (20, 13, 10 days before target), B in 11, C in 13
    # user 2: only order 21 (5 days before target 22); user 3: nothing;
    # user 4: order 41 (6 days before target)
    assert r.rows() == [
        (1, A, 3, 3.0, 10),
        (1, B, 1, 1.0, 20),
        (1, C, 1, 1.0, 10),
        (2, A, 1, 1.0, 5),
        (2, E, 1, 1.0, 5),
        (4, B, 1, 1.0, 6),
    ]


def test_build_ratings_target_basket_never_leaks():
    r = build_ratings(_orders(), _lines())
    # D is only in user 1's target; user 2's E in the target is also in order 21
    assert (1, D) not in {(u, p) for u, p in r.select("user_id", "product_id").rows()}


def test_build_ratings_half_life():
    r = build_ratings(_orders(), _lines(), half_life_days=10.0)
    got = {(u, p): v for u, p, v in r.select("user_id", "product_id", "rating").rows()}
    expected = {
        (1, A): 0.5 ** 2.0 + 0.5 ** 1.3 + 0.5 ** 1.0,  # 0.25 + 0.40613 + 0.5
        (1, B): 0.25,
        (1, C): 0.5,
        (2, A): 0.5 ** 0.5,
        (2, E): 0.5 ** 0.5,
        (4, B): 0.5 ** 0.6,
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6)
    assert math.isclose(expected[(1, A)], 1.1561261981781178, rel_tol=1e-12)
    # raw counts unaffected by the decay
    assert r.filter(user_id=1, product_id=A).item(0, "purchases") == 3


def test_build_ratings_filters_item_then_user():
    o, l = _orders(), _lines()
    # items with >= 2 distinct buyers: A (users 1, 2), B (users 1, 4)
    r = build_ratings(o, l, min_item_interactions=2)
    assert r.select("user_id", "product_id").rows() == [(1, A), (1, B), (2, A), (4, B)]
    # users with >= 2 distinct products: 1 (A, B, C) and 2 (A, E)
    r = build_ratings(o, l, min_user_interactions=2)
    assert r.select("user_id", "product_id").rows() == [
        (1, A), (1, B), (1, C), (2, A), (2, E)
    ]
    # item filter first, then users: after it user 1 has {A, B}, user 2 {A}, user 4 {B}
    r = build_ratings(o, l, min_item_interactions=2, min_user_interactions=2)
    assert r.select("user_id", "product_id").rows() == [(1, A), (1, B)]


def test_build_ratings_accepts_lazy_frames():
    eager = build_ratings(_orders(), _lines(), half_life_days=5.0)
    lazy = build_ratings(_orders().lazy(), _lines().lazy(), half_life_days=5.0)
    assert eager.equals(lazy)


def test_build_ratings_rejects_bad_params():
    with pytest.raises(ValueError):
        build_ratings(_orders(), _lines(), half_life_days=0.0)
    with pytest.raises(ValueError):
        build_ratings(_orders(), _lines(), min_user_interactions=0)


def test_half_life_rating_never_underflows_to_zero():
    # user 1's order 11 is 20 days before the target: 0.5 ** (20 / 0.1) = 2**-200
    r = build_ratings(_orders(), _lines(), half_life_days=0.1)
    assert r.filter(user_id=1, product_id=B).item(0, "rating") > 0
    assert (r.get_column("rating") > 0).all()
