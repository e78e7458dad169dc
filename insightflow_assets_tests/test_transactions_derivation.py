"""The transactions form's derived tables against a direct computation from the lines.

The derivation takes shortcuts for speed (runs of an order's lines summarised instead of every
line grouped, sorts of packed integers, invoice numbers put in text order by arithmetic, the
timestamps' order in seconds); each shortcut has a condition under which it is taken. The
tables here are built so that both sides of those conditions occur, and every derived value
is recomputed from the file the plain way: group, sort, compare.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from insightflow_assets.ingest import transactions
from insightflow_assets.ingest.transactions import _ranges, _sorted_with_positions, derive_snapshot


def _lines(codes: str, layout: str, sub_second: bool) -> pl.DataFrame:
    """~2,400 order lines of 40 customers: repeated products within an order, exact duplicate
    lines, orders sharing a timestamp."""
    rng = np.random.default_rng(7)
    rows, t0 = [], datetime(2021, 3, 1, 8)
    for order in range(1, 400):
        customer = int(rng.integers(1, 41))
        # orders in fives at one moment (in whole seconds): ties, between customers and within
        # one, broken by the code as text (orders 8-12: "10" < "11" < "12" < "8" < "9")
        micro = int(rng.integers(1, 999_999)) if sub_second else 0
        ts = t0 + timedelta(hours=(order + 2) // 5 * 7, microseconds=micro)
        code = f"INV{order}" if codes == "text" else order
        for product in rng.integers(1, 60, int(rng.integers(1, 12))):
            rows.append((customer, code, ts, f"P{product}", int(rng.integers(1, 4)), 2.5))
    schema = ["customer_id", "order_id", "timestamp", "product_id", "quantity", "unit_price"]
    df = pl.DataFrame(rows, orient="row", schema=schema)
    df = pl.concat([df, df.gather(rng.integers(0, df.height, 30))])  # exact duplicates, at the end
    return df.sample(fraction=1.0, shuffle=True, seed=3) if layout == "shuffled" else df


def _expected(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Orders and order lines computed the plain way, keyed by the file's codes."""
    df = df.with_row_index("_line").filter(pl.struct(pl.exclude("_line")).is_first_distinct())
    orders = (
        df.group_by("order_id").agg(pl.col("customer_id").first(), pl.col("timestamp").min())
        .sort("timestamp", pl.col("order_id").cast(pl.String), "customer_id")
        .with_row_index("seq")
        .with_columns(order_number=pl.int_range(1, pl.len() + 1).over("customer_id"))
    )
    day = pl.col("timestamp").dt.date()
    orders = orders.with_columns(
        gap=(day - day.shift(1).over("customer_id")).dt.total_days().clip(0, 30),
        last=pl.col("order_number") == pl.col("order_number").max().over("customer_id"),
    )
    lines = (
        df.group_by("order_id", "product_id").agg(pl.col("_line").min(), pl.col("quantity").sum())
        .join(orders.select("order_id", "customer_id", "seq"), on="order_id")
        .with_columns(reordered=(pl.col("seq") > pl.col("seq").min().over("customer_id", "product_id")).cast(pl.Int8))
        .with_columns(add_to_cart_order=pl.col("_line").rank("ordinal").over("order_id"))
    )
    return orders, lines


