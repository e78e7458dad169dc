"""Every blocking check shown failing, and blocking latest/ (issue 13).

The graph runs once on the small fixture (`small_run`, nothing promoted). Each test then
corrupts one stored artifact the way its check guards against, re-runs every check of the
run against what is stored (`runner.run_checks`, as `make check` does) and asserts that
exactly that check fails (and, for a check of several conditions, that it names exactly
the condition broken); then that the promotion gate, reading the instance as
`latest_manifest` does, refuses the run naming that check, and that the `latest_manifest`
step itself fails with latest/ untouched. Every stored file is put back after each test.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from dagster import AssetCheckResult, AssetKey

from insightflow_assets.exports.assets import EXPORTS_CONDITIONS
from insightflow_assets.imputation.assets import ORDERS_IMPUTED_CONDITIONS
from insightflow_assets.publish.gate import check_statuses, guarding_checks, verdict
from insightflow_assets.publish.promotion import read_manifest
from insightflow_assets.runner import run_checks, run_graph
from insightflow_assets.segmentation.assets import USER_SEG_CONDITIONS
from resources import LocalStorage
from resources.layout import LATEST_MANIFEST, artifact

LATEST = AssetKey("latest_manifest")


class Stored:
    """The run's stored artifacts, read and rewritten in place (what a bad step would leave)."""

    def __init__(self, curated: Path, run_key: str):
        self.curated, self.run_key = curated, run_key

    def path(self, name: str, file: str | None = None) -> Path:
        keys = artifact(name).keys(self.run_key)
        (only,) = keys.values() if file is None else (keys[file],)
        return self.curated / only

    def edit_frame(self, name: str, change: Callable[[pl.DataFrame], pl.DataFrame], file: str | None = None) -> None:
        path = self.path(name, file)
        change(pl.read_parquet(path)).write_parquet(path)

    def edit_json(self, name: str, file: str, change: Callable[[dict], None]) -> None:
        path = self.path(name, file)
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))


def set_cell(df: pl.DataFrame, row: int, col: str, value) -> pl.DataFrame:
    hit = pl.int_range(pl.len()) == row
    return df.with_columns(pl.when(hit).then(pl.lit(value, dtype=df.schema[col])).otherwise(pl.col(col)).alias(col))


def drop_row(df: pl.DataFrame, row: int) -> pl.DataFrame:
    return df.with_row_index("_i").filter(pl.col("_i") != row).drop("_i")


def a_later_order(df: pl.DataFrame) -> int:
    """A row of a user's second or later order: its gap is expected, and the user keeps other rows."""
    return int(df.with_row_index("_i").filter(~pl.col("is_first_order"))["_i"][0])


# --- one corruption per blocking condition: each seen by that condition alone ---------------------------


def null_imputed_cell(s: Stored) -> None:
    s.edit_frame("orders_imputed", lambda df: set_cell(df, a_later_order(df), "order_dow", None))


def hour_out_of_domain(s: Stored) -> None:
    s.edit_frame("orders_imputed", lambda df: set_cell(df, a_later_order(df), "order_hour_of_day", 24))


def drop_an_imputed_order(s: Stored) -> None:
    s.edit_frame("orders_imputed", lambda df: drop_row(df, a_later_order(df)))


def mice_worse_than_median(s: Stored) -> None:
    def change(report: dict) -> None:
        imputed = report.get("imputed", {})
        v = next(v for c, v in report["mask_and_recover"].items() if v["n_masked"] and imputed.get(c) != 0)  # a judged field
        v["mice"]["rmse"] = v["median"]["rmse"] + 1.0

    s.edit_json("mice_checks", "mice_checks.json", change)


def zero_rating(s: Stored) -> None:
    s.edit_frame("ratings", lambda df: set_cell(df, 0, "rating", 0.0))


def nan_factor(s: Stored) -> None:
    path = s.path("als_model", "factors.npz")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["user_factors"][0, 0] = np.nan
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())


