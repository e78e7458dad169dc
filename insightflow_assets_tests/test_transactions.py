"""Data in, the transactions form: a hand-written order-line table, its derivation into the
internal tables, the exclusions by reason, the column mapping and every bad-input class.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey

from insightflow_assets.ingest.loading import InputError
from insightflow_assets.ingest.transactions import TransactionsSpec, derive_snapshot
from insightflow_assets_tests.test_ingest import ingest, stored_files

RUN = "run-20260101-000000"

# Customer 1: three invoices (one product on two lines of one invoice, one exact duplicate line,
# one cancellation); customer 2: one invoice plus a postage line; a line without customer; a free
# sample at price 0; a return with negative quantity.
HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
LINES = [
    "1001,A1,Red mug,2,2011-01-03 09:15:00,1.50,17850.0,UK",  # Monday
    "1001,B2,Blue plate,1,2011-01-03 09:15:00,4.00,17850.0,UK",
    "1001,A1,Red mug,3,2011-01-03 09:15:00,1.50,17850.0,UK",  # same product again: merged
    "1001,B2,Blue plate,1,2011-01-03 09:15:00,4.00,17850.0,UK",  # exact duplicate of line 2
    "1002,A1,Red mug,1,2011-01-10 14:00:00,1.50,17850.0,UK",  # 7 days later
    "C1003,A1,Red mug,-1,2011-01-11 10:00:00,1.50,17850.0,UK",  # cancellation
    "1004,C3,Green bowl,2,2011-03-01 18:30:00,2.25,17850.0,UK",  # 50 days later: capped at 30
    "1005,B2,Blue plate,5,2011-01-09 11:00:00,3.80,12346.0,FR",  # a Sunday
    "1005,POST,POSTAGE,1,2011-01-09 11:00:00,18.00,12346.0,FR",  # not a product
    "1006,A1,Red mug,4,2011-01-05 08:00:00,1.50,,UK",  # no customer
    "1007,C3,Green bowl,1,2011-01-06 08:00:00,0.00,12346.0,FR",  # free sample
    "1008,C3,Green bowl,-2,2011-01-07 08:00:00,2.25,12346.0,FR",  # a return without C prefix
]
TINY = HEADER + "\n".join(LINES) + "\n"


def write(folder: Path, text: str = TINY, name: str = "transactions.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def test_derivation_of_the_internal_tables(tmp_path):
    result = derive_snapshot(write(tmp_path / "clean") / "transactions.csv")
    assert result.lines_in == 12
    assert result.excluded == {
        "no_customer_id": 1,
        "no_timestamp": 0,
        "cancellation": 1,
        "non_product_code": 1,
        "non_positive_quantity": 1,
        "non_positive_price": 1,
        "duplicate_line": 1,
    }
    orders = result.snapshot.orders.sort("user_id", "order_number")
    assert orders.select("user_id", "order_code", "order_number", "eval_set").rows() == [
        (12346, "1005", 1, "train"),
        (17850, "1001", 1, "prior"),
        (17850, "1002", 2, "prior"),
        (17850, "1004", 3, "train"),
    ]
    assert orders["days_since_prior_order"].to_list() == [None, None, 7.0, 30.0]
    assert orders["order_dow"].to_list() == [0, 1, 1, 2]  # Sunday = 0, Monday = 1, Tuesday = 2
    assert orders["order_hour_of_day"].to_list() == [11, 9, 14, 18]
    # order ids are numbered in time order
    assert orders.sort("order_ts")["order_code"].to_list() == ["1001", "1005", "1002", "1004"]
    assert orders.sort("order_ts")["order_id"].to_list() == [1, 2, 3, 4]


def test_lines_quantities_and_products(tmp_path):
    result = derive_snapshot(write(tmp_path / "clean") / "transactions.csv")
    snap = result.snapshot
    products = snap.products.sort("product_id")
    assert products.select("product_id", "product_code", "product_name").rows() == [
        (1, "A1", "Red mug"),
        (2, "B2", "Blue plate"),
        (3, "C3", "Green bowl"),
    ]
    assert products["aisle"].unique().to_list() == ["unknown"]
    lines = snap.order_products.join(snap.orders.select("order_id", "order_code"), on="order_id")
    first = lines.filter(pl.col("order_code") == "1001").sort("add_to_cart_order")
    assert first.select("product_id", "add_to_cart_order", "quantity", "reordered").rows() == [(1, 1, 5, 0), (2, 2, 1, 0)]
    assert lines.filter(pl.col("order_code") == "1002")["reordered"].to_list() == [1]
    assert lines.filter(pl.col("order_code") == "1005")["unit_price"].to_list() == [3.8]
    assert result.info["repeated_product_lines_merged"] == 1


def test_column_mapping_and_formats(tmp_path):
    renamed = TINY.replace(HEADER, "inv,sku,title,n,when,price_each,client,country\n")
    spec = TransactionsSpec(
        columns={"order_id": "inv", "product_id": "sku", "product_name": "title", "quantity": "n",
                 "timestamp": "when", "unit_price": "price_each", "customer_id": "client"}
    )
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "transactions.csv.gz").write_bytes(gzip.compress(renamed.encode()))
    mapped = derive_snapshot(clean / "transactions.csv.gz", spec)
    plain = derive_snapshot(write(tmp_path / "plain") / "transactions.csv")
    assert mapped.snapshot.orders.equals(plain.snapshot.orders)
    assert mapped.snapshot.order_products.equals(plain.snapshot.order_products)
    assert mapped.excluded == plain.excluded


def test_names_match_whatever_their_case_and_separators(tmp_path):
    """INVOICE_NO, stock code, … are the UCI columns under other spellings: the same tables."""
    spelled = TINY.replace(HEADER, "INVOICE_NO,stock code,DESCRIPTION,quantity,invoice-date,Unit Price,customerId,Country\n")
    other = derive_snapshot(write(tmp_path / "other", spelled) / "transactions.csv")
    plain = derive_snapshot(write(tmp_path / "plain") / "transactions.csv")
    assert other.snapshot.orders.equals(plain.snapshot.orders)
    assert other.snapshot.order_products.equals(plain.snapshot.order_products)
    assert other.snapshot.products.equals(plain.snapshot.products)


@pytest.mark.parametrize("separator", [";", "\t"])
def test_semicolon_or_tab_separated_file_reads_like_the_comma_one(tmp_path, separator):
    """Excel's CSV in many European locales is separated by ';': the header says which."""
    other = derive_snapshot(write(tmp_path / "other", TINY.replace(",", separator)) / "transactions.csv")
    plain = derive_snapshot(write(tmp_path / "plain") / "transactions.csv")
    assert other.snapshot.orders.equals(plain.snapshot.orders)
    assert other.snapshot.order_products.equals(plain.snapshot.order_products)
    assert other.info["separator"] == separator and "separator" not in plain.info


def _comma_prices(text: str, separator: str) -> str:
    """``text`` separated by ``separator``, with its prices (6th field) written 1,50."""
    rows = [line.split(",") for line in text.strip().split("\n")]
    for row in rows[1:]:
        row[5] = row[5].replace(".", ",")
    return "\n".join(separator.join(row) for row in rows) + "\n"


