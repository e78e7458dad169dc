"""The events form through the snapshot (issue 16): sessions as orders, the target after the
cut-off, items with category and availability as of the cut-off, weighted ratings, a holdout of
carts and purchases only, and the ingest asset's validations — on hand-written files whose
every expected value is worked out in the comments."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from insightflow_assets.ingest.events import read_events_form
from insightflow_assets.ingest.events_orders import events_to_snapshot
from insightflow_assets.ingest.events_schema import is_events_form
from insightflow_assets.ingest.loading import InputError
from insightflow_assets.ratings.build import build_holdout, build_ratings, training_baskets
from insightflow_assets_tests.test_ingest import INGEST, RUN, stored_files

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_433_000_000_000  # 2015-05-30 15:33:20 UTC
CUT = T0 + 10 * DAY
CUTOFF = datetime.fromtimestamp(CUT / 1000, tz=timezone.utc)

# (ms, visitor, event, item, transaction)
EVENTS = [
    (T0, 1, "view", 10, None),  # visitor 1, session 1
    (T0 + 10 * MIN, 1, "view", 11, None),
    (T0 + 15 * MIN, 1, "addtocart", 10, None),
    (T0 + 2 * HOUR, 1, "view", 10, None),  # 105 min later: session 2
    (CUT + HOUR, 1, "transaction", 10, 500),  # target: item 10 bought again
    (CUT + 2 * HOUR, 1, "view", 12, None),  # a view after the cut-off is no target
    (T0 + DAY, 2, "view", 11, None),
    (CUT + 3 * HOUR, 2, "addtocart", 12, None),  # target: item 12 (new to visitor 2)
    (CUT + HOUR, 3, "addtocart", 11, None),  # visitor 3: cold (nothing before the cut-off)
    (T0 + 2 * DAY, 4, "view", 12, None),  # visitor 4: no target
    (CUT + 5 * HOUR, 4, "view", 10, None),
]
PROPERTIES = [  # item 12 never states availability
    (T0 - DAY, 10, "categoryid", "3"),
    (T0 - DAY, 10, "available", "1"),
    (T0 - DAY, 11, "categoryid", "2"),
    (T0 - DAY, 11, "available", "1"),
    (CUT - HOUR, 11, "available", "0"),  # unavailable at the cut-off
    (T0 - DAY, 12, "categoryid", "3"),
]
TREE = "categoryid,parentid\n1,\n2,1\n3,2\n"


def write_events(folder: Path, events=EVENTS, properties=PROPERTIES, tree: str = TREE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{t},{v},{e},{i},{'' if x is None else x}\n" for t, v, e, i, x in events)
    (folder / "events.csv").write_text("timestamp,visitorid,event,itemid,transactionid\n" + rows)
    props = "".join(f"{t},{i},{p},{v}\n" for t, i, p, v in properties)
    (folder / "item_properties.csv").write_text("timestamp,itemid,property,value\n" + props)
    (folder / "category_tree.csv").write_text(tree)
    return folder


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    folder = write_events(tmp_path_factory.mktemp("events"))
    return events_to_snapshot(read_events_form(folder), cutoff=CUTOFF)


def test_sessions_are_prior_orders_and_the_target_is_the_last(snapshot):
    snap, info = snapshot
    orders = snap.orders.sort("user_id", "order_number")
    assert orders.select("user_id", "order_number", "eval_set").rows() == [
        (1, 1, "prior"), (1, 2, "prior"), (1, 3, "train"),
        (2, 1, "prior"), (2, 2, "train"),
        (3, 1, "train"),
        (4, 1, "prior"),
    ]  # fmt: skip
    assert orders["order_id"].to_list() == list(range(1, 8))  # numbered by visitor, then time
    first = orders.row(0, named=True)
    assert (first["order_dow"], first["order_hour_of_day"], first["days_since_prior_order"]) == (6, 15, None)  # a Saturday
    assert orders.filter(pl.col("user_id") == 1)["days_since_prior_order"].to_list() == [None, 0.0, 10.0]
    assert info["sessions"] == 4 and info["targets"] == 3
    assert info["cold_share"] == pytest.approx(1 / 3, abs=1e-4)  # visitor 3 of the three with a target (rounded)


def test_lines_carry_event_counts_cart_order_and_reorders(snapshot):
    snap, _ = snapshot
    lines = snap.order_products.sort("order_id", "add_to_cart_order")
    assert is_events_form(snap.order_products) and is_events_form(snap.products)
    cols = ["order_id", "product_id", "add_to_cart_order", "reordered", "views", "addtocarts", "transactions"]
    assert lines.select(cols).rows() == [
        (1, 10, 1, 0, 1, 1, 0),  # session 1: item 10 viewed then carted
        (1, 11, 2, 0, 1, 0, 0),
        (2, 10, 1, 1, 1, 0, 0),  # session 2: item 10 again
        (3, 10, 1, 1, 0, 0, 1),  # target: the purchase (the later view of 12 is no target)
        (4, 11, 1, 0, 1, 0, 0),
        (5, 12, 1, 0, 0, 1, 0),  # visitor 2's target: new to them
        (6, 11, 1, 0, 0, 1, 0),  # visitor 3's target
        (7, 12, 1, 0, 1, 0, 0),
    ]  # fmt: skip


def test_products_carry_category_and_availability_as_of_the_cutoff(snapshot):
    snap, _ = snapshot
    p = snap.products.sort("product_id")
    assert p["product_id"].to_list() == [10, 11, 12]
    assert p["category_path"].to_list() == [[1, 2, 3], [1, 2], [1, 2, 3]]
    assert p["available"].to_list() == [1, 0, None]  # 11 went unavailable before the cut-off
    assert p["aisle"].to_list() == ["category 3", "category 2", "category 3"]
    assert p["department"].to_list() == ["category 1"] * 3
    assert p["aisle_id"][0] == p["aisle_id"][2] != p["aisle_id"][1]
    assert p["department_id"].n_unique() == 1


def _imputed(orders: pl.DataFrame) -> pl.DataFrame:
    return orders.with_columns(is_first_order=pl.col("order_number") == 1)


def test_ratings_weigh_the_counts_of_every_visitors_sessions(snapshot):
    snap, _ = snapshot
    # the events form filters visitors and items below 5 interactions by default (seed 003): none here
    assert build_ratings(_imputed(snap.orders), snap.order_products).height == 0
    r = build_ratings(_imputed(snap.orders), snap.order_products, min_user_interactions=1, min_item_interactions=1)
    # visitor 1, item 10: view + cart (1 + 4) in session 1, a view in session 2; the purchase
    # after the cut-off is the target, not a rating. Visitor 4 has no target and still rates.
    assert r.select("user_id", "product_id", "purchases", "rating").rows() == [
        (1, 10, 2, 6.0), (1, 11, 1, 1.0), (2, 11, 1, 1.0), (4, 12, 1, 1.0),
    ]  # fmt: skip
    heavy = build_ratings(
        _imputed(snap.orders), snap.order_products, event_weights={"view": 0, "addtocart": 1},
        min_user_interactions=1, min_item_interactions=1,
    )  # fmt: skip
    assert heavy.filter(pl.col("rating") > 0).select("user_id", "product_id", "rating").rows()[0] == (1, 10, 1.0)
    with pytest.raises(ValueError, match="weights: unknown event type 'click'"):
        build_ratings(_imputed(snap.orders), snap.order_products, event_weights={"click": 1.0})


def test_holdout_is_the_target_only_and_baskets_every_session(snapshot):
    snap, _ = snapshot
    h = build_holdout(_imputed(snap.orders), snap.order_products)
    assert h.rows() == [(1, 10), (2, 12), (3, 11)]  # visitor 4 has no target: no fallback to a session
    b = training_baskets(_imputed(snap.orders), snap.order_products)
    assert b.rows() == [(1, 1, 10), (1, 1, 11), (1, 2, 10), (2, 1, 11), (4, 1, 12)]


def test_default_cutoff_is_the_last_15_percent_of_the_span(tmp_path):
    snap, info = events_to_snapshot(read_events_form(write_events(tmp_path)))
    span = EVENTS[-1][0] - T0  # the latest event is visitor 4's view after the cut-off
    expected = datetime.fromtimestamp((T0 + span * 0.85) / 1000, tz=timezone.utc)
    assert datetime.fromisoformat(info["cutoff"]) == pytest.approx(expected, abs=__import__("datetime").timedelta(milliseconds=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cutoff": datetime(2030, 1, 1, tzinfo=timezone.utc)}, "events.csv: column timestamp:"),
        ({"cutoff": CUTOFF, "session_gap_minutes": 0}, "session_gap_minutes must be > 0"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, kwargs, message):
    events = read_events_form(write_events(tmp_path))
    with pytest.raises(InputError, match=message):
        events_to_snapshot(events, **kwargs)


def test_visitor_ids_beyond_int32_are_refused(tmp_path):
    big = [(t, v + (2**31 if v == 4 else 0), e, i, x) for t, v, e, i, x in EVENTS]
    with pytest.raises(InputError, match="events.csv: column visitorid: ids must be in"):
        events_to_snapshot(read_events_form(write_events(tmp_path, events=big)), cutoff=CUTOFF)


# ---- through the ingest asset --------------------------------------------------------------


def _ingest(tmp_path, instance, clean: Path, **config):
    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs

    curated = tmp_path / "curated"
    run_config = {"ops": {"instacart_snapshot": {"config": config}}} if config else None
    outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated), selection=INGEST, run_config=run_config)
    return outcome, curated


def test_the_snapshot_asset_stores_the_events_form(tmp_path, instance):
    outcome, curated = _ingest(tmp_path, instance, write_events(tmp_path / "clean"), cutoff=CUTOFF.isoformat())
    assert outcome.ok, outcome.errors
    raw = curated / "recsys/raw" / RUN
    orders = pl.read_parquet(raw / "orders.parquet")
    assert orders.filter(pl.col("eval_set") == "train")["user_id"].sort().to_list() == [1, 2, 3]
    lines = pl.read_parquet(raw / "order_products.parquet")
    assert lines["transactions"].sum() == 1 and lines["addtocarts"].sum() == 3 and lines["views"].sum() == 5
    assert pl.read_parquet(raw / "products.parquet")["available"].to_list() == [1, 0, None]
    meta = outcome.materialized["raw_order_products"]
    assert meta["input_form"] == "events" and meta["derivation"]["cutoff"] == CUTOFF.isoformat()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("orders.csv", "holds both events.csv and orders.csv; keep one input form"),
        ("no tree", "missing file category_tree.csv"),
        ("bad cutoff", "instacart_snapshot config: cutoff 'yesterday' is not an ISO 8601 time"),
    ],
)
def test_bad_events_inputs_fail_before_anything_is_written(tmp_path, instance, change, message):
    clean = write_events(tmp_path / "clean")
    config = {"cutoff": "yesterday"} if change == "bad cutoff" else {}
    if change == "orders.csv":
        (clean / "orders.csv").write_text("order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order\n")
    if change == "no tree":
        (clean / "category_tree.csv").unlink()
    outcome, curated = _ingest(tmp_path, instance, clean, **config)
    assert not outcome.success
    assert len(outcome.errors) == 1 and message in outcome.errors[0] and "\n" not in outcome.errors[0]
    assert stored_files(curated) == []
