"""Hand-computed and implicit-cross-checked tests for evaluation.metrics."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from insightflow_assets.evaluation.metrics import (
    coverage,
    evaluate,
    intra_list_diversity,
    novelty,
    per_user_metrics,
    pooled_precision,
    prepare_truth,
)

A, B, C, D, E, X, Y, Z = 1, 2, 3, 4, 5, 24, 25, 26
L2, L3 = 1 / math.log2(3), 1 / math.log2(4)  # discounts at ranks 2 and 3


def _recs(lists: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(u, r, p) for u, ps in lists.items() for r, p in enumerate(ps, start=1)]
    return pl.DataFrame(
        rows, schema={"user_id": pl.Int32, "rank": pl.Int32, "product_id": pl.Int32}, orient="row"
    ).with_columns(score=pl.lit(1.0, pl.Float32))


def _pairs(d: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(u, p) for u, ps in d.items() for p in ps]
    return pl.DataFrame(rows, schema={"user_id": pl.Int32, "product_id": pl.Int32}, orient="row")


# user 1: basket {A, B, C}, list A X B Y Z  -> hits at ranks 1 and 3
# user 2: basket {D},       list X D        -> hit at rank 2
# user 3: basket {E},       no list         -> zeros
# user 4: list only (not in holdout)        -> not evaluated
RECS = _recs({1: [A, X, B, Y, Z], 2: [X, D], 4: [A, B]})
HOLDOUT = _pairs({1: [A, B, C], 2: [D], 3: [E]})
HISTORY = _pairs({1: [A, X], 3: [E], 4: [A]})


def test_evaluate_hand_computed():
    res = evaluate(RECS, HOLDOUT, ks=(2, 5))
    assert res["n_users"] == 3
    # K = 2: user 1 -> P 1/2, R 1/3, AP (1/2)(1/1), DCG 1, IDCG 1 + L2
    #        user 2 -> P 1/2, R 1,   AP (1/1)(1/2), DCG L2, IDCG 1
    assert res["precision@2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert res["recall@2"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert res["map@2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert res["ndcg@2"] == pytest.approx((1 / (1 + L2) + L2 + 0) / 3)
    assert res["hit_rate@2"] == pytest.approx(2 / 3)
    # K = 5: user 1 -> P 2/5, R 2/3, AP (1/3)(1/1 + 2/3), DCG 1 + L3, IDCG 1 + L2 + L3
    #        user 2 -> P 1/5, R 1,   AP 1/2,               DCG L2,     IDCG 1
    assert res["precision@5"] == pytest.approx((0.4 + 0.2) / 3)
    assert res["recall@5"] == pytest.approx((2 / 3 + 1) / 3)
    assert res["map@5"] == pytest.approx((5 / 9 + 1 / 2) / 3)
    assert res["ndcg@5"] == pytest.approx(((1 + L3) / (1 + L2 + L3) + L2) / 3)
    assert res["hit_rate@5"] == pytest.approx(2 / 3)
    assert "repeat" not in res


def test_per_user_and_pooled_precision():
    pu = per_user_metrics(RECS, HOLDOUT, ks=(2, 5))
    assert pu.get_column("user_id").to_list() == [1, 2, 3]
    assert pu.get_column("n_relevant").to_list() == [3, 1, 1]
    assert pu.get_column("hits@5").to_list() == [2, 1, 0]
    assert pu.get_column("map@5").to_list() == pytest.approx([5 / 9, 0.5, 0.0])
    # implicit-style pooled precision: (2 + 1 + 0) / (min(5,3) + 1 + 1)
    assert pooled_precision(pu, 5) == pytest.approx(3 / 5)


def test_evaluate_users_subset_and_duplicates():
    res = evaluate(RECS, HOLDOUT, ks=(5,), users=[1, 2, 99])  # 99 has no holdout
    assert res["n_users"] == 2
    assert res["precision@5"] == pytest.approx((0.4 + 0.2) / 2)
    dup = _recs({2: [D, D, X]})
    res = evaluate(dup, _pairs({2: [D]}), ks=(3,))
    assert res["precision@3"] == pytest.approx(1 / 3)  # D counted once
    assert res["map@3"] == pytest.approx(1.0)


def test_evaluate_repeat_explore():
    res = evaluate(RECS, HOLDOUT, ks=(5,), history=HISTORY)
    rep, exp = res["repeat"], res["explore"]
    # repeat relevant sets: user 1 {A} (hit at 1), user 3 {E} (no list); user 2 excluded
    assert rep["n_users"] == 2
    assert rep["precision@5"] == pytest.approx((0.2 + 0) / 2)
    assert rep["recall@5"] == pytest.approx((1 + 0) / 2)
    assert rep["map@5"] == pytest.approx((1 + 0) / 2)
    assert rep["ndcg@5"] == pytest.approx((1 + 0) / 2)
    assert rep["hit_rate@5"] == pytest.approx(0.5)
    # explore relevant sets: user 1 {B, C} (hit at 3), user 2 {D} (hit at 2); user 3 excluded
    assert exp["n_users"] == 2
    assert exp["precision@5"] == pytest.approx((0.2 + 0.2) / 2)
    assert exp["recall@5"] == pytest.approx((0.5 + 1) / 2)
    assert exp["map@5"] == pytest.approx(((1 / 2) * (1 / 3) + 1 / 2) / 2)
    assert exp["ndcg@5"] == pytest.approx((L3 / (1 + L2) + L2) / 2)
    assert exp["hit_rate@5"] == pytest.approx(1.0)
    # the overall numbers are unchanged by passing history
    assert res["map@5"] == pytest.approx(evaluate(RECS, HOLDOUT, ks=(5,))["map@5"])


def test_a_prepared_truth_scores_like_the_holdout():
    """A report prepares the truth once and scores every method's lists against it."""
    truth = prepare_truth(HOLDOUT, history=HISTORY, users=[1, 2, 3, 99])
    for recs in (RECS, _recs({1: [C, B], 3: [E, A]})):
        assert evaluate(recs, truth, ks=(2, 5)) == evaluate(recs, HOLDOUT, ks=(2, 5), history=HISTORY, users=[1, 2, 3, 99])
    with pytest.raises(ValueError, match="prepared"):
        evaluate(RECS, truth, ks=(5,), users=[1])


