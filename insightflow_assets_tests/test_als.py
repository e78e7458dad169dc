"""Tests for insightflow_assets.model.als (pure functions, no Dagster)."""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_info

from insightflow_assets.model.als import (
    DEFAULT_PARAMS,
    AlsModel,
    AlsPath,
    chosen_params,
    fit_als,
    fit_als_sampled,
    lists_from,
    recommend,
    user_item_matrix,
)


def _ratings(rows) -> pl.DataFrame:
    u, p, r = zip(*rows)
    return pl.DataFrame(
        {
            "user_id": pl.Series(u, dtype=pl.Int32),
            "product_id": pl.Series(p, dtype=pl.Int32),
            "purchases": pl.Series([1] * len(u), dtype=pl.Int32),
            "rating": pl.Series(r, dtype=pl.Float32),
        }
    )


def _block_ratings(seed: int = 0) -> pl.DataFrame:
    """Two clear blocks: users 1..30 buy products 100..111, users 31..60 buy 200..211."""
    rng = np.random.default_rng(seed)
    rows = []
    for block, (users, items) in enumerate(
        [(range(1, 31), np.arange(100, 112)), (range(31, 61), np.arange(200, 212))]
    ):
        for u in users:
            for p in rng.choice(items, size=7, replace=False):
                rows.append((u, int(p), float(rng.integers(1, 4))))
    return _ratings(rows)


@pytest.fixture(scope="module")
def block_model():
    ratings = _block_ratings()
    # regularization is not scaled by data size in implicit: a tiny problem needs a
    # large one, otherwise 8 factors memorise single items across blocks
    model = fit_als(ratings, factors=8, regularization=5.0, alpha=15.0, iterations=15)
    return ratings, model


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


# --------------------------------------------------------------------------- #
def test_user_item_matrix_sorted_ids_and_values():
    r = _ratings([(5, 30, 1.0), (2, 10, 2.5), (5, 10, 0.5)])
    mat, users, items = user_item_matrix(r)
    assert mat.format == "csr" and mat.dtype == np.float32
    assert users.tolist() == [2, 5] and items.tolist() == [10, 30]
    assert users.dtype == np.int32 and items.dtype == np.int32
    np.testing.assert_allclose(mat.toarray(), [[2.5, 0.0], [0.5, 1.0]])