@pytest.mark.parametrize(
    "codes,layout,fmt",
    [("int", "runs", "csv"), ("int", "shuffled", "csv"), ("text", "runs", "csv"), ("int", "runs", "parquet")],
)
def test_derived_tables_match_a_direct_computation(tmp_path, codes, layout, fmt):
    df = _lines(codes, layout, sub_second=fmt == "parquet")  # the CSV formats have whole seconds
    path = tmp_path / f"transactions.{fmt}"
    df.write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S") if fmt == "csv" else df.write_parquet(path)
    result = derive_snapshot(path)
    snap = result.snapshot
    exp_orders, exp_lines = _expected(df)
    assert result.excluded["duplicate_line"] == df.height - df.unique().height

    orders = snap.orders.with_columns(order_code=pl.col("order_code").cast(exp_orders["order_id"].dtype))
    got = orders.join(exp_orders, left_on="order_code", right_on="order_id")
    assert got.height == exp_orders.height == snap.orders.height
    assert (got["user_id"] == got["customer_id"]).all()
    assert (got["order_number"] == got["order_number_right"]).all()
    assert got.select((pl.col("days_since_prior_order") == pl.col("gap")).fill_null(pl.col("gap").is_null()).all()).item()
    # order ids follow time, ties by the code as text
    assert got.sort("order_id")["seq"].to_list() == list(range(exp_orders.height))
    assert got["eval_set"].to_list() == ["train" if last else "prior" for last in got["last"]]

    lines = snap.order_products.join(snap.products.select("product_id", "product_code"), on="product_id").join(
        orders.select("order_id", "order_code"), on="order_id")
    got = lines.join(exp_lines, left_on=["order_code", "product_code"], right_on=["order_id", "product_id"])
    assert got.height == exp_lines.height == snap.order_products.height
    assert (got["reordered"] == got["reordered_right"]).all() and got["reordered"].sum() > 0
    assert (got["add_to_cart_order"] == got["add_to_cart_order_right"]).all()
    assert (got["quantity"] == got["quantity_right"]).all()
    # lines in (order, file line) order
    assert snap.order_products.select((pl.col("order_id").diff().fill_null(0) >= 0).all()).item()


def test_wide_keys_sort_stably_too():
    """Keys too wide to pack with their positions take an arg-sort: same answer, ties in position order."""
    keys, perm = _sorted_with_positions(pl.Series([2**60, 5, 2**60, 0, 5], dtype=pl.UInt64))
    assert perm.to_list() == [3, 1, 4, 0, 2]
    assert keys.to_list() == [0, 5, 5, 2**60, 2**60]
    narrow, perm = _sorted_with_positions(pl.Series([3, 1, 3, 0, 1]))
    assert perm.to_list() == [3, 1, 4, 0, 2] and narrow.to_list() == [0, 1, 1, 3, 3]


def test_concatenated_ranges_and_the_in_place_sort():
    """`_ranges` (orders' line positions, positions in a cart) wraps within its type, so a
    backward jump in unsigned or short integers still lands on the right value; an int64 array
    is sorted in place with the same answer as a Series."""
    got = _ranges(np.array([5, 0, 3]), np.array([2, 3, 1]), np.uint32)
    assert got.dtype == np.uint32 and got.tolist() == [5, 6, 0, 1, 2, 3]
    cart = _ranges(np.ones(3, dtype=np.int64), np.array([3, 1, 2]), np.int16)
    assert cart.tolist() == [1, 2, 3, 1, 1, 2]
    assert _ranges(np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.uint32).tolist() == []
    keys = np.random.default_rng(5).integers(0, 50, 1_000)
    in_place, perm = _sorted_with_positions(keys.copy())
    expected = np.argsort(keys, kind="stable")
    assert perm.to_list() == expected.tolist() and in_place.to_list() == keys[expected].tolist()


def test_numpy_page_setting_is_restored(tmp_path, monkeypatch):
    """The derivation asks numpy for plain pages while it runs; afterwards, and after a failure,
    numpy's own setting is back."""
    multiarray = pytest.importorskip("numpy._core.multiarray")
    if not hasattr(multiarray, "_get_madvise_hugepage"):
        pytest.skip("this numpy has no huge-page switch")
    path = tmp_path / "transactions.csv"
    _lines("int", "runs", sub_second=False).write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S")
    before, seen, user_ids = multiarray._get_madvise_hugepage(), [], transactions._user_ids

    def spy(customer):
        seen.append(multiarray._get_madvise_hugepage())
        return user_ids(customer)

    monkeypatch.setattr(transactions, "_user_ids", spy)
    derive_snapshot(path)
    assert seen == [False] and multiarray._get_madvise_hugepage() == before

    def fail(customer):
        raise RuntimeError("boom")

    monkeypatch.setattr(transactions, "_user_ids", fail)
    with pytest.raises(RuntimeError, match="boom"):
        derive_snapshot(path)
    assert multiarray._get_madvise_hugepage() == before


