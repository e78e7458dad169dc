"""Automation: the source-data sensor (local and S3), the daily schedule, backfills and checks."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
from dagster import SensorResult, SkipReason, build_schedule_context, build_sensor_context

from insightflow_assets.automation.fingerprint import run_tag, source_state
from insightflow_assets.automation.sensors import daily_retrain, new_source_data
from insightflow_assets.data.generate import generate_instacart, write_instacart
from insightflow_assets.runner import run_checks, run_graph
from insightflow_assets_tests.conftest import local_defs
from resources import LocalStorage, S3Storage


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


def test_daily_schedule_registers_a_run(tmp_path):
    from dagster import DagsterInstance

    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        request = daily_retrain(build_schedule_context(instance=instance))
        assert request.partition_key.endswith("-daily") and request.run_key == request.partition_key
        assert instance.get_dynamic_partitions("runs") == [request.partition_key]
    assert daily_retrain.cron_schedule == "0 3 * * *" and daily_retrain.execution_timezone == "UTC"


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
    assert outcome.ok and len(outcome.checks) >= 16
    assert {c["check"] for c in outcome.checks} >= {"ratings_valid", "bedrock_inputs_match_schema", "no_empty_segment"}
    # break a stored artifact: the check run reports it
    path = curated / "recsys/ratings/run-20260403-000000/ratings.parquet"
    ratings = pl.read_parquet(path)
    pl.concat([ratings, ratings.head(3)]).write_parquet(path)
    broken = run_checks(instance, run, defs=defs)
    assert [c["check"] for c in broken.failed_error_checks] == ["ratings_valid"]
    with pytest.raises(ValueError, match="not registered"):
        run_checks(instance, "run-20990101-000000", defs=defs)
