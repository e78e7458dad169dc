"""Category-aware re-ranking and the peer's metric set (issue #16), hand-computed on tiny examples,
then end to end on a generated events dataset."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from insightflow_assets.data.events import generate_events
from insightflow_assets.evaluation.baselines import global_popularity, item_popularity
from insightflow_assets.evaluation.event_metrics import category_diversity, event_metrics, peer_novelty
from insightflow_assets.ingest.events import EventsSnapshot, category_paths, read_events_form
from insightflow_assets.postrank.category import category_rerank, item_paths_at
from insightflow_assets.ratings.events import cutoff_split, event_ratings

# Tree: 10 -> {11, 12}, 11 -> {111}; 20 and 30 roots. Item id = its category for readability,
# except the history items 1, 2 (category 11) and 3 (category 20).
PATHS = pl.DataFrame(
    {
        "product_id": [1, 2, 3, 10, 11, 12, 111, 20, 30, 31],
        "path": [[10, 11], [10, 11], [20], [10], [10, 11], [10, 12], [10, 11, 111], [20], [30], [30]],
    }
)
# user 1 saw two items of category 11 (its top category) and one of 20
HISTORY = pl.DataFrame({"user_id": [1, 1, 1, 1], "product_id": [1, 2, 2, 3]})


def cands(user: int, items: list[int]) -> pl.DataFrame:
    """Candidates in the given order: the first has the highest model score."""
    return pl.DataFrame({"user_id": [user] * len(items), "product_id": items, "score": [10.0 - i for i in range(len(items))]})


def order(out: pl.DataFrame, user: int = 1) -> list[int]:
    return out.filter(pl.col("user_id") == user).sort("rank")["product_id"].to_list()


# ---- re-ranking -----------------------------------------------------------------------------


def test_category_affinity_changes_the_order():
    # candidates 30 (r1, unrelated root), 11 (r2, the user's top category), 20 (r3, in the top 3)
    # pop: history rows per category: 11 -> 3 events, 20 -> 1 => pop(20) = 1/3, pop(30) = 0
    out = category_rerank(cands(1, [30, 11, 20]), HISTORY, PATHS, alpha=0.5, beta=0.5, n=3)
    scores = dict(zip(out["product_id"].to_list(), out["score"].to_list()))
    assert scores[30] == pytest.approx(0.5 * 1 + 0.5 * 0.0)
    assert scores[11] == pytest.approx(0.5 / 2 + 0.5 * 1.0)
    assert scores[20] == pytest.approx(0.5 / 3 + 0.5 * 1.0)  # 20 is also one of the top 3
    assert order(out) == [11, 20, 30]
    assert out["reranked"].all() and set(out["source"]) == {"als"}
    # beta = 0: the model order stays
    assert order(category_rerank(cands(1, [30, 11, 20]), HISTORY, PATHS, alpha=1.0, beta=0.0, n=3)) == [30, 11, 20]


def test_tree_neighbours_count_through_beta():
    # 10 is the parent and 111 a child of the top category 11 (0.5 each); 12 is a sibling and
    # 31 an unrelated root (0.2 * pop = 0): the neighbours overtake the better-ranked others
    items = [12, 31, 10, 111]
    out = category_rerank(cands(1, items), HISTORY, PATHS, alpha=0.3, beta=0.7, n=4)
    scores = dict(zip(out["product_id"].to_list(), out["score"].to_list()))
    assert scores[12] == pytest.approx(0.3 / 1)
    assert scores[31] == pytest.approx(0.3 / 2)
    assert scores[10] == pytest.approx(0.3 / 3 + 0.7 * 0.5)
    assert scores[111] == pytest.approx(0.3 / 4 + 0.7 * 0.5)
    assert order(out) == [10, 111, 12, 31]
    # a smaller beta leaves the model order: 0.9/1 > 0.9/3 + 0.1*0.5
    assert order(category_rerank(cands(1, items), HISTORY, PATHS, alpha=0.9, beta=0.1, n=4)) == items


def test_popularity_of_other_categories():
    # a second user makes category 30 popular (events: 11 -> 3, 30 -> 2, 20 -> 1, so pop(30) = 2/3);
    # for user 1, 30 and 12 are "other" categories scored 0.2 * pop; 12 has no event (pop 0)
    hist = pl.concat([HISTORY, pl.DataFrame({"user_id": [2, 2], "product_id": [30, 31]})])
    out = category_rerank(cands(1, [12, 30]), hist, PATHS, alpha=0.5, beta=0.5, n=2)
    scores = dict(zip(out.filter(pl.col("user_id") == 1)["product_id"].to_list(), out.filter(pl.col("user_id") == 1)["score"].to_list()))
    assert scores[12] == pytest.approx(0.5)
    assert scores[30] == pytest.approx(0.25 + 0.5 * 0.2 * 2 / 3)


def test_top_three_categories_only():
    # user 5 saw categories 11 (x3 items), 12 (x2), 20 (x2), 30 (x1): 30 is not among the top 3
    paths = pl.concat([PATHS, pl.DataFrame({"product_id": [40, 41, 42, 43], "path": [[10, 12], [20], [20], [10, 12]]})])
    hist = pl.DataFrame({"user_id": [5] * 8, "product_id": [1, 2, 11, 40, 43, 41, 42, 31]})
    out = category_rerank(cands(5, [30, 12]), hist, paths, alpha=0.5, beta=0.5, n=2)
    scores = dict(zip(out["product_id"].to_list(), out["score"].to_list()))
    assert scores[12] == pytest.approx(0.25 + 0.5)
    assert scores[30] == pytest.approx(0.5 + 0.5 * 0.2 * 1 / 3)  # other: events 11 -> 3 max
    assert order(out, 5) == [12, 30]


def test_adaptive_weights_follow_history_length():
    # user 1 has 3 distinct items (< 5): 0.3 / 0.7 whatever alpha/beta say
    out = category_rerank(cands(1, [30, 11]), HISTORY, PATHS, alpha=1.0, beta=0.0, n=2, adaptive=True)
    scores = dict(zip(out["product_id"].to_list(), out["score"].to_list()))
    assert scores[30] == pytest.approx(0.3)
    assert scores[11] == pytest.approx(0.3 / 2 + 0.7)
    many = pl.DataFrame({"user_id": [1] * 25, "product_id": list(range(1000, 1025))})
    out = category_rerank(cands(1, [30, 11]), pl.concat([HISTORY, many]), PATHS, alpha=1.0, beta=0.0, n=2, adaptive=True)
    assert order(out) == [30, 11]  # 28 items: the given weights


POPULAR = pl.DataFrame({"product_id": [20, 30, 11, 12], "popularity": [9.0, 8.0, 7.0, 6.0]})


def test_cold_users_get_the_popular_fallback():
    cand = pl.concat([cands(1, [30]), cands(7, [12, 11])])  # 7 has candidates but no history
    out = category_rerank(cand, HISTORY, PATHS, alpha=0.5, beta=0.5, n=3, popular=POPULAR, users=[1, 7, 8])
    for cold in (7, 8):
        rows = out.filter(pl.col("user_id") == cold).sort("rank")
        assert rows["product_id"].to_list() == [20, 30, 11]
        assert set(rows["source"]) == {"fallback"} and not rows["reranked"].any()
        assert rows["score"].to_list() == [9.0, 8.0, 7.0]
    # the warm user is topped up, skipping what the list already holds
    warm = out.filter(pl.col("user_id") == 1).sort("rank")
    assert warm["product_id"].to_list() == [30, 20, 11]
    assert warm["source"].to_list() == ["als", "popular", "popular"]
    assert warm["rank"].to_list() == [1, 2, 3] and warm["reranked"].all()


def test_unavailable_items_are_never_recommended():
    avail = pl.DataFrame({"product_id": [11, 20, 30], "available": [0, 0, 1]})
    cand = pl.concat([cands(1, [11, 30, 12]), cands(7, [20])])
    out = category_rerank(cand, HISTORY, PATHS, alpha=0.5, beta=0.5, n=3, popular=POPULAR, available=avail, users=[1, 7])
    assert not out["product_id"].is_in([11, 20]).any()
    # 11 would have led user 1's list (top category, rank 1) and 20 led the fallback
    assert order(out) == [30, 12]  # the popular items left (30, 12) are already in the list
    assert order(out, 7) == [30, 12]
    # item 12 has no availability value: kept
    assert out.filter(pl.col("user_id") == 7)["source"].to_list() == ["fallback", "fallback"]
    # a null value (the snapshot's "never stated") blocks nothing either
    stated = pl.DataFrame({"product_id": [11, 12], "available": [0, None]}, schema={"product_id": pl.Int32, "available": pl.Int8})
    kept = category_rerank(cand, HISTORY, PATHS, alpha=0.5, beta=0.5, n=3, popular=POPULAR, available=stated, users=[1, 7])
    assert 12 in order(kept) and 11 not in order(kept)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5, "beta": 0.0}, "alpha must be in [0, 1], got 1.5"),
        ({"alpha": 0.5, "beta": -0.1}, "beta must be in [0, 1], got -0.1"),
        ({"alpha": 0.7, "beta": 0.4}, "alpha + beta must be <= 1"),
        ({"alpha": 0.5, "beta": 0.5, "n": 0}, "n must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    kwargs = {"n": 3, **kwargs}
    with pytest.raises(ValueError) as err:
        category_rerank(cands(1, [30]), HISTORY, PATHS, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_frames_name_the_column():
    with pytest.raises(ValueError, match=r"^candidates: missing column score"):
        category_rerank(cands(1, [30]).drop("score"), HISTORY, PATHS, alpha=0.5, beta=0.5, n=3)
    with pytest.raises(ValueError, match=r"^available: column available: value 2 is not 0 or 1"):
        bad = pl.DataFrame({"product_id": [30], "available": [2]})
        category_rerank(cands(1, [30]), HISTORY, PATHS, alpha=0.5, beta=0.5, n=3, available=bad)


def test_item_paths_as_of_the_cutoff():
    tree = category_paths(pl.DataFrame({"category_id": [10, 11], "parent_id": [None, 10]}, schema={"category_id": pl.Int64, "parent_id": pl.Int64}))
    ts = [datetime(2015, 5, d, tzinfo=timezone.utc) for d in (1, 3, 1)]
    hist = pl.DataFrame({"item_id": [1, 1, 2], "ts": ts, "category_id": [10, 11, 99]})
    snap = EventsSnapshot(pl.DataFrame(), tree, hist, hist.head(0))
    # item 1 moved to 11 on the 3rd; 99 is not in the tree: a path of itself
    assert item_paths_at(snap, datetime(2015, 5, 2)).to_dicts() == [{"product_id": 1, "path": [10]}, {"product_id": 2, "path": [99]}]
    assert item_paths_at(snap, datetime(2015, 5, 4))["path"].to_list() == [[10, 11], [99]]


# ---- metrics --------------------------------------------------------------------------------

# Three users, lists of 5. Truth: u1 {30, 12}, u2 {11}, u3 {20}. u3 has no training row (cold).
RECS = pl.DataFrame(
    {
        "user_id": [1] * 5 + [2] * 5 + [3] * 5,
        "rank": [1, 2, 3, 4, 5] * 3,
        "product_id": [30, 11, 12, 31, 10, 20, 30, 11, 12, 10, 20, 30, 11, 12, 10],
        "reranked": [True] * 10 + [False] * 5,
    }
)
TRUTH = pl.DataFrame({"user_id": [1, 1, 2, 3], "product_id": [30, 12, 11, 20]})
TRAIN = pl.DataFrame({"user_id": [1, 1, 2, 2, 2, 4], "product_id": [20, 30, 20, 11, 12, 20]})  # 6 rows, items 20, 30, 11, 12


def test_metrics_hand_computed():
    m = event_metrics(RECS, TRUTH, train=TRAIN, item_paths=PATHS)
    log2 = math.log2
    # u1: hits at ranks 1 and 3 of |B|=2; u2: hit at rank 3 of 1; u3: hit at rank 1 of 1
    assert m["precision@5"] == pytest.approx((2 / 5 + 1 / 5 + 1 / 5) / 3)
    assert m["recall@20"] == pytest.approx((1 + 1 + 1) / 3)
    ndcg_u1 = (1 + 1 / log2(4)) / (1 + 1 / log2(3))
    ndcg_u2 = (1 / log2(4)) / 1
    assert m["ndcg@10"] == pytest.approx((ndcg_u1 + ndcg_u2 + 1.0) / 3)
    assert m["hit_rate@5"] == pytest.approx(1.0)
    # 6 distinct items recommended (30, 11, 12, 31, 10, 20) out of 4 training items: capped at 1
    assert m["coverage@5"] == 1.0
    assert event_metrics(RECS, TRUTH, train=TRAIN, item_paths=PATHS, n_items=12)["coverage@5"] == pytest.approx(6 / 12)
    # novelty: counts 20 -> 3, 30 -> 1, 11 -> 1, 12 -> 1, unseen (31, 10) -> 1; N = 6
    si = {20: -log2(3 / 6), 30: -log2(1 / 6), 11: -log2(1 / 6), 12: -log2(1 / 6), 31: -log2(1 / 6), 10: -log2(1 / 6)}
    every = RECS["product_id"].to_list()
    assert m["novelty@5"] == pytest.approx(sum(si[i] for i in every) / len(every))
    # categories: u1 {30, 11, 12, 30, 10} -> 4; u2 {20, 30, 11, 12, 10} -> 5; u3 the same -> 5
    assert m["diversity@5"] == pytest.approx((4 + 5 + 5) / 3)
    assert m["cold_share"] == pytest.approx(1 / 3)
    assert m["reranked_share"] == pytest.approx(2 / 3)
    # the repeat split: target items the user had before (u1's 30; u2's 11)
    assert m["repeat"]["n_users"] == 2 and m["explore"]["n_users"] == 2


def test_metric_parts_fail_when_broken():
    # a list without the flag was not re-ranked; a user without a list counts zeros
    m = event_metrics(RECS.drop("reranked").filter(pl.col("user_id") != 2), TRUTH, train=TRAIN, item_paths=PATHS)
    assert m["reranked_share"] == 0.0
    assert m["hit_rate@5"] == pytest.approx(2 / 3)
    # users outside the truth do not count anywhere
    extra = pl.DataFrame({"user_id": [9] * 5, "rank": [1, 2, 3, 4, 5], "product_id": [1, 2, 3, 111, 31], "reranked": [True] * 5})
    m2 = event_metrics(pl.concat([RECS, extra]), TRUTH, train=TRAIN, item_paths=PATHS, n_items=100)
    assert m2["coverage@5"] == pytest.approx(6 / 100) and m2["reranked_share"] == pytest.approx(2 / 3)
    assert category_diversity(RECS, PATHS, 2) == pytest.approx((2 + 2 + 2) / 3)
    assert peer_novelty(RECS, TRAIN.head(0), 5) is None
    with pytest.raises(ValueError, match=r"^train: missing column product_id"):
        event_metrics(RECS, TRUTH, train=TRAIN.rename({"product_id": "item_id"}), item_paths=PATHS)


# ---- end to end on generated events data ------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    folder = Path(tmp_path_factory.mktemp("events_rerank"))
    generate_events(folder, visitors=20_000, seed=11)  # ~10 warm target users: the log is that sparse
    return read_events_form(folder)


def test_rerank_and_metrics_on_generated_events(snapshot):
    split = cutoff_split(snapshot.events)
    ratings = event_ratings(split.train, reference_time=split.cutoff)
    paths = item_paths_at(snapshot, split.cutoff)
    avail = snapshot.available_at(split.cutoff).rename({"item_id": "product_id"})
    users = split.users["user_id"]
    warm = split.users.filter(~pl.col("cold"))["user_id"]
    candidates = global_popularity(ratings, warm, 100)  # any model's candidates will do
    history = split.train.select(pl.col("visitor_id").cast(pl.Int32).alias("user_id"), pl.col("item_id").cast(pl.Int32).alias("product_id"))
    out = category_rerank(
        candidates, history, paths, alpha=0.6, beta=0.4, n=20, available=avail, popular=item_popularity(ratings), users=users
    )
    blocked = avail.filter(pl.col("available") == 0)["product_id"]
    assert blocked.len() > 0 and not out["product_id"].is_in(blocked.implode()).any()
    assert out.group_by("user_id").len()["len"].min() == 20 and out.select("user_id").n_unique() == users.len()
    cold = out.join(split.users.filter(pl.col("cold")), on="user_id", how="semi")
    assert set(cold["source"]) == {"fallback"} and not cold["reranked"].any()
    # the re-rank reorders the (identical) popular candidate lists by each user's categories
    top5 = out.filter(pl.col("rank") <= 5).join(warm.to_frame(), on="user_id", how="semi")
    lists = top5.group_by("user_id").agg(pl.col("product_id").sort_by("rank"))["product_id"].to_list()
    assert len({tuple(x) for x in lists}) > 1

    m = event_metrics(out, split.truth, train=ratings, item_paths=paths)
    assert m["cold_share"] == pytest.approx(split.cold_share)
    assert m["reranked_share"] == pytest.approx(1 - split.cold_share)
    assert 0 < m["recall@20"] <= 1 and 0 < m["coverage@5"] <= 1 and 1 <= m["diversity@5"] <= 5 and m["novelty@5"] > 0
