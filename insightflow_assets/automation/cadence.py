"""When is a scheduled retraining due? The cron cadence of the `daily_retrain` sensor (pure).

A tick is a cron time. The cursor holds the last tick requested, so each tick is requested
once. The run key is spelled from the tick's time, not the clock's, so evaluating the same tick
again (a UI preview, a daemon retrying a tick) gives the same key. The daemon adds a partition
that exists only once and runs a run key of the sensor only once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# Dagster's own cron arithmetic, the one its schedules use (DST and all): private, but pinned
# with dagster <1.14 and covered by the tests.
from dagster._utils.schedules import get_latest_completed_cron_tick, get_next_cron_tick

from insightflow_assets.partitions import make_run_key

CRON = "0 3 * * *"
TIMEZONE = "UTC"
TAG = "daily"


@dataclass(frozen=True)
class Due:
    tick: datetime | None  # the tick to request now; None when nothing is due
    cursor: str  # the cursor to persist: the last tick requested (ISO 8601)
    reason: str  # why nothing is due, for the tick's log


def latest_tick(now: datetime) -> datetime:
    """The last cron time at or before ``now``."""
    return get_latest_completed_cron_tick(CRON, now, TIMEZONE)


def next_tick(after: datetime) -> datetime:
    return get_next_cron_tick(CRON, after + timedelta(seconds=1), TIMEZONE)


def tick_key(tick: datetime) -> str:
    """The run key of a tick: ``run-YYYYMMDD-HHMMSS-daily``, the tick's time in UTC."""
    return make_run_key(TAG, now=tick.astimezone(timezone.utc))


def due(cursor: str | None, now: datetime) -> Due:
    """Which tick to request at ``now``, given the last one requested (the cursor)."""
    tick = latest_tick(now)
    if cursor is None:
        # A sensor switched on for the first time waits for the next tick, as a schedule does,
        # rather than starting a run for the tick that has passed.
        return Due(None, tick.isoformat(), f"started: the first run is for {next_tick(tick).isoformat()}")
    if tick <= datetime.fromisoformat(cursor):
        return Due(None, cursor, f"the tick of {cursor} was requested; the next is {next_tick(tick).isoformat()}")
    # Only the latest tick: after a daemon outage one run retrains on the current data, rather
    # than one run per missed day on the same data.
    return Due(tick, tick.isoformat(), "")
