"""The promotion gate: latest/ only names a run whose blocking checks upstream all passed,
whether or not they ran in the promoting run (issue part C: a skipped check was invisible)."""

from __future__ import annotations

from dagster import AssetCheckResult, AssetKey, Definitions, asset_check

from insightflow_assets.definitions import defs as code_location
from insightflow_assets.partitions import runs_partitions
from insightflow_assets.publish.gate import FAILED, MISSING, PASSED, STALE, guarding_checks, verdict
from insightflow_assets.publish.promotion import read_manifest
from insightflow_assets.report import checks_summary
from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import local_defs
from resources import LocalStorage
from resources.layout import LATEST_MANIFEST

OLD, NEW = "run-20260301-000000", "run-20260302-000000"
MICE = "mice_checks:mice_not_worse_than_median"
EVERY_ASSET = [k.to_user_string() for k in code_location.resolve_asset_graph().get_all_asset_keys()]


# --- the decision, pure ----------------------------------------------------------------------


def test_verdict_opens_only_when_every_required_check_passed():
    assert verdict(["a:x", "b:y"], {"a:x": PASSED, "b:y": PASSED, "c:z": FAILED}).open
    shut = verdict(["a:x", "b:y", "c:z", "d:w"], {"a:x": PASSED, "b:y": FAILED, "d:w": STALE})
    assert not shut.open
    assert (shut.missing, shut.failed, shut.stale) == (["c:z"], ["b:y"], ["d:w"])
    assert shut.describe() == "blocking checks not passed on this run (missing: c:z; failed: b:y; stale: d:w)"
    assert verdict([], {}).open


def test_verdict_treats_an_unknown_status_as_missing():
    assert verdict(["a:x"], {"a:x": "planned"}).missing == ["a:x"]
    assert verdict(["a:x"], {"a:x": MISSING}).missing == ["a:x"]


def test_guarding_checks_are_derived_from_the_graph_not_listed():
    @asset_check(asset="user_seg", blocking=True, partitions_def=runs_partitions)
    def added_later() -> AssetCheckResult:
        return AssetCheckResult(passed=True)

    @asset_check(asset="user_seg", blocking=False, partitions_def=runs_partitions)
    def only_a_warning() -> AssetCheckResult:
        return AssetCheckResult(passed=True)

    merged = Definitions.merge(code_location, Definitions(asset_checks=[added_later, only_a_warning]))
    job = merged.resolve_job_def("insightflow_run")
    # a run's job graph only holds the selected checks: the gate must look past it
    subset = job.get_subset(asset_selection={AssetKey("latest_manifest")})
    names = {k.to_user_string() for k in guarding_checks(subset.asset_layer.asset_graph, AssetKey("latest_manifest"))}
    assert {MICE, "user_seg:added_later", "orders_imputed:orders_imputed_valid"} <= names
    assert "user_seg:only_a_warning" not in names and "als_eval:als_beats_popularity" not in names
    # every other asset is upstream of latest_manifest, so every blocking check guards it
    graph = merged.resolve_asset_graph()
    assert names == {k.to_user_string() for k in graph.asset_check_keys if graph.get(k).blocking}


def test_summary_names_skipped_checks():
    checks = [{"asset": "user_seg", "check": "user_seg_valid", "passed": True, "severity": "ERROR", "metadata": {}}]
    assert checks_summary(checks, [MICE]) == [f"asset checks: 1/1 passed, 1 skipped: {MICE}"]
    assert checks_summary(checks, []) == ["asset checks: 1/1 passed"]


# --- through Dagster ---------------------------------------------------------------------------


def test_a_run_that_skipped_a_blocking_check_is_not_promoted(tmp_path, small_clean_dir, instance):
    curated = tmp_path / "curated"
    store = LocalStorage(root=str(curated))
    defs = local_defs(small_clean_dir, curated)

    full = run_graph(instance, run_key=OLD, defs=defs)
    assert full.ok, full.errors
    assert full.skipped_checks == []
    assert read_manifest(store)["run_key"] == OLD
    before = (curated / LATEST_MANIFEST).read_bytes()

    # every asset but mice_checks: its blocking check never runs, so nothing blocks in-run
    skipping = run_graph(instance, run_key=NEW, defs=defs, selection=[a for a in EVERY_ASSET if a != "mice_checks"])
    assert not skipping.ok and skipping.failed_steps == ["latest_manifest"]
    assert all(c["passed"] for c in skipping.checks if c["severity"] == "ERROR")
    assert skipping.skipped_checks == [MICE]
    assert any("missing: " + MICE in e for e in skipping.errors), skipping.errors
    assert (curated / LATEST_MANIFEST).read_bytes() == before  # latest/ untouched
    assert f"1 skipped: {MICE}" in checks_summary(skipping.checks, skipping.skipped_checks)[0]

    # the missing check, run on its own for this partition, is recorded: the run now promotes
    completed = run_graph(instance, run_key=NEW, defs=defs, selection=["mice_checks", "latest_manifest"])
    assert completed.ok, completed.errors
    assert read_manifest(store)["run_key"] == NEW


def test_a_pass_on_rewritten_data_does_not_count(tmp_path, small_clean_dir, instance):
    """user_seg re-materialized without its checks: their earlier passes judged other data."""
    curated = tmp_path / "curated"
    defs = local_defs(small_clean_dir, curated)
    assert run_graph(instance, run_key=OLD, defs=defs).ok
    before = (curated / LATEST_MANIFEST).read_bytes()

    no_checks = defs.resolve_job_def("insightflow_run").get_subset(
        asset_selection={AssetKey("user_seg")}, asset_check_selection=set()
    )
    assert no_checks.execute_in_process(instance=instance, partition_key=OLD).success
    outcome = run_graph(instance, run_key=OLD, defs=defs, selection=["latest_manifest"])
    assert not outcome.ok
    assert any("stale: " in e and "user_seg:user_seg_valid" in e for e in outcome.errors), outcome.errors
    assert (curated / LATEST_MANIFEST).read_bytes() == before
