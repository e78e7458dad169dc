"""One ALS scoring pass per run (`als_candidates`) feeds both evaluations: what they report is
what they reported when each scored every user itself (read back from a real run)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from insightflow_assets.evaluation.baselines import item_popularity
from insightflow_assets.evaluation.assets import CandidatesConfig, EvalConfig
from insightflow_assets.evaluation.offline import EVAL_SAMPLE_USERS, baselines_of, eval_users, evaluation_report
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


def test_small_runs_evaluate_every_holdout_user(small_run, stored):
    _, users, frames = stored
    assert EvalConfig().sample_users == CandidatesConfig().sample_users == EVAL_SAMPLE_USERS
    assert frames["holdout"]["user_id"].n_unique() == users.size < EVAL_SAMPLE_USERS
    assert _metrics(small_run, "als_eval")["n_users_evaluated"] == users.size


@pytest.fixture(scope="module")
def sampled(small_run, tmp_path_factory):
    """The three evaluation steps again, on a copy of the run, with fewer evaluated users than
    the run has (what happens at scale above EVAL_SAMPLE_USERS)."""
    from dagster import DagsterInstance

    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs

    curated = tmp_path_factory.mktemp("sampled_eval") / "curated"
    shutil.copytree(small_run.curated, curated)
    sample = {"sample_users": SAMPLE, "seed": 3}
    config = {"ops": {step: {"config": sample} for step in ("als_candidates", "als_eval", "als_postrank")}}
    with DagsterInstance.ephemeral() as inst:
        out = run_graph(inst, run_key=small_run.run_key, run_config=config,
                        defs=local_defs(tmp_path_factory.mktemp("no_source"), curated),
                        selection=["als_candidates", "als_eval", "als_postrank"])  # fmt: skip
        assert out.ok, out.errors
    return SimpleNamespace(curated=curated, run_key=small_run.run_key)


SAMPLE = 60


def test_a_sample_is_scored_once_and_evaluated_alike(sampled, stored):
    model, everyone, frames = stored
    users = eval_users(frames["holdout"], SAMPLE, 3)
    assert users.size == SAMPLE < everyone.size and np.isin(users, everyone).all()
    cands = pl.read_parquet(_path(sampled, "als_candidates", "als_candidates.parquet"))
    # only the sampled users are scored, each to the post-rank's depth
    assert np.array_equal(np.sort(cands["user_id"].unique().to_numpy()), np.intersect1d(users, model.user_ids))
    als, post = _metrics(sampled, "als_eval"), _metrics(sampled, "als_postrank")
    assert als["n_users_evaluated"] == post["n_users_evaluated"] == SAMPLE
    assert post["baseline"] == als["baseline"]  # the same users, so als_eval's baselines are reused
    again, _ = evaluation_report(recommend(model, None, users, max(KS)), frames["ratings"], frames["holdout"], users,
                                 n_items=frames["products"].height, ks=KS)
    for key in ("map@10", "recall@10", "ndcg@10", "precision@20"):
        assert als["als"][key] == pytest.approx(again["als"][key], abs=1e-12)
        assert als["baseline"][key] == pytest.approx(again["baseline"][key], abs=1e-12)


def test_lightfm_is_scored_from_its_embeddings_for_the_evaluated_users(sampled, stored):
    """`lightfm_model` stores embeddings only; als_eval scores LightFM's lists for its sampled
    users from them (topped up from popularity), and reports what that scoring gives."""
    from insightflow_assets.lightfm.embeddings import FILES, LightfmEmbeddings
    from insightflow_assets.lightfm.fit import top_n

    model, _, frames = stored
    users = eval_users(frames["holdout"], SAMPLE, 3)
    emb = LightfmEmbeddings.from_files({f: _path(sampled, "lightfm_model", f).read_bytes() for f in FILES})
    lists = complete_lists(top_n(emb, users, max(KS)), pl.Series(users), max(KS), item_popularity(frames["ratings"]))
    assert lists["user_id"].n_unique() == SAMPLE
    again, _ = evaluation_report(recommend(model, None, users, max(KS)), frames["ratings"], frames["holdout"], users,
                                 n_items=frames["products"].height, ks=KS, extra_recs={"lightfm": lists})
    reported = _metrics(sampled, "als_eval")["methods"]["lightfm"]
    for key in ("map@10", "recall@10", "ndcg@10", "precision@20"):
        assert reported[key] == pytest.approx(again["methods"]["lightfm"][key], abs=1e-12)