def test_repetition_ratio_hand_computed():
    from insightflow_assets.evaluation.offline import history_keys, repetition_ratio

    users = np.array([1, 2, 4])
    # user 1: A, X bought before (2 of 5); user 2: none of 2; user 4: A (1 of 2)
    assert repetition_ratio(RECS, HISTORY, 5, users) == pytest.approx((0.4 + 0.0 + 0.5) / 3)
    assert repetition_ratio(RECS, history_keys(HISTORY), 5, users) == repetition_ratio(RECS, HISTORY, 5, users)
    assert repetition_ratio(RECS, HISTORY, 5, np.array([3])) == 0.0  # no list


def test_coverage():
    c2 = coverage(RECS, k=2, n_items=10, users=[1, 2, 3])
    assert c2["coverage_item"] == pytest.approx(3 / 10)  # {A, X, D}
    assert c2["coverage_user_eval"] == pytest.approx(2 / 3)  # users 1, 2 have 2 items
    c5 = coverage(RECS, k=5, n_items=10, users=[1, 2, 3])
    assert c5["coverage_item"] == pytest.approx(6 / 10)  # {A, X, B, Y, Z, D}
    assert c5["coverage_user_eval"] == pytest.approx(1 / 3)  # only user 1 has 5
    assert c5["n_distinct_items"] == 6 and c5["n_users"] == 3


