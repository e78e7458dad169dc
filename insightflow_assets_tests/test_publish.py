"""Publishing: promotion to latest/ (order, rollback, faults on S3 and on disk) and what the
graph does around it (no promotion after a failed run or a failed blocking check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from dagster import AssetCheckResult, Definitions, asset_check

from insightflow_assets.partitions import runs_partitions
from insightflow_assets.publish.promotion import PromotionError, promote, promoted_artifacts, read_manifest, verify_manifest
from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import _free_port, local_defs
from resources import LocalStorage, S3Storage
from resources.layout import ARTIFACTS, LATEST_MANIFEST, promoted_manifest_key

OLD, NEW = "run-20260101-000000", "run-20260102-000000"


def fake_run(store, run_key: str, marker: str) -> None:
    """Store every promoted artifact of a run, each file's content naming the run."""
    for name in promoted_artifacts():
        for key in ARTIFACTS[name].keys(run_key).values():
            store.write_bytes(key, f"{marker}:{key}".encode())


def latest_contents(store) -> dict[str, bytes]:
    manifest = read_manifest(store)
    return {o["key"]: store.read_bytes(o["key"]) for o in manifest["objects"]}


def test_promote_copies_then_writes_manifest(tmp_path):
    store = LocalStorage(root=str(tmp_path))
    fake_run(store, OLD, "old")
    result = promote(store, OLD, finished_at_utc="2026-01-01T00:10:00+00:00")
    assert result["promoted"]
    manifest = read_manifest(store)
    assert manifest["run_key"] == OLD and manifest["previous_run_key"] is None
    keys = {o["key"] for o in manifest["objects"]}
    assert "recsys/user_seg/latest/user_seg.parquet" in keys
    assert "recsys/eval_charts/latest/index.json" in keys
    assert all(v.startswith(b"old:") for v in latest_contents(store).values())
    assert verify_manifest(store, manifest) == []
    # the run keeps its own copy of the manifest, for rollbacks verified after latest/ moves on
    assert json.loads(store.read_bytes(promoted_manifest_key(OLD))) == manifest


def test_older_run_never_replaces_newer_but_rollback_can(tmp_path):
    store = LocalStorage(root=str(tmp_path))
    fake_run(store, OLD, "old")
    fake_run(store, NEW, "new")
    promote(store, NEW)
    # the older run finishes last: latest/ stays on the newer one
    result = promote(store, OLD)
    assert not result["promoted"] and "newer" in result["reason"]
    assert read_manifest(store)["run_key"] == NEW
    # an explicit rollback repoints it, with the same guarantees
    assert promote(store, OLD, force=True)["promoted"]
    manifest = read_manifest(store)
    assert manifest["run_key"] == OLD and manifest["previous_run_key"] == NEW
    assert all(v.startswith(b"old:") for v in latest_contents(store).values())
    assert verify_manifest(store, manifest) == []


def test_missing_artifact_refuses_promotion(tmp_path):
    store = LocalStorage(root=str(tmp_path))
    fake_run(store, OLD, "old")
    store.delete(ARTIFACTS["user_seg"].keys(OLD)["user_seg.parquet"])
    with pytest.raises(PromotionError, match="missing recsys/user_seg/run-20260101-000000/user_seg.parquet"):
        promote(store, OLD)
    assert read_manifest(store) is None


