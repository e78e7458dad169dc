"""The events input form (issue 16, first half): the RetailRocket-shaped generator, the reader's
as-of resolution and category paths on hand-written files, and every validation."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from insightflow_assets.data.events import generate_events, generate_events_tables, summarize_events
from insightflow_assets.ingest.events import read_events_form
from insightflow_assets.ingest.loading import InputError

# ---- the generator -------------------------------------------------------------------------

VISITORS = 20_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("events")
    return folder, generate_events(folder, visitors=VISITORS, seed=5)


@pytest.fixture(scope="module")
def files(generated) -> dict[str, pl.DataFrame]:
    folder, _ = generated
    return {p.stem: pl.read_csv(p) for p in folder.glob("*.csv")}


def test_generator_writes_the_retailrocket_files(generated, files):
    folder, counts = generated
    assert sorted(p.name for p in folder.iterdir()) == [
        "category_tree.csv", "events.csv", "item_properties_part1.csv", "item_properties_part2.csv",
    ]  # fmt: skip
    assert files["events"].columns == ["timestamp", "visitorid", "event", "itemid", "transactionid"]
    assert files["item_properties_part1"].columns == ["timestamp", "itemid", "property", "value"]
    assert files["category_tree"].columns == ["categoryid", "parentid"]
    assert counts == summarize_events(files)
    assert counts["visitors"] == VISITORS


def test_generator_shape_is_retailrocket_like(generated, files):
    _, c = generated
    assert c["median_events_per_visitor"] == 1.0
    assert 1.6 < c["events"] / c["visitors"] < 2.4
    assert c["max_events_per_visitor"] > 50  # heavy tail
    assert c["views"] / c["events"] == pytest.approx(0.967, abs=0.01)
    assert c["addtocarts"] / c["events"] == pytest.approx(0.025, abs=0.005)
    assert c["transactions"] / c["events"] == pytest.approx(0.008, abs=0.003)
    ev = files["events"]
    # transactionid exactly on transactions; baskets may hold several purchases
    assert ev.filter(pl.col("event") == "transaction")["transactionid"].null_count() == 0
    assert ev.filter(pl.col("event") != "transaction")["transactionid"].null_count() == ev.height - c["transactions"]
    assert c["transaction_ids"] <= c["transactions"]
    # popular items dominate: the top 1 % of items get far more than 1 % of the events
    per_item = ev.group_by("itemid").len().sort("len", descending=True)["len"]
    assert per_item.head(max(1, per_item.len() // 100)).sum() / ev.height > 0.08


def _preceded_by(ev: pl.DataFrame, later: str, earlier: str) -> float:
    """Share of ``later`` events whose visitor had an ``earlier`` event on the same item before."""
    first_earlier = ev.filter(pl.col("event") == earlier).group_by("visitorid", "itemid").agg(pl.col("timestamp").min().alias("t0"))
    x = ev.filter(pl.col("event") == later).join(first_earlier, on=["visitorid", "itemid"], how="left")
    return float((x["t0"] <= x["timestamp"]).fill_null(False).mean())


def test_generator_carts_follow_views_and_purchases_follow_carts(files):
    ev = files["events"]
    assert _preceded_by(ev, "addtocart", "view") > 0.8
    assert _preceded_by(ev, "transaction", "addtocart") > 0.8


def test_categories_carry_signal(files):
    """A visitor's events concentrate in few categories, far more than with items shuffled."""
    cats = pl.concat([files["item_properties_part1"], files["item_properties_part2"]]).filter(
        pl.col("property") == "categoryid"
    ).sort("timestamp").group_by("itemid").agg(pl.col("value").first().alias("cat"))
    ev = files["events"].join(cats, on="itemid").filter(pl.len().over("visitorid") >= 5)

    def top_share(df: pl.DataFrame) -> float:
        per = df.group_by("visitorid", "cat").len().group_by("visitorid").agg(share=pl.col("len").max() / pl.col("len").sum())
        return float(per["share"].mean())

    shuffled = ev.with_columns(pl.col("cat").shuffle(seed=1))
    assert top_share(ev) > top_share(shuffled) + 0.15