def coverage_above_one(name: str) -> Callable[[Stored], None]:
    # coverage.json only: the WARN check als_beats_popularity reads metrics.json
    return lambda s: s.edit_json(name, "coverage.json", lambda cov: cov.update(coverage_item=1.5))


def a_short_list(s: Stored) -> None:
    s.edit_frame("user_recos", lambda df: drop_row(df, 0))


def lowest_hv_user_renamed(s: Stored) -> None:
    """One rated user missing and one unknown user present; shares and the top-hv cohort unchanged."""

    def change(df: pl.DataFrame) -> pl.DataFrame:
        row = int(df["hv"].arg_min())
        return set_cell(df, row, "user_id", int(df["user_id"].max()) + 1_000_000)

    s.edit_frame("user_seg", change)


def gap_in_segment_ids(s: Stored) -> None:
    """The last segment renumbered past the end: ids no longer 0..S-1, shares unchanged."""

    def change(df: pl.DataFrame) -> pl.DataFrame:
        last = int(df["segment"].max())
        return df.with_columns(pl.when(pl.col("segment") == last).then(last + 1).otherwise(pl.col("segment")).cast(df.schema["segment"]).alias("segment"))

    s.edit_frame("user_seg", change)


def a_tiny_segment(s: Stored) -> None:
    """All but one user of segment 0 moved (with the label) into segment 1: 0 keeps one user."""

    def change(df: pl.DataFrame) -> pl.DataFrame:
        label1 = df.filter(pl.col("segment") == 1)["segment_label"][0]
        keep = int(df.with_row_index("_i").filter(pl.col("segment") == 0)["_i"][0])
        move = (pl.col("segment") == 0) & (pl.int_range(pl.len()) != keep)
        return df.with_columns(
            pl.when(move).then(1).otherwise(pl.col("segment")).cast(df.schema["segment"]).alias("segment"),
            pl.when(move).then(pl.lit(label1)).otherwise(pl.col("segment_label")).alias("segment_label"),
        )

    s.edit_frame("user_seg", change)


def zero_lift(s: Stored) -> None:
    s.edit_frame("segment_popularity", lambda df: set_cell(df, 0, "lift", 0.0))


def high_value_cohort_reordered(s: Stored) -> None:
    s.edit_frame("exports", lambda df: df.reverse(), file="users_high_value.parquet")


def a_line_that_is_not_json(s: Stored) -> None:
    path = s.path("exports", "bedrock_inputs.jsonl")
    path.write_bytes(path.read_bytes() + b"not json\n")


def random_cohort_short(s: Stored) -> None:
    s.edit_frame("exports", lambda df: drop_row(df, 0), file="users_random.parquet")


def nan_lightfm_vector(s: Stored) -> None:
    path = s.path("lightfm_model", "item_vectors.npy")
    vectors = np.load(path, allow_pickle=False)
    vectors[0, 0] = np.nan
    np.save(path, vectors, allow_pickle=False)


def basket_items_cut_to_five(s: Stored) -> None:
    """Only five products left to complete a basket with: no query can return K new ones."""
    s.edit_frame(
        "basket_pairs",
        lambda df: df.filter(pl.col("product_id").is_in(df["product_id"].unique().sort().head(5).implode())),
        file="items.parquet",
    )