def test_decimal_commas_in_a_semicolon_file_are_read_as_decimals(tmp_path):
    """Where ';' separates the fields, Excel writes prices 1,50: the same tables as 1.50."""
    other = derive_snapshot(write(tmp_path / "other", _comma_prices(TINY, ";")) / "transactions.csv")
    plain = derive_snapshot(write(tmp_path / "plain") / "transactions.csv")
    assert other.snapshot.orders.equals(plain.snapshot.orders)
    assert other.snapshot.order_products.equals(plain.snapshot.order_products)


def test_beside_decimal_commas_dots_group_thousands(tmp_path):
    from insightflow_assets.ingest.transactions import TransactionsSpec, read_transactions

    text = HEADER.replace(",", ";") + "".join(
        f"1001;{sku};Red mug;2;2011-01-03 09:15:00;{price};17850;UK\n" for sku, price in (("A1", "1.234,50"), ("B2", "1.000"))
    )
    lines = read_transactions(write(tmp_path / "t", text) / "transactions.csv", TransactionsSpec())
    assert sorted(lines["unit_price"].to_list()) == [1000.0, 1234.5]


def test_a_decimal_point_beside_decimal_commas_is_named(tmp_path):
    """2.5 beside 1,50: 2.5 or 25? One line, not a guess."""
    from insightflow_assets.ingest.loading import InputError
    from insightflow_assets.ingest.transactions import TransactionsSpec, read_transactions

    text = HEADER.replace(",", ";") + "".join(
        f"1001;{sku};Red mug;2;2011-01-03 09:15:00;{price};17850;UK\n" for sku, price in (("A1", "1,50"), ("B2", "2.5"))
    )
    with pytest.raises(InputError, match=r"column UnitPrice: value '2.5' has a decimal point where others have a decimal comma \('1,50'\)"):
        read_transactions(write(tmp_path / "t", text) / "transactions.csv", TransactionsSpec())


def test_quantities_with_thousands_dots_beside_comma_prices_are_thousands(tmp_path):
    """A German wholesaler's export: quantity 1.500 beside prices 2,50 is 1,500 units, not
    1.5 kg (weighed goods are read as fractions since 2026-12-01); 2.5 there is refused."""
    from insightflow_assets.ingest.loading import InputError
    from insightflow_assets.ingest.transactions import TransactionsSpec, read_transactions

    def lines(qty_a: str, qty_b: str, price_b: str = "2,50") -> str:
        return HEADER.replace(",", ";") + "".join(
            f"1001;{sku};Red mug;{q};2011-01-03 09:15:00;{p};17850;UK\n" for sku, q, p in (("A1", qty_a, "1,50"), ("B2", qty_b, price_b))
        )

    read = read_transactions(write(tmp_path / "t", lines("1.500", "12")) / "transactions.csv", TransactionsSpec())
    assert sorted(read["quantity"].to_list()) == [12, 1500] and read["quantity"].dtype == pl.Int64
    with pytest.raises(InputError, match=r"column Quantity: value '2.5' has a decimal point where others have a decimal comma"):
        read_transactions(write(tmp_path / "u", lines("1.500", "2.5")) / "transactions.csv", TransactionsSpec())
    # no decimal comma anywhere in the ';' file: 1.500 is 1500 or 1.5 kg, not guessed
    plain = write(tmp_path / "v", lines("1.500", "12", "2.50").replace(";1,50;", ";1.50;")) / "transactions.csv"
    with pytest.raises(InputError, match=r"column Quantity: value '1.500' could be 1500 \(a dot grouping thousands\) "
                                         r"or a decimal; set the ingest config decimal_mark to ',' or '.'"):
        read_transactions(plain, TransactionsSpec())
    assert sorted(read_transactions(plain, TransactionsSpec(decimal_mark="."))["quantity"].to_list()) == [1.5, 12.0]
    # "," given: dots group thousands, so the prices written with a point are refused
    with pytest.raises(InputError, match=r"column UnitPrice: value '1.50' has a decimal point where others have a decimal comma"):
        read_transactions(plain, TransactionsSpec(decimal_mark=","))
    # a dot that groups nothing (1.25) shows the column's points are decimal points: weighed goods
    weighed = write(tmp_path / "w", lines("1.500", "1.25", "2.50").replace(";1,50;", ";1.50;")) / "transactions.csv"
    assert sorted(read_transactions(weighed, TransactionsSpec())["quantity"].to_list()) == [1.25, 1.5]
    with pytest.raises(InputError, match="decimal_mark 'x' is not"):
        TransactionsSpec(decimal_mark="x")


@pytest.mark.parametrize("separator", [",", "\t"])
def test_a_decimal_comma_in_a_comma_or_tab_separated_file_is_still_named(tmp_path, separator):
    """In a comma- or tab-separated file "1,50" may as well be 150 (thousands): one line, not a guess."""
    from insightflow_assets.ingest.loading import InputError
    from insightflow_assets.ingest.transactions import TransactionsSpec, read_transactions

    text = (HEADER + '1001,A1,Red mug,2,2011-01-03 09:15:00,"1,50",17850,UK\n').replace(",", separator).replace(
        f'"1{separator}50"', '"1,50"')
    with pytest.raises(InputError, match=r"transactions.csv: column UnitPrice: value '1,50' is not a number"):
        read_transactions(write(tmp_path / "t", text) / "transactions.csv", TransactionsSpec())


# A Ta-Feng-style export: dates only, no order column, upper-case names, AMOUNT not a quantity.
TAFENG = """TRANSACTION_DT,CUSTOMER_ID,AGE_GROUP,PRODUCT_ID,AMOUNT,SALES_PRICE
11/1/2000,01104905,45-49,4710199010372,2,30
11/1/2000,01104905,45-49,4710199010373,1,25
11/1/2000,00418683,45-49,4710857472535,1,46
11/3/2000,01104905,45-49,4710199010372,1,30
11/15/2000,00418683,45-49,4710857472535,1,46
11/15/2000,00418683,45-49,4710199010372,3,30
"""


def test_without_an_order_column_a_customer_and_timestamp_is_an_order(tmp_path, instance):
    from insightflow_assets.ingest.transactions import DERIVED_ORDERS

    result = derive_snapshot(write(tmp_path / "direct", TAFENG) / "transactions.csv")
    orders, lines = result.snapshot.orders, result.snapshot.order_products
    # customer 01104905: 11/1 (two lines), 11/3; customer 00418683: 11/1, 11/15 (two lines);
    # zero-padded, so numbered (1 = 00418683, 2 = 01104905) with the file's text kept
    per_user = orders.group_by("user_id", "customer_code").agg(pl.col("order_number").max()).sort("user_id")
    assert per_user.rows() == [(1, "00418683", 2), (2, "01104905", 2)]
    sizes = lines.group_by("order_id").len().join(orders.select("order_id", "user_id", "order_number"), on="order_id")
    assert sorted(sizes.select("user_id", "order_number", "len").rows()) == [(1, 1, 1), (1, 2, 2), (2, 1, 2), (2, 2, 1)]
    # no quantity column: each line is one unit
    assert lines["quantity"].to_list() == [1] * 6 and orders["order_hour_of_day"].null_count() == orders.height
    assert result.info["orders"] == DERIVED_ORDERS
    # through the ingest asset: the derivation says where the orders came from
    outcome, _ = ingest(tmp_path, instance, write(tmp_path / "clean", TAFENG))
    assert outcome.ok, outcome.errors
    mat = instance.get_latest_materialization_event(AssetKey("raw_order_products")).asset_materialization
    assert mat.metadata["derivation"].value["orders"] == DERIVED_ORDERS