def test_generator_tree_and_time_varying_properties(files):
    tree = files["category_tree"]
    assert tree["parentid"].null_count() >= 1  # roots
    props = pl.concat([files["item_properties_part1"], files["item_properties_part2"]])
    cat = props.filter(pl.col("property") == "categoryid")
    moved = cat.group_by("itemid").agg(pl.col("value").n_unique().alias("n")).filter(pl.col("n") > 1)
    assert moved.height > 0
    avail = props.filter(pl.col("property") == "available")
    assert set(avail["value"].unique()) == {"0", "1"}
    toggled = avail.group_by("itemid").agg(pl.col("value").n_unique().alias("n")).filter(pl.col("n") > 1)
    assert toggled.height > 0
    assert props["property"].n_unique() > 2  # opaque properties too


def test_generator_is_deterministic_by_seed():
    a, b, c = (generate_events_tables(2_000, seed=s) for s in (9, 9, 10))
    for name in a:
        assert_frame_equal(a[name], b[name])
    assert not a["events"].equals(c["events"])


def test_generated_data_reads_back(generated):
    folder, counts = generated
    snap = read_events_form(folder)
    assert snap.events.height == counts["events"]
    assert snap.info["transaction"] == counts["transactions"]
    assert 1 <= snap.info["max_category_depth"] <= 6
    assert snap.categories["depth"].max() == snap.categories["path"].list.len().max()
    # The first snapshot precedes the log: only items without properties lack a category.
    assert 0.05 < snap.info["events_without_category"] / snap.events.height < 0.35


# ---- the reader on hand-written files ------------------------------------------------------

T = 1_500_000_000_000  # 2017-07-14 02:40 UTC
EVENTS = f"""timestamp,visitorid,event,itemid,transactionid
{T - 1_000_000},1,view,10,
{T + 50_000},1,view,10,
{T + 100_000},1,addtocart,10,
{T + 200_000},1,transaction,10,7
{T + 60_000},2,view,20,
"""
# Item 10 moves from category 3 to 5 at T+100 s, exactly when it is added to the cart.
PROPS_1 = f"""timestamp,itemid,property,value
{T},10,categoryid,3
{T + 100_000},10,categoryid,5
{T},10,888,n12.000 4411
{T},20,categoryid,5
"""
# Availability lives in the second part: 1 at T, 0 from T+60 s.
PROPS_2 = f"""timestamp,itemid,property,value
{T},10,available,1
{T + 60_000},10,available,0
{T},20,available,1
"""
TREE = """categoryid,parentid
1,
2,1
3,2
4,
5,4
"""
GOOD = {
    "events.csv": EVENTS,
    "item_properties_part1.csv": PROPS_1,
    "item_properties_part2.csv": PROPS_2,
    "category_tree.csv": TREE,
}