def test_intra_list_diversity_categories():
    cats = pl.DataFrame({"product_id": [A, X, B, D], "aisle_id": [7, 7, 8, 8]})
    recs = _recs({1: [A, X, B, Y, Z], 2: [X, D], 3: [A]})
    # user 1 top-3 {A, X, B}: pairs AX same, AB diff, XB diff -> 2/3
    # user 2 {X, D}: different -> 1; user 3 has a single item -> skipped
    assert intra_list_diversity(recs, cats, k=3) == pytest.approx((2 / 3 + 1) / 2)
    # k = 5: Y, Z have no category and are dropped -> same lists
    assert intra_list_diversity(recs, cats, k=5) == pytest.approx((2 / 3 + 1) / 2)


def test_intra_list_diversity_vectors():
    ids = np.array([A, X, B, D])
    vecs = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 2.0]])
    recs = _recs({1: [A, X, B], 2: [X, D]})
    s = 1 / math.sqrt(2)
    # user 1: cos(A,X)=s, cos(A,B)=0, cos(X,B)=s -> ILD = 1 - 2s/3
    # user 2: cos(X,D)=s -> ILD = 1 - s
    expected = ((1 - 2 * s / 3) + (1 - s)) / 2
    assert intra_list_diversity(recs, (ids, vecs), k=3) == pytest.approx(expected)
    assert intra_list_diversity(recs, (ids, vecs), k=3, batch_users=1) == pytest.approx(expected)
    # one-hot vectors reproduce the categorical version
    onehot = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cats = pl.DataFrame({"product_id": ids, "cat": [0, 0, 1, 1]})
    assert intra_list_diversity(recs, (ids, onehot), k=3) == pytest.approx(
        intra_list_diversity(recs, cats, k=3)
    )


def test_novelty():
    pop = pl.DataFrame({"product_id": [A, X, B, D], "p": [0.5, 0.25, 1.0, 0.125]})
    # k = 2: user 1 {A, X} -> (1 + 2)/2, user 2 {X, D} -> (2 + 3)/2
    assert novelty(RECS.filter(pl.col("user_id") < 3), pop, k=2) == pytest.approx(2.0)


# ---------------------------------------------------------------- implicit


def _random_problem(n_users=300, n_items=120, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items))
    train = sp.csr_matrix((dense < 0.08).astype(np.float32))
    test_mask = (dense > 0.93) & (rng.random((n_users, n_items)) < 0.6)
    test = sp.csr_matrix(test_mask.astype(np.float32))  # disjoint from train
    return train, test


def _holdout_from(test: sp.csr_matrix) -> pl.DataFrame:
    coo = test.tocoo()
    return pl.DataFrame(
        {"user_id": coo.row.astype(np.int32), "product_id": coo.col.astype(np.int32)}
    )


def test_matches_implicit_ranking_metrics():
    """map@K and ndcg@K are the same definitions as implicit's; implicit's
    precision is pooled (= our pooled_precision)."""
    implicit_als = pytest.importorskip("implicit.cpu.als")
    from implicit.evaluation import ranking_metrics_at_k
    from threadpoolctl import threadpool_limits

    train, test = _random_problem()
    assert train.multiply(test).nnz == 0
    with threadpool_limits(limits=1, user_api="blas"):
        model = implicit_als.AlternatingLeastSquares(
            factors=8, iterations=3, random_state=1, num_threads=1
        )
        model.fit(train, show_progress=False)
        users = np.arange(train.shape[0])
        for k in (5, 10):
            ids, _ = model.recommend(users, train, N=k, filter_already_liked_items=True)
            recs = pl.DataFrame(
                {
                    "user_id": np.repeat(users, k).astype(np.int32),
                    "rank": np.tile(np.arange(1, k + 1), len(users)).astype(np.int32),
                    "product_id": ids.ravel().astype(np.int32),
                }
            )
            ref = ranking_metrics_at_k(model, train, test, K=k, show_progress=False)
            holdout = _holdout_from(test)
            ours = evaluate(recs, holdout, ks=(k,))
            assert ours["map@%d" % k] == pytest.approx(ref["map"], rel=1e-9)
            assert ours["ndcg@%d" % k] == pytest.approx(ref["ndcg"], rel=1e-9)
            pu = per_user_metrics(recs, holdout, ks=(k,))
            assert pooled_precision(pu, k) == pytest.approx(ref["precision"], rel=1e-9)
            assert ours["n_users"] == int((np.diff(test.indptr) > 0).sum())


