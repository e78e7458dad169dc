"""Model selection without leakage, and the exported lists."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from insightflow_assets.imputation.mice import order_features
from insightflow_assets.ingest.loading import validate_snapshot
from insightflow_assets.postrank.export import complete_lists
from insightflow_assets.ratings.build import target_orders
from insightflow_assets.recommenders.base import Candidate
from insightflow_assets.model.als import DEFAULT_PARAMS, recommend
from insightflow_assets.selection.select import default_candidates, ranking, select, validation_split, validation_users

CANDIDATES = [
    Candidate("baseline"),
    Candidate("p_topfreq"),
    Candidate("gp_topfreq"),
    Candidate("als", {"factors": 8, "iterations": 3}),
    Candidate("als_postrank", {"factors": 8, "iterations": 3, "postrank_alpha": 0.3, "popularity_kind": "user"}),
]


@pytest.fixture(scope="module")
def data(small_tables):
    snap = validate_snapshot(dict(small_tables), {k: k for k in small_tables})
    return order_features(snap.orders, snap.order_products), snap.order_products


def _run(orders, lines):
    window, truth = validation_split(orders, lines)
    users = validation_users(truth, window, None, 42)
    report = select(CANDIDATES, window, truth, users)
    for row in report["candidates"]:
        row.pop("seconds")
    return report


def test_validation_basket_is_the_second_to_last(data):
    orders, lines = data
    window, truth = validation_split(orders, lines)
    last = target_orders(orders, lines)
    second = target_orders(orders, lines, back=1)
    assert (second.join(last, on="user_id")["order_number_right"] > second.join(last, on="user_id")["order_number"]).all()
    # the window holds only baskets before the validation basket
    cut = window.baskets.join(second.select("user_id", "order_number"), on="user_id", suffix="_val")
    assert (cut["order_number"] < cut["order_number_val"]).all()
    expected = lines.join(second.select("order_id", "user_id"), on="order_id").select("user_id", "product_id").unique()
    assert truth.sort("user_id", "product_id").equals(expected.sort("user_id", "product_id").select(truth.columns))


def test_selection_never_reads_the_holdout(data):
    orders, lines = data
    before = _run(orders, lines)
    # Replace every target basket's products: the selection must not move.
    targets = target_orders(orders, lines)["order_id"]
    changed = lines.with_columns(
        pl.when(pl.col("order_id").is_in(targets.implode()))
        .then((pl.col("product_id") * 7 + 13) % 5000 + 1)
        .otherwise(pl.col("product_id"))
        .alias("product_id")
    ).unique(subset=["order_id", "product_id"])
    after = _run(orders, changed)
    assert before == after
    assert before["winner"]["method"] in {c.method for c in CANDIDATES}
    assert len(before["candidates"]) == len(CANDIDATES)


def test_winner_is_the_best_on_validation(data):
    report = _run(*data)
    best = max(report["candidates"], key=lambda r: (r["map@10"], r["recall@10"]))
    assert report["winner"]["map@10"] == best["map@10"]
    assert set(report["best_per_method"]) == {c.method for c in CANDIDATES}
    # the winner is ranking()'s first (its tie rule tested below applies to the report)
    first = report["candidates"][ranking(report["candidates"])[0]]
    assert (report["winner"]["method"], report["winner"]["params"]) == (first["method"], first["params"])


def test_an_exact_tie_goes_to_a_baseline():
    """A model that only equals a baseline on validation is not exported (a one-day log: every
    candidate scored 0 and ALS, the first candidate, won the tie); better scores still win."""
    from insightflow_assets.selection.select import ranking

    def row(method, map10, recall):
        return {"method": method, "map@10": map10, "recall@10": recall}

    zeros = [row("als", 0.0, 0.0), row("tifu_knn", 0.0, 0.0), row("baseline", 0.0, 0.0), row("gp_topfreq", 0.0, 0.0)]
    assert [zeros[i]["method"] for i in ranking(zeros)] == ["gp_topfreq", "baseline", "als", "tifu_knn"]
    ahead = [row("als", 0.2, 0.3), row("gp_topfreq", 0.2, 0.29), row("p_topfreq", 0.21, 0.1)]
    assert [ahead[i]["method"] for i in ranking(ahead)] == ["p_topfreq", "als", "gp_topfreq"]


def test_complete_lists_fill_and_fallback():
    recs = pl.DataFrame({
        "user_id": [1, 1, 2], "rank": [1, 2, 1], "product_id": [10, 11, 12],
        "score": [3.0, 2.0, 1.0], "source": ["repeat", "neighbors", "repeat"],
    })
    popular = pl.DataFrame({"product_id": [11, 20, 21, 22, 12]})
    out = complete_lists(recs, pl.Series([1, 2, 3]), 3, popular)
    rows = {u: out.filter(pl.col("user_id") == u).select("product_id", "source").rows() for u in (1, 2, 3)}
    assert rows[1] == [(10, "repeat"), (11, "neighbors"), (20, "popular")]
    assert rows[2] == [(12, "repeat"), (11, "popular"), (20, "popular")]
    assert rows[3] == [(11, "fallback"), (20, "fallback"), (21, "fallback")]
    assert out.group_by("user_id").agg(pl.col("rank").sort())["rank"].to_list() == [[1, 2, 3]] * 3


def test_als_validation_fit_on_a_user_sample_still_scores_every_user(data):
    """model_selection's ALS is fitted on a seeded user sample (`als_fit_users`); every
    validation user still gets an ALS list, and the report says which fit was validated."""
    orders, lines = data
    window, truth = validation_split(orders, lines)
    users = validation_users(truth, window, None, 42)
    n = window.ratings["user_id"].n_unique()
    cand = Candidate("als", {"factors": 8, "iterations": 3, "fit_users": n // 4})
    rec = cand.build().fit(window)
    assert rec.model.params["fit_users"] == n // 4 and rec.model.n_users == n
    assert rec.recommend(users, 10)["user_id"].n_unique() == np.intersect1d(users, rec.model.user_ids).size == users.size
    row = select([cand], window, truth, users)["candidates"][0]
    assert row["params"]["fit_users"] == n // 4 and 0 < row["map@10"] <= 1


def test_als_scored_from_the_validation_users_factors_only(data):
    """A sampled validation fit solves the factors of the users it scores, not everyone's; the
    lists are those of the model with every user solved."""
    orders, lines = data
    window, truth = validation_split(orders, lines)
    users = validation_users(truth, window, None, 42)[::3]
    n = window.ratings["user_id"].n_unique()
    rec = Candidate("als", {"factors": 8, "iterations": 3, "fit_users": n // 4}).build().fit(window)
    some = rec.recommend(users, 10)
    assert rec.scoring_model(users).n_users == users.size < n
    every = recommend(rec.model, None, users, 10)
    assert some.select("user_id", "product_id").equals(every.select("user_id", "product_id"))


def test_als_iterations_chosen_on_validation_for_the_stored_model(data):
    """The grid's iteration counts share one fit; `best_fit` names the ALS-family candidate
    with the best validation map@10, whose parameters `als_model` is fitted with."""
    orders, lines = data
    window, truth = validation_split(orders, lines)
    users = validation_users(truth, window, None, 42)
    grid = {"als": [{"iterations": i} for i in (1, 3, 6)],
            "als_postrank": [{"iterations": i, "postrank_alpha": 0.3, "popularity_kind": "user"} for i in (1, 6)]}
    cands = [c for c in default_candidates({**DEFAULT_PARAMS, "factors": 8}, grid) if c.method in grid]
    report = select(cands, window, truth, users)
    family = [r for r in report["candidates"] if r["method"] in grid]
    best = max(family, key=lambda r: r["map@10"])  # first of equals, as the selection breaks ties
    chosen = report["best_fit"]["als"]
    assert chosen["method"] == best["method"] and chosen["params"]["iterations"] == best["params"]["iterations"]
    assert "postrank_alpha" not in chosen["params"]  # the fit's parameters only
    assert sorted({r["params"]["iterations"] for r in family}) == [1, 3, 6]
    # one fit per count, continued: the 6-iteration model is reached once, shared by both methods
    (path,) = [v for k, v in window._memo.items() if k.startswith("als_path:")]
    assert path.done == 6


def _als_family(factors: int, iterations: tuple[int, ...], postrank: tuple[int, ...]) -> list[Candidate]:
    grid = {"als": [{"iterations": i} for i in iterations],
            "als_postrank": [{"iterations": i, "postrank_alpha": 0.3, "popularity_kind": "user"} for i in postrank]}
    return [c for c in default_candidates({**DEFAULT_PARAMS, "factors": factors}, grid) if c.method in grid]


def test_als_iterations_stop_once_validation_falls(data):
    """On this data 16-factor ALS scores lower at 5 iterations than at 2 (by about 12 %): the
    15-iteration candidates (ALS and its post-rank) are not tried, the shared fit stops at 5,
    and the report says why; with the early stop off every count is scored and the fit reaches 15."""
    orders, lines = data
    results = {}
    for fall in (0.01, None):
        window, truth = validation_split(orders, lines)
        users = validation_users(truth, window, None, 42)
        report = select(_als_family(16, (2, 5, 15), (2, 15)), window, truth, users, stop_fall=fall)
        (path,) = [v for k, v in window._memo.items() if k.startswith("als_path:")]
        results[fall] = (report, path.done)
    stopped, done = results[0.01]
    full, full_done = results[None]
    scores = {(r["method"], r["params"]["iterations"]): r["map@10"] for r in full["candidates"]}
    assert scores[("als", 5)] < 0.95 * scores[("als", 2)]  # the fall this test is about
    assert done == 5 and full_done == 15 and full["early_stop"] == {}
    skipped = [r for r in stopped["candidates"] if "skipped" in r]
    assert {(r["method"], r["params"]["iterations"]) for r in skipped} == {("als", 15), ("als_postrank", 15)}
    assert all(r["map@10"] is None for r in skipped)
    assert "fell from" in stopped["early_stop"]["als"] and "iterations=2" in stopped["early_stop"]["als"]
    # what was tried scored exactly as without the stop, and the choice is made among those only
    for r in stopped["candidates"]:
        if "skipped" not in r:
            assert r["map@10"] == scores[(r["method"], r["params"]["iterations"])]
    assert stopped["best_fit"]["als"]["params"]["iterations"] in (2, 5)
    assert all(stopped["candidates"][i]["map@10"] is not None for i in ranking(stopped["candidates"]))


def test_als_iterations_go_on_while_validation_rises(data):
    """64-factor ALS improves from 1 to 3 to 6 iterations here: nothing is skipped."""
    orders, lines = data
    window, truth = validation_split(orders, lines)
    users = validation_users(truth, window, None, 42)
    report = select(_als_family(64, (1, 3, 6), ()), window, truth, users)
    maps = [r["map@10"] for r in report["candidates"]]
    assert maps[0] < maps[1] < maps[2] and report["early_stop"] == {}


def test_early_stop_rule():
    """A fall within the margin goes on; one beyond it stops the family's larger values only."""
    from insightflow_assets.selection.select import EarlyStop

    class Path:
        name, label, fit_family, path_param = "als", "ALS", "als", "iterations"

        def __init__(self, iterations):
            self.iterations = iterations

        def fit_params(self):
            return {"iterations": self.iterations}

    class Other(Path):
        name, label, fit_family, path_param = "other", "Other", "other", None

    row = lambda v: [{"map@10": v}]  # noqa: E731
    stop = EarlyStop(0.01)
    stop.record(Path(2), row(0.1057))
    stop.record(Path(5), row(0.1053))  # -0.4 %: a tie, go on
    assert stop.stopped(Path(15)) is None
    stop.record(Path(15), row(0.0900))  # -14.5 %: stop past 15
    assert stop.stopped(Path(15)) is None and stop.stopped(Path(30)) is not None
    assert stop.stopped(Other(None)) is None and "-14.5%" in stop.reasons()["als"]
    never = EarlyStop(None)
    never.record(Path(2), row(0.2))
    never.record(Path(5), row(0.01))
    assert never.stopped(Path(15)) is None and never.reasons() == {}
    fitted = [(None, Path(15), 0), (None, Other(None), 0), (None, Path(2), 0)]
    assert stop.order([[0], [1], [2]], fitted) == [[1], [2], [0]]
