"""Events form (issue 16): weighted and decayed ratings, the peer's one-pass filters, the cut-off
split with its add-to-cart/purchase target and cold visitors, and RFM on events -- hand-computed
on a tiny log read by the real reader, then end to end on generated data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from insightflow_assets.data.events import generate_events
from insightflow_assets.evaluation.metrics import evaluate, prepare_truth
from insightflow_assets.ingest.events import read_events_form
from insightflow_assets.ratings.events import cutoff_split, event_ratings
from insightflow_assets.recommenders.als import Als
from insightflow_assets.recommenders.base import TrainingWindow
from insightflow_assets.recommenders.baselines import Popularity
from insightflow_assets.segmentation.events_rfm import events_rfm_table
from insightflow_assets.segmentation.rfm import USER_SEG_SCHEMA, segment_users

DAY = 86_400_000
C = 1_500_000_000_000  # the cut-off of the hand-written log (2017-07-14 02:40 UTC)
CUT = datetime.fromtimestamp(C / 1000, tz=timezone.utc)

# (time, visitor, event, item, transactionid)
LOG = [
    (C - 4 * DAY, 1, "view", 10, None),
    (C - 2 * DAY, 1, "addtocart", 10, None),
    (C - 2 * DAY, 1, "transaction", 10, 1),
    (C - 1 * DAY, 1, "view", 11, None),
    (C - 8 * DAY, 2, "view", 10, None),
    (C - 3 * DAY, 2, "view", 12, None),
    (C - 6 * DAY, 3, "view", 11, None),
    # visitor 5: two purchases in one basket, a later one, then a view (recency is from the buy)
    (C - 5 * DAY, 5, "transaction", 14, 3),
    (C - 5 * DAY, 5, "transaction", 15, 3),
    (C - 9 * DAY // 2, 5, "transaction", 14, 4),
    (C - 1 * DAY, 5, "view", 10, None),
    # after the cut-off
    (C + 1 * DAY, 1, "view", 12, None),  # a view: not a target
    (C + 1 * DAY, 1, "addtocart", 13, None),  # a cart: a target
    (C + 2 * DAY, 2, "transaction", 11, 2),  # a purchase: a target
    (C + 1 * DAY, 4, "addtocart", 10, None),  # visitor 4 has no event before: cold
    (C + 3 * DAY, 3, "view", 10, None),
]


def write_log(folder: Path, log=LOG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{t},{v},{e},{i},{'' if tid is None else tid}\n" for t, v, e, i, tid in log)
    (folder / "events.csv").write_text("timestamp,visitorid,event,itemid,transactionid\n" + rows)
    (folder / "item_properties.csv").write_text(f"timestamp,itemid,property,value\n{C - 30 * DAY},10,categoryid,1\n")
    (folder / "category_tree.csv").write_text("categoryid,parentid\n1,\n")
    return folder


@pytest.fixture
def events(tmp_path) -> pl.DataFrame:
    return read_events_form(write_log(tmp_path)).events


@pytest.fixture
def train(events) -> pl.DataFrame:
    return cutoff_split(events, CUT).train


def by_pair(ratings: pl.DataFrame, col: str = "rating") -> dict[tuple[int, int], float]:
    return {(u, p): v for u, p, v in ratings.select("user_id", "product_id", col).iter_rows()}


# ---- ratings -------------------------------------------------------------------------------


def test_weighted_ratings_hand_computed(train):
    r = event_ratings(train, reference_time=CUT)
    assert r.schema["user_id"] == pl.Int32 and r.schema["product_id"] == pl.Int32 and r.schema["rating"] == pl.Float32
    assert r.select("user_id", "product_id").rows() == sorted(by_pair(r))  # sorted, one row a pair
    assert by_pair(r) == {
        (1, 10): 1 + 4 + 8, (1, 11): 1, (2, 10): 1, (2, 12): 1, (3, 11): 1,
        (5, 10): 1, (5, 14): 8 + 8, (5, 15): 8,
    }  # fmt: skip
    row = r.filter((pl.col("user_id") == 1) & (pl.col("product_id") == 10)).row(0, named=True)
    assert (row["purchases"], row["views"], row["addtocarts"], row["transactions"]) == (3, 1, 1, 1)
    assert row["last_day_before_target"] == 2
    assert by_pair(r, "last_day_before_target")[(5, 14)] == 4  # 4.5 days, whole days


def test_custom_weights_and_purchase_only(train):
    r = event_ratings(train, weights={"view": 0.5, "addtocart": 2, "transaction": 3})
    assert by_pair(r)[(1, 10)] == 0.5 + 2 + 3
    only = event_ratings(train, weights={"transaction": 1})
    # views and carts weigh 0: they make no pair and count nowhere
    assert by_pair(only) == {(1, 10): 1, (5, 14): 2, (5, 15): 1}
    assert by_pair(only, "purchases") == {(1, 10): 1, (5, 14): 2, (5, 15): 1}


def test_time_decay_halves_per_half_life_to_the_cutoff(train):
    r = by_pair(event_ratings(train, half_life_days=2, reference_time=CUT))
    assert r[(1, 10)] == pytest.approx(1 * 0.25 + 4 * 0.5 + 8 * 0.5, rel=1e-6)
    assert r[(1, 11)] == pytest.approx(0.5**0.5, rel=1e-6)
    assert r[(2, 10)] == pytest.approx(0.5**4, rel=1e-6)
    assert r[(5, 14)] == pytest.approx(8 * 0.5**2.5 + 8 * 0.5**2.25, rel=1e-6)
    # without a reference the ages run to the latest event (C - 1 day): one day younger each
    later = by_pair(event_ratings(train, half_life_days=2))
    assert later[(2, 10)] == pytest.approx(0.5**3.5, rel=1e-6)


def test_filters_are_the_peers_single_pass(train):
    r = event_ratings(train, min_user_interactions=2, min_item_interactions=2)
    # counted on the unfiltered pairs: visitors 1 (2 items), 2 (2), 5 (3) and items 10 (3 visitors),
    # 11 (2) pass. Item-then-user (build_ratings) would keep only visitor 1's pairs; iterating to
    # a fixed point would keep nothing.
    assert sorted(by_pair(r)) == [(1, 10), (1, 11), (2, 10), (5, 10)]
    assert sorted(by_pair(event_ratings(train, min_user_interactions=3))) == [(5, 10), (5, 14), (5, 15)]
    assert sorted(by_pair(event_ratings(train, min_item_interactions=3))) == [(1, 10), (2, 10), (5, 10)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": {"view": 1, "click": 2}}, "weights: unknown event type 'click'"),
        ({"weights": {"view": -1, "transaction": 8}}, "weights.view: must be a finite number >= 0"),
        ({"weights": {"view": float("nan")}}, "weights.view: must be a finite number >= 0"),
        ({"weights": {"view": 0, "addtocart": 0}}, "weights: every event type weighs 0"),
        ({"half_life_days": 0}, "half_life_days must be > 0"),
        ({"min_user_interactions": 0}, "min_user_interactions must be an integer >= 1"),
        ({"min_item_interactions": 1.5}, "min_item_interactions must be an integer >= 1"),
        ({"reference_time": CUT - timedelta(days=2)}, "reference_time .* is before the latest event"),
    ],
)
def test_bad_settings_are_one_line_errors(train, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        event_ratings(train, **kwargs)
    assert "\n" not in str(err.value)


def test_ids_outside_int32_are_refused(train):
    big = train.with_columns(pl.when(pl.col("visitor_id") == 3).then(2**31).otherwise(pl.col("visitor_id")).alias("visitor_id"))
    with pytest.raises(ValueError, match=r"events: column visitor_id: id 2147483648 is outside"):
        event_ratings(big)
    with pytest.raises(ValueError, match=r"events: column visitor_id"):
        cutoff_split(big)


# ---- the cut-off split ---------------------------------------------------------------------


def test_split_target_is_carts_and_purchases_after_the_cutoff(events):
    s = cutoff_split(events, CUT)
    assert s.cutoff == CUT
    assert s.train.height == 11 and (s.train["ts"] < CUT).all()
    assert s.truth.rows() == [(1, 13), (2, 11), (4, 10)]  # not visitor 1's view of 12, nor 3's view
    assert s.truth.schema == pl.Schema({"user_id": pl.Int32, "product_id": pl.Int32})
    assert s.users.rows() == [(1, False), (2, False), (4, True)]
    assert s.cold_share == pytest.approx(1 / 3)
    # prepare_truth / evaluate read it as they read a basket holdout
    recs = pl.DataFrame({"user_id": [1, 2, 4], "rank": [1, 1, 1], "product_id": [13, 10, 10]})
    scores = evaluate(recs, prepare_truth(s.truth), ks=(1,))
    assert scores["n_users"] == 3 and scores["hit_rate@1"] == pytest.approx(2 / 3)


def test_split_window_and_boundary(events):
    # an event exactly at the cut-off is held out (training is strictly before)
    s = cutoff_split(events, CUT - timedelta(days=2))
    assert (1, 10) in s.truth.rows() and not ((s.train["visitor_id"] == 1) & (s.train["ts"] >= CUT - timedelta(days=2))).any()
    # with a given cut-off, holdout_days closes the window
    assert cutoff_split(events, CUT, holdout_days=1.5).truth.rows() == [(1, 13), (4, 10)]


def test_default_cutoff_is_the_last_share_of_the_span(events):
    # span C-8d .. C+3d = 11 days; the peer holds out its last 15 %: 1.65 days, cut-off C+1.35d
    s = cutoff_split(events)
    assert s.cutoff == CUT + timedelta(days=3) - timedelta(days=11) * 0.15
    assert s.truth.rows() == [(2, 11)]
    assert cutoff_split(events, holdout_days=2.5).cutoff == CUT + timedelta(days=0.5)
    assert cutoff_split(events, holdout_share=0.5).cutoff == CUT + timedelta(days=3) - timedelta(days=5.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cutoff": CUT - timedelta(days=30)}, "no event before it"),
        ({"cutoff": CUT + timedelta(days=2, seconds=1)}, "no addtocart or transaction event in"),
        ({"holdout_days": 0}, "holdout_days must be > 0"),
        ({"holdout_share": 1.0}, r"holdout_share must be in \(0, 1\)"),
        ({"target_events": ("purchase",)}, "target_events: unknown event type 'purchase'"),
    ],
)
def test_bad_split_settings_are_one_line_errors(events, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        cutoff_split(events, **kwargs)
    assert "\n" not in str(err.value)


# ---- RFM on events -------------------------------------------------------------------------


def test_events_rfm_hand_checked(train):
    rfm = events_rfm_table(train, reference_time=CUT)
    assert rfm.columns == ["user_id", "recency_days", "frequency", "monetary", "r_z", "f_z", "m_z"]
    got = {u: (r, f, m) for u, r, f, m in rfm.select("user_id", "recency_days", "frequency", "monetary").iter_rows()}
    assert got == {
        1: (2.0, 1, 1.0),  # from the purchase
        2: (3.0, 0, 0.0),  # never bought: from the last event
        3: (6.0, 0, 0.0),
        5: (4.5, 2, 3.0),  # two baskets, three items; the later view does not count
    }
    assert rfm.sort("r_z", descending=True)["user_id"][0] == 1  # most recent: highest r_z
    assert rfm.sort("f_z", descending=True)["user_id"][0] == 5
    buyers = events_rfm_table(train, reference_time=CUT, buyers_only=True)
    assert buyers["user_id"].to_list() == [1, 5]
    # the default reference is the latest event (C - 1 day)
    assert events_rfm_table(train).filter(pl.col("user_id") == 1)["recency_days"][0] == 1.0


def test_events_rfm_refuses_a_reference_before_the_latest_event(train):
    with pytest.raises(ValueError, match="reference_time .* is before the latest event"):
        events_rfm_table(train, reference_time=CUT - timedelta(days=2))


# ---- end to end on generated data ----------------------------------------------------------


@pytest.fixture(scope="module")
def generated_split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("events-gen")
    generate_events(folder, visitors=20_000, seed=11)
    events = read_events_form(folder).events
    return events, cutoff_split(events)


def test_generated_split_and_ratings_feed_the_recommenders(generated_split):
    events, s = generated_split
    after = events.filter(pl.col("ts") >= s.cutoff)
    targets = after.filter(pl.col("event").cast(pl.String) != "view")
    assert s.truth.height == targets.select("visitor_id", "item_id").unique().height
    assert s.train.height + after.height == events.height
    assert 0 < s.cold_share < 1  # RetailRocket-like: most target visitors are new
    # without decay or filter the weights are conserved: the ratings sum the training events' weights
    r = event_ratings(s.train, reference_time=s.cutoff)
    kinds = s.train["event"].cast(pl.String).value_counts()
    expected = sum({"view": 1, "addtocart": 4, "transaction": 8}[k] * n for k, n in kinds.iter_rows())
    assert float(r["rating"].cast(pl.Float64).sum()) == pytest.approx(expected)
    assert r.select("user_id", "product_id").is_duplicated().sum() == 0 and (r["rating"] > 0).all()

    window = TrainingWindow(r, baskets=pl.DataFrame(schema={"user_id": pl.Int32, "order_number": pl.Int16, "product_id": pl.Int32}))
    warm = s.users.filter(~pl.col("cold"))["user_id"]
    truth = prepare_truth(s.truth, users=warm)
    for rec in (Als(factors=8, iterations=3, regularization=5.0), Popularity()):
        recs = rec.fit(window).recommend(warm.to_numpy(), 20)
        assert set(recs["user_id"].unique()) <= set(warm)
        scores = evaluate(recs, truth, ks=(20,))
        assert scores["n_users"] == warm.len() and 0 <= scores["recall@20"] <= 1
    rfm = events_rfm_table(s.train, reference_time=s.cutoff)
    assert rfm.height == s.train["visitor_id"].n_unique()
    assert np.isclose(rfm["frequency"].sum(), s.train["transaction_id"].n_unique() - 1)  # minus the null


def test_events_rfm_feeds_the_segmentation(generated_split):
    _, s = generated_split
    rfm = events_rfm_table(s.train, reference_time=s.cutoff, buyers_only=True)
    user_seg, centroids, _ = segment_users(rfm, k=3, n_init=2, sample_for_fit=None)
    assert user_seg.schema == pl.Schema(USER_SEG_SCHEMA)
    assert user_seg["user_id"].to_list() == rfm["user_id"].to_list()
    assert user_seg["segment"].n_unique() == centroids.height >= 1