def test_local_promotion_interrupted_leaves_previous_manifest_and_no_partial_file(tmp_path, monkeypatch):
    store = LocalStorage(root=str(tmp_path))
    fake_run(store, OLD, "old")
    fake_run(store, NEW, "new")
    promote(store, OLD)
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # the third object: the process "dies" between write and rename
            raise OSError("No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(PromotionError, match="latest/ still names run-20260101-000000"):
        promote(store, NEW)
    monkeypatch.undo()
    assert read_manifest(store)["run_key"] == OLD
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == []
    # re-running completes it
    assert promote(store, NEW)["promoted"]
    assert read_manifest(store)["run_key"] == NEW
    assert verify_manifest(store, read_manifest(store)) == []


def test_s3_server_stops_mid_promotion_then_rerun_completes(moto_endpoint, monkeypatch):
    """A second moto server, stopped in the middle of the copies and started again."""
    from dagster_aws.s3 import S3Resource
    from moto.server import ThreadedMotoServer

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="faulty-curated")
        store = S3Storage(s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1", max_attempts=1), bucket="faulty-curated")
        fake_run(store, OLD, "old")
        fake_run(store, NEW, "new")
        promote(store, OLD)

        real_copy = S3Storage.copy
        calls = {"n": 0}

        def copy_then_crash(self, src, dst):
            calls["n"] += 1
            if calls["n"] == 4:
                server.stop()  # the S3 endpoint goes away mid-promotion
            return real_copy(self, src, dst)

        monkeypatch.setattr(S3Storage, "copy", copy_then_crash)
        with pytest.raises(PromotionError, match="failed after 3/"):
            promote(store, NEW)
        monkeypatch.undo()

        server.start()  # moto keeps its state in-process
        assert read_manifest(store)["run_key"] == OLD  # readers still see the previous run
        assert promote(store, NEW)["promoted"]
        manifest = read_manifest(store)
        assert manifest["run_key"] == NEW and manifest["previous_run_key"] == OLD
        assert verify_manifest(store, manifest) == []
        assert all(v.startswith(b"new:") for v in latest_contents(store).values())
    finally:
        server.stop()


# --- through Dagster ---------------------------------------------------------------------


def test_latest_not_touched_when_a_step_fails(tmp_path, small_clean_dir, instance):
    """k larger than the number of users makes KMeans fail: no promotion, diagnostics kept."""
    curated = tmp_path / "curated"
    ok = run_graph(instance, run_key=OLD, defs=local_defs(small_clean_dir, curated))
    assert ok.ok, ok.errors
    failed = run_graph(instance, run_key=NEW, defs=local_defs(small_clean_dir, curated, k=10_000))
    assert not failed.success and "user_seg" in failed.failed_steps
    store = LocalStorage(root=str(curated))
    assert read_manifest(store)["run_key"] == OLD
    # the failed step's diagnostics are in storage, naming the error
    diag = curated / "recsys/debug/user-seg-20260102-000000/diag"
    metrics = json.loads((diag / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "need at least k=10000 users" in metrics["error"]
    assert "FAILED" in (diag / "driver_log.txt").read_text()
    assert "order_dow" in json.loads((diag / "orders_schema.json").read_text())


def test_latest_not_touched_when_a_blocking_check_fails(tmp_path, small_clean_dir, instance):
    @asset_check(asset="exports", blocking=True, partitions_def=runs_partitions)
    def always_fails() -> AssetCheckResult:
        return AssetCheckResult(passed=False, metadata={"why": "test"})

    curated = tmp_path / "curated"
    base = local_defs(small_clean_dir, curated)
    defs = Definitions.merge(base, Definitions(asset_checks=[always_fails]))
    outcome = run_graph(instance, run_key=NEW, defs=defs)
    assert any(c["check"] == "always_fails" and not c["passed"] for c in outcome.checks)
    assert (curated / "recsys/exports/run-20260102-000000/data/overview.csv").exists()
    assert not (curated / LATEST_MANIFEST).exists()
    assert not (curated / "recsys/user_seg/latest").exists()


def test_cli_latest_and_promote(tmp_path):
    store = LocalStorage(root=str(tmp_path / "curated"))
    fake_run(store, OLD, "old")
    fake_run(store, NEW, "new")
    promote(store, NEW)
    env = {**os.environ, "INSIGHTFLOW_CURATED_DIR": str(tmp_path / "curated"), "INSIGHTFLOW_STORAGE": "local"}
    exe = str(Path(sys.executable).parent / "insightflow")
    shown = subprocess.run([exe, "latest"], env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "run key:        run-20260102-000000" in shown.stdout
    rolled = subprocess.run([exe, "promote", OLD], env=env, capture_output=True, text=True)
    assert rolled.returncode == 0, rolled.stderr
    assert read_manifest(store)["run_key"] == OLD
    missing = subprocess.run([exe, "promote", "run-20250101-000000"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot promote run-20250101-000000: missing" in missing.stderr
    assert read_manifest(store)["run_key"] == OLD


def test_eval_charts_cover_every_run_so_far(tmp_path, small_clean_dir, instance):
    curated = tmp_path / "curated"
    defs = local_defs(small_clean_dir, curated)
    for key in (OLD, NEW):
        assert run_graph(instance, run_key=key, defs=defs).ok
    # re-materializing the old run's charts reproduces them: newer runs are not included
    assert run_graph(instance, run_key=OLD, defs=defs, selection=["eval_charts"]).ok
    new_index = json.loads((curated / "recsys/eval_charts/publish-20260102-000000/index.json").read_text())
    assert [r["run_key"] for r in new_index["runs"]] == [OLD, NEW]
    assert new_index["skipped"] == []
    old_index = json.loads((curated / "recsys/eval_charts/publish-20260101-000000/index.json").read_text())
    assert [r["run_key"] for r in old_index["runs"]] == [OLD]
    latest = json.loads((curated / "recsys/eval_charts/latest/index.json").read_text())
    assert latest["run_key"] == NEW
    assert read_manifest(LocalStorage(root=str(curated)))["run_key"] == NEW
    for name in ("map_trend.png", "metrics_bar.png", "coverage_user_trend.png"):
        assert (curated / "recsys/eval_charts/publish-20260102-000000" / name).read_bytes()[:4] == b"\x89PNG"
