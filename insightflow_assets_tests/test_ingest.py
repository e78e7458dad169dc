"""Data in: accepted variations of the Instacart files, and every bad-input class.

Each bad input is materialized through Dagster and must fail with a one-line message naming
the file and the column, leaving nothing in the curated store.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import local_defs

INGEST = ["raw_orders", "raw_order_products", "products"]
RUN = "run-20260101-000000"

# A tiny hand-written input set with real-world quirks: quoted headers and strings, "08" hours,
# empty / NA / 7.0 gaps, a test order without lines, a product name with a comma.
TINY = {
    "orders.csv": (
        '"order_id","user_id","eval_set","order_number","order_dow","order_hour_of_day","days_since_prior_order"\n'
        '1,1,"prior",1,2,"08",\n'
        "2,1,prior,2,3,09,7.0\n"
        "3,1,train,3,3,10,NA\n"
        '4,2,prior,1,0,"12",\n'
        "5,2,test,2,1,13,30.0\n"
    ),
    "order_products__prior.csv": "order_id,product_id,add_to_cart_order,reordered\n1,1,1,0\n1,2,2,0\n2,1,1,1\n4,2,1,0\n",
    "order_products__train.csv": "order_id,product_id,add_to_cart_order,reordered\n3,1,1,1\n",
    "products.csv": 'product_id,product_name,aisle_id,department_id\n1,"Banana, organic",1,1\n2,Milk,2,2\n',
    "aisles.csv": "aisle_id,aisle\n1,fresh fruits\n2,milk\n",
    "departments.csv": "department_id,department\n1,produce\n2,dairy eggs\n",
}


def write_tiny(folder: Path, **changes: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {**TINY, **{k.replace("__dot__", "."): v for k, v in changes.items()}}
    for name, text in files.items():
        if text is not None:
            (folder / name).write_text(text)
    return folder


def ingest(tmp_path: Path, instance, clean: Path, run_key: str = RUN):
    curated = tmp_path / "curated"
    outcome = run_graph(instance, run_key=run_key, defs=local_defs(clean, curated), selection=INGEST)
    return outcome, curated


def stored_files(curated: Path) -> list[str]:
    return sorted(str(p.relative_to(curated)) for p in curated.rglob("*") if p.is_file()) if curated.exists() else []


def test_tiny_quirky_input_is_accepted(tmp_path, instance):
    outcome, curated = ingest(tmp_path, instance, write_tiny(tmp_path / "clean"))
    assert outcome.ok, outcome.errors
    raw = curated / "recsys/raw/run-20260101-000000"
    orders = pl.read_parquet(raw / "orders.parquet")
    assert orders.schema["order_hour_of_day"] == pl.Int8
    assert orders.sort("order_id")["order_hour_of_day"].to_list() == [8, 9, 10, 12, 13]
    assert orders.sort("order_id")["days_since_prior_order"].to_list() == [None, 7.0, None, None, 30.0]
    assert orders.sort("order_id")["eval_set"].to_list() == ["prior", "prior", "train", "prior", "test"]
    lines = pl.read_parquet(raw / "order_products.parquet")
    assert lines.height == 5  # prior + train
    products = pl.read_parquet(raw / "products.parquet")
    assert products.filter(pl.col("product_id") == 1).row(0, named=True) == {
        "product_id": 1,
        "product_name": "Banana, organic",
        "aisle_id": 1,
        "department_id": 1,
        "aisle": "fresh fruits",
        "department": "produce",
    }


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_other_formats_are_read_the_same(tmp_path, instance, fmt):
    clean = tmp_path / "clean"
    clean.mkdir()
    for name, text in TINY.items():
        stem = name.removesuffix(".csv")
        if fmt == "csv.gz":
            (clean / f"{stem}.csv.gz").write_bytes(gzip.compress(text.encode()))
        else:
            csv = tmp_path / name
            csv.write_text(text)
            pl.read_csv(csv, infer_schema=False).write_parquet(clean / f"{stem}.parquet")
    outcome, curated = ingest(tmp_path, instance, clean)
    assert outcome.ok, outcome.errors
    orders = pl.read_parquet(curated / "recsys/raw/run-20260101-000000/orders.parquet").sort("order_id")
    assert orders["order_hour_of_day"].to_list() == [8, 9, 10, 12, 13]


def _replace(name: str, old: str, new: str) -> dict:
    return {name.replace(".", "__dot__"): TINY[name].replace(old, new, 1)}


BAD_INPUTS = {
    "missing file": ({"aisles__dot__csv": None}, ["missing file aisles.csv"]),
    "missing column": (
        {"orders__dot__csv": TINY["orders.csv"].replace('"order_dow",', "").replace(",2,\"08\",", ",\"08\",")},
        ["orders.csv", "missing column order_dow"],
    ),
    "wrong type": (_replace("orders.csv", "2,1,prior,2", "abc,1,prior,2"), ["orders.csv", "column order_id", "'abc'"]),
    "empty table": ({"products__dot__csv": "product_id,product_name,aisle_id,department_id\n"}, ["products.csv", "empty"]),
    "duplicate order_id": (_replace("orders.csv", "2,1,prior,2", "1,1,prior,2"), ["orders.csv", "column order_id", "duplicate"]),
    "unknown order": (
        _replace("order_products__prior.csv", "2,1,1,1", "99,1,1,1"),
        ["order_products__prior.csv", "column order_id", "unknown orders"],
    ),
    "unknown product": (
        _replace("order_products__train.csv", "3,1,1,1", "3,77,1,1"),
        ["order_products__train.csv", "column product_id", "unknown products"],
    ),
    "gap out of range": (_replace("orders.csv", "30.0", "31.0"), ["orders.csv", "column days_since_prior_order", "0–30"]),
    "hour out of range": (_replace("orders.csv", "13,30.0", "24,30.0"), ["orders.csv", "column order_hour_of_day", "0–23"]),
    "dow out of range": (_replace("orders.csv", "5,2,test,2,1", "5,2,test,2,7"), ["orders.csv", "column order_dow", "0–6"]),
    "unknown eval_set": (_replace("orders.csv", "test", "validation"), ["orders.csv", "column eval_set"]),
    "missing id": (_replace("orders.csv", "4,2,prior", "4,,prior"), ["orders.csv", "column user_id", "missing"]),
    # the products' own keys and references (validate_snapshot): each case fails if its check goes
    "duplicate product_id": (
        {"products__dot__csv": TINY["products.csv"] + "2,Oat milk,2,2\n"},
        ["products.csv", "column product_id", "duplicate value 2"],
    ),
    "duplicate aisle_id": (
        {"aisles__dot__csv": TINY["aisles.csv"] + "2,dairy\n"},
        ["aisles.csv", "column aisle_id", "duplicate value 2"],
    ),
    "unknown aisle": (
        _replace("products.csv", "2,Milk,2,2", "2,Milk,9,2"),
        ["products.csv", "column aisle_id", "1 product(s) point at unknown aisles (e.g. 9)"],
    ),
    "unknown department": (
        _replace("products.csv", "2,Milk,2,2", "2,Milk,2,9"),
        ["products.csv", "column department_id", "1 product(s) point at unknown departments (e.g. 9)"],
    ),
    # the train file's case is in test_bad_inputs.py (which file the message names)
    "product twice in a prior order": (
        {"order_products__prior__dot__csv": TINY["order_products__prior.csv"] + "1,1,3,0\n"},
        ["order_products__prior.csv: column product_id: product 1 appears twice in order 1"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, instance, case):
    changes, expected = BAD_INPUTS[case]
    outcome, curated = ingest(tmp_path, instance, write_tiny(tmp_path / "clean", **changes))
    assert not outcome.success
    assert len(outcome.errors) == 1
    message = outcome.errors[0]
    assert "\n" not in message, message
    for part in expected:
        assert part in message, (part, message)
    assert stored_files(curated) == []


@pytest.mark.parametrize("key", ["RUN-20260101-000000", "run-20260101-000000/x", "run-20260101-000000-..", "run-20260101-000000-a,b", "run-20260101-000000 x", "run-2026-01-01"])
def test_bad_run_key_is_refused_before_anything_is_written(tmp_path, instance, key):
    from insightflow_assets.partitions import register_run
    from resources.layout import RunKeyError

    with pytest.raises(RunKeyError, match="invalid run key"):
        register_run(instance, key=key)
    # A key added behind our back (e.g. in the UI) is refused before any step runs, nothing
    # written (a run launched from the UI is refused by the executor: see test_run_keys.py).
    instance.add_dynamic_partitions("runs", [key])
    with pytest.raises(RunKeyError, match="invalid run key"):
        ingest(tmp_path, instance, write_tiny(tmp_path / "clean"), run_key=key)
    assert instance.get_runs() == []
    assert stored_files(tmp_path / "curated") == []


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["orders.csv", "orders.csv.gz"], "in/: orders is there as orders.csv and orders.csv.gz; keep one"),
        (["transactions.csv", "transactions.parquet"], "in/: transactions is there as transactions.csv and transactions.parquet; keep one"),
        (["events.csv", "events.csv.gz", "item_properties.csv", "category_tree.csv"], "in/: events is there as events.csv and events.csv.gz; keep one"),
    ],
)
def test_a_table_in_two_files_is_refused_in_every_form(keys, message):
    """One rule (`loading.one_file`) for the three forms: which file is meant is never guessed."""
    from insightflow_assets.ingest.events import events_keys
    from insightflow_assets.ingest.loading import InputError, pick_source_files

    pick = events_keys if keys[0].startswith("events") else pick_source_files
    with pytest.raises(InputError, match=f"^{message}$"):
        pick(keys, "in/")
