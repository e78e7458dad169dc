"""The whole graph on a real dataset: UCI Online Retail in the transactions form.

The file is read from ``../shared/data/online_retail/`` beside the project (never copied into
the repository). Everything asserted here is recomputed independently from the raw invoice
lines with plain polars, not read back from the project's own intermediate tables.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance

from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import local_defs

UCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail" / "online_retail.parquet"
RUN = "run-20260301-120000-uci"
NON_PRODUCT = {"POST", "DOT", "M", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"}


def _uci() -> Path:
    if not UCI.exists():
        pytest.fail(f"{UCI} is missing: the real-data tests need ../shared/data beside the project")
    return UCI


@pytest.fixture(scope="module")
def uci_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("uci")
    clean = root / "clean"
    clean.mkdir()
    (clean / "transactions.parquet").symlink_to(_uci())
    curated = root / "curated"
    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated))
    return outcome, curated


@pytest.fixture(scope="module")
def usable() -> pl.DataFrame:
    """The usable lines by the documented rules, written independently of the project's code."""
    raw = pl.read_parquet(_uci())
    code = pl.col("StockCode").str.to_uppercase()
    return (
        raw.filter(pl.col("CustomerID").is_not_null())
        .filter(~pl.col("InvoiceNo").str.starts_with("C"))
        .filter(~code.is_in(list(NON_PRODUCT)) & ~code.str.starts_with("GIFT_"))
        .filter((pl.col("Quantity") > 0) & (pl.col("UnitPrice") > 0))
        .unique(maintain_order=True)
        .with_columns(ts=pl.col("InvoiceDate").str.to_datetime("%Y-%m-%d %H:%M:%S"), customer=pl.col("CustomerID").cast(pl.Int64))
    )


def test_uci_run_succeeds_and_promotes(uci_run):
    outcome, curated = uci_run
    assert outcome.ok, (outcome.errors, outcome.failed_error_checks)
    assert not outcome.skipped_checks
    manifest = json.loads((curated / "recsys/latest/index.json").read_text())
    assert manifest["run_key"] == RUN


def test_uci_exclusions_by_reason(uci_run, usable):
    outcome, _ = uci_run
    excluded = outcome.materialized["raw_order_products"]["excluded_lines"]
    raw = pl.read_parquet(_uci())
    with_customer = raw.filter(pl.col("CustomerID").is_not_null())
    assert excluded["no_customer_id"] == 135_080  # the dataset's README
    assert excluded["cancellation"] == with_customer.filter(pl.col("InvoiceNo").str.starts_with("C")).height
    assert sum(excluded.values()) == raw.height - usable.height
    assert excluded["duplicate_line"] > 0 and excluded["non_product_code"] > 0 and excluded["non_positive_price"] > 0


@pytest.mark.parametrize("customer", [12347, 12348, 12352])
def test_uci_rfm_of_hand_checked_customers(uci_run, usable, customer):
    _, curated = uci_run
    seg = pl.read_parquet(curated / "recsys/user_seg/run-20260301-120000-uci/user_seg.parquet")
    row = seg.filter(pl.col("user_id") == customer).row(0, named=True)
    mine = usable.filter(pl.col("customer") == customer)
    reference = usable["ts"].max()
    assert reference == datetime(2011, 12, 9, 12, 50)
    expected_r = (reference - mine["ts"].max()).total_seconds() / 86_400
    assert row["recency_days"] == pytest.approx(expected_r, abs=1e-6)
    assert row["frequency"] == mine["InvoiceNo"].n_unique()
    assert row["monetary"] == pytest.approx((mine["Quantity"] * mine["UnitPrice"]).sum(), rel=1e-9)


def test_uci_customer_12347_by_hand(uci_run):
    # 12347: 7 invoices from 2010-12-07 to 2011-12-07 15:52, £4,310.00 in all (no returns).
    _, curated = uci_run
    seg = pl.read_parquet(curated / "recsys/user_seg/run-20260301-120000-uci/user_seg.parquet")
    row = seg.filter(pl.col("user_id") == 12347).row(0, named=True)
    assert row["frequency"] == 7
    assert row["monetary"] == pytest.approx(4310.00, abs=0.01)
    # 2011-12-07 15:52 to the last line of the data, 2011-12-09 12:50: 2 days less 3 h 02 min.
    assert row["recency_days"] == pytest.approx((2 * 1440 - (15 * 60 + 52) + (12 * 60 + 50)) / 1440, abs=1e-6)


