"""Retraining: a sensor on the clean source location, and a daily one on a cron cadence."""

import json
import os
from datetime import datetime, timezone

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from insightflow_assets.automation import cadence
from insightflow_assets.automation.fingerprint import decide, run_tag, source_state
from insightflow_assets.jobs import insightflow_run
from insightflow_assets.partitions import next_run_key, registered_runs, runs_partitions
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


def _now() -> datetime:
    return datetime.now(timezone.utc)


# A sensor, not a schedule: a schedule cannot ask Dagster to add a partition, so it had to add
# the run's partition itself while being evaluated, and a UI preview registered one that never
# ran. A sensor returns the add request and the run request together, applied by the daemon only.
@sensor(
    job=insightflow_run,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    metadata={"cron_schedule": cadence.CRON, "execution_timezone": cadence.TIMEZONE},
    description=(
        "Daily retraining at 03:00 UTC: registers the run partition run-YYYYMMDD-030000-daily "
        "named after that day's 03:00 and runs the whole graph for it, once per day. A tick "
        "missed while the daemon was down runs when it is back (the latest one only)."
    ),
)
def daily_retrain(context: SensorEvaluationContext):
    due = cadence.due(context.cursor or None, _now())
    if due.tick is None:
        context.update_cursor(due.cursor)
        return SkipReason(due.reason)
    key = cadence.tick_key(due.tick)
    return SensorResult(
        run_requests=[RunRequest(run_key=key, partition_key=key, tags={"insightflow/scheduled_for": due.cursor})],
        dynamic_partitions_requests=[runs_partitions.build_add_request([key])],
        cursor=due.cursor,
    )