def test_day_and_month_order_is_never_guessed(tmp_path):
    """01/11/2000 is 11 January or 1 November: a column that reads both ways (no day above 12)
    stops in one line naming both formats; timestamp_format settles it. A day above 12 anywhere
    settles it too (the Ta-Feng file above)."""
    ambiguous = TAFENG.replace("11/15/2000", "11/5/2000")
    path = write(tmp_path / "a", ambiguous) / "transactions.csv"
    with pytest.raises(InputError, match=r"^transactions.csv: column TRANSACTION_DT: value '11/1/2000' reads as "
                                         r"'%m/%d/%Y' and as '%d/%m/%Y': set the ingest config timestamp_format"):
        derive_snapshot(path)
    for fmt, months in (("%m/%d/%Y", {11}), ("%d/%m/%Y", {1, 3, 5})):
        orders = derive_snapshot(path, TransactionsSpec(timestamp_format=fmt)).snapshot.orders
        assert set(orders["order_ts"].dt.month().to_list()) == months, fmt
    bad = write(tmp_path / "b", ambiguous.replace("11/3/2000", "2000-11-03")) / "transactions.csv"
    with pytest.raises(InputError, match=r"value '2000-11-03' is not a date or timestamp in the timestamp_format '%m/%d/%Y'"):
        derive_snapshot(bad, TransactionsSpec(timestamp_format="%m/%d/%Y"))


def test_two_digit_years_are_refused_and_european_dates_read(tmp_path):
    short = TAFENG.replace("/2000", "/00")
    with pytest.raises(InputError, match=r"column TRANSACTION_DT: value '11/1/00' reads as the year 0: two-digit years are not guessed"):
        derive_snapshot(write(tmp_path / "y", short) / "transactions.csv")
    orders = derive_snapshot(write(tmp_path / "y2", short) / "transactions.csv",
                             TransactionsSpec(timestamp_format="%m/%d/%y")).snapshot.orders
    assert orders["order_ts"].dt.year().unique().to_list() == [2000]
    german = "Kunde;Rechnung;Datum;Artikel\n7;r1;01.12.2011 08:26;p1\n7;r2;09.12.2011 17:05;p2\n8;r3;05.12.2011 10:00;p1\n"
    spec = TransactionsSpec(columns={"customer_id": "Kunde", "order_id": "Rechnung", "timestamp": "Datum", "product_id": "Artikel"})
    orders = derive_snapshot(write(tmp_path / "de", german) / "transactions.csv", spec).snapshot.orders.sort("order_ts")
    assert orders["order_ts"].dt.strftime("%Y-%m-%d %H:%M").to_list() == ["2011-12-01 08:26", "2011-12-05 10:00", "2011-12-09 17:05"]


def test_ids_in_scientific_notation_are_refused(tmp_path):
    """A spreadsheet shows a 16-digit card number as 6.01200E+15: every customer would become
    one. The ingest stops in one line instead, naming the column and the value."""
    text = "InvoiceNo,StockCode,InvoiceDate,CustomerID\n1,p1,2011-12-01 08:26,6.01200E+15\n2,p2,2011-12-02 09:00,6.01200E+15\n"
    with pytest.raises(InputError, match=r"^transactions.csv: column CustomerID: value '6.01200E\+15' is an id in scientific notation"):
        derive_snapshot(write(tmp_path / "e", text) / "transactions.csv")
    plain = derive_snapshot(write(tmp_path / "p", text.replace("6.01200E+15", "6012000012345678")) / "transactions.csv")
    assert plain.snapshot.orders["user_id"].n_unique() == 1 and plain.snapshot.orders.height == 2
    # past the first 10,000 lines the distinct ids are checked (probe round 3: two customers merged)
    head = "".join(f"{i},p{i % 7},2011-12-01 08:26,C{i % 50}\n" for i in range(10, 12_010))
    late = "InvoiceNo,StockCode,InvoiceDate,CustomerID\n" + head + "9,p1,2011-12-01 08:26,6.01200E+15\n"
    with pytest.raises(InputError, match=r"^transactions.csv: column CustomerID: value '6.01200E\+15' is an id in scientific notation"):
        derive_snapshot(write(tmp_path / "late", late) / "transactions.csv")


def test_string_customer_ids_are_numbered_and_dates_only_mean_no_hour(tmp_path):
    text = "customer,order,date,item\nbob,o1,2024-05-01,x\nann,o2,2024-05-02,y\nbob,o3,2024-05-09,y\n"
    result = derive_snapshot(write(tmp_path / "c", text) / "transactions.csv", TransactionsSpec(
        columns={"customer_id": "customer", "order_id": "order", "product_id": "item"}))
    orders = result.snapshot.orders.sort("order_ts")
    assert orders["user_id"].to_list() == [2, 1, 2]  # ann = 1, bob = 2 (sorted)
    # the exports name customers by the file's ids: raw_orders keeps the map back
    assert orders["customer_code"].to_list() == ["bob", "ann", "bob"]
    assert orders["order_hour_of_day"].null_count() == 3
    assert result.info["time_of_day"] is False
    assert orders["days_since_prior_order"].to_list() == [None, None, 8.0]



def test_integer_customer_ids_past_int32_are_numbered_in_numeric_order(tmp_path):
    """A parquet file's Int64 ids beyond Int32 are numbered 1.. by value and mapped back."""
    path = tmp_path / "transactions.parquet"
    pl.DataFrame({
        "customer_id": [10_000_000_000, 7, 10_000_000_000, 900_000_000_000],
        "order_id": [1, 2, 3, 4], "timestamp": ["2024-05-01", "2024-05-02", "2024-05-09", "2024-05-10"],
        "product_id": ["p1", "p2", "p1", "p3"],
    }).write_parquet(path)  # fmt: skip
    orders = derive_snapshot(path).snapshot.orders.sort("order_code")
    assert orders["user_id"].to_list() == [2, 1, 2, 3]  # 7 < 10^10 < 9*10^11 by value, not as text
    assert orders["customer_code"].to_list() == ["10000000000", "7", "10000000000", "900000000000"]


