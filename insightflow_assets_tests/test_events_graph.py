"""The whole graph on a generated event log (issue 16, done-when): `insightflow run`'s graph
ingests the events form, passes every blocking check, writes the exports and publishes
`latest/` — and what it publishes keeps the form's promises (no unavailable item, lists for
every visitor, the peer's metrics in every method)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from dagster import DagsterInstance

from insightflow_assets.data.events import generate_events
from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import local_defs

RUN = "run-20260101-000000"
VISITORS = 20_000  # make run-events' default: enough visitors to pass the 5/5 filters


@pytest.fixture(scope="module")
def events_run(tmp_path_factory):
    clean = tmp_path_factory.mktemp("events_clean")
    generate_events(clean, visitors=VISITORS, seed=11)
    curated = tmp_path_factory.mktemp("events_curated")
    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated))
    return outcome, curated


def test_the_whole_graph_runs_on_an_event_log_and_publishes(events_run):
    outcome, curated = events_run
    assert outcome.ok, (outcome.errors, outcome.failed_error_checks)
    assert not outcome.skipped_checks
    assert json.loads((curated / "recsys/latest/index.json").read_text())["run_key"] == RUN
    assert outcome.materialized["raw_orders"]["input_form"] == "events"
    bedrock = (curated / f"recsys/exports/run-{RUN[4:]}/data/bedrock_inputs.jsonl").read_text().splitlines()
    assert bedrock and all(json.loads(line)["user_id"] >= 0 for line in bedrock)


def test_published_lists_never_hold_an_unavailable_item(events_run):
    _, curated = events_run
    raw = curated / "recsys/raw" / RUN
    products = pl.read_parquet(raw / "products.parquet")
    recos = pl.read_parquet(curated / f"recsys/recos/run-{RUN[4:]}/user_recos.parquet")
    blocked = products.filter(pl.col("available") == 0)["product_id"]
    assert blocked.len() > 0 and not recos["product_id"].is_in(blocked.implode()).any()
    visitors = pl.read_parquet(raw / "orders.parquet")["user_id"].n_unique()
    assert recos["user_id"].n_unique() == visitors  # cold and filtered-out visitors included
    per_user = recos.group_by("user_id").len()["len"]
    assert per_user.min() == per_user.max() == recos["rank"].max()


def test_every_method_carries_the_peer_metrics(events_run):
    _, curated = events_run
    metrics = json.loads((curated / f"recsys/eval/als-{RUN[4:]}/metrics.json").read_text())
    methods = metrics["methods"]
    assert {"als", "baseline", "als_category"} <= set(methods)
    for name, entry in methods.items():
        for key in ("precision@5", "recall@20", "ndcg@10", "hit_rate@5", "coverage@5", "novelty@5", "diversity@5", "cold_share"):
            assert key in entry, (name, key)
        assert 0 < entry["cold_share"] < 1  # most visitors with a target were never seen before
    assert methods["als_category"]["reranked_share"] > 0
