"""Tests for insightflow_assets.postrank.rerank (pure functions, no Dagster)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from insightflow_assets.postrank.rerank import POSTRANK_SCHEMA, postrank


def _cands(rows) -> pl.DataFrame:
    """rows: (user_id, product_id, score); rank = order of appearance per user."""
    df = pl.DataFrame(
        {
            "user_id": pl.Series([r[0] for r in rows], dtype=pl.Int32),
            "product_id": pl.Series([r[1] for r in rows], dtype=pl.Int32),
            "score": pl.Series([r[2] for r in rows], dtype=pl.Float32),
        }
    )
    return df.with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Int16)).select(
        "user_id", "rank", "product_id", "score"
    )


def _pop(d: dict[int, float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "product_id": pl.Series(list(d), dtype=pl.Int32),
            "popularity": pl.Series(list(d.values()), dtype=pl.Float64),
        }
    )


def _products(rows) -> pl.DataFrame:
    """rows: (product_id, aisle_id, department_id)."""
    return pl.DataFrame(
        {
            "product_id": pl.Series([r[0] for r in rows], dtype=pl.Int32),
            "product_name": [f"p{r[0]}" for r in rows],
            "aisle_id": pl.Series([r[1] for r in rows], dtype=pl.Int16),
            "department_id": pl.Series([r[2] for r in rows], dtype=pl.Int16),
            "aisle": [f"a{r[1]}" for r in rows],
            "department": [f"d{r[2]}" for r in rows],
        }
    )


def _user(out: pl.DataFrame, uid: int) -> pl.DataFrame:
    return out.filter(pl.col("user_id") == uid).sort("rank")


# --------------------------------------------------------------------------- #
# hybrid
# --------------------------------------------------------------------------- #
CANDS_1 = _cands([(1, 1, 0.9), (1, 2, 0.5), (1, 3, 0.1)])
POP_1 = _pop({1: 0.1, 2: 0.5, 3: 0.3, 4: 0.9})


def test_hybrid_arithmetic_by_hand():
    # norm(ALS) = [1, .5, 0]; norm(pop) over the candidates (min .1, max .5) = [0, 1, .5]
    # alpha=.7 -> rel = [.7, .35+.3, .15] = [.70, .65, .15]
    out = postrank(CANDS_1, k=3, users=[1], popularity=POP_1, alpha=0.7, mmr_lambda=1.0,
                   similarity="aisle", products=_products([(1, 1, 1), (2, 1, 1), (3, 1, 1)]))
    assert out.schema == pl.Schema(POSTRANK_SCHEMA)
    assert out["product_id"].to_list() == [1, 2, 3]
    np.testing.assert_allclose(out["score"].to_numpy(), [0.70, 0.65, 0.15], atol=1e-6)
    assert out["rank"].to_list() == [1, 2, 3]
    assert out["source"].to_list() == ["als"] * 3

    # alpha=.5 -> rel = [.5, .75, .25]: popularity lifts product 2 above product 1
    out = postrank(CANDS_1, k=3, users=[1], popularity=POP_1, alpha=0.5, mmr_lambda=1.0,
                   item_factors=np.eye(3, dtype=np.float32), item_ids=np.array([1, 2, 3]))
    assert out["product_id"].to_list() == [2, 1, 3]
    np.testing.assert_allclose(out["score"].to_numpy(), [0.75, 0.5, 0.25], atol=1e-6)


def test_hybrid_accepts_item_popularity_p_column():
    pop = POP_1.rename({"popularity": "p"}).with_columns(n_users=pl.lit(1, dtype=pl.Int32))
    out = postrank(CANDS_1, k=3, users=[1], popularity=pop, alpha=0.5, mmr_lambda=1.0,
                   item_factors=np.eye(3, dtype=np.float32), item_ids=np.array([1, 2, 3]))
    assert out["product_id"].to_list() == [2, 1, 3]


def test_user_popularity_kind():
    # user 1 bought product 3 five times, product 2 once, product 1 never
    up = pl.DataFrame({"user_id": [1, 1, 2], "product_id": [3, 2, 1], "purchases": [5, 1, 9]})
    # norm(ALS) = [1, .5, 0]; norm(own purchases [0, 1, 5]) = [0, .2, 1]
    # alpha=.4 -> rel = [.4, .2+.12, .6] = [.4, .32, .6]
    out = postrank(CANDS_1, k=3, users=[1], popularity=POP_1, alpha=0.4, mmr_lambda=1.0,
                   popularity_kind="user", user_popularity=up,
                   item_factors=np.eye(3, dtype=np.float32), item_ids=np.array([1, 2, 3]))
    assert out["product_id"].to_list() == [3, 1, 2]
    np.testing.assert_allclose(out["score"].to_numpy(), [0.6, 0.4, 0.32], atol=1e-6)


def test_constant_lists_normalise_to_zero_and_ties_break_by_product_id():
    cands = _cands([(1, 30, 0.5), (1, 10, 0.5), (1, 20, 0.5), (2, 7, 2.0)])
    pop = _pop({10: 0.2, 20: 0.2, 30: 0.2, 7: 0.1, 99: 0.9})
    out = postrank(cands, k=3, users=[1, 2], popularity=pop, mmr_lambda=1.0,
                   item_factors=np.eye(4, dtype=np.float32), item_ids=np.array([7, 10, 20, 30]))
    u1 = _user(out, 1)
    assert u1["product_id"].to_list() == [10, 20, 30]
    assert u1["score"].to_list() == [0.0, 0.0, 0.0]
    u2 = _user(out, 2)
    assert u2["product_id"].to_list() == [7, 99, 10]  # single candidate, then popular fill
    assert u2["source"].to_list() == ["als", "popular", "popular"]
    assert u2["score"][0] == 0.0


def test_validation_errors():
    with pytest.raises(ValueError):
        postrank(CANDS_1, k=2, users=[1], popularity=POP_1, similarity="factors")
    with pytest.raises(ValueError):
        postrank(CANDS_1, k=2, users=[1], popularity=POP_1, similarity="aisle")
    with pytest.raises(ValueError):
        postrank(CANDS_1, k=2, users=[1], popularity=POP_1, similarity="brand")
    with pytest.raises(ValueError):
        postrank(CANDS_1, k=2, users=[1], popularity=POP_1, alpha=1.5, similarity="aisle",
                 products=_products([(1, 1, 1)]))
    with pytest.raises(ValueError):
        postrank(CANDS_1, k=2, users=[1], popularity=POP_1, popularity_kind="user",
                 similarity="aisle", products=_products([(1, 1, 1)]))
    assert postrank(CANDS_1, k=0, users=[1], popularity=POP_1).height == 0


# --------------------------------------------------------------------------- #
# MMR
# --------------------------------------------------------------------------- #
# product 2 is a near duplicate of product 1, product 3 is orthogonal to both
FACTORS = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]], dtype=np.float32)
ITEM_IDS = np.array([1, 2, 3])
CANDS_MMR = _cands([(1, 1, 1.0), (1, 2, 0.9), (1, 3, 0.8)])  # rel (alpha=1) = [1, .5, 0]


def test_mmr_lambda_one_keeps_plain_order():
    out = postrank(CANDS_MMR, k=3, users=[1], popularity=POP_1, alpha=1.0, mmr_lambda=1.0,
                   item_factors=FACTORS, item_ids=ITEM_IDS)
    assert out["product_id"].to_list() == [1, 2, 3]


def test_mmr_prefers_dissimilar_item_over_near_duplicate():
    # step 2: item 2 -> .5*.5 - .5*cos(1,2)=.25-.495 < item 3 -> 0 - .5*0 = 0
    out = postrank(CANDS_MMR, k=3, users=[1], popularity=POP_1, alpha=1.0, mmr_lambda=0.5,
                   item_factors=FACTORS, item_ids=ITEM_IDS)
    assert out["product_id"].to_list() == [1, 3, 2]
    # scores stay the hybrid relevance of each product
    np.testing.assert_allclose(out["score"].to_numpy(), [1.0, 0.0, 0.5], atol=1e-6)
    # k=2 keeps the diverse pair
    out2 = postrank(CANDS_MMR, k=2, users=[1], popularity=POP_1, alpha=1.0, mmr_lambda=0.5,
                    item_factors=FACTORS, item_ids=ITEM_IDS)
    assert out2["product_id"].to_list() == [1, 3]


def test_mmr_accepts_model_object():
    class M:
        item_factors = FACTORS
        item_ids = ITEM_IDS

    out = postrank(CANDS_MMR, k=3, users=[1], popularity=POP_1, alpha=1.0, mmr_lambda=0.5,
                   item_factors=M())
    assert out["product_id"].to_list() == [1, 3, 2]


def test_aisle_and_department_similarity():
    # 1 and 2 share aisle 5; 3 is in aisle 6. Departments: 1 and 3 share 9, 2 is in 8.
    products = _products([(1, 5, 9), (2, 5, 8), (3, 6, 9)])
    kw = dict(k=3, users=[1], popularity=POP_1, alpha=1.0, products=products)
    assert postrank(CANDS_MMR, mmr_lambda=1.0, similarity="aisle", **kw)["product_id"].to_list() == [1, 2, 3]
    # aisle: after 1, item 2 gets .25 - .5 = -.25 < item 3: 0 -> 3 first
    assert postrank(CANDS_MMR, mmr_lambda=0.5, similarity="aisle", **kw)["product_id"].to_list() == [1, 3, 2]
    # department: after 1, item 2 (other dept) .25 > item 3 (same dept) -.5 -> plain order
    assert postrank(CANDS_MMR, mmr_lambda=0.5, similarity="department", **kw)["product_id"].to_list() == [1, 2, 3]
    # item with unknown aisle is similar to nothing
    products_missing = _products([(1, 5, 9), (3, 6, 9)])
    out = postrank(CANDS_MMR, mmr_lambda=0.5, similarity="aisle", k=3, users=[1],
                   popularity=POP_1, alpha=1.0, products=products_missing)
    assert out["product_id"].to_list() == [1, 2, 3]


def _reference_mmr(cands: pl.DataFrame, pop: dict, k: int, alpha: float, lam: float,
                   factors: np.ndarray, ids: np.ndarray) -> dict[int, list[int]]:
    """Plain per-user Python MMR used to check the vectorised version."""
    unit = factors / np.linalg.norm(factors, axis=1, keepdims=True)
    row = {int(i): r for r, i in enumerate(ids)}

    def norm(x):
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)

    out = {}
    for (uid,), g in cands.group_by(["user_id"]):
        g = g.sort("product_id")
        pids = g["product_id"].to_list()
        s = g["score"].to_numpy().astype(np.float64)
        p = np.array([pop.get(x, 0.0) for x in pids])
        rel = alpha * norm(s) + (1 - alpha) * norm(p)
        chosen: list[int] = []
        for _ in range(min(k, len(pids))):
            best, best_val = None, -np.inf
            for j, pid in enumerate(pids):
                if j in chosen:
                    continue
                if chosen:
                    sim = max(float(unit[row[pid]] @ unit[row[pids[c]]]) for c in chosen)
                    val = lam * rel[j] - (1 - lam) * sim
                else:
                    val = lam * rel[j]
                if val > best_val + 1e-9:
                    best, best_val = j, val
            chosen.append(best)
        out[int(uid)] = [pids[c] for c in chosen]
    return out


@pytest.mark.parametrize(
    "batch_size,num_threads,shuffle", [(1, 1, False), (7, 2, True), (4096, 0, True)]
)
def test_vectorised_mmr_matches_reference(batch_size, num_threads, shuffle):
    rng = np.random.default_rng(3)
    n_items, n_users, n_cand, k = 60, 40, 15, 6
    ids = np.arange(1000, 1000 + n_items)
    factors = rng.normal(size=(n_items, 5)).astype(np.float32)
    rows = []
    for u in range(1, n_users + 1):
        m = int(rng.integers(k, n_cand + 1))
        for pid in rng.choice(ids, size=m, replace=False):
            rows.append((u, int(pid), float(rng.normal())))
    cands = _cands(rows)
    if shuffle:  # input order must not matter
        cands = cands.sample(fraction=1.0, shuffle=True, seed=1)
    pop = {int(i): float(v) for i, v in zip(ids, rng.random(n_items))}
    out = postrank(cands, k=k, users=range(1, n_users + 1), popularity=_pop(pop), alpha=0.6,
                   mmr_lambda=0.7, item_factors=factors, item_ids=ids, batch_size=batch_size,
                   num_threads=num_threads)
    assert out.height == n_users * k
    ref = _reference_mmr(cands, pop, k, 0.6, 0.7, factors, ids)
    for u in range(1, n_users + 1):
        assert _user(out, u)["product_id"].to_list() == ref[u], u


# --------------------------------------------------------------------------- #
# fallback / fill
# --------------------------------------------------------------------------- #
def test_fallback_cold_and_short_users_get_exactly_k():
    pop = _pop({10: 0.9, 11: 0.8, 12: 0.7, 13: 0.6, 14: 0.5, 15: 0.4})
    cands = _cands(
        [(2, 10, 0.9), (2, 50, 0.3)]  # short list (2 < k), contains the most popular item
        + [(3, p, 1.0 - 0.1 * i) for i, p in enumerate([51, 52, 53, 54, 55])]  # full list
        + [(99, 10, 1.0)]  # not requested: ignored
    )
    f = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    ids = np.array([10, 50, 51, 52, 53, 54, 55])
    out = postrank(cands, k=4, users=pl.Series([3, 1, 2]), popularity=pop, mmr_lambda=1.0,
                   item_factors=f, item_ids=ids)
    assert out["user_id"].to_list() == [1] * 4 + [2] * 4 + [3] * 4
    assert out.group_by("user_id").agg(pl.col("product_id").n_unique())["product_id"].to_list() == [4, 4, 4]

    cold = _user(out, 1)
    assert cold["product_id"].to_list() == [10, 11, 12, 13]
    assert cold["source"].to_list() == ["fallback"] * 4
    np.testing.assert_allclose(cold["score"].to_numpy(), [0.9, 0.8, 0.7, 0.6], atol=1e-6)
    assert cold["rank"].to_list() == [1, 2, 3, 4]

    short = _user(out, 2)
    assert short["source"].to_list() == ["als", "als", "popular", "popular"]
    assert set(short["product_id"].to_list()[:2]) == {10, 50}
    assert short["product_id"].to_list()[2:] == [11, 12]  # 10 already listed: skipped

    full = _user(out, 3)
    assert full["source"].to_list() == ["als"] * 4
    assert full["product_id"].to_list() == [51, 52, 53, 54]
    assert 99 not in out["user_id"].to_list()


def test_fill_extends_with_catalogue_when_popularity_is_short():
    pop = _pop({10: 0.9})
    products = _products([(10, 1, 1), (11, 1, 1), (12, 2, 1), (13, 2, 2)])
    out = postrank(_cands([(1, 13, 1.0)]), k=3, users=[1, 2], popularity=pop,
                   similarity="aisle", products=products)
    assert _user(out, 1)["product_id"].to_list() == [13, 10, 11]
    assert _user(out, 2)["product_id"].to_list() == [10, 11, 12]
    assert _user(out, 2)["source"].to_list() == ["fallback"] * 3


def test_duplicate_candidates_keep_best_score():
    cands = _cands([(1, 1, 0.1), (1, 2, 0.5), (1, 1, 0.9), (1, 1, 0.3)])
    out = postrank(cands, k=2, users=[1], popularity=POP_1, alpha=1.0, mmr_lambda=1.0,
                   item_factors=np.eye(3, dtype=np.float32), item_ids=np.array([1, 2, 3]))
    assert out["product_id"].to_list() == [1, 2]
    assert out["source"].to_list() == ["als", "als"]


def test_nan_scores_count_as_lowest_and_user_popularity_unsorted():
    # NaN -> lowest score of the whole input (0.1 of user 2)
    cands = _cands([(1, 1, float("nan")), (1, 2, 0.5), (1, 3, 0.9), (2, 1, 0.1)])
    up = pl.DataFrame({"user_id": [1, 1, 1], "product_id": [3, 1, 3], "purchases": [1, 0, 1]})
    out = postrank(cands, k=3, users=[1], popularity=POP_1, alpha=1.0, mmr_lambda=1.0,
                   popularity_kind="user", user_popularity=up,
                   item_factors=np.eye(3, dtype=np.float32), item_ids=np.array([1, 2, 3]))
    assert out["product_id"].to_list() == [3, 2, 1]
    # alpha=0: only own purchases (3 bought twice after summing duplicates, others 0)
    out = postrank(cands, k=3, users=[1], popularity=POP_1, alpha=0.0, mmr_lambda=1.0,
                   popularity_kind="user", user_popularity=up,
                   item_factors=np.eye(3, dtype=np.float32), item_ids=np.array([1, 2, 3]))
    assert out["product_id"].to_list() == [3, 1, 2]
    np.testing.assert_allclose(out["score"].to_numpy(), [1.0, 0.0, 0.0])


def test_no_candidates_at_all():
    empty = _cands([(1, 1, 1.0)]).clear()
    out = postrank(empty, k=2, users=[5, 6], popularity=POP_1, mmr_lambda=0.5,
                   item_factors=np.eye(3, dtype=np.float32), item_ids=np.array([1, 2, 3]))
    assert out["user_id"].to_list() == [5, 5, 6, 6]
    assert out["product_id"].to_list() == [4, 2, 4, 2]
    assert set(out["source"].to_list()) == {"fallback"}
