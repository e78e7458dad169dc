"""Hand-made tests for evaluation.baselines."""

from __future__ import annotations

import polars as pl
import pytest

from insightflow_assets.evaluation.baselines import (
    global_popularity,
    gp_topfreq,
    item_popularity,
    p_topfreq,
)

A, B, C, D, E, F, G = 1, 2, 3, 4, 5, 6, 7

# (user_id, product_id, purchases, rating)
RATINGS_SCHEMA = {
    "user_id": pl.Int32,
    "product_id": pl.Int32,
    "purchases": pl.Int32,
    "rating": pl.Float32,
}
RATINGS = pl.DataFrame(
    [
        (1, A, 3, 2.0),
        (1, B, 3, 2.5),  # same purchases as A, higher rating -> before A
        (1, C, 1, 1.0),
        (1, D, 2, 2.0),
        (2, A, 1, 1.0),
        (2, E, 1, 1.0),  # full tie with A -> product_id order
        (3, G, 2, 1.5),
        (3, F, 2, 1.5),
        (5, A, 1, 1.0),
        (5, C, 4, 4.0),
    ],
    schema=RATINGS_SCHEMA,
    orient="row",
)
# distinct buyers: A 3 (users 1, 2, 5), C 2 (1, 5), B D E F G 1 each; 4 users in total
SCHEMA = pl.Schema(
    {"user_id": pl.Int32, "rank": pl.Int32, "product_id": pl.Int32, "score": pl.Float32}
)


def _lists(recs: pl.DataFrame) -> dict[int, list[int]]:
    assert recs.schema == SCHEMA
    assert recs.equals(recs.sort("user_id", "rank"))
    out: dict[int, list[int]] = {}
    for u, r, p in recs.select("user_id", "rank", "product_id").rows():
        out.setdefault(u, []).append(p)
        assert r == len(out[u])  # ranks are 1..n without gaps
    return out


def test_item_popularity():
    pop = item_popularity(RATINGS)
    assert pop.select("product_id", "n_users").rows() == [
        (A, 3), (C, 2), (B, 1), (D, 1), (E, 1), (F, 1), (G, 1)
    ]
    assert pop.get_column("p").to_list() == pytest.approx([0.75, 0.5] + [0.25] * 5)


def test_global_popularity():
    recs = global_popularity(RATINGS, [2, 9, 1], n=4)
    assert _lists(recs) == {1: [A, C, B, D], 2: [A, C, B, D], 9: [A, C, B, D]}
    scores = recs.filter(user_id=9).get_column("score").to_list()
    assert scores == pytest.approx([0.75, 0.5, 0.25, 0.25])


def test_p_topfreq():
    recs = p_topfreq(RATINGS, pl.Series([1, 2, 3, 9]), n=3)
    # user 9 has no ratings -> no rows; users 2 and 3 have fewer than n products
    assert _lists(recs) == {1: [B, A, D], 2: [A, E], 3: [F, G]}
    assert recs.filter(user_id=1).get_column("score").to_list() == [3.0, 3.0, 2.0]


def test_gp_topfreq():
    recs = gp_topfreq(RATINGS, [1, 2, 3, 9], n=4)
    assert _lists(recs) == {
        1: [B, A, D, C],  # own list already has 4 products
        2: [A, E, C, B],  # own A, E then popular C, B (A skipped)
        3: [F, G, A, C],
        9: [A, C, B, D],  # no history -> pure popularity
    }
    scores = recs.filter(user_id=2).get_column("score").to_list()
    assert scores == pytest.approx([1.0, 1.0, 0.5, 0.25])
    recs3 = gp_topfreq(RATINGS, [1, 2, 3, 9], n=3)
    assert _lists(recs3) == {1: [B, A, D], 2: [A, E, C], 3: [F, G, A], 9: [A, C, B]}


def test_gp_topfreq_from_the_p_topfreq_lists_at_hand():
    users = [1, 2, 3, 5, 9]
    own = p_topfreq(RATINGS, users, n=4)
    assert gp_topfreq(RATINGS, users, n=4, own=own).equals(gp_topfreq(RATINGS, users, n=4))


def test_gp_topfreq_skips_duplicates_when_own_list_covers_popular():
    # user 5 owns both A and C (the two most popular): fill must skip both
    recs = gp_topfreq(RATINGS, [5], n=4)
    assert _lists(recs) == {5: [C, A, B, D]}


def test_matches_naive_python_on_random_ratings():
    import numpy as np

    rng = np.random.default_rng(0)
    rows = {}
    for u in range(1, 60):
        for p in rng.choice(40, size=rng.integers(0, 12), replace=False):
            rows[(u, int(p) + 1)] = (int(rng.integers(1, 4)), float(rng.integers(1, 3)) / 2)
    ratings = pl.DataFrame(
        [(u, p, c, r) for (u, p), (c, r) in rows.items()],
        schema=RATINGS_SCHEMA,
        orient="row",
    )
    users = list(range(1, 65))  # 60..64 have no ratings
    n = 8
    buyers: dict[int, int] = {}
    for _, p in rows:
        buyers[p] = buyers.get(p, 0) + 1
    popular = sorted(buyers, key=lambda p: (-buyers[p], p))[:n]
    expected_own, expected_gp = {}, {}
    for u in users:
        mine = [p for (uu, p) in rows if uu == u]
        own = sorted(mine, key=lambda p: (-rows[(u, p)][0], -rows[(u, p)][1], p))[:n]
        if own:
            expected_own[u] = own
        expected_gp[u] = (own + [p for p in popular if p not in own])[:n]
    assert _lists(p_topfreq(ratings, users, n)) == expected_own
    assert _lists(gp_topfreq(ratings, users, n)) == expected_gp
    assert _lists(global_popularity(ratings, users, n)) == {u: popular for u in users}
