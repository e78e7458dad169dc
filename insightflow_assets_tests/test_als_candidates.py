"""One ALS scoring pass per run (`als_candidates`) feeds both evaluations: what they report is
what they reported when each scored every user itself (read back from a real run)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from insightflow_assets.evaluation.baselines import item_popularity
from insightflow_assets.evaluation.offline import baselines_of, eval_users, evaluation_report
from insightflow_assets.model.als import AlsModel, recommend
from insightflow_assets.postrank.assets import PostrankConfig
from insightflow_assets.postrank.export import complete_lists
from insightflow_assets.recommenders import TrainingWindow
from resources.layout import artifact

KS = (5, 10, 20)


def _path(run, name: str, file: str):
    return run.curated / artifact(name).keys(run.run_key)[file]


@pytest.fixture(scope="module")
def stored(small_run):
    files = {f: _path(small_run, "als_model", f).read_bytes() for f in ("factors.npz", "params.json")}
    frames = {n: pl.read_parquet(_path(small_run, n, f"{n}.parquet")) for n in ("ratings", "holdout", "products")}
    model = AlsModel.from_files(files)
    users = eval_users(frames["holdout"], None, 42)
    return model, users, frames


def _metrics(run, name: str) -> dict:
    return json.loads(_path(run, name, "metrics.json").read_text())


def _report(lists, frames, users, **kw) -> dict:
    metrics, _ = evaluation_report(lists, frames["ratings"], frames["holdout"], users,
                                   n_items=frames["products"].height, ks=KS, **kw)
    return metrics["als"]


def test_candidates_are_every_evaluated_users_top_100(small_run, stored):
    model, users, _ = stored
    cands = pl.read_parquet(_path(small_run, "als_candidates", "als_candidates.parquet"))
    fresh = recommend(model, None, users, 100)
    assert cands["user_id"].n_unique() == np.intersect1d(users, model.user_ids).size > 0
    assert cands.select("user_id", "rank", "product_id").equals(fresh.select("user_id", "rank", "product_id"))


def test_als_eval_reports_what_a_fresh_top_k_scores(small_run, stored):
    model, users, frames = stored
    reported = _metrics(small_run, "als_eval")
    again = _report(recommend(model, None, users, max(KS)), frames, users, baselines=baselines_of(reported))
    for key in ("map@10", "recall@10", "ndcg@10", "precision@20"):
        assert reported["als"][key] == pytest.approx(again[key], abs=1e-12)


def test_als_postrank_reports_what_the_seeds_own_scoring_gives(small_run, stored):
    model, users, frames = stored
    reported = _metrics(small_run, "als_postrank")
    cfg = PostrankConfig()
    rec = cfg.recommender(model).with_window(TrainingWindow(ratings=frames["ratings"], baskets=pl.DataFrame()))
    lists = complete_lists(rec.recommend(users, cfg.k), pl.Series(users), cfg.k, item_popularity(frames["ratings"]))
    again = _report(lists, frames, users, method="als_postrank", baselines=baselines_of(_metrics(small_run, "als_eval")))
    for key in ("map@10", "recall@10", "ndcg@10", "hit_rate@5"):
        assert reported["als"][key] == pytest.approx(again[key], abs=1e-12)