def test_block_wise_steps_match_whole_array_ones(monkeypatch):
    """`_take` and the position packing of `_sorted_with_positions` work a block at a time (no
    temporary as long as the lines); with blocks of 7 values the answers are the whole-array ones."""
    monkeypatch.setattr(transactions, "_BLOCK", 7)
    rng = np.random.default_rng(11)
    dense, idx = rng.integers(0, 1_000, 50).astype(np.int32), rng.integers(0, 50, 103).astype(np.uint32)
    got = transactions._take(dense, idx)
    assert got.dtype == np.int32 and got.tolist() == dense[idx].tolist()
    keys = rng.integers(0, 20, 103)
    in_place, perm = _sorted_with_positions(keys.copy())
    assert perm.to_list() == np.argsort(keys, kind="stable").tolist() and in_place.to_list() == sorted(keys.tolist())


def _late_ids_file(path, late: list[tuple]) -> None:
    """10,000 plain lines (the reader's first look, `_SAMPLE`), then ``late`` (customer, order,
    product) lines, written as text."""
    assert transactions._SAMPLE == 10_000
    first = [(c % 50 + 1, c // 4 + 1, c % 30 + 1) for c in range(10_000)]
    rows = [(str(c), str(o), "2021-03-01 08:00:00", str(p), "1", "2.5") for c, o, p in first + late]
    pl.DataFrame(rows, orient="row", schema=["customer_id", "order_id", "timestamp", "product_id", "quantity", "unit_price"]
                 ).write_csv(path)


def test_ids_that_outgrow_int32_after_the_first_lines_are_read_again_wide(tmp_path, monkeypatch):
    """Ids and quantities read as Int32 because the first lines fit it: a later id that does not
    sends the one-pass read round again with Int64, not to the careful path, and no id is lost
    or wrapped."""
    path = tmp_path / "transactions.csv"
    _late_ids_file(path, [("3000000000", "5000000000", "4000000000"), ("7", "5000000000", "4000000001")])
    small = tmp_path / "small.csv"
    _late_ids_file(small, [])
    typed = transactions.read_transactions(small, transactions.TransactionsSpec())
    assert {typed[c].dtype for c in ("customer_id", "order_id", "product_id", "quantity")} == {pl.Int32}

    def careful(*args):
        raise AssertionError("the careful path was taken")

    monkeypatch.setattr(transactions, "_typed", careful)
    result = derive_snapshot(path)
    snap = result.snapshot
    assert result.lines_in == 10_002 and result.excluded["no_customer_id"] == 0
    assert result.info["customer_ids"].startswith("numbered")  # beyond Int32: ranked as text
    # each number maps back to the file's id (the exports print it)
    codes = snap.orders.select("user_id", "customer_code").unique().sort("user_id")
    assert codes.height == snap.orders["user_id"].n_unique() == 51
    assert set(codes["customer_code"]) == {str(c) for c in range(1, 51)} | {"3000000000"}
    assert codes["customer_code"].to_list() == sorted(codes["customer_code"])  # numbered in text order
    assert snap.order_products.height == 10_002
    assert {"4000000000", "4000000001"} <= set(snap.products["product_code"])
    big = snap.orders.filter(pl.col("order_code") == "5000000000")
    assert big.height == 2  # one invoice, two customers: an order each


def test_ids_that_do_not_print_back_after_the_first_lines_keep_their_text(tmp_path):
    """The one-pass read stands one comparison (text below "1") for the full plain-integer test
    when the first lines hold no such id: a later leading zero, sign or "0" still reaches the
    careful path, which keeps "007" as written and "0" as the number 0."""
    zeros = tmp_path / "zeros.csv"
    _late_ids_file(zeros, [("5", "9000", "007"), ("5", "9000", "0")])
    codes = set(derive_snapshot(zeros).snapshot.products["product_code"])
    assert {"007", "7", "0"} <= codes  # "007" read as 7 would have merged into product 7
    signed = tmp_path / "signed.csv"
    _late_ids_file(signed, [("-5", "9000", "+8"), ("-5", "9001", "8")])
    snap = derive_snapshot(signed).snapshot
    assert "-5" in snap.orders["customer_code"].to_list()  # a negative id is numbered, its text kept
    assert {"+8", "8"} <= set(snap.products["product_code"])