def test_user_item_matrix_with_given_ids_drops_unknown():
    r = _ratings([(5, 30, 1.0), (2, 10, 2.5), (9, 10, 3.0), (5, 99, 4.0)])
    mat, users, items = user_item_matrix(r, user_ids=np.array([5, 2, 7]), item_ids=np.array([30, 10]))
    assert users.tolist() == [2, 5, 7] and items.tolist() == [10, 30]
    np.testing.assert_allclose(mat.toarray(), [[2.5, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_fit_params_and_finite(block_model):
    ratings, model = block_model
    assert model.user_factors.dtype == np.float32 and model.item_factors.dtype == np.float32
    assert model.user_factors.shape == (60, 8) and model.item_factors.shape == (24, 8)
    assert np.isfinite(model.user_factors).all() and np.isfinite(model.item_factors).all()
    assert model.user_ids.tolist() == list(range(1, 61))
    p = model.params
    for key in ("factors", "regularization", "alpha", "iterations", "random_state",
                "implicit_version", "fit_seconds", "shape", "nnz", "density"):
        assert key in p
    assert p["shape"] == [60, 24] and p["nnz"] == ratings.height
    assert p["density"] == pytest.approx(ratings.height / (60 * 24))
    assert p["fit_seconds"] >= 0


def test_default_params_documented():
    assert DEFAULT_PARAMS == {
        "factors": 64, "regularization": 0.05, "alpha": 15.0, "iterations": 15, "random_state": 42,
    }


def test_fit_is_deterministic_with_seed():
    r = _block_ratings()
    a = fit_als(r, factors=4, iterations=3, num_threads=1)
    b = fit_als(r, factors=4, iterations=3, num_threads=1)
    np.testing.assert_allclose(a.item_factors, b.item_factors, rtol=1e-5, atol=1e-6)


def test_block_structure_recommends_in_block(block_model):
    ratings, model = block_model
    # each user bought 7 of the 12 products of the own block: the 5 unbought
    # in-block products must be exactly the filtered top-5, and the unfiltered
    # top-12 must be the whole block
    for n, filt in ((5, True), (12, False)):
        recs = recommend(model, ratings, list(range(1, 61)), n, filter_already_bought=filt)
        assert recs.height == 60 * n
        block = recs.with_columns(
            own=pl.when(pl.col("user_id") <= 30).then(1).otherwise(2),
            item_block=pl.when(pl.col("product_id") < 200).then(1).otherwise(2),
        )
        assert (block["own"] == block["item_block"]).all()


def test_recommend_schema_ranks_and_unknown_users(block_model):
    ratings, model = block_model
    recs = recommend(model, ratings, [1, 2, 999, 2], 10)
    assert recs.schema == pl.Schema(
        {"user_id": pl.Int32, "rank": pl.Int16, "product_id": pl.Int32, "score": pl.Float32}
    )
    assert sorted(recs["user_id"].unique().to_list()) == [1, 2]  # 999 unknown, dup collapsed
    for uid in (1, 2):
        sub = recs.filter(pl.col("user_id") == uid)
        assert sub["rank"].to_list() == list(range(1, 11))
        s = sub["score"].to_numpy()
        assert (np.diff(s) <= 1e-6).all()
    assert recommend(model, ratings, [999], 10).height == 0
    assert recommend(model, ratings, [], 10).height == 0


def test_recommend_matches_bruteforce(block_model):
    ratings, model = block_model
    recs = recommend(model, ratings, model.user_ids, 6, batch_size=7)
    scores = model.user_factors @ model.item_factors.T
    for row, uid in enumerate(model.user_ids[:10]):
        order = np.lexsort((model.item_ids, -scores[row]))[:6]
        got = recs.filter(pl.col("user_id") == uid)
        assert got["product_id"].to_list() == model.item_ids[order].tolist()
        np.testing.assert_allclose(got["score"].to_numpy(), scores[row, order], rtol=1e-5, atol=1e-6)


def test_recommend_filter_on_off(block_model):
    ratings, model = block_model
    bought = set(map(tuple, ratings.select("user_id", "product_id").rows()))
    off = recommend(model, ratings, [1, 40], 10, filter_already_bought=False)
    on = recommend(model, ratings, [1, 40], 10, filter_already_bought=True)
    pairs_off = set(map(tuple, off.select("user_id", "product_id").rows()))
    pairs_on = set(map(tuple, on.select("user_id", "product_id").rows()))
    assert pairs_off & bought, "repurchases are allowed by default"
    assert not (pairs_on & bought)
    # 12 items per block, 7 bought: only 17 unbought items exist per user in total
    on_all = recommend(model, ratings, [1], 24, filter_already_bought=True)
    assert on_all.height == 24 - 7
    assert on_all["rank"].to_list() == list(range(1, 18))


def test_recommend_n_larger_than_catalogue(block_model):
    ratings, model = block_model
    recs = recommend(model, ratings, [3], 1000)
    assert recs.height == model.n_items
    assert sorted(recs["product_id"].to_list()) == model.item_ids.tolist()


def test_files_roundtrip_no_pickle(block_model):
    _, model = block_model
    files = model.to_files()
    assert set(files) == {"factors.npz", "params.json"}
    assert all(isinstance(v, bytes) for v in files.values())
    with np.load(io.BytesIO(files["factors.npz"]), allow_pickle=False) as npz:
        assert set(npz.files) == {"user_ids", "item_ids", "user_factors", "item_factors"}
        assert all(npz[name].dtype != object for name in npz.files)
    assert json.loads(files["params.json"])["factors"] == 8
    back = AlsModel.from_files(files)
    for name in ("user_ids", "item_ids", "user_factors", "item_factors"):
        a, b = getattr(model, name), getattr(back, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert back.params == json.loads(json.dumps(model.params))


def test_model_validates_shapes():
    with pytest.raises(ValueError):
        AlsModel(np.arange(3), np.arange(2), np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        AlsModel(np.arange(2), np.arange(2), np.zeros((2, 4)), np.zeros((2, 3)))


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_als(_ratings([(1, 1, 1.0)]).clear())
    with pytest.raises(ValueError):
        fit_als(_ratings([(1, 1, 1.0), (1, 2, 0.0)]))


def test_fit_raises_on_non_finite_factors(monkeypatch):
    from implicit.cpu.als import AlternatingLeastSquares

    orig = AlternatingLeastSquares.fit

    def poisoned(self, user_items, show_progress=True, callback=None):
        orig(self, user_items, show_progress=show_progress)
        self.user_factors[0, 0] = np.nan

    monkeypatch.setattr(AlternatingLeastSquares, "fit", poisoned)
    with pytest.raises(ValueError, match="non-finite"):
        fit_als(_block_ratings(), factors=4, iterations=2)


def test_blas_pinned_to_one_thread(monkeypatch):
    import implicit.cpu.topk as topk_mod
    from implicit.cpu.als import AlternatingLeastSquares

    seen: dict[str, list[int]] = {}
    orig_fit, orig_topk = AlternatingLeastSquares.fit, topk_mod.topk

    def spy_fit(self, *a, **kw):
        seen["fit"] = _blas_threads()
        return orig_fit(self, *a, **kw)

    def spy_topk(*a, **kw):
        seen["topk"] = _blas_threads()
        return orig_topk(*a, **kw)

    monkeypatch.setattr(AlternatingLeastSquares, "fit", spy_fit)
    monkeypatch.setattr(topk_mod, "topk", spy_topk)
    r = _block_ratings()
    model = fit_als(r, factors=4, iterations=2)
    recommend(model, r, [1, 2], 3)
    assert seen["fit"] and set(seen["fit"]) == {1}
    assert seen["topk"] and set(seen["topk"]) == {1}


def test_recommend_ties_break_by_product_id():
    model = AlsModel(
        user_ids=np.array([1, 2]),
        item_ids=np.array([3, 5, 9, 11]),
        user_factors=np.array([[1.0, 0.0], [0.0, 1.0]]),
        item_factors=np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]),
    )
    recs = recommend(model, None, [1, 2], 3)
    assert recs.filter(pl.col("user_id") == 1)["product_id"].to_list() == [3, 5, 9]
    assert recs.filter(pl.col("user_id") == 2)["product_id"].to_list() == [11, 3, 5]


def test_recommend_threads_and_batches_agree(block_model):
    ratings, model = block_model
    a = recommend(model, ratings, model.user_ids, 8, num_threads=1, batch_size=1000)
    b = recommend(model, ratings, model.user_ids, 8, num_threads=2, batch_size=3)
    # Products and ranks agree exactly; scores only within float32 rounding, because BLAS may
    # sum in a different order for another batch shape or thread count (seen: ~2e-7).
    score = [c for c in a.columns if a[c].dtype.is_float()]
    assert a.drop(score).equals(b.drop(score))
    for c in score:
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        recommend(model, None, [1], 3, filter_already_bought=True)


def test_user_item_matrix_unsorted_input_and_duplicates_sum():
    r = _ratings([(5, 30, 1.0), (2, 10, 2.5), (5, 10, 0.5), (5, 30, 2.0), (-3, 10, 1.0)])
    mat, users, items = user_item_matrix(r)
    assert users.tolist() == [-3, 2, 5]
    np.testing.assert_allclose(mat.toarray(), [[1.0, 0.0], [2.5, 0.0], [0.5, 3.0]])
    assert mat.has_canonical_format
    ref = mat.copy()
    ref.sum_duplicates()
    assert (ref != mat).nnz == 0


def test_lists_from_stored_candidates_equal_a_fresh_scoring(block_model):
    """The run scores ALS once (als_candidates, top-N); a top-n cut from it is what
    `recommend` returns, and users the stored lists miss are scored on the spot."""
    ratings, model = block_model
    stored = recommend(model, None, model.user_ids[:40], 20)
    users = np.r_[model.user_ids[::3], 999]  # a user unknown to the model gets nothing
    got = lists_from(model, stored, users, 6)
    fresh = recommend(model, None, users, 6)
    assert got.schema == fresh.schema
    assert got.select("user_id", "rank", "product_id").equals(fresh.select("user_id", "rank", "product_id"))
    np.testing.assert_allclose(got["score"].to_numpy(), fresh["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert set(got["user_id"].to_list()) > set(stored["user_id"].to_list()) & set(users.tolist())


def test_lists_from_scores_again_when_the_stored_lists_are_too_short(block_model):
    ratings, model = block_model
    short = recommend(model, None, model.user_ids, 3)
    got = lists_from(model, short, [1, 2], 6)
    assert got["rank"].to_list() == list(range(1, 7)) * 2
    assert got.select("user_id", "product_id").equals(recommend(model, None, [1, 2], 6).select("user_id", "product_id"))
    assert lists_from(model, None, [1], 4).height == 4


def test_sampled_fit_scores_every_user_from_a_sample_of_them():
    """Item factors from 20 of the 60 users; the 40 others get their least-squares factor and
    are still recommended their own block (what the validation fit of model selection relies on)."""
    ratings = _block_ratings()
    params = dict(factors=8, regularization=5.0, alpha=15.0, iterations=15)
    model = fit_als_sampled(ratings, 20, seed=3, **params)
    assert model.n_users == 60 and model.params["fit_users"] == 20
    assert np.isfinite(model.user_factors).all() and (np.abs(model.user_factors).sum(axis=1) > 0).all()
    recs = recommend(model, ratings, list(range(1, 61)), 12)
    own = pl.when(pl.col("user_id") <= 30).then(1).otherwise(2)
    assert recs.select(own == pl.when(pl.col("product_id") < 200).then(1).otherwise(2)).to_series().all()
    full = fit_als_sampled(ratings, None, **params)  # no sample: the plain fit
    np.testing.assert_array_equal(full.user_factors, fit_als(ratings, **params).user_factors)


def test_path_continued_fit_equals_one_fit_of_the_total_count():
    """The selection's grid over iterations is one fit continued (AlsPath): 2 iterations then 3
    more must be exactly implicit's own 5-iteration fit, or the grid would score other models."""
    from implicit.cpu.als import AlternatingLeastSquares

    ratings = _block_ratings()
    path = AlsPath(ratings, factors=4, regularization=5.0, num_threads=1)
    path.at(2)
    five = path.at(5)
    mat, _, _ = user_item_matrix(ratings)
    direct = AlternatingLeastSquares(factors=4, regularization=5.0, alpha=DEFAULT_PARAMS["alpha"], iterations=5,
                                     use_cg=True, calculate_training_loss=False, random_state=42, num_threads=1)
    direct.fit(mat, show_progress=False)
    np.testing.assert_array_equal(five.item_factors, direct.item_factors)
    np.testing.assert_array_equal(five.user_factors, direct.user_factors)
    assert five.params["iterations"] == 5
    # a smaller count after a larger one starts again: the same as a fresh 2-iteration fit
    np.testing.assert_array_equal(path.at(2).item_factors, fit_als(ratings, factors=4, regularization=5.0,
                                                                   iterations=2, num_threads=1).item_factors)


def test_path_solves_only_the_users_asked_with_the_same_factors():
    ratings = _block_ratings()
    path = AlsPath(ratings, 20, seed=3, factors=8, regularization=5.0, num_threads=1)
    every = path.at(3)
    some = path.at(3, np.array([5, 40, 59, 999]))  # 999 has no ratings: not in the model
    assert every.n_users == 60 and some.user_ids.tolist() == [5, 40, 59]
    _, rows = every.user_index(some.user_ids)
    np.testing.assert_allclose(some.user_factors, every.user_factors[rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(some.item_factors, every.item_factors)


def test_stored_model_takes_the_selection_choice_and_config_overrides():
    selection = {"best_fit": {"als": {"method": "als_postrank", "map@10": 0.2,
                                      "params": {**DEFAULT_PARAMS, "iterations": 2, "fit_users": 50_000}}}}
    params, source = chosen_params(selection, {})
    assert params == {**DEFAULT_PARAMS, "iterations": 2} and "als_postrank" in source
    params, source = chosen_params(selection, {"iterations": 7})
    assert params["iterations"] == 7 and "iterations" in source
    assert chosen_params({}, {})[0] == DEFAULT_PARAMS  # an older report without the choice