def test_uci_no_segment_under_the_minimum_share(uci_run):
    _, curated = uci_run
    seg = pl.read_parquet(curated / "recsys/user_seg/run-20260301-120000-uci/user_seg.parquet")
    shares = seg.group_by("segment").len().with_columns(share=pl.col("len") / seg.height)
    assert shares.height >= 2
    assert shares["share"].min() >= 0.02, shares


def _p_topfreq_by_hand(usable: pl.DataFrame, k: int = 10) -> dict[str, float]:
    """Each customer's last invoice in time is the target; P-TopFreq ranks the products of the
    earlier invoices by the number of invoices holding them, ties by product code."""
    invoices = usable.group_by("customer", "InvoiceNo").agg(ts=pl.col("ts").min()).sort("customer", "ts", "InvoiceNo")
    target = invoices.group_by("customer", maintain_order=True).last().select("customer", target="InvoiceNo")
    lines = usable.select("customer", "InvoiceNo", "StockCode").unique().join(target, on="customer")
    truth = lines.filter(pl.col("InvoiceNo") == pl.col("target")).group_by("customer").agg(truth=pl.col("StockCode"))
    ranked = (
        lines.filter(pl.col("InvoiceNo") != pl.col("target"))
        .group_by("customer", "StockCode")
        .len()
        .sort(["customer", "len", "StockCode"], descending=[False, True, False])
        .group_by("customer", maintain_order=True)
        .agg(top=pl.col("StockCode").head(k))
    )
    aps, recalls = [], []
    for row in truth.join(ranked, on="customer", how="left").iter_rows(named=True):
        relevant, top = set(row["truth"]), row["top"] or []
        hits, precision_sum = 0, 0.0
        for i, item in enumerate(top, start=1):
            if item in relevant:
                hits += 1
                precision_sum += hits / i
        aps.append(precision_sum / min(k, len(relevant)))
        recalls.append(hits / len(relevant))
    return {"map@10": sum(aps) / len(aps), "recall@10": sum(recalls) / len(recalls), "n_users": len(aps)}


def test_uci_p_topfreq_recomputed_independently(uci_run, usable):
    _, curated = uci_run
    metrics = json.loads((curated / "recsys/eval/als-20260301-120000-uci/metrics.json").read_text())
    stored = metrics["baselines"]["p_topfreq"]
    mine = _p_topfreq_by_hand(usable)
    assert stored["n_users"] == mine["n_users"]
    assert stored["map@10"] == pytest.approx(mine["map@10"], abs=1e-9)
    assert stored["recall@10"] == pytest.approx(mine["recall@10"], abs=1e-9)


def test_purchase_log_without_time_of_day_runs_through(tmp_path):
    """Real lines with dates only, text customer ids and goods sold by weight: hour is unknown
    (null, WARN check), everything else runs, quantities stay fractional where they are (M is
    the spend), and the exports and the API name customers and products by the file's ids."""
    raw = pl.read_parquet(_uci()).head(60_000).with_columns(
        pl.col("InvoiceDate").str.slice(0, 10),
        CustomerID=pl.format("UK-{}", pl.col("CustomerID").cast(pl.Int64)),  # numbered by the ingest
        # every 7th line weighed (0.37 of its count, e.g. kg): a grocery till's loose produce
        Quantity=pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.col("Quantity") * 0.37).otherwise(pl.col("Quantity")),
    )
    clean = tmp_path / "clean"
    clean.mkdir()
    raw.write_csv(clean / "transactions.csv")
    curated = tmp_path / "curated"
    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated))
    assert outcome.ok, (outcome.errors, outcome.failed_error_checks)
    assert json.loads((curated / "recsys/latest/index.json").read_text())["run_key"] == RUN
    orders = pl.read_parquet(curated / "after-MICE/run-20260301-120000-uci/orders_imputed.parquet")
    assert orders["order_hour_of_day"].null_count() == orders.height
    assert orders["order_dow"].null_count() == 0
    warn = [c for c in outcome.checks if c["check"] == "no_unknown_fields"]
    assert len(warn) == 1 and not warn[0]["passed"] and warn[0]["severity"] == "WARN"
    assert outcome.materialized["orders_imputed"]["unknown_fields"] == ["order_hour_of_day"]
    # real customers, no shared account: the WARN check passes
    assert [c["passed"] for c in outcome.checks if c["check"] == "no_dominant_customer"] == [True]
    _exports_use_the_files_ids(raw, curated / f"recsys/exports/{RUN}/data")
    _monetary_is_the_spend_of_weighed_lines(curated, orders)
    # user_recos (what the API's /customers route maps) carries every user's code
    recos = pl.read_parquet(curated / f"recsys/recos/{RUN}/user_recos.parquet")
    codes = recos.select("user_id", "customer_code").unique()
    assert codes.height == recos["user_id"].n_unique() == orders["user_id"].n_unique()
    assert codes["customer_code"].is_in(raw["CustomerID"].unique().implode()).all()
    _api_speaks_the_files_ids(raw, curated, codes)