def test_precision_matches_implicit_when_baskets_at_least_k():
    """With every |B_u| >= K, pooled precision == mean precision@K."""
    implicit_als = pytest.importorskip("implicit.cpu.als")
    from implicit.evaluation import precision_at_k
    from threadpoolctl import threadpool_limits

    train, _ = _random_problem(seed=2)
    rng = np.random.default_rng(3)
    k = 5
    rows, cols = [], []
    for u in range(train.shape[0]):
        free = np.setdiff1d(np.arange(train.shape[1]), train[u].indices)
        pick = rng.choice(free, size=k + u % 4, replace=False)
        rows += [u] * len(pick)
        cols += list(pick)
    test = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=train.shape)
    with threadpool_limits(limits=1, user_api="blas"):
        model = implicit_als.AlternatingLeastSquares(
            factors=8, iterations=3, random_state=1, num_threads=1
        )
        model.fit(train, show_progress=False)
        users = np.arange(train.shape[0])
        ids, _ = model.recommend(users, train, N=k, filter_already_liked_items=True)
        ref = precision_at_k(model, train, test, K=k, show_progress=False)
    recs = pl.DataFrame(
        {
            "user_id": np.repeat(users, k).astype(np.int32),
            "rank": np.tile(np.arange(1, k + 1), len(users)).astype(np.int32),
            "product_id": ids.ravel().astype(np.int32),
        }
    )
    ours = evaluate(recs, _holdout_from(test), ks=(k,))
    assert ours["precision@5"] == pytest.approx(ref, rel=1e-9)


def test_matches_naive_python_on_random_lists():
    rng = np.random.default_rng(5)
    lists, baskets, hist = {}, {}, {}
    for u in range(1, 80):
        baskets[u] = set(int(p) for p in rng.choice(30, size=rng.integers(1, 9), replace=False))
        hist[u] = set(int(p) for p in rng.choice(30, size=rng.integers(0, 10), replace=False))
        if u % 7:  # every 7th user gets no list; others lists of 0..12 items
            lists[u] = [int(p) for p in rng.choice(30, size=rng.integers(0, 13), replace=False)]
    ks = (3, 10)

    def naive(rel_sets):
        out = {"n_users": len(rel_sets)}
        for k in ks:
            acc = {m: [] for m in ("precision", "recall", "map", "ndcg", "hit_rate")}
            for u, rel in rel_sets.items():
                top = lists.get(u, [])[:k]
                flags = [p in rel for p in top]
                hits = sum(flags)
                m = min(k, len(rel))
                ap = sum(sum(flags[: i + 1]) / (i + 1) for i, f in enumerate(flags) if f) / m
                dcg = sum(1 / math.log2(i + 2) for i, f in enumerate(flags) if f)
                idcg = sum(1 / math.log2(j + 2) for j in range(m))
                acc["precision"].append(hits / k)
                acc["recall"].append(hits / len(rel))
                acc["map"].append(ap)
                acc["ndcg"].append(dcg / idcg)
                acc["hit_rate"].append(float(hits > 0))
            for name, vals in acc.items():
                out[f"{name}@{k}"] = float(np.mean(vals))
        return out

    got = evaluate(_recs(lists), _pairs({u: sorted(b) for u, b in baskets.items()}), ks,
                   history=_pairs({u: sorted(h) for u, h in hist.items()}))
    exp = naive(baskets)
    exp_rep = naive({u: b & hist[u] for u, b in baskets.items() if b & hist[u]})
    exp_exp = naive({u: b - hist[u] for u, b in baskets.items() if b - hist[u]})
    for key, value in exp.items():
        assert got[key] == pytest.approx(value), key
    for key, value in exp_rep.items():
        assert got["repeat"][key] == pytest.approx(value), key
    for key, value in exp_exp.items():
        assert got["explore"][key] == pytest.approx(value), key
