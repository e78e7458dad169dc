"""Automation: the source-data sensor (local and S3), the daily retraining sensor, backfills and checks."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import polars as pl
import pytest
from dagster import SensorResult, SkipReason, build_sensor_context

from insightflow_assets.automation.fingerprint import run_tag, source_state
from insightflow_assets.automation import sensors
from insightflow_assets.automation.sensors import daily_retrain, new_source_data
from insightflow_assets.data.generate import generate_instacart, write_instacart
from insightflow_assets.runner import run_checks, run_graph
from insightflow_assets_tests.conftest import local_defs
from resources import LocalStorage, S3Storage
from resources.layout import parse_run_key


def tick(instance, source, cursor):
    with build_sensor_context(instance=instance, cursor=cursor, resources={"source": source}) as ctx:
        result = new_source_data(ctx)
        if isinstance(result, SensorResult):
            return result, result.cursor
        assert isinstance(result, SkipReason)
        return result, ctx.cursor


def apply(instance, result: SensorResult) -> None:
    """What the daemon does with a SensorResult's partition requests."""
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def test_sensor_fires_once_per_complete_stable_input_set(tmp_path, small_clean_dir, instance):
    clean = tmp_path / "clean"
    clean.mkdir()
    source = LocalStorage(root=str(clean))

    result, cursor = tick(instance, source, None)
    assert isinstance(result, SkipReason) and "incomplete" in result.skip_message

    # a partial upload: orders only
    shutil.copy(small_clean_dir / "orders.csv", clean / "orders.csv")
    result, cursor = tick(instance, source, cursor)
    assert isinstance(result, SkipReason) and "missing file" in result.skip_message

    for f in small_clean_dir.iterdir():
        shutil.copy(f, clean / f.name)
    result, cursor = tick(instance, source, cursor)  # first sight: wait for it to be stable
    assert isinstance(result, SkipReason) and "waiting" in result.skip_message

    result, cursor = tick(instance, source, cursor)  # same fingerprint twice: fire
    assert isinstance(result, SensorResult)
    assert len(result.run_requests) == 1 and len(result.dynamic_partitions_requests) == 1
    key = result.run_requests[0].partition_key
    fp = source_state(source.list(""), "").fingerprint
    assert key.endswith(run_tag(fp)) and list(result.dynamic_partitions_requests[0].partition_keys) == [key]
    apply(instance, result)

    result, cursor = tick(instance, source, cursor)  # nothing changed
    assert isinstance(result, SkipReason) and "no change" in result.skip_message

    # after a restart that lost the cursor, the same data is still recognised
    result, _ = tick(instance, source, None)
    assert isinstance(result, SkipReason) and "already registered" in result.skip_message

    # changed data: a new fingerprint, fired once it is stable
    with open(clean / "order_products__train.csv", "a") as fh:
        fh.write("")  # same bytes, but rewrite to change mtime
    (clean / "order_products__train.csv").touch()
    result, cursor = tick(instance, source, cursor)
    assert isinstance(result, SkipReason) and "waiting" in result.skip_message
    result, cursor = tick(instance, source, cursor)
    assert isinstance(result, SensorResult) and result.run_requests[0].partition_key != key
    assert instance.get_dynamic_partitions("runs") == [key]  # the new one is added by the daemon


def test_sensor_on_s3_with_success_marker(s3_buckets, small_clean_dir, instance):
    s3, clean, _ = s3_buckets
    client = s3.get_client()
    source = S3Storage(s3=s3, bucket=clean, prefix="instacart")
    for f in sorted(small_clean_dir.iterdir())[:3]:
        client.upload_file(str(f), clean, f"instacart/{f.name}")
    result, cursor = tick(instance, source, None)  # partial upload
    assert isinstance(result, SkipReason) and "incomplete" in result.skip_message
    for f in small_clean_dir.iterdir():
        client.upload_file(str(f), clean, f"instacart/{f.name}")
    client.put_object(Bucket=clean, Key="instacart/_SUCCESS", Body=b"")
    result, cursor = tick(instance, source, cursor)  # the marker says complete: fire at once
    assert isinstance(result, SensorResult) and len(result.run_requests) == 1
    assert result.run_requests[0].tags["insightflow/source_fingerprint"] in result.run_requests[0].partition_key
    apply(instance, result)
    result, _ = tick(instance, source, cursor)
    assert isinstance(result, SkipReason)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def daily_tick(instance, cursor, now, monkeypatch):
    """Evaluate `daily_retrain` at ``now`` as the daemon or a UI preview does (nothing applied)."""
    monkeypatch.setattr(sensors, "_now", lambda: utc(now))
    with build_sensor_context(instance=instance, cursor=cursor) as ctx:
        result = daily_retrain(ctx)
        return result, result.cursor if isinstance(result, SensorResult) else ctx.cursor