# "asset:check", or "asset:check/condition" for each condition of a check of several
# (`common.all_conditions`): every blocking condition is shown failing on its own.
CORRUPTIONS: dict[str, Callable[[Stored], None]] = {
    "orders_imputed:orders_imputed_valid/imputed_columns_complete": null_imputed_cell,
    "orders_imputed:orders_imputed_valid/imputed_values_in_domain": hour_out_of_domain,
    "orders_imputed:orders_imputed_valid/imputed_row_count_matches_input": drop_an_imputed_order,
    "mice_checks:mice_not_worse_than_median": mice_worse_than_median,
    "ratings:ratings_valid": zero_rating,
    "als_model:als_factors_finite": nan_factor,
    "als_eval:als_eval_metrics_in_range": coverage_above_one("als_eval"),
    "als_postrank:postrank_metrics_in_range": coverage_above_one("als_postrank"),
    "user_recos:every_user_gets_k_items": a_short_list,
    "user_seg:user_seg_valid/every_rated_user_has_one_segment": lowest_hv_user_renamed,
    "user_seg:user_seg_valid/no_empty_segment": gap_in_segment_ids,
    "user_seg:user_seg_valid/no_segment_below_min_share": a_tiny_segment,
    "segment_popularity:segment_popularity_bounded": zero_lift,
    "exports:exports_valid/high_value_cohort_is_top_hv": high_value_cohort_reordered,
    "exports:exports_valid/bedrock_inputs_match_schema": a_line_that_is_not_json,
    "exports:exports_valid/export_row_counts": random_cohort_short,
    "lightfm_model:lightfm_embeddings_finite": nan_lightfm_vector,
    "basket_eval:basket_queries_return_k_new_products": basket_items_cut_to_five,
}


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(small_run):
    """Every check re-run on the untouched store: all blocking ones pass (WARNs may not)."""
    outcome = run_checks(small_run.instance, small_run.run_key, defs=small_run.defs)
    assert outcome.failed_error_checks == [], outcome.failed_error_checks
    return {_name(c): c["passed"] for c in outcome.checks}


@pytest.fixture
def stored(small_run):
    """The run's store, every file put back as it was after the test."""
    before = {p: p.read_bytes() for p in small_run.curated.rglob("*") if p.is_file()}
    yield Stored(small_run.curated, small_run.run_key)
    for path, data in before.items():
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)


# The conditions of each check of several, as its module lists them.
CONDITIONS = {
    "orders_imputed:orders_imputed_valid": ORDERS_IMPUTED_CONDITIONS,
    "user_seg:user_seg_valid": USER_SEG_CONDITIONS,
    "exports:exports_valid": EXPORTS_CONDITIONS,
}


def _name(check: dict) -> str:
    return f"{check['asset']}:{check['check']}"


def _check(case: str) -> str:
    return case.partition("/")[0]


def gate_now(small_run):
    """The gate's decision from the instance, as `latest_manifest` takes it before promoting."""
    graph = small_run.defs.resolve_job_def("insightflow_run").asset_layer.asset_graph
    required = guarding_checks(graph, LATEST)
    statuses = check_statuses(small_run.instance, graph, required, small_run.run_key)
    return verdict([k.to_user_string() for k in required], statuses)


def latest_bytes(curated: Path) -> bytes | None:
    path = curated / LATEST_MANIFEST
    return path.read_bytes() if path.exists() else None


# --- tests ---------------------------------------------------------------------------------------


def test_every_blocking_check_of_the_code_location_has_a_corruption(small_run):
    graph = small_run.defs.resolve_asset_graph()
    blocking = {k.to_user_string() for k in graph.asset_check_keys if graph.get(k).blocking}
    assert {_check(case) for case in CORRUPTIONS} == blocking
    assert {k.to_user_string() for k in guarding_checks(graph, LATEST)} == blocking  # all guard latest/
    # a check of several conditions has a corruption per condition; any other, one in all
    for check in blocking:
        conditions = [case.partition("/")[2] for case in CORRUPTIONS if _check(case) == check]
        assert conditions == ([c.__name__ for c in CONDITIONS[check]] if check in CONDITIONS else [""]), check