BAD = {
    "missing required column": (TINY.replace("CustomerID", "Client"), ["transactions.csv", "missing column customer_id"]),
    "mapped column absent": (None, ["transactions.csv", "missing column cust", "customer_id"]),
    "bad timestamp": (TINY.replace("2011-01-10 14:00:00", "yesterday"), ["transactions.csv", "column InvoiceDate", "'yesterday'"]),
    "bad quantity": (TINY.replace(",3,2011", ",three,2011"), ["transactions.csv", "column Quantity", "'three'"]),
    "customer column empty": (
        HEADER + "\n".join(",".join(l.split(",")[:6] + ["", l.split(",")[7]]) for l in LINES) + "\n",
        ["transactions.csv", "column CustomerID", "no value at all"],
    ),
    "missing product id": (TINY.replace("1002,A1,", "1002,,"), ["transactions.csv", "column StockCode", "1 missing", "data row 5"]),
    "a total line at the end": (TINY + ",,Total,,,,,\n", ["transactions.csv", "column", "1 missing", "in the last row (13): a total or footer line?"]),
    "nothing usable": (HEADER + LINES[5] + "\n" + LINES[9] + "\n", ["transactions.csv", "no usable line", "cancellation 1"]),
    # stored as Int32: a quantity above it is a data error, named, not polars' cast failure
    "quantity above Int32": (TINY.replace("1002,A1,Red mug,1,", "1002,A1,Red mug,3000000000,"),
                             ["transactions.csv", "column quantity", "1 order line(s) above 2,147,483,647", "3,000,000,000"]),
    "merged quantity above Int32": (TINY.replace("Red mug,2,", "Red mug,2000000000,").replace("Red mug,3,", "Red mug,1500000000,"),
                                    ["transactions.csv", "column quantity", "largest 3,500,000,000"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_transactions_fail_with_one_line_and_write_nothing(tmp_path, instance, case):
    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs

    text, expected = BAD[case]
    clean = write(tmp_path / "clean", text if text is not None else TINY)
    config = None
    if case == "mapped column absent":
        config = {"ops": {"instacart_snapshot": {"config": {"columns": {"customer_id": "cust"}}}}}
    curated = tmp_path / "curated"
    outcome = run_graph(
        instance, run_key=RUN, defs=local_defs(clean, curated), run_config=config,
        selection=["raw_orders", "raw_order_products", "products"],
    )
    assert not outcome.success
    assert len(outcome.errors) == 1 and "\n" not in outcome.errors[0], outcome.errors
    for part in expected:
        assert part in outcome.errors[0], (part, outcome.errors[0])
    assert stored_files(curated) == []


def test_both_forms_in_one_location_is_refused(tmp_path, instance):
    from insightflow_assets_tests.test_ingest import write_tiny

    clean = write_tiny(tmp_path / "clean")
    write(clean)
    outcome, curated = ingest(tmp_path, instance, clean)
    assert not outcome.success
    assert "keep one input form" in outcome.errors[0]
    assert stored_files(curated) == []


def test_snapshot_through_dagster_records_exclusions(tmp_path, instance):
    outcome, curated = ingest(tmp_path, instance, write(tmp_path / "clean"))
    assert outcome.ok, outcome.errors
    raw = curated / "recsys/raw/run-20260101-000000"
    orders = pl.read_parquet(raw / "orders.parquet")
    assert orders.height == 4 and orders.schema["order_ts"] == pl.Datetime("us")
    lines = pl.read_parquet(raw / "order_products.parquet")
    assert set(lines.columns) >= {"quantity", "unit_price"}
    mat = instance.get_latest_materialization_event(AssetKey("raw_order_products")).asset_materialization
    assert mat.metadata["excluded_lines"].value["cancellation"] == 1
    assert mat.metadata["input_form"].value == "transactions"


def test_unreadable_transactions_file_is_named(tmp_path):
    path = write(tmp_path / "x", "garbage", name="transactions.parquet") / "transactions.parquet"
    with pytest.raises(InputError, match="transactions.parquet: cannot be read"):
        derive_snapshot(path)


def test_names_na_none_null_are_names_and_only_an_empty_field_is_missing(tmp_path):
    text = (
        TINY.replace("Red mug", "NA").replace("Blue plate", "None").replace("Green bowl", "null")
        .replace("1004,C3,null", "1004,C3,")  # C3's first usable line has no name, a later one has
        .replace("1007,C3,null", '1007,C3,""')
    )
    names = derive_snapshot(write(tmp_path / "c", text) / "transactions.csv").snapshot.products
    assert names.sort("product_id").select("product_code", "product_name").rows() == [
        ("A1", "NA"),
        ("B2", "None"),
        ("C3", "C3"),  # every C3 line kept has an empty name (1007 is a free sample, excluded)
    ]


def test_nan_prices_and_null_markers_in_numbers_and_timestamps_are_missing(tmp_path):
    text = TINY.replace("1002,A1,Red mug,1,2011-01-10 14:00:00,1.50", "1002,A1,Red mug,NA,2011-01-10 14:00:00,NaN")
    text = text.replace("2011-03-01 18:30:00", "NA")
    result = derive_snapshot(write(tmp_path / "c", text) / "transactions.csv")
    assert result.excluded["no_timestamp"] == 1
    lines = result.snapshot.order_products.join(result.snapshot.orders.select("order_id", "order_code"), on="order_id")
    assert lines.filter(pl.col("order_code") == "1002").select("quantity", "unit_price").rows() == [(None, None)]


def test_pure_reader_checks_csv_like_the_instacart_reader(tmp_path):
    """`derive_snapshot` itself (not only the asset) goes through `utf8_copy`: another encoding,
    and a row with extra fields named by its line."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "transactions.csv").write_bytes(TINY.replace("Green bowl", "Bol vert clair é").encode("latin-1"))
    result = derive_snapshot(folder / "transactions.csv", encoding="latin-1")
    assert "Bol vert clair é" in result.snapshot.products["product_name"].to_list()
    lines = list(LINES)
    lines[0] += ",extra"
    ragged = write(tmp_path / "r", HEADER + "\n".join(lines) + "\n") / "transactions.csv"
    with pytest.raises(InputError, match=r"^transactions.csv: line 2: 9 fields, the header has 8 \(the row has 1 extra field\)$"):
        derive_snapshot(ragged)


# A Dunnhumby-style export: days numbered from 1, no date.
DUNNHUMBY = """household_key,BASKET_ID,DAY,PRODUCT_ID,QUANTITY,SALES_VALUE
2375,26984851472,1,1004906,1,1.39
2375,26984851472,1,1033142,1,0.82
1364,26984896261,1,842930,1,2.19
2375,26984851516,5,1004906,2,2.78
1364,26984896300,9,842930,1,2.19
"""


@pytest.mark.parametrize(
    ("unit", "ok", "message"),
    [
        (None, False, "transactions.csv: column DAY: value '1' is not a date or timestamp (5 row(s)); integer times need the ingest config timestamp_unit (day, s or ms)"),
        ("hours", False, "transactions config: timestamp_unit 'hours' is not one of day, s, ms"),
        ("day", True, None),
    ],
)
def test_integer_days_need_and_take_a_timestamp_unit(tmp_path, instance, unit, ok, message):
    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs

    clean, curated = write(tmp_path / "clean", DUNNHUMBY), tmp_path / "curated"
    config = {"columns": {"timestamp": "DAY"}, **({"timestamp_unit": unit} if unit else {})}
    outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated), selection=["raw_orders", "raw_order_products", "products"],
                        run_config={"ops": {"instacart_snapshot": {"config": config}}})
    if not ok:
        assert not outcome.success and len(outcome.errors) == 1 and "\n" not in outcome.errors[0]
        assert outcome.errors[0].endswith(message), outcome.errors
        assert stored_files(curated) == []
        return
    assert outcome.ok, outcome.errors
    orders = pl.read_parquet(curated / f"recsys/raw/{RUN}/orders.parquet").sort("user_id", "order_number")
    # household 1364: days 1 and 9; household 2375: days 1 and 5 (basket 26984851472 has two lines)
    assert orders.select("user_id", "order_number", "days_since_prior_order").rows() == [
        (1364, 1, None), (1364, 2, 8.0), (2375, 1, None), (2375, 2, 4.0)]
    assert orders["order_hour_of_day"].null_count() == orders.height  # days carry no time of day


def test_everyone_with_one_order_stops_at_ratings_in_one_line(tmp_path, instance):
    """A new shop or guest checkouts: every customer has one order, so no one has history before
    the target basket. The ratings step says so in one line and stores nothing (it stored an
    empty table and the blocking check reported only rows=0)."""
    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs

    lines = [f"{i},p{i % 7},2011-12-{1 + i % 9:02d} 10:00,{100 + i}" for i in range(60)]
    clean, curated = write(tmp_path / "clean", "InvoiceNo,StockCode,InvoiceDate,CustomerID\n" + "\n".join(lines) + "\n"), tmp_path / "curated"
    outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated),
                        selection=["raw_orders", "raw_order_products", "products", "orders_imputed", "ratings"])
    assert not outcome.success and len(outcome.errors) == 1 and "\n" not in outcome.errors[0], outcome.errors
    assert "ratings: no customer has an order before their last (target) order" in outcome.errors[0]
    assert not (curated / f"recsys/ratings/{RUN}").exists()


# --- real exports the probe of 2026-12-01 found mis-read ------------------------------------
def _codes_file(tmp_path, rows: list[str], header: str = "order,customer,date,item,qty") -> Path:
    return write(tmp_path / "c", header + "\n" + "\n".join(rows) + "\n") / "transactions.csv"


SPEC = TransactionsSpec(columns={"order_id": "order", "customer_id": "customer", "product_id": "item", "quantity": "qty"})


def test_cancellations_are_a_prefix_then_digits(tmp_path):
    """Superstore's CA-2016-… orders and GUIDs starting with C are orders; C536379 is UCI's cancellation."""
    rows = ["CA-2016-1,7,2024-05-01,p1,1", "CA-2016-2,7,2024-05-03,p2,1", "C3F2A9E1-77B0,8,2024-05-02,p1,1",
            "C3F2A9E2-77B0,8,2024-05-04,p3,2", "536379,9,2024-05-02,p1,1", "C536379,9,2024-05-05,p1,1"]
    result = derive_snapshot(_codes_file(tmp_path, rows), SPEC)
    assert result.excluded["cancellation"] == 1
    assert sorted(result.snapshot.orders["order_code"]) == ["536379", "C3F2A9E1-77B0", "C3F2A9E2-77B0", "CA-2016-1", "CA-2016-2"]


def test_a_negative_placeholder_customer_is_numbered(tmp_path):
    """A till's guest account -1 is not a user id (the exports' schema wants ids from 0): numbered, code kept."""
    rows = ["1,-1,2024-05-01,p1,1", "2,-1,2024-05-02,p2,1", "3,17850,2024-05-02,p1,1", "4,17850,2024-05-03,p2,1"]
    orders = derive_snapshot(_codes_file(tmp_path, rows), SPEC).snapshot.orders.sort("order_code")
    assert orders["user_id"].min() >= 1 and orders["customer_code"].to_list() == ["-1", "-1", "17850", "17850"]


def test_a_sales_price_column_is_not_taken_for_the_unit_price(tmp_path):
    """Ta-Feng's SALES_PRICE is the line's total: M would multiply it by the quantity again."""
    rows = ["1,7,2024-05-01,p1,2,3.0", "2,7,2024-05-03,p2,1,1.5"]
    result = derive_snapshot(_codes_file(tmp_path, rows, "order,customer,date,item,qty,SALES_PRICE"), SPEC)
    assert "unit_price" not in result.snapshot.order_products.columns


@pytest.mark.parametrize("unit, values, words", [
    ("ms", ["1323434940", "1323521340"], "every value read in ms since 1970 falls before 1990"),
    ("s", ["1323434940000", "1323521340000"], "value 1323521340000 in s since 1970 is after"),
    ("day", ["1323434940", "1323521340"], "in day since 1970 is after"),  # polars panicked on it
])
def test_an_integer_time_in_the_wrong_unit_stops_in_one_line(tmp_path, unit, values, words):
    rows = [f"{i},7,{v},p{i},1" for i, v in enumerate(values, 1)]
    spec = TransactionsSpec(columns={**SPEC.columns, "timestamp": "date"}, timestamp_unit=unit)
    with pytest.raises(InputError, match=rf"^transactions.csv: column date: .*{words}"):
        derive_snapshot(_codes_file(tmp_path, rows), spec)
    ok = derive_snapshot(_codes_file(tmp_path, [f"{i},7,{v},p{i},1" for i, v in enumerate(("1323434940", "1323521340"), 1)]),
                         TransactionsSpec(columns={**SPEC.columns, "timestamp": "date"}, timestamp_unit="s"))
    assert str(ok.snapshot.orders["order_ts"].min()) == "2011-12-09 12:49:00"


def test_an_order_longer_than_a_cart_stops_in_one_line(tmp_path):
    rows = [f"1,7,2024-05-01,p{i},1" for i in range(32_768)]
    with pytest.raises(InputError, match=r"^transactions.csv: column order_id: an order has 32,768 lines \(at most 32,767"):
        derive_snapshot(_codes_file(tmp_path, rows), SPEC)


def test_blank_lines_are_skipped(tmp_path):
    """A CSV file ending in a blank line (or with one inside) reads as the same file without."""
    rows = ["1,7,2024-05-01,p1,1", "2,7,2024-05-03,p2,1", "3,8,2024-05-02,p1,2"]
    plain = derive_snapshot(_codes_file(tmp_path / "a", rows), SPEC).snapshot
    blank = derive_snapshot(_codes_file(tmp_path / "b", [rows[0], "", *rows[1:], ",,,,"]), SPEC).snapshot
    assert blank.orders.equals(plain.orders) and blank.order_products.equals(plain.order_products)


def test_unsigned_64_bit_hash_ids_and_iso_milliseconds(tmp_path):
    """Parquet UInt64 hashes past Int64 are text ids (numbered, code kept), and JavaScript's
    toISOString() times (…T08:26:00.000Z) are a known layout."""
    path = tmp_path / "transactions.parquet"
    big = 10_799_493_812_214_053_345
    pl.DataFrame({"customer_id": pl.Series([big, big, 5], dtype=pl.UInt64), "order_id": [1, 2, 3],
                  "timestamp": ["2011-12-01T08:26:00.000Z", "2011-12-02T09:00:05.250Z", "2011-12-02T10:00:00.000Z"],
                  "product_id": ["p1", "p2", "p1"]}).write_parquet(path)  # fmt: skip
    orders = derive_snapshot(path).snapshot.orders.sort("order_code")
    assert orders["customer_code"].to_list() == [str(big), str(big), "5"]
    assert [str(t) for t in orders["order_ts"]] == ["2011-12-01 08:26:00", "2011-12-02 09:00:05.250000", "2011-12-02 10:00:00"]


def test_without_a_quantity_column_each_line_is_a_unit(tmp_path):
    """H&M's and Olist's logs write a row per item: repeated rows are units of one line, not a
    double export (with a quantity column they still are, see the derivation test)."""
    rows = ["1,7,2024-05-01,p1", "1,7,2024-05-01,p1", "1,7,2024-05-01,p2", "2,7,2024-05-03,p1", "2,7,2024-05-03,p1",
            "2,7,2024-05-03,p1"]
    result = derive_snapshot(_codes_file(tmp_path, rows, "order,customer,date,item"), TransactionsSpec(
        columns={"order_id": "order", "customer_id": "customer", "product_id": "item"}))
    lines = result.snapshot.order_products.sort("order_id", "add_to_cart_order")
    assert lines.select("product_id", "quantity").rows() == [(1, 2), (2, 1), (1, 3)]
    assert result.excluded["duplicate_line"] == 0 and result.info["quantity"].startswith("one unit per line")


def test_a_midnight_written_as_the_date_alone_reads(tmp_path):
    """Excel's CSV export writes 12/1/2010 0:00 as 12/1/2010 beside 12/1/2010 8:26."""
    rows = ["1,7,12/1/2010 8:26,p1,1", "2,7,12/1/2010,p2,1", "3,7,12/13/2010 17:05,p1,1"]  # a 13th: month first
    spec = TransactionsSpec(columns={**SPEC.columns, "timestamp": "date"})
    orders = derive_snapshot(_codes_file(tmp_path, rows), spec).snapshot.orders.sort("order_code")
    assert [str(t) for t in orders["order_ts"]] == ["2010-12-01 08:26:00", "2010-12-01 00:00:00", "2010-12-13 17:05:00"]
    given = TransactionsSpec(columns=spec.columns, timestamp_format="%m/%d/%Y %H:%M")
    assert derive_snapshot(_codes_file(tmp_path / "g", rows), given).snapshot.orders.sort("order_code")["order_ts"].equals(orders["order_ts"])


def test_an_invoice_number_used_again_months_later_is_another_order(tmp_path):
    """A till that numbers its receipts again: the same customer's invoice 5 in May and in
    November are two orders (one per day), not one order dated May."""
    rows = ["5,7,2024-05-01 10:00,p1,1", "5,7,2024-05-01 10:00,p2,1", "6,7,2024-06-01 10:00,p1,1",
            "5,7,2024-11-20 09:00,p3,1", "9,8,2024-05-02 10:00,p1,1", "9,8,2024-05-04 08:00,p2,1", "4,8,2024-05-09 10:00,p1,1",
            "4,8,2024-05-09 23:00,p3,1"]  # within a day: one order
    spec = TransactionsSpec(columns={**SPEC.columns, "timestamp": "date"})
    result = derive_snapshot(_codes_file(tmp_path, rows), spec)
    orders = result.snapshot.orders.sort("user_id", "order_number")
    assert orders.select("user_id", "order_code").rows() == [
        (7, "5@2024-05-01"), (7, "6"), (7, "5@2024-11-20"), (8, "9@2024-05-02"), (8, "9@2024-05-04"), (8, "4")]
    assert [str(t) for t in orders["order_ts"]][:3] == ["2024-05-01 10:00:00", "2024-06-01 10:00:00", "2024-11-20 09:00:00"]
    assert result.snapshot.order_products.height == 8


def test_a_utc_offset_keeps_the_shops_wall_time(tmp_path):
    """Shopify writes 2024-05-01 10:00:00 +0200, web logs 2024-05-02T08:26:00+01:00: the hour of
    day is the shop's (10 and 8), as a time-zone-aware parquet column keeps it, not UTC's."""
    rows = ["1,7,2024-05-01 10:00:00 +0200,p1,1", "2,7,2024-05-13 08:26:00 -0500,p2,1", "3,8,2024-05-02 23:30:00 +0000,p1,1"]
    spec = TransactionsSpec(columns={**SPEC.columns, "timestamp": "date"})
    orders = derive_snapshot(_codes_file(tmp_path, rows), spec).snapshot.orders.sort("order_code")
    assert [str(t) for t in orders["order_ts"]] == ["2024-05-01 10:00:00", "2024-05-13 08:26:00", "2024-05-02 23:30:00"]
    iso = ["1,7,2024-05-02T08:26:00+01:00,p1,1", "2,7,2024-05-14T09:00:00Z,p2,1"]
    orders = derive_snapshot(_codes_file(tmp_path / "iso", iso), spec).snapshot.orders.sort("order_code")
    assert orders["order_hour_of_day"].to_list() == [8, 9]


def test_a_given_timestamp_format_reads_the_text_as_written(tmp_path):
    """With timestamp_format the offset is not dropped: %z reads the times as UTC."""
    rows = ["1,7,2024-05-01 10:00:00 +0200,p1,1", "2,7,2024-05-13 08:26:00 +0200,p2,1"]
    spec = TransactionsSpec(columns={**SPEC.columns, "timestamp": "date"}, timestamp_format="%Y-%m-%d %H:%M:%S %z")
    orders = derive_snapshot(_codes_file(tmp_path, rows), spec).snapshot.orders.sort("order_code")
    assert [str(t) for t in orders["order_ts"]] == ["2024-05-01 08:00:00", "2024-05-13 06:26:00"]


def test_weighed_goods_keep_their_fractional_quantities(tmp_path):
    """A grocery till sells apples by the kilo: 0.5 and 0.25 kg of one product in one invoice
    merge into 0.75 kg at the weighted price, and M is the spend. Before, the file was refused
    ("not an integer"); a file of whole quantities still stores them as Int32."""
    text = TINY.replace("Red mug,2,", "Red mug,0.5,").replace("Red mug,3,", "Red mug,0.25,")
    result = derive_snapshot(write(tmp_path / "kg", text) / "transactions.csv")
    lines = result.snapshot.order_products
    assert lines["quantity"].dtype == pl.Float64
    assert result.excluded == derive_snapshot(write(tmp_path / "whole") / "transactions.csv").excluded
    mug = _line(result, "1001", "A1")
    assert mug["quantity"] == pytest.approx(0.75) and mug["unit_price"] == pytest.approx(1.50)
    assert _line(result, "1002", "A1")["quantity"] == pytest.approx(1.0)  # whole values beside them stay as written
    whole = derive_snapshot(write(tmp_path / "ints", TINY) / "transactions.csv").snapshot.order_products
    assert whole["quantity"].dtype == pl.Int32
    # written with ".0" (a spreadsheet's float column) is still whole: Int32
    floats = derive_snapshot(write(tmp_path / "f", TINY.replace("Red mug,2,", "Red mug,2.0,")) / "transactions.csv")
    assert floats.snapshot.order_products["quantity"].dtype == pl.Int32


def _line(result, order_code: str, product_code: str) -> dict:
    orders, products = result.snapshot.orders, result.snapshot.products
    oid = orders.filter(pl.col("order_code") == order_code)["order_id"][0]
    code = "product_code" if "product_code" in products.columns else "product_id"
    pid = products.filter(pl.col(code).cast(pl.String) == product_code)["product_id"][0]
    return result.snapshot.order_products.filter((pl.col("order_id") == oid) & (pl.col("product_id") == pid)).row(0, named=True)


def test_a_nan_quantity_in_a_float_column_is_missing(tmp_path):
    """pandas writes a quantity column with a gap as float with NaN: whole values stay Int32, the
    NaN is a missing quantity (its line counts as a purchase, 0 in M), not a fraction."""
    path = tmp_path / "transactions.parquet"
    pl.DataFrame({
        "InvoiceNo": ["1", "1", "2"], "StockCode": ["A1", "D2", "A1"], "Quantity": [2.0, float("nan"), 1.0],
        "InvoiceDate": ["2011-01-03 09:00:00", "2011-01-03 09:00:00", "2011-01-05 09:00:00"],
        "UnitPrice": [1.5, 2.0, 1.5], "CustomerID": [7.0, 7.0, 7.0],
    }).write_parquet(path)  # fmt: skip
    lines = derive_snapshot(path).snapshot.order_products
    assert lines["quantity"].dtype == pl.Int32 and lines.height == 3
    assert sorted(lines["quantity"].to_list(), key=lambda q: -1 if q is None else q) == [None, 1, 2]


@pytest.mark.parametrize("gap", ["#N/A", "N/A", "-", "\\N"])
def test_spreadsheet_and_database_gaps_are_missing_customers(tmp_path, gap):
    """Excel's #N/A, N/A, a dash, MySQL's \\N in the customer column are no customer, not one
    customer holding every guest's lines (probe round 3: 17,371 lines under one fake id)."""
    text = TINY.replace("1.50,,UK", f"1.50,{gap},UK")
    assert text != TINY
    result = derive_snapshot(write(tmp_path / "g", text) / "transactions.csv")
    assert result.excluded == derive_snapshot(write(tmp_path / "plain") / "transactions.csv").excluded
    assert result.excluded["no_customer_id"] == 1


def test_a_column_named_twice_is_refused(tmp_path):
    """A list price and a sale price both headed UnitPrice: the reader took the first without a
    word (probe round 3: M +20 %). Now one line names the column."""
    from insightflow_assets.ingest.loading import InputError

    rows = [line + ",9.99" for line in LINES]
    text = HEADER.strip() + ",UnitPrice\n" + "\n".join(rows) + "\n"
    with pytest.raises(InputError, match=r"^transactions.csv: column UnitPrice appears 2 times in the header"):
        derive_snapshot(write(tmp_path / "d", text) / "transactions.csv")
    # a twice-named column the run does not read is left alone
    derive_snapshot(write(tmp_path / "e", HEADER.strip() + ",Country\n" + "\n".join(l + ",UK" for l in LINES) + "\n") / "transactions.csv")


def test_order_fields_on_the_first_line_only_are_carried_to_the_order(tmp_path):
    """Shopify writes the customer and the time on an order's first line only: the other lines
    were excluded as "no customer" (probe round 3: 95 % of the lines). They take their order's."""
    rows = [line.split(",") for line in LINES]
    seen = set()
    for row in rows:
        if row[0] in seen:
            row[4] = row[6] = ""  # InvoiceDate, CustomerID
        seen.add(row[0])
    text = HEADER + "\n".join(",".join(r) for r in rows) + "\n"
    sparse = derive_snapshot(write(tmp_path / "s", text) / "transactions.csv")
    full = derive_snapshot(write(tmp_path / "f") / "transactions.csv")
    assert sparse.excluded == full.excluded
    assert sparse.snapshot.orders.equals(full.snapshot.orders)
    assert sparse.snapshot.order_products.equals(full.snapshot.order_products)
    # two customers on one order's lines: which one the blank lines belong to is not guessed
    odd = TINY.replace("1001,B2,Blue plate,1,2011-01-03 09:15:00,4.00,17850.0,UK", "1001,B2,Blue plate,1,2011-01-03 09:15:00,4.00,12346.0,UK")
    odd = odd.replace("1001,A1,Red mug,3,2011-01-03 09:15:00,1.50,17850.0", "1001,A1,Red mug,3,2011-01-03 09:15:00,1.50,")
    assert derive_snapshot(write(tmp_path / "o", odd) / "transactions.csv").excluded["no_customer_id"] == 2


@pytest.mark.parametrize("content, what", [
    ("zip", "a ZIP archive (an .xlsx workbook is one)"),
    ("xls", "an Excel 97-2003 workbook (.xls)"),
    ("parquet", "a parquet file (name it .parquet)"),
])
def test_a_workbook_or_archive_named_csv_says_what_it_is(tmp_path, content, what):
    """Not "bytes that are not valid utf-8 … set the ingest config encoding" (probe round 3)."""
    import io
    import zipfile

    from insightflow_assets.ingest.loading import InputError

    if content == "zip":
        buf = io.BytesIO()
        zipfile.ZipFile(buf, "w").writestr("transactions.csv", TINY)
        data = buf.getvalue()
    elif content == "xls":
        data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    else:
        buf = io.BytesIO()
        pl.DataFrame({"a": [1]}).write_parquet(buf)
        data = buf.getvalue()
    path = tmp_path / "transactions.csv"
    path.write_bytes(data)
    with pytest.raises(InputError, match=rf"^transactions.csv: is {re.escape(what)}, not CSV text"):
        derive_snapshot(path)


def test_an_unusable_timestamp_format_is_the_configs_fault():
    from insightflow_assets.ingest.loading import InputError

    with pytest.raises(InputError, match=r"^transactions config: timestamp_format '%I:%M' is not a usable format"):
        TransactionsSpec(timestamp_format="%I:%M")


def test_a_till_writing_a_line_per_scan_adds_its_repeats(tmp_path):
    """Two equal lines are a double export by default (dropped); a POS log that writes one line
    per scanned unit says `duplicate_lines: add` and they add up (probe round 3: 16 % of M
    lost on such a file)."""
    path = write(tmp_path / "t") / "transactions.csv"
    dropped = derive_snapshot(path)
    added = derive_snapshot(path, TransactionsSpec(duplicate_lines="add"))
    assert dropped.excluded["duplicate_line"] == 1 and added.excluded["duplicate_line"] == 0
    assert _line(dropped, "1001", "B2")["quantity"] == 1 and _line(added, "1001", "B2")["quantity"] == 2
    assert _line(added, "1001", "A1")["quantity"] == 5  # the merge of different lines is unchanged
    assert added.info["duplicate_lines"].startswith("added up")
    with pytest.raises(InputError, match="duplicate_lines 'keep' is not 'drop' or 'add'"):
        TransactionsSpec(duplicate_lines="keep")


def test_carriage_return_line_ends_and_list_columns_are_named(tmp_path):
    """Old Mac Excel ends lines with CR only: it read as "the table is empty". A parquet list
    column gave polars' cast error without the column (probe round 3, U2 and U5)."""
    path = tmp_path / "transactions.csv"
    path.write_bytes(TINY.replace("\n", "\r").encode())
    with pytest.raises(InputError, match=r"^transactions.csv: its lines end in a carriage return only"):
        derive_snapshot(path)
    path.write_bytes(TINY.replace("\n", "\r\n").encode())  # Windows line ends read as they are
    assert derive_snapshot(path).lines_in == 12
    table = tmp_path / "transactions.parquet"
    pl.DataFrame({"InvoiceNo": ["1"], "StockCode": [["A1", "B2"]], "InvoiceDate": ["2011-01-03 09:15:00"],
                  "CustomerID": [7]}).write_parquet(table)
    with pytest.raises(InputError, match=r"^transactions.parquet: column StockCode holds List\(String\) values, not one value per line"):
        derive_snapshot(table)


def test_a_shopify_orders_export_reads_with_its_order_column_mapped(tmp_path):
    """Shopify's orders export: "Name" is the order (#1001), the customer ("Email") and the time
    ("Created at") on an order's first line only, the items under "Lineitem …" names."""
    header = "Name,Email,Created at,Lineitem quantity,Lineitem name,Lineitem price,Lineitem sku\n"
    rows = ["#1001,ann@x.org,2024-05-01 10:00:00 +0200,2,Red mug,1.50,A1", "#1001,,,1,Blue plate,4.00,B2",
            "#1002,ann@x.org,2024-05-08 10:00:00 +0200,1,Red mug,1.50,A1", "#1003,bob@x.org,2024-05-02 09:00:00 +0200,3,Green bowl,2.25,C3"]
    path = write(tmp_path / "s", header + "\n".join(rows) + "\n") / "transactions.csv"
    result = derive_snapshot(path, TransactionsSpec(columns={"order_id": "Name"}))
    assert sum(result.excluded.values()) == 0 and result.snapshot.order_products.height == 4
    assert sorted(result.snapshot.products["product_name"].to_list()) == ["Blue plate", "Green bowl", "Red mug"]
    assert sorted(result.snapshot.orders["customer_code"].unique().to_list()) == ["ann@x.org", "bob@x.org"]
    # an address written in another case on another order is the same customer (probe round 4: 972 -> 1,160)
    cased = derive_snapshot(write(tmp_path / "c", header + "\n".join(rows).replace("#1002,ann@x.org", "#1002,Ann@X.org") + "\n") / "transactions.csv",
                            TransactionsSpec(columns={"order_id": "Name"}))
    assert cased.snapshot.orders["user_id"].n_unique() == 2 and cased.snapshot.orders["customer_code"].n_unique() == 2
    assert _line(result, "#1001", "B2")["quantity"] == 1 and _line(result, "#1001", "A1")["unit_price"] == 1.5
    # WooCommerce's "Order Number" is an order column as it is
    woo = write(tmp_path / "w", "Order Number,Customer ID,Order Date,SKU,Quantity\n7,3,2024-05-01,A1,2\n") / "transactions.csv"
    assert derive_snapshot(woo).snapshot.orders["order_code"].to_list() == ["7"]


@pytest.mark.parametrize("encoding, config", [("utf-16", None), ("utf-32", None), ("utf-16-le", "utf-16-le")])
def test_utf16_and_utf32_text_reads_like_utf8(tmp_path, encoding, config):
    """Excel's "Unicode Text" is UTF-16 with a byte-order mark, tab-separated: the mark says the
    encoding; without one, the config does. It was refused (lines cut at the byte 0x0A)."""
    text = TINY.replace("Red mug", "Tasse à café")
    plain = derive_snapshot(write(tmp_path / "p", text) / "transactions.csv")
    path = tmp_path / "transactions.csv"
    path.write_bytes(text.replace(",", "\t").encode(encoding))
    wide = derive_snapshot(path, encoding=config or "utf-8")
    assert wide.excluded == plain.excluded and wide.snapshot.order_products.equals(plain.snapshot.order_products)
    assert sorted(wide.snapshot.products["product_name"]) == sorted(plain.snapshot.products["product_name"])
    if config is not None:  # without the mark nor the config: one line saying what it looks like
        with pytest.raises(InputError, match=r"^transactions.csv: has a NUL byte beside every letter, as UTF-16 text"):
            derive_snapshot(path)
        # "utf-16" wants the mark: one line, not Python's UnicodeError (probe round 4)
        with pytest.raises(InputError, match=r"^transactions.csv: the first line: not valid utf-16 text .*byte-order mark"):
            derive_snapshot(path, encoding="utf-16")


def test_zero_padded_customer_ids_keep_their_text(tmp_path):
    """Loyalty cards written 00017850 are not customer 17850: numbered, with the code kept, and
    017850 beside 17850 are two customers (probe round 3: merged). 17850.0 is still 17850."""
    rows = ["1,p1,2024-05-01,00017850", "2,p2,2024-05-02,017850", "3,p1,2024-05-03,17850", "4,p2,2024-05-04,17850.0"]
    path = write(tmp_path / "z", "InvoiceNo,StockCode,InvoiceDate,CustomerID\n" + "\n".join(rows) + "\n") / "transactions.csv"
    orders = derive_snapshot(path).snapshot.orders.sort("order_code")
    assert orders["customer_code"].to_list() == ["00017850", "017850", "17850", "17850"]
    assert orders["user_id"].n_unique() == 3


def test_a_duplicate_line_is_one_whatever_the_customer_ids_spelling(tmp_path):
    """17850.0 on one line and 17850 on its double are the same customer, so the same line
    (probe round 3: 246 double-exported lines were added up instead)."""
    mixed = TINY.replace("1001,B2,Blue plate,1,2011-01-03 09:15:00,4.00,17850.0,UK\n1002", "1001,B2,Blue plate,1,2011-01-03 09:15:00,4.00,17850,UK\n1002")
    assert mixed != TINY
    result = derive_snapshot(write(tmp_path / "m", mixed) / "transactions.csv")
    assert result.excluded == derive_snapshot(write(tmp_path / "p") / "transactions.csv").excluded
    assert _line(result, "1001", "B2")["quantity"] == 1


def test_a_separate_time_column_gives_the_time_of_day(tmp_path):
    """POS exports' Date + Time and Dunnhumby's DAY + TRANS_TIME (HHMM): the time was dropped
    with a "no time of day" warning (probe round 3); it is added to the date now."""
    whole = derive_snapshot(write(tmp_path / "w") / "transactions.csv").snapshot.orders.sort("order_code")
    header = HEADER.replace("InvoiceDate", "Date,Time")
    split = [re.sub(r"(\d{4}-\d{2}-\d{2}) ", r"\1,", line) for line in LINES]  # "2011-01-03,09:15:00"
    text = header + "\n".join(split) + "\n"
    orders = derive_snapshot(write(tmp_path / "s", text) / "transactions.csv").snapshot.orders.sort("order_code")
    assert orders["order_ts"].equals(whole["order_ts"]) and orders["order_hour_of_day"].equals(whole["order_hour_of_day"])
    # HHMM numbers (Dunnhumby), the day mapped as a number of days
    dunn = "household_key,BASKET_ID,DAY,PRODUCT_ID,QUANTITY,TRANS_TIME\n7,1,1,p1,1,1631\n7,2,3,p2,2,905\n8,3,2,p1,1,0\n"
    spec = TransactionsSpec(columns={"timestamp": "DAY", "order_id": "BASKET_ID"}, timestamp_unit="day")
    got = derive_snapshot(write(tmp_path / "d", dunn) / "transactions.csv", spec).snapshot.orders.sort("order_code")
    assert [(t.hour, t.minute) for t in got["order_ts"]] == [(16, 31), (9, 5), (0, 0)]
    # a blank time keeps its line at its date (it was excluded as "no timestamp": probe round 4)
    blank = text.replace(",14:00:00,", ",,", 1)  # order 1002: one line, nothing to take from
    kept = derive_snapshot(write(tmp_path / "b", blank) / "transactions.csv")
    full = derive_snapshot(write(tmp_path / "w2") / "transactions.csv").snapshot
    assert kept.excluded["no_timestamp"] == 0
    assert kept.snapshot.order_products.height == full.order_products.height and kept.snapshot.orders.height == full.orders.height
    # a 12-hour clock
    pm = "Invoice,Customer,Date,Time,SKU\n1,7,2024-05-01,8:26 PM,p1\n2,7,2024-05-03,12:05 AM,p2\n"
    got = derive_snapshot(write(tmp_path / "pm", pm) / "transactions.csv").snapshot.orders.sort("order_code")
    assert [(t.hour, t.minute) for t in got["order_ts"]] == [(20, 26), (0, 5)]
    # not a time: found by its name, it is left out; mapped, it stops the ingest in one line
    odd = text.replace(",09:15:00,", ",morning,", 1)
    assert derive_snapshot(write(tmp_path / "o", odd) / "transactions.csv").info["time_of_day"] is False
    with pytest.raises(InputError, match=r"^transactions.csv: column Time: value 'morning' is not a time of day"):
        derive_snapshot(write(tmp_path / "m", odd) / "transactions.csv", TransactionsSpec(columns={"time": "Time"}))