def _monetary_is_the_spend_of_weighed_lines(curated: Path, orders: pl.DataFrame) -> None:
    lines = pl.read_parquet(curated / f"recsys/raw/{RUN}/order_products.parquet")
    assert lines["quantity"].dtype == pl.Float64 and (lines["quantity"] % 1 != 0).sum() > 1_000
    spend = (lines.join(orders.select("order_id", "user_id"), on="order_id")
             .group_by("user_id").agg(spend=(pl.col("quantity") * pl.col("unit_price")).sum()))  # fmt: skip
    seg = pl.read_parquet(curated / f"recsys/user_seg/{RUN}/user_seg.parquet").join(spend, on="user_id")
    assert seg.height > 100 and seg["spend"].min() > 0
    assert (seg["monetary"] - seg["spend"]).abs().max() < 1e-4


def _api_speaks_the_files_ids(raw: pl.DataFrame, curated: Path, codes: pl.DataFrame) -> None:
    """The API over the published run takes and answers the file's CustomerID and StockCode:
    customers, similar products, enrich and a basket, unknown codes reported."""
    from fastapi.testclient import TestClient

    from insightflow_assets.serving.app import create_app
    from resources import LocalStorage

    stock = set(raw["StockCode"].unique().to_list())
    customer = codes["customer_code"].sort()[0]
    with TestClient(create_app(LocalStorage(root=str(curated)), watch_seconds=0)) as c:
        for _ in range(600):  # the bundle loads in the background; not a timing assertion
            if c.get("/health/ready").status_code == 200:
                break
            time.sleep(0.1)
        recs = c.get(f"/customers/{customer}/recommendations", params={"k": 5}).json()
        assert recs["source"] == "model" and recs["user_id"] == codes.filter(pl.col("customer_code") == customer)["user_id"][0]
        products = pl.read_parquet(curated / f"recsys/raw/{RUN}/products.parquet")
        code = products.sort("product_id")["product_code"][3]
        similar = c.get(f"/products/by-code/{code}/similar", params={"k": 4}).json()
        by_id = c.get(f"/products/{similar['product_id']}/similar", params={"k": 4}).json()
        assert similar["product_code"] == code and similar["items"] == by_id["items"] and len(similar["items"]) == 4
        assert {i["product_code"] for i in similar["items"]} <= stock
        assert c.get("/products/by-code/NOT-A-CODE/similar").status_code == 404
        enriched = c.post("/products/enrich", json={"product_codes": [code, "NOT-A-CODE"]}).json()
        assert [p["product_code"] for p in enriched["products"]] == [code] and enriched["unknown_codes"] == ["NOT-A-CODE"]
        basket = c.post("/baskets/complements", json={"product_codes": [code], "k": 5}).json()
        assert len(basket["items"]) == 5 and basket["unknown_codes"] == []


def _exports_use_the_files_ids(raw: pl.DataFrame, exports: Path) -> None:
    """Every product a cohort customer "bought before" (bedrock top_products) is, under the
    exported customer_code and product_code, a line of the file; the csv says the same codes."""
    lines = [json.loads(line) for line in (exports / "bedrock_inputs.jsonl").read_text().splitlines()]
    bought = pl.DataFrame(
        [(d["customer_code"], p["product_code"]) for d in lines for p in d["top_products"]],
        schema=["CustomerID", "StockCode"], orient="row",
    )  # fmt: skip
    assert bought.height >= 100 and bought["CustomerID"].str.starts_with("UK-").all()
    assert bought.join(raw, on=["CustomerID", "StockCode"], how="anti").height == 0
    recos = pl.read_csv(exports / "user_recos.csv", schema_overrides={"customer_code": pl.String, "product_code": pl.String})
    by_user = recos.select("user_id", "customer_code").unique()
    assert by_user.height == by_user["user_id"].n_unique() == by_user["customer_code"].n_unique()
    assert set(by_user["customer_code"]) == {d["customer_code"] for d in lines}
    assert recos.join(raw.select(pl.col("StockCode").alias("product_code")).unique(), on="product_code", how="anti").height == 0