def test_a_check_of_several_conditions_names_each_failed_one():
    from insightflow_assets.common import all_conditions

    def holds(x: int) -> AssetCheckResult:
        """Holds."""
        return AssetCheckResult(passed=True, metadata={"x": x})

    def breaks(x: int) -> AssetCheckResult:
        """Breaks."""
        return AssetCheckResult(passed=False, metadata={"x": x})

    merged = all_conditions([holds, breaks], x=1)
    assert not merged.passed and merged.description == "failed: breaks"
    assert {k: getattr(v, "value", v) for k, v in merged.metadata.items()} == {"failed": ["breaks"], "breaks x": 1}
    assert all_conditions([holds], x=1).passed and all_conditions([holds], x=1).metadata["failed"].value == []


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_the_check_fails_on_bad_data_and_blocks_latest(small_run, baseline, stored, case):
    CORRUPTIONS[case](stored)
    check, _, condition = case.partition("/")

    outcome = run_checks(small_run.instance, small_run.run_key, defs=small_run.defs)
    assert [_name(c) for c in outcome.failed_error_checks] == [check]
    if condition:  # the merged check names the broken condition, and no other
        (failed,) = outcome.failed_error_checks
        assert failed["metadata"]["failed"] == [condition]
    # no other check noticed; those reading the bad asset as an extra input may not run at all
    # (Dagster's in-run blocking skips what depends on the failed check)
    others = {_name(c): c["passed"] for c in outcome.checks if _name(c) != check}
    assert others == {k: baseline[k] for k in others}

    gate = gate_now(small_run)
    assert (gate.open, gate.failed, gate.stale) == (False, [check], [])
    assert gate.missing == sorted(set(outcome.skipped_checks) & set(map(_check, CORRUPTIONS)))  # the ones blocked in-run

    before = latest_bytes(small_run.curated)
    promoting = run_graph(small_run.instance, run_key=small_run.run_key, defs=small_run.defs, selection=["latest_manifest"])
    assert promoting.failed_steps == ["latest_manifest"]
    assert any(f"failed: {check}" in e for e in promoting.errors), promoting.errors
    assert latest_bytes(small_run.curated) == before  # latest/ untouched


def test_with_every_check_passing_again_the_run_is_promoted(small_run, baseline, stored):
    """The control: the same run, its data put back and re-checked, is promoted, so the
    refusals above come from the failed check alone."""
    assert run_checks(small_run.instance, small_run.run_key, defs=small_run.defs).failed_error_checks == []
    assert gate_now(small_run).open
    promoting = run_graph(small_run.instance, run_key=small_run.run_key, defs=small_run.defs, selection=["latest_manifest"])
    assert promoting.ok, promoting.errors
    assert read_manifest(LocalStorage(root=str(small_run.curated)))["run_key"] == small_run.run_key


def test_a_blocking_check_failing_in_its_asset_step_stops_the_run(tmp_path, small_clean_dir, monkeypatch):
    """In a run, a check is evaluated in its asset's step, on what the step just stored: a
    failing blocking one fails that step, so nothing downstream runs and latest/ is not written."""
    from dagster import DagsterInstance

    from insightflow_assets.common import STEP_CHECKS
    from insightflow_assets_tests.conftest import local_defs

    checks = STEP_CHECKS["insightflow_assets.ratings.assets"]
    judged = []

    def refuses(ratings: pl.DataFrame) -> AssetCheckResult:
        judged.append(ratings.height)
        return AssetCheckResult(passed=False)

    monkeypatch.setitem(checks, "ratings_valid", dataclasses.replace(checks["ratings_valid"], fn=refuses))
    curated = tmp_path / "curated"
    upstream = ["raw_orders", "raw_order_products", "products", "orders_imputed", "ratings"]
    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(
            instance, run_key="run-20260501-000000", defs=local_defs(small_clean_dir, curated),
            selection=[*upstream, "user_seg", "latest_manifest"],
        )
    assert outcome.failed_steps == ["ratings"]
    assert [_name(c) for c in outcome.failed_error_checks] == ["ratings:ratings_valid"]
    stored = pl.read_parquet(Stored(curated, "run-20260501-000000").path("ratings"))
    assert judged == [stored.height] and stored.height > 0  # the stored ratings were judged
    assert set(outcome.materialized) == set(upstream)  # user_seg and latest_manifest never ran
    assert latest_bytes(curated) is None
