"""Retraining: a sensor on the clean source location and a daily schedule."""

import json
import os

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from insightflow_assets.automation.fingerprint import decide, run_tag, source_state
from insightflow_assets.jobs import insightflow_run
from insightflow_assets.partitions import next_run_key, register_run, registered_runs, runs_partitions
from resources.storage import Storage

# Production (INSIGHTFLOW_ENV=production) retrains on its own; a laptop only when asked to.
_PRODUCTION = os.getenv("INSIGHTFLOW_ENV", "local").lower() == "production"
SENSOR_INTERVAL_SECONDS = int(os.getenv("INSIGHTFLOW_SENSOR_INTERVAL", "60"))


@sensor(
    job=insightflow_run,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING if _PRODUCTION else DefaultSensorStatus.STOPPED,
    description=(
        "Starts a run of the whole graph when a new or changed, complete and stable Instacart "
        "file set lands in the clean location (_SUCCESS marker, or the same fingerprint twice)."
    ),
)
def new_source_data(context: SensorEvaluationContext, source: Storage):
    state = source_state(source.list(""), source.uri())
    registered = registered_runs(context.instance)
    decision = decide(state, json.loads(context.cursor) if context.cursor else None, registered)
    cursor = json.dumps(decision.cursor, sort_keys=True)
    if not decision.fire:
        context.update_cursor(cursor)
        return SkipReason(decision.reason)
    key = next_run_key(registered, tag=run_tag(state.fingerprint))
    context.log.info(f"{decision.reason}: registering {key}")
    return SensorResult(
        run_requests=[RunRequest(run_key=key, partition_key=key, tags={"insightflow/source_fingerprint": state.fingerprint})],
        dynamic_partitions_requests=[runs_partitions.build_add_request([key])],
        cursor=cursor,
    )


@schedule(
    job=insightflow_run,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Daily retraining at 03:00 UTC (seed 003's schedule): a new run partition of the whole graph.",
)
def daily_retrain(context: ScheduleEvaluationContext):
    # Schedules cannot return partition requests: register the run, then request it.
    key = register_run(context.instance, tag="daily")
    return RunRequest(run_key=key, partition_key=key)