def write_form(folder: Path, **overrides: str | None) -> Path:
    """The hand-written form, with files replaced (key: file name with ``.`` as ``_``) or left out (None)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in GOOD.items():
        text = overrides.get(name.replace(".", "_"), text)
        if text is not None:
            (folder / name).write_text(text)
    return folder


def test_properties_resolved_as_of_each_event(tmp_path):
    snap = read_events_form(write_form(tmp_path))
    got = snap.events.select("visitor_id", "event", "item_id", "transaction_id", "category_id", "available")
    expected = pl.DataFrame(
        {
            "visitor_id": [1, 1, 2, 1, 1],
            "event": ["view", "view", "view", "addtocart", "transaction"],
            "item_id": [10, 10, 20, 10, 10],
            "transaction_id": [None, None, None, None, 7],
            # before the first value: none; at a change's exact time: the new value
            "category_id": [None, 3, 5, 5, 5],
            "available": [None, 1, 1, 0, 0],
        },
        schema_overrides={"event": pl.Enum(["view", "addtocart", "transaction"]), "available": pl.Int8},
    )
    assert_frame_equal(got, expected)
    assert snap.events["ts"].dtype == pl.Datetime("ms", "UTC")
    assert snap.events["ts"][1] == datetime.fromtimestamp((T + 50_000) / 1000, tz=timezone.utc)


def test_available_and_category_at_a_cutoff(tmp_path):
    snap = read_events_form(write_form(tmp_path))
    assert snap.available_at(T + 59_999).rows() == [(10, 1), (20, 1)]
    assert snap.available_at(T + 60_000).rows() == [(10, 0), (20, 1)]
    assert snap.available_at(T - 1).height == 0
    naive = datetime.fromtimestamp((T + 60_000) / 1000, tz=timezone.utc).replace(tzinfo=None)
    assert snap.available_at(naive).rows() == [(10, 0), (20, 1)]  # naive means UTC
    assert snap.category_at(T + 99_999).rows() == [(10, 3), (20, 5)]
    assert snap.category_at(T + 100_000).rows() == [(10, 5), (20, 5)]


def test_category_paths_from_the_tree(tmp_path):
    snap = read_events_form(write_form(tmp_path))
    cats = snap.categories
    assert cats["category_id"].to_list() == [1, 2, 3, 4, 5]
    assert cats["path"].to_list() == [[1], [1, 2], [1, 2, 3], [4], [4, 5]]
    assert cats["depth"].to_list() == [1, 2, 3, 1, 2]
    assert snap.info["max_category_depth"] == 3


def test_explicit_paths_and_one_properties_file(tmp_path):
    folder = write_form(tmp_path)
    merged = PROPS_1 + "\n".join(PROPS_2.splitlines()[1:]) + "\n"
    (folder / "props.csv").write_text(merged)
    snap = read_events_form(
        {"events": folder / "events.csv", "item_properties": folder / "props.csv", "category_tree": folder / "category_tree.csv"}
    )
    assert snap.events["available"].to_list() == [None, 1, 1, 0, 0]


def test_a_part_without_used_properties_is_fine(tmp_path):
    only_opaque = "timestamp,itemid,property,value\n" + f"{T},10,888,n12.000\n"
    snap = read_events_form(write_form(tmp_path, item_properties_part2_csv=only_opaque))
    assert snap.events["category_id"].to_list() == [None, 3, 5, 5, 5]
    assert snap.events["available"].null_count() == 5


def test_spaces_around_integers_and_blank_lines_are_accepted(tmp_path):
    spaced = EVENTS.replace(",10,", ", 10 ,").replace("\n", "\n\n", 2) + "\n"
    snap = read_events_form(write_form(tmp_path, events_csv=spaced))
    assert snap.events["item_id"].to_list() == [10, 10, 20, 10, 10]


def test_blank_lines_keep_line_numbers(tmp_path):
    bad = EVENTS.replace("\n", "\n\n", 1) + f"{T},3,click,10,\n"
    with pytest.raises(InputError, match="first at line 8;"):
        read_events_form(write_form(tmp_path, events_csv=bad))


# ---- every validation: a crafted bad file, a one-line error naming file and column ----------

BAD = {
    "missing events file": (dict(events_csv=None), ["events.csv", "missing file"]),
    "missing properties files": (
        dict(item_properties_part1_csv=None, item_properties_part2_csv=None),
        ["item_properties", "missing file"],
    ),
    "missing tree file": (dict(category_tree_csv=None), ["category_tree.csv", "missing file"]),
    "missing column": (
        dict(events_csv=EVENTS.replace(",itemid,", ",item,")),
        ["events.csv", "missing column itemid"],
    ),
    "missing properties column": (
        dict(item_properties_part2_csv=PROPS_2.replace(",value", ",val")),
        ["item_properties_part2.csv", "missing column value"],
    ),
    "unknown event type": (
        dict(events_csv=EVENTS + f"{T},3,click,10,\n{T},4,click,20,\n{T},4,purchase,20,\n"),
        ["events.csv", "column event", "'click'", "on 2 line(s)", "first at line 7", "3 line(s) in all"],
    ),
    "non-integer visitorid": (
        dict(events_csv=EVENTS + f"{T},abc,view,10,\n"),
        ["events.csv", "column visitorid", "'abc'", "line 7"],
    ),
    "non-integer itemid": (
        dict(events_csv=EVENTS + f"{T},3,view,10.5,\n"),
        ["events.csv", "column itemid", "'10.5'", "not an integer"],
    ),
    "non-integer transactionid": (
        dict(events_csv=EVENTS + f"{T},3,transaction,10,t-1\n"),
        ["events.csv", "column transactionid", "'t-1'"],
    ),
    "timestamp as a date": (
        dict(events_csv=EVENTS + "2015-06-01 10:00:00,3,view,10,\n"),
        ["events.csv", "column timestamp", "'2015-06-01 10:00:00'"],
    ),
    "timestamp in seconds": (
        dict(events_csv=EVENTS + f"{T // 1000},3,view,10,\n"),
        ["events.csv", "column timestamp", f"value {T // 1000}", "milliseconds", "line 7"],
    ),
    "missing visitorid": (
        dict(events_csv=EVENTS + f"{T},,view,10,\n"),
        ["events.csv", "column visitorid", "1 missing value(s)", "line 7"],
    ),
    "transaction without transactionid": (
        dict(events_csv=EVENTS + f"{T},3,transaction,10,\n"),
        ["events.csv", "column transactionid", "1 transaction event(s) without a transactionid", "line 7"],
    ),
    "empty events": (
        dict(events_csv="timestamp,visitorid,event,itemid,transactionid\n"),
        ["events.csv", "empty"],
    ),
    "non-integer property itemid": (
        dict(item_properties_part1_csv=PROPS_1 + f"{T},x9,categoryid,3\n"),
        ["item_properties_part1.csv", "column itemid", "'x9'"],
    ),
    "bad property timestamp": (
        dict(item_properties_part2_csv=PROPS_2 + f"{T * 1000},10,available,1\n"),
        ["item_properties_part2.csv", "column timestamp", "line 5"],
    ),
    "categoryid value not an integer": (
        dict(item_properties_part1_csv=PROPS_1 + f"{T},10,categoryid,n3.000\n"),
        ["item_properties_part1.csv", "column value", "categoryid 'n3.000'", "line 6"],
    ),
    "available value not 0/1": (
        dict(item_properties_part2_csv=PROPS_2 + f"{T},20,available,2\n"),
        ["item_properties_part2.csv", "column value", "available '2'", "line 5"],
    ),
    "tree cycle": (
        dict(category_tree_csv=TREE + "7,9\n8,7\n9,8\n10,7\n"),
        ["category_tree.csv", "column parentid", "cycle through category"],
    ),
    "tree self-parent": (
        dict(category_tree_csv=TREE + "6,6\n"),
        ["category_tree.csv", "column parentid", "cycle through category 6"],
    ),
    "tree parent missing": (
        dict(category_tree_csv=TREE + "6,42\n"),
        ["category_tree.csv", "column parentid", "parent 42 of category 6", "line 7"],
    ),
    "tree duplicate category": (
        dict(category_tree_csv=TREE + "3,1\n"),
        ["category_tree.csv", "column categoryid", "category 3 is listed 2 times", "lines 4, 7"],
    ),
    "no used properties": (
        dict(
            item_properties_part1_csv="timestamp,itemid,property,value\n" + f"{T},10,888,n12.000\n",
            item_properties_part2_csv="timestamp,itemid,property,value\n",
        ),
        ["item_properties_part1.csv, item_properties_part2.csv", "column property", "no categoryid or available rows"],
    ),
    "non-integer categoryid in tree": (
        dict(category_tree_csv=TREE + "six,1\n"),
        ["category_tree.csv", "column categoryid", "'six'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_file_and_column(tmp_path, case):
    overrides, expected = BAD[case]
    folder = write_form(tmp_path / "clean", **overrides)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(InputError) as info:
        read_events_form(folder)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written


def test_cycle_error_names_a_category_of_the_cycle(tmp_path):
    folder = write_form(tmp_path, category_tree_csv=TREE + "7,9\n8,7\n9,8\n10,7\n")
    with pytest.raises(InputError, match=r"cycle through category (7|8|9)$"):
        read_events_form(folder)