def test_daily_retrain_evaluation_registers_nothing_and_keys_runs_by_the_tick(instance, monkeypatch):
    yesterday = "2026-11-21T03:00:00+00:00"
    first, cursor = daily_tick(instance, yesterday, "2026-11-22T10:00:00", monkeypatch)
    assert isinstance(first, SensorResult) and cursor == "2026-11-22T03:00:00+00:00"
    (request,) = first.run_requests
    key = "run-20261122-030000-daily"  # the tick's time, not the clock's
    assert request.run_key == request.partition_key == key and parse_run_key(key) == ("20261122-030000", "daily")
    (add,) = first.dynamic_partitions_requests
    assert add.partitions_def_name == "runs" and list(add.partition_keys) == [key]
    assert instance.get_dynamic_partitions("runs") == []  # evaluating registered nothing

    # the same tick evaluated again later (a preview, a daemon retry): the same key
    again, _ = daily_tick(instance, yesterday, "2026-11-22T17:45:12", monkeypatch)
    assert [r.run_key for r in again.run_requests] == [key]
    assert list(again.dynamic_partitions_requests[0].partition_keys) == [key]
    assert instance.get_dynamic_partitions("runs") == []

    apply(instance, first)  # what the daemon does; with the cursor kept, the tick is done
    done, kept = daily_tick(instance, cursor, "2026-11-23T02:59:59", monkeypatch)
    assert isinstance(done, SkipReason) and kept == cursor and "next is 2026-11-23T03:00:00" in done.skip_message
    nxt, _ = daily_tick(instance, cursor, "2026-11-23T03:00:30", monkeypatch)
    assert [r.run_key for r in nxt.run_requests] == ["run-20261123-030000-daily"]
    assert instance.get_dynamic_partitions("runs") == [key]


def test_daily_retrain_waits_for_the_next_tick_and_catches_up_once(instance, monkeypatch):
    # switched on for the first time at 10:00: no run for the 03:00 that has passed
    start, cursor = daily_tick(instance, None, "2026-11-22T10:00:00", monkeypatch)
    assert isinstance(start, SkipReason) and cursor == "2026-11-22T03:00:00+00:00"
    assert "2026-11-23T03:00:00" in start.skip_message
    # the daemon down for three days: one run, for the latest tick
    late, cursor = daily_tick(instance, cursor, "2026-11-25T09:00:00", monkeypatch)
    assert [r.partition_key for r in late.run_requests] == ["run-20261125-030000-daily"]
    assert cursor == "2026-11-25T03:00:00+00:00" and instance.get_dynamic_partitions("runs") == []


def test_daily_retrain_is_a_sensor_of_the_code_location():
    from insightflow_assets.definitions import defs

    assert defs.resolve_sensor_def("daily_retrain") is daily_retrain
    assert not list(defs.schedules or [])  # no schedule left to register partitions as it is evaluated
    assert daily_retrain.metadata["cron_schedule"].value == "0 3 * * *"


def test_backfill_of_an_old_run_reproduces_its_results(tmp_path, small_clean_dir, instance):
    """Each run has its own input snapshot: re-materializing run A after new data landed and
    run B was made gives run A's metrics again."""
    clean = tmp_path / "clean"
    shutil.copytree(small_clean_dir, clean)
    curated = tmp_path / "curated"
    defs = local_defs(clean, curated)
    run_a, run_b = "run-20260401-000000", "run-20260402-000000"
    assert run_graph(instance, run_key=run_a, defs=defs).ok
    metrics_file = curated / "recsys/eval/als-20260401-000000/metrics.json"
    before = json.loads(metrics_file.read_text())

    shutil.rmtree(clean)
    write_instacart(generate_instacart(250, seed=99), clean)  # today's data is different
    assert run_graph(instance, run_key=run_b, defs=defs).ok
    b = json.loads((curated / "recsys/eval/als-20260402-000000/metrics.json").read_text())
    assert b["als"] != before["als"]

    downstream = ["orders_imputed", "ratings", "holdout", "als_model", "als_eval"]
    assert run_graph(instance, run_key=run_a, defs=defs, selection=downstream).ok
    after = json.loads(metrics_file.read_text())
    assert after["finished_at_utc"] >= before["finished_at_utc"]
    for section in ("als", "baseline", "baselines", "lift", "winner"):
        assert after[section] == before[section], section


def test_check_job_reruns_every_check_of_a_stored_run(tmp_path, small_clean_dir, instance):
    curated = tmp_path / "curated"
    defs = local_defs(small_clean_dir, curated)
    run = "run-20260403-000000"
    assert run_graph(instance, run_key=run, defs=defs).ok
    outcome = run_checks(instance, run, defs=defs)
    assert outcome.ok and len(outcome.checks) >= 15
    assert {c["check"] for c in outcome.checks} >= {"ratings_valid", "exports_valid", "user_seg_valid"}
    # break a stored artifact: the check run reports it
    path = curated / "recsys/ratings/run-20260403-000000/ratings.parquet"
    ratings = pl.read_parquet(path)
    pl.concat([ratings, ratings.head(3)]).write_parquet(path)
    broken = run_checks(instance, run, defs=defs)
    assert [c["check"] for c in broken.failed_error_checks] == ["ratings_valid"]
    with pytest.raises(ValueError, match="not registered"):
        run_checks(instance, "run-20990101-000000", defs=defs)
