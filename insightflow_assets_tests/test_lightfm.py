"""LightFM (`lightfm_model`): features, the stored contract, early stopping, the asset and its check."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest

from insightflow_assets.evaluation.metrics import evaluate
from insightflow_assets.imputation.mice import order_features
from insightflow_assets.ingest.loading import validate_snapshot
from insightflow_assets.lightfm.embeddings import FILES, LightfmEmbeddings, encode_files
from insightflow_assets.lightfm.features import item_features, user_features
from insightflow_assets.lightfm.fit import (
    LightfmParams,
    Problem,
    embeddings,
    fit_early_stopping,
    fit_lightfm,
    new_model,
    top_n,
    train,
    train_epochs,
)
from insightflow_assets.ratings.build import build_holdout, build_ratings
from insightflow_assets.recommenders.base import RECS_SCHEMA
from insightflow_assets.runner import run_checks
from insightflow_assets.selection.select import validation_split
from resources.layout import artifact

PRODUCTS = pl.DataFrame(
    {"product_id": [1, 2, 3, 4], "aisle_id": [10, 10, 11, 12], "department_id": [1, 1, 1, 2]},
    schema={"product_id": pl.Int32, "aisle_id": pl.Int16, "department_id": pl.Int16},
)


def _row(fm, entity: int) -> dict[str, float]:
    row = fm.matrix.getrow(int(np.flatnonzero(fm.ids == entity)[0]))
    return {fm.names[j]: float(v) for j, v in zip(row.indices, row.data)}


# --- features ------------------------------------------------------------------------------------


def test_item_features_identity_aisle_department_rows_sum_to_one():
    fm = item_features(PRODUCTS, np.array([1, 2, 3, 4], dtype=np.int32), rated=np.array([1, 2, 3]))
    assert _row(fm, 1) == pytest.approx({"id:1": 1 / 3, "aisle:10": 1 / 3, "department:1": 1 / 3})
    assert _row(fm, 3) == pytest.approx({"id:3": 1 / 3, "aisle:11": 1 / 3, "department:1": 1 / 3})
    # never bought: no identity (it would never be trained), its aisle and department only
    assert _row(fm, 4) == pytest.approx({"aisle:12": 0.5, "department:2": 0.5})
    assert sorted(n for n in fm.names if not n.startswith("id:")) == ["aisle:10", "aisle:11", "aisle:12", "department:1", "department:2"]


def test_transactions_form_category_is_one_feature_not_two():
    # ingest.transactions stores the category as both aisle and department
    cat = PRODUCTS.with_columns(department_id=pl.col("aisle_id"))
    fm = item_features(cat, np.array([1, 4], dtype=np.int32), rated=np.array([1, 4]))
    assert _row(fm, 1) == pytest.approx({"id:1": 0.5, "aisle:10": 0.5})
    assert not any(n.startswith("department:") for n in fm.names)


def test_user_features_identity_and_segment():
    seg = pl.DataFrame({"user_id": [5, 6], "segment": [0, 2]}, schema={"user_id": pl.Int32, "segment": pl.Int8})
    fm = user_features(seg, np.array([5, 6, 7], dtype=np.int32))
    assert _row(fm, 6) == pytest.approx({"id:6": 0.5, "segment:2": 0.5})
    assert _row(fm, 7) == pytest.approx({"id:7": 1.0})  # no segment: identity alone
    with pytest.raises(ValueError, match="user_seg: column segment"):
        user_features(seg.drop("segment"), np.array([5], dtype=np.int32))


def test_products_without_aisle_are_refused_naming_the_column():
    with pytest.raises(ValueError, match="products: column aisle_id"):
        item_features(PRODUCTS.drop("aisle_id"), np.array([1], dtype=np.int32), rated=np.array([1]))


# --- the stored contract -------------------------------------------------------------------------


def _embeddings(nan: bool = False) -> LightfmEmbeddings:
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    if nan:
        vectors[1, 0] = np.nan
    return LightfmEmbeddings(
        item_ids=np.array([2, 5, 9]), item_vectors=vectors, item_biases=np.array([0.1, 0.2, 0.3]),
        user_ids=np.array([1, 4]), user_vectors=np.ones((2, 2)), user_biases=np.zeros(2), params={"no_components": 2},
    )


def test_contract_round_trips_through_npy_without_pickle():
    files = encode_files(_embeddings().to_files())
    assert set(files) == set(FILES)
    # every array readable with pickle refused
    for name in FILES:
        if name.endswith(".npy"):
            np.load(io.BytesIO(files[name]), allow_pickle=False)
    back = LightfmEmbeddings.from_files(files)
    assert back.item_ids.dtype == np.int32 and back.item_vectors.dtype == np.float32
    np.testing.assert_array_equal(back.item_vectors, _embeddings().item_vectors)
    assert back.params == {"no_components": 2}


def test_contract_refuses_a_missing_file_and_bad_shapes():
    files = encode_files(_embeddings().to_files())
    files.pop("item_biases.npy")
    with pytest.raises(ValueError, match="item_biases.npy missing"):
        LightfmEmbeddings.from_files(files)
    with pytest.raises(ValueError, match="item_vectors must be"):
        LightfmEmbeddings(np.array([1, 2]), np.ones((3, 2)), np.zeros(2), np.array([1]), np.ones((1, 2)), np.zeros(1))
    with pytest.raises(ValueError, match="sorted"):
        LightfmEmbeddings(np.array([2, 1]), np.ones((2, 2)), np.zeros(2), np.array([1]), np.ones((1, 2)), np.zeros(1))


# --- fitting -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(small_tables):
    snap = validate_snapshot(dict(small_tables), {k: f"{k}.csv" for k in small_tables})
    orders = order_features(snap.orders, snap.order_products)
    ratings = build_ratings(orders, snap.order_products)
    window, truth = validation_split(orders, snap.order_products)
    segments = ratings.select("user_id").unique().with_columns(segment=(pl.col("user_id") % 3).cast(pl.Int8))
    return {"ratings": ratings, "val_ratings": window.ratings, "truth": truth, "products": snap.products,
            "user_seg": segments, "holdout": build_holdout(orders, snap.order_products)}


def test_early_stopping_stops_after_patience_epochs_without_gain(split):
    problem = Problem.build(split["val_ratings"], split["products"], split["user_seg"])
    # learning rate 0: every epoch scores the same, so the first epoch stays best
    best, curve = fit_early_stopping(problem, split["truth"], LightfmParams(learning_rate=0.0, epochs=20, patience=2))
    assert best == 1 and [r["epoch"] for r in curve] == [1, 2, 3]
    best, curve = fit_early_stopping(problem, split["truth"], LightfmParams(epochs=12, patience=2))
    assert 1 <= best <= len(curve) <= 12
    assert len(curve) == 12 or len(curve) - best == 2  # ran out of epochs, or stopped by patience
    assert curve[best - 1]["precision@10"] == max(r["precision@10"] for r in curve)


def test_one_thread_and_a_seed_give_the_same_model(split):
    problem = Problem.build(split["ratings"], split["products"], split["user_seg"])
    a, _ = fit_lightfm(problem, LightfmParams(num_threads=1), 3)
    b, _ = fit_lightfm(problem, LightfmParams(num_threads=1), 3)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    np.testing.assert_array_equal(a.user_biases, b.user_biases)
    c, _ = fit_lightfm(problem, LightfmParams(num_threads=1, random_state=7), 3)
    assert not np.array_equal(a.item_vectors, c.item_vectors)


def test_top_n_ranks_as_lightfm_predicts_from_summed_feature_embeddings(split):
    problem = Problem.build(split["ratings"], split["products"], split["user_seg"])
    params = LightfmParams()
    model = new_model(params)
    train_epochs(model, problem, 2, params)
    emb = embeddings(model, problem, {})
    # an item's vector is the (normalised) sum of its features' embeddings
    np.testing.assert_allclose(emb.item_vectors, problem.items.matrix @ model.item_embeddings, rtol=1e-5, atol=1e-6)
    row = 3
    predicted = model.predict(row, np.arange(emb.item_ids.size), user_features=problem.users.matrix,
                              item_features=problem.items.matrix)
    recs = top_n(emb, [int(emb.user_ids[row])], 5)
    assert recs["product_id"].to_list() == emb.item_ids[np.argsort(-predicted, kind="stable")[:5]].tolist()
    assert recs.schema == RECS_SCHEMA and set(recs["source"]) == {"lightfm"}


def test_trained_model_learns_more_than_chance(split):
    trained = train(split["ratings"], split["val_ratings"], split["truth"], split["products"], split["user_seg"],
                    LightfmParams(epochs=8, patience=2))
    users = split["holdout"]["user_id"].unique()
    assert trained.embeddings.params["best_epoch"] == trained.best_epoch
    assert trained.embeddings.params["validation_curve"] == trained.curve
    assert np.isfinite(trained.embeddings.item_vectors).all()
    got = evaluate(top_n(trained.embeddings, users, 10), split["holdout"], (10,))["precision@10"]
    # chance: 10 random products of the catalogue per user
    rng = np.random.default_rng(0)
    catalog = trained.embeddings.item_ids
    rand = pl.DataFrame({
        "user_id": np.repeat(users.to_numpy(), 10),
        "rank": np.tile(np.arange(1, 11), users.len()),
        "product_id": np.concatenate([rng.choice(catalog, 10, replace=False) for _ in range(users.len())]),
    })
    assert got > 2 * evaluate(rand, split["holdout"], (10,))["precision@10"]


# --- the asset and its check ---------------------------------------------------------------------


def _stored(small_run, name: str):
    return small_run.curated / artifact("lightfm_model").keys(small_run.run_key)[name]


def test_asset_stores_the_embeddings_only(small_run):
    files = {name: _stored(small_run, name).read_bytes() for name in FILES}
    emb = LightfmEmbeddings.from_files(files)
    ratings = pl.read_parquet(small_run.curated / artifact("ratings").keys(small_run.run_key)["ratings.parquet"])
    np.testing.assert_array_equal(emb.user_ids, np.sort(ratings["user_id"].unique().to_numpy()))
    assert set(ratings["product_id"].unique().to_list()) <= set(emb.item_ids.tolist())
    assert emb.item_vectors.shape == (emb.item_ids.size, 32) and np.isfinite(emb.item_vectors).all()
    assert 1 <= emb.params["best_epoch"] <= emb.params["epochs_run"]
    # lists are scored from the embeddings where they are read (als_eval: test_als_candidates.py)
    folder = _stored(small_run, "params.json").parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    meta = small_run.outcome.materialized["lightfm_model"]
    assert meta["best_epoch"] == emb.params["best_epoch"] and 0 < meta["validation_precision@10"] <= 1


def test_check_fails_on_a_nan_item_vector(small_run):
    path = _stored(small_run, "item_vectors.npy")
    good = path.read_bytes()
    try:
        assert _check(small_run) is True
        vectors = np.load(path, allow_pickle=False)
        vectors[3, 0] = np.nan
        np.save(path, vectors, allow_pickle=False)
        assert _check(small_run) is False
    finally:
        path.write_bytes(good)


def _check(small_run) -> bool:
    outcome = run_checks(small_run.instance, small_run.run_key, defs=small_run.defs)
    (check,) = [c for c in outcome.checks if c["check"] == "lightfm_embeddings_finite"]
    return check["passed"]


def test_validation_phase_on_a_seeded_user_sample(split):
    from insightflow_assets.lightfm.fit import _sampled

    params = LightfmParams(validation_sample_users=40)
    a, b = _sampled(split["val_ratings"], params), _sampled(split["val_ratings"], params)
    assert a["user_id"].n_unique() == 40 and a.equals(b)
    everyone = LightfmParams(validation_sample_users=0)
    assert _sampled(split["val_ratings"], everyone).equals(split["val_ratings"])


def test_export_scores_the_stored_embeddings(split):
    """Given the run's `lightfm_model`, the export scores its embeddings (no fit): user 3's list
    is the products with the best ``u · i + b_i``."""
    from insightflow_assets.lightfm.recommender import LightFm
    from insightflow_assets.recommenders import TrainingWindow
    from resources.io_manager import ArtifactFolder

    emb = LightfmEmbeddings(
        item_ids=np.array([7, 8, 9], np.int32), item_vectors=np.array([[1, 0], [0, 1], [1, 1]], np.float32),
        item_biases=np.array([0.0, 0.0, 0.5], np.float32), user_ids=np.array([3, 4], np.int32),
        user_vectors=np.array([[2, 0], [0, 1]], np.float32), user_biases=np.zeros(2, np.float32), params={},
    )
    window = TrainingWindow(ratings=split["ratings"], baskets=pl.DataFrame())
    rec = LightFm.for_export({}, window, {"lightfm_model": ArtifactFolder(encode_files(emb.to_files()))})
    # user 3: 7 scores 2, 9 scores 2.5, 8 scores 0
    assert rec.recommend([3], 2)["product_id"].to_list() == [9, 7]
    assert set(rec.recommend([3], 2)["source"]) == {"lightfm"}


def test_final_fit_epochs_capped_by_the_update_budget():
    from insightflow_assets.lightfm.fit import final_epochs

    params = LightfmParams(final_update_budget=30_000_000)
    assert final_epochs(5, 13_000_000, params) == 2  # full scale: the budget decides
    assert final_epochs(5, 100_000, params) == 5  # small data: validation decides
    assert final_epochs(5, 90_000_000, params) == 1  # never below one epoch
    assert final_epochs(5, 13_000_000, LightfmParams(final_update_budget=0)) == 5  # 0 = no cap
    with pytest.raises(ValueError, match="final_update_budget"):
        LightfmParams(final_update_budget=-1)


def test_validation_runs_no_further_than_the_final_fit_may(split):
    """An epoch the update budget would not let the final fit run is not worth validating."""
    params = LightfmParams(epochs=8, patience=8, final_update_budget=2 * split["ratings"].height)
    trained = train(split["ratings"], split["val_ratings"], split["truth"], split["products"], split["user_seg"], params)
    assert len(trained.curve) == 2 and trained.embeddings.params["epochs_final"] == trained.best_epoch <= 2


def test_a_one_epoch_budget_skips_the_validation_phase(split):
    params = LightfmParams(epochs=8, final_update_budget=split["ratings"].height)
    trained = train(split["ratings"], None, None, split["products"], split["user_seg"], params)
    assert trained.curve == [] and trained.best_epoch == 1 and trained.embeddings.params["epochs_final"] == 1
    assert "budget" in trained.embeddings.params["chosen_on"]
    with pytest.raises(ValueError, match="validation split"):  # epochs to choose, but nothing to choose on
        train(split["ratings"], None, None, split["products"], split["user_seg"], LightfmParams(epochs=3))
