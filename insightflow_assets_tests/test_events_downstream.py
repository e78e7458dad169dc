"""The stages after ingest on the events form (issue #16): user_seg's R/F/M from sessions,
user_recos' category re-rank with the popular fallback, als_eval's peer metric set.

A hand-built snapshot in the contract's schema (`ingest.events_schema`): 30 visitors, 40 items,
a 3-level category tree. Visitors 1-24 have sessions before the cut-off (warm), 25-30 only a
target (cold); 1-18 and 25-30 have a target ``train`` order.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from insightflow_assets.evaluation.assets import metrics_in_unit_interval
from insightflow_assets.evaluation.event_report import category_method, peer_scores
from insightflow_assets.evaluation.offline import Judge, evaluation_report, score_method
from insightflow_assets.ingest.events_schema import is_events_form
from insightflow_assets.postrank.events_lists import (
    as_postrank,
    availability,
    cart_popularity,
    category_lists,
    chunked_category_lists,
    event_history,
    item_paths,
    prior_lines,
)
from insightflow_assets.postrank.rerank import POSTRANK_SCHEMA
from insightflow_assets.segmentation.rfm import RFM_COLUMNS, segment_users
from insightflow_assets.segmentation.session_rfm import session_events, session_reference, session_rfm_table
from resources.io_manager import ArtifactFolder

N_VISITORS, N_ITEMS = 30, 40
WARM, TARGETED = range(1, 25), [*range(1, 19), *range(25, 31)]
MIDS = {1: (10, 11), 2: (20, 21)}
LEAVES = {10: (100, 101), 11: (110, 111), 20: (200, 201), 21: (210, 211)}
PATHS = [[root, mid, leaf] for root, mids in MIDS.items() for mid in mids for leaf in LEAVES[mid]]  # 8 leaves
UNAVAILABLE, UNSTATED = (3, 17), (9,)
T0 = datetime(2024, 3, 1)
CUTOFF = T0 + timedelta(days=10)
COUNTS = ("views", "addtocarts", "transactions")


def _products() -> pl.DataFrame:
    ids = list(range(N_ITEMS))
    avail = [None if i in UNSTATED else 0 if i in UNAVAILABLE else 1 for i in ids]
    return pl.DataFrame(
        {
            "product_id": ids,
            "product_name": [f"item {i}" for i in ids],
            "aisle_id": [i % 8 + 1 for i in ids],
            "department_id": [PATHS[i % 8][0] for i in ids],
            "aisle": [f"category {PATHS[i % 8][2]}" for i in ids],
            "department": [f"category {PATHS[i % 8][0]}" for i in ids],
            "category_path": [PATHS[i % 8] for i in ids],
            "available": avail,
        },
        schema_overrides={"product_id": pl.Int32, "aisle_id": pl.Int16, "department_id": pl.Int16,
                          "category_path": pl.List(pl.Int32), "available": pl.Int8},
    )  # fmt: skip


def _sessions(rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """Prior sessions: 1-3 per warm visitor, 2-4 lines each, mostly in the visitor's home leaf;
    visitors with v % 4 == 0 buy in their first session (two of the item when v % 8 == 0)."""
    orders, lines = [], []
    for v in WARM:
        home = v % 8
        for s in range(1 + v % 3):
            oid = len(orders) + 1
            orders.append({"order_id": oid, "user_id": v, "eval_set": "prior", "order_number": s + 1,
                           "order_ts": T0 + timedelta(days=3 * s, hours=v)})  # fmt: skip
            items = rng.choice(N_ITEMS // 8, size=2 + (v + s) % 3, replace=False) * 8 + home
            for j, item in enumerate(items.tolist()):
                bought = (2 if v % 8 == 0 else 1) if (v % 4 == 0 and s == 0 and j == 0) else 0
                lines.append({"order_id": oid, "product_id": item, "views": 1 + j % 2,
                              "addtocarts": 1 if bought else int(j == 1), "transactions": bought})  # fmt: skip
    return orders, lines


def _targets(rng: np.random.Generator, first_id: int) -> tuple[list[dict], list[dict]]:
    """One train order per targeted visitor after the cut-off: 1-2 carted items of the home leaf
    (warm visitors) or of leaf 0 (cold ones)."""
    orders, lines = [], []
    for n, v in enumerate(TARGETED):
        oid = first_id + n
        orders.append({"order_id": oid, "user_id": v, "eval_set": "train", "order_number": 9,
                       "order_ts": CUTOFF + timedelta(hours=v)})  # fmt: skip
        home = v % 8 if v in WARM else 0
        for item in (rng.choice(N_ITEMS // 8, size=1 + v % 2, replace=False) * 8 + home).tolist():
            lines.append({"order_id": oid, "product_id": item, "views": 1, "addtocarts": 1, "transactions": 0})
    return orders, lines


def events_tables() -> dict[str, pl.DataFrame]:
    """raw_orders / raw_order_products / products of the tiny events-form snapshot."""
    rng = np.random.default_rng(16)
    orders, lines = _sessions(rng)
    t_orders, t_lines = _targets(rng, len(orders) + 1)
    raw_orders = pl.DataFrame(orders + t_orders).with_columns(
        pl.col("order_id", "user_id").cast(pl.Int32), pl.col("order_number").cast(pl.Int16),
        pl.col("order_ts").cast(pl.Datetime("us")),
    )  # fmt: skip
    rop = pl.DataFrame(lines + t_lines).with_columns(pl.col("order_id", "product_id", *COUNTS).cast(pl.Int32))
    return {"raw_orders": raw_orders, "raw_order_products": rop, "products": _products()}


@pytest.fixture(scope="module")
def snap() -> dict[str, pl.DataFrame]:
    return events_tables()


@pytest.fixture(scope="module")
def ratings(snap) -> pl.DataFrame:
    """Weighted ratings of the prior lines (view 1, cart 4, purchase 8), one row per pair."""
    prior = prior_lines(snap["raw_orders"], snap["raw_order_products"])
    return (
        prior.group_by("user_id", "product_id")
        .agg(pl.col(c).sum().cast(pl.Int32) for c in COUNTS)
        .with_columns(
            rating=(pl.col("views") + 4 * pl.col("addtocarts") + 8 * pl.col("transactions")).cast(pl.Float32),
            purchases=pl.sum_horizontal(*COUNTS).cast(pl.Int32),
            last_day_before_target=pl.lit(1, pl.Int32),
        )
        .sort("user_id", "product_id")
    )


@pytest.fixture(scope="module")
def holdout(snap) -> pl.DataFrame:
    train = snap["raw_orders"].filter(pl.col("eval_set") == "train").select("order_id", "user_id")
    return snap["raw_order_products"].join(train, on="order_id").select("user_id", "product_id")


def test_fixture_is_the_events_form(snap):
    assert is_events_form(snap["raw_order_products"]) and is_events_form(snap["products"])
    assert not is_events_form(snap["raw_order_products"].drop("transactions"))
    assert snap["products"]["category_path"].list.len().unique().to_list() == [3]


# ---- user_seg: R/F/M from the sessions -------------------------------------------------------


def test_session_rfm_by_hand(snap):
    orders, lines = snap["raw_orders"], snap["raw_order_products"]
    # the latest prior session: visitor 23's third one (day 6, 23 h); train orders come later
    ref = session_reference(orders)
    assert ref == datetime(2024, 3, 7, 23, tzinfo=ref.tzinfo) and str(ref.tzinfo) == "UTC"
    table = session_rfm_table(orders, lines)
    assert table.columns == RFM_COLUMNS and table["user_id"].to_list() == list(WARM)  # cold visitors have no session
    row = {r["user_id"]: r for r in table.iter_rows(named=True)}
    # 4 bought one item in its first session (day 0, 4 h): R from that session, not its last (day 3)
    assert (row[4]["recency_days"], row[4]["frequency"], row[4]["monetary"]) == (pytest.approx(6 + 19 / 24), 1, 1.0)
    # 8 bought two of an item in one session: one purchase, two items
    assert (row[8]["recency_days"], row[8]["frequency"], row[8]["monetary"]) == (pytest.approx(6 + 15 / 24), 1, 2.0)
    # 5 never bought: R from its last session (day 6, 5 h), F = M = 0
    assert (row[5]["recency_days"], row[5]["frequency"], row[5]["monetary"]) == (pytest.approx(18 / 24), 0, 0.0)
    buyers = table.filter(pl.col("frequency") > 0)["user_id"].to_list()
    assert buyers == [v for v in WARM if v % 4 == 0]


def test_session_rfm_reads_only_prior_sessions_and_the_given_users(snap):
    orders, lines = snap["raw_orders"], snap["raw_order_products"]
    # a purchase in visitor 5's target order (after the cut-off) changes nothing
    target = orders.filter((pl.col("user_id") == 5) & (pl.col("eval_set") == "train"))["order_id"][0]
    bought = lines.with_columns(
        transactions=pl.when(pl.col("order_id") == target).then(3).otherwise(pl.col("transactions")).cast(pl.Int32)
    )
    assert session_rfm_table(orders, bought).equals(session_rfm_table(orders, lines))
    some = session_rfm_table(orders, lines, users=pl.DataFrame({"user_id": [4, 5, 8, 27]}))
    assert some["user_id"].to_list() == [4, 5, 8]
    # z-scores over the returned visitors only
    assert some["f_z"].mean() == pytest.approx(0.0, abs=1e-12)
    # an explicit reference after the latest session moves R by the same amount
    later = session_rfm_table(orders, lines, reference_time=datetime(2024, 3, 8, 23))
    assert later["recency_days"].to_list() == pytest.approx([r + 1 for r in session_rfm_table(orders, lines)["recency_days"]])


def test_session_events_frame(snap):
    events = session_events(snap["raw_orders"], snap["raw_order_products"], users=[8])
    # three sessions -> three view rows; two items bought in the first -> two transaction rows
    assert events.group_by("event").len().sort("event").rows() == [("transaction", 2), ("view", 3)]
    assert events.filter(pl.col("event") == "transaction")["transaction_id"].n_unique() == 1


def test_session_rfm_input_errors(snap):
    orders, lines = snap["raw_orders"], snap["raw_order_products"]
    with pytest.raises(ValueError, match="^orders: missing column order_ts"):
        session_rfm_table(orders.drop("order_ts"), lines)
    with pytest.raises(ValueError, match="^orders: missing column eval_set"):
        session_rfm_table(orders.drop("eval_set"), lines)
    with pytest.raises(ValueError, match="^order_products: missing column transactions"):
        session_rfm_table(orders, lines.drop("transactions"))
    with pytest.raises(ValueError, match="^orders: no prior session"):
        session_reference(orders.filter(pl.col("eval_set") == "train"))
    with pytest.raises(ValueError, match="^orders: no prior session of the given users"):
        session_rfm_table(orders, lines, users=[27, 28])
    with pytest.raises(ValueError, match="before the latest event"):
        session_rfm_table(orders, lines, reference_time=datetime(2024, 3, 7))


def test_session_rfm_segments_through_the_kmeans_path(snap, ratings):
    table = session_rfm_table(snap["raw_orders"], snap["raw_order_products"], users=ratings)
    seg, centroids, info = segment_users(table, k=0, k_min=2, k_max=3, min_segment_share=0.1, seed=1)
    assert seg["user_id"].to_list() == sorted(ratings["user_id"].unique().to_list())
    assert centroids["users"].sum() == seg.height and info["k"] >= 1


# ---- user_recos: category re-rank, popular fallback ------------------------------------------


def test_prior_lines_history_and_popularity(snap):
    prior = prior_lines(snap["raw_orders"], snap["raw_order_products"])
    assert prior["user_id"].n_unique() == len(WARM)  # the train orders are not history
    hist = event_history(prior)
    assert hist.height == prior.select(pl.sum_horizontal(*COUNTS)).to_series().sum()
    # a frame without the counts: one event per row
    assert event_history(prior.select("user_id", "product_id")).height == prior.height
    pop = cart_popularity(prior)
    carters = (
        prior.filter((pl.col("addtocarts") + pl.col("transactions")) > 0).group_by("product_id").agg(pl.col("user_id").n_unique())
    )
    top = pop.head(1).join(carters, on="product_id")["user_id"][0]
    assert top == carters["user_id"].max()  # carters rank first, views only break ties
    assert pop["popularity"].is_sorted(descending=True)


def test_events_lists_input_errors(snap):
    with pytest.raises(ValueError, match="^order_products: missing column views"):
        prior_lines(snap["raw_orders"], snap["raw_order_products"].drop("views"))
    with pytest.raises(ValueError, match="^orders: missing column eval_set"):
        prior_lines(snap["raw_orders"].drop("eval_set"), snap["raw_order_products"])
    with pytest.raises(ValueError, match="^products: missing column category_path"):
        item_paths(snap["products"].drop("category_path"))
    with pytest.raises(ValueError, match="^products: missing column available"):
        availability(snap["products"].drop("available"))
    with pytest.raises(ValueError, match="^history: missing column product_id"):
        event_history(pl.DataFrame({"user_id": [1]}))
    with pytest.raises(ValueError, match="^history: missing column user_id"):
        cart_popularity(pl.DataFrame({"product_id": [1]}))
    # user_recos' alpha / beta (ExportConfig.category_*) are refused in one line when out of range
    prior = prior_lines(snap["raw_orders"], snap["raw_order_products"])
    with pytest.raises(ValueError, match="alpha \\+ beta must be <= 1"):
        category_lists(_candidates([1]), event_history(prior), snap["products"], [1], cart_popularity(prior), alpha=0.8, beta=0.4, n=5)


def _embeddings(users, products: pl.DataFrame) -> ArtifactFolder:
    """A stored `lightfm_model` (seeded random 4-d embeddings) of these users and products."""
    from insightflow_assets.lightfm.embeddings import LightfmEmbeddings, encode_files

    rng, items = np.random.default_rng(5), np.sort(products["product_id"].to_numpy()).astype(np.int32)
    emb = LightfmEmbeddings(
        item_ids=items, item_vectors=rng.normal(size=(items.size, 4)).astype(np.float32),
        item_biases=np.zeros(items.size, np.float32), user_ids=np.array(users, np.int32),
        user_vectors=rng.normal(size=(len(users), 4)).astype(np.float32), user_biases=np.zeros(len(users), np.float32),
        params={},
    )
    return ArtifactFolder(encode_files(emb.to_files()))


def _candidates(users, n: int = 30) -> pl.DataFrame:
    """Every item for every user, the model preferring low ids (so unavailable 3 is near the top)."""
    return pl.DataFrame(
        {"user_id": np.repeat(users, n), "product_id": np.tile(np.arange(n), len(users)), "score": np.tile(np.arange(n, 0, -1.0), len(users))}
    ).with_columns(pl.col("user_id", "product_id").cast(pl.Int32), rank=pl.int_range(1, n + 1).over("user_id"), source=pl.lit("als"))


def test_category_lists_warm_cold_and_availability(snap):
    prior = prior_lines(snap["raw_orders"], snap["raw_order_products"])
    users = pl.Series("user_id", range(1, N_VISITORS + 1))
    lists = category_lists(
        _candidates(list(WARM)), event_history(prior), snap["products"], users, cart_popularity(prior), alpha=0.6, beta=0.4, n=10
    )
    per_user = lists.group_by("user_id").agg(n=pl.len(), distinct=pl.col("product_id").n_unique(), reranked=pl.col("reranked").all())
    assert per_user.height == N_VISITORS and (per_user["n"] == 10).all() and (per_user["distinct"] == 10).all()
    assert not lists["product_id"].is_in(list(UNAVAILABLE)).any()  # never, in re-ranked or popular lists
    assert lists["product_id"].is_in(list(UNSTATED)).any()  # no stated availability: kept
    warm = per_user.filter(pl.col("reranked"))["user_id"].sort().to_list()
    assert warm == list(WARM)
    cold = lists.filter(pl.col("user_id") >= 25)
    assert set(cold["source"]) == {"fallback"}
    popular = cart_popularity(prior).filter(~pl.col("product_id").is_in(list(UNAVAILABLE)))["product_id"].head(10).to_list()
    assert cold.filter(pl.col("user_id") == 25).sort("rank")["product_id"].to_list() == popular
    # the re-rank pulls visitor 4's only category (leaf 200: items 4, 12, 20, 28, 36) over the
    # model's order: 0.6 / r + 0.4 * 1.0 beats 0.6 / r + 0.4 * 0.2 * pop for item 1 (r = 2) and
    # below; item 0 (r = 1) keeps the top with 0.6 + 0.08 * pop
    assert lists.filter(pl.col("user_id") == 4).sort("rank")["product_id"].head(6).to_list() == [0, 4, 12, 20, 28, 1]
    out = as_postrank(lists)
    assert dict(out.schema) == POSTRANK_SCHEMA and out.height == lists.height

    # a few users at a time (what user_recos does) gives the same lists as one call
    pool = _candidates(list(WARM))
    asked = []

    def recommend(some: pl.Series) -> pl.DataFrame:
        asked.append(some.len())
        return pool.filter(pl.col("user_id").is_in(some.implode()))

    chunked = chunked_category_lists(recommend, event_history(prior), snap["products"], users, cart_popularity(prior),
                                     alpha=0.6, beta=0.4, n=10, chunk=7)  # fmt: skip
    assert asked == [7, 7, 7, 7, 2] and chunked.equals(lists)


# ---- als_eval: the peer's metric set in every method's entry ---------------------------------

PEER_KEYS = ("coverage@5", "novelty@5", "diversity@5", "cold_share", "reranked_share")


@pytest.fixture(scope="module")
def report(snap, ratings, holdout):
    users = np.sort(holdout["user_id"].unique().to_numpy()).astype(np.int32)
    als = _candidates(list(WARM))
    extra = {"als_category": category_method(als, users, ratings, snap["products"], 20)}
    args = (als.filter(pl.col("rank") <= 20), ratings, holdout, users)
    with_peer = evaluation_report(*args, n_items=N_ITEMS, ks=(5, 10, 20), extra_recs=extra,
                                  more_scores=peer_scores(ratings, snap["products"]))  # fmt: skip
    plain = evaluation_report(*args, n_items=N_ITEMS, ks=(5, 10, 20), extra_recs=extra)
    return users, with_peer, plain


def test_every_method_gets_the_peer_metrics(report, ratings):
    users, (metrics, _), (plain, _) = report
    methods = metrics["methods"]
    assert set(methods) == {"als", "als_category", "baseline", "p_topfreq", "gp_topfreq"}
    cold = 1 - np.isin(users, ratings["user_id"].to_numpy()).mean()
    assert cold == pytest.approx(6 / 24)
    for name, entry in methods.items():
        assert all(k in entry for k in PEER_KEYS), name
        assert entry["cold_share"] == pytest.approx(cold)
        # what the entry had stays as it was: the peer's precision/recall/... on the same truth
        assert {k: v for k, v in entry.items() if k not in PEER_KEYS} == plain["methods"][name]
    assert methods["als_category"]["reranked_share"] == pytest.approx(18 / 24)  # the warm ones
    assert all(methods[m]["reranked_share"] == 0.0 for m in methods if m != "als_category")
    # ALS's top 5 are items 0-4 for everyone: five leaves, five of the training items
    assert methods["als"]["diversity@5"] == 5.0
    assert methods["als"]["coverage@5"] == pytest.approx(5 / ratings["product_id"].n_unique())
    # the re-rank serves the cold visitors from popularity and drops the unavailable item 3
    assert methods["als_category"]["hit_rate@5"] >= methods["als"]["hit_rate@5"]
    assert methods["als"]["novelty@5"] > 0


def test_more_scores_never_replace_a_metric(report, ratings, holdout):
    users = report[0]
    judge = Judge.of(ratings, holdout, users, (5,))
    recs = _candidates(list(WARM)).filter(pl.col("rank") <= 5)
    plain = score_method(recs, judge)
    more = score_method(recs, judge, lambda r, j: {"recall@5": 99.0, "extra@5": 0.5})
    assert more == {**plain, "extra@5": 0.5}


def test_range_check_holds_novelty_and_diversity_to_non_negative(report):
    metrics, cov = report[1]
    ok = metrics_in_unit_interval(ArtifactFolder.of({"metrics.json": metrics, "coverage.json": cov}))
    assert ok.passed, ok.metadata
    assert metrics["methods"]["als"]["diversity@5"] > 1  # a count, yet the check passes

    def broken(method: str, key: str, value) -> bool:
        bad = {**metrics, "methods": {**metrics["methods"], method: {**metrics["methods"][method], key: value}}}
        return metrics_in_unit_interval(ArtifactFolder.of({"metrics.json": bad, "coverage.json": cov})).passed

    assert not broken("als", "novelty@5", -0.1)
    assert not broken("als", "diversity@5", math.nan)
    assert not broken("als_category", "cold_share", 1.2)
    assert not broken("als_category", "reranked_share", None)
    assert not broken("baseline", "coverage@5", 1.5)
    assert not broken("baseline", "recall@20", 1.5)


# ---- the three assets materialized through Dagster on the tiny snapshot ----------------------

RUN = "run-20260402-000000"


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, snap, ratings, holdout):
    """user_seg, user_recos and als_eval (with the ALS model and candidates they read) run for
    one run partition; the other upstream values are stored first as that run's (the models'
    lists as plain frames, model selection choosing ALS)."""
    from dagster import AssetKey, DagsterInstance

    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs
    from resources import CuratedIOManager, LocalStorage

    curated = tmp_path_factory.mktemp("events_downstream")
    io = CuratedIOManager(storage=LocalStorage(root=str(curated)))
    some = _candidates(list(WARM), 20).with_columns(pl.col("score").cast(pl.Float32))
    stored = {
        "orders_imputed": snap["raw_orders"], "raw_order_products": snap["raw_order_products"],
        "products": snap["products"], "ratings": ratings, "holdout": holdout,
        "nbr_model": ArtifactFolder.of({"recs.parquet": some}), "lightfm_model": _embeddings(list(WARM), snap["products"]),
        "model_selection": {"metric": "map@10", "winner": {"method": "als", "label": "ALS", "params": {}, "map@10": 0.0},
                            "best_per_method": {}, "ties": []},
    }  # fmt: skip
    for name, value in stored.items():
        io.store(AssetKey(name), RUN, value)
    defs = local_defs(tmp_path_factory.mktemp("no_source"), curated, k=2)
    config = {"ops": {"als_model": {"config": {"factors": 4, "iterations": 3}}}}
    with DagsterInstance.ephemeral() as inst:
        out = run_graph(inst, run_key=RUN, defs=defs, run_config=config,
                        selection=["als_model", "als_candidates", "user_seg", "user_recos", "als_eval"])  # fmt: skip
        assert out.ok, out.errors
    return curated


def test_user_seg_materialized_on_events(materialized, snap, ratings):
    seg = pl.read_parquet(materialized / f"recsys/user_seg/{RUN}/user_seg.parquet")
    expected = session_rfm_table(snap["raw_orders"], snap["raw_order_products"], users=ratings)
    assert seg.select(RFM_COLUMNS).equals(expected)
    assert seg["segment"].n_unique() == 2
    diag = next(materialized.glob("recsys/debug/user-seg-*/diag/metrics.json")).read_text()
    assert '"rfm_definition": "events"' in diag and '"reference_time": "2024-03-07T23:00:00+00:00"' in diag


def test_user_recos_materialized_on_events(materialized):
    recos = pl.read_parquet(materialized / f"recsys/recos/{RUN}/user_recos.parquet")
    assert dict(recos.schema) == POSTRANK_SCHEMA
    per_user = recos.group_by("user_id").agg(n=pl.len(), distinct=pl.col("product_id").n_unique())
    assert per_user.height == N_VISITORS and (per_user["n"] == 20).all() and (per_user["distinct"] == 20).all()
    assert not recos["product_id"].is_in(list(UNAVAILABLE)).any()
    sources = dict(recos.group_by("user_id").agg(pl.col("source").first()).rows())
    assert {sources[v] for v in range(25, 31)} == {"fallback"}  # cold: a target, no prior session
    assert {sources[v] for v in WARM} == {"als"}


def test_als_eval_materialized_on_events(materialized, ratings):
    import json

    metrics = json.loads(next(materialized.glob("recsys/eval/als-*/metrics.json")).read_text())
    methods = metrics["methods"]
    assert {"als", "als_category", "tifu_knn", "lightfm", "baseline", "p_topfreq", "gp_topfreq"} == set(methods)
    for name, entry in methods.items():
        assert all(k in entry for k in PEER_KEYS), name
        assert entry["cold_share"] == pytest.approx(6 / 24)
    assert methods["als_category"]["reranked_share"] == pytest.approx(18 / 24)
    assert methods["als"]["reranked_share"] == 0.0
