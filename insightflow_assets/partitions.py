"""Run partitions: one `DynamicPartitionsDefinition` shared by every per-run asset.

The key grammar lives with the storage layout (`resources.layout`), because the key's
timestamp is the layout's ``TS``; two registered keys may therefore not share a timestamp.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from dagster import DagsterInstance, DynamicPartitionsDefinition

from resources.layout import RUN_KEY_RE, RunKeyError, parse_run_key, run_ts

runs_partitions = DynamicPartitionsDefinition(name="runs")


def make_run_key(tag: str | None = None, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    key = "run-" + now.strftime("%Y%m%d-%H%M%S") + (f"-{tag}" if tag else "")
    parse_run_key(key)
    return key


def registered_runs(instance: DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(runs_partitions.name))


def next_run_key(existing: list[str], tag: str | None = None) -> str:
    """A new key for now (UTC) whose timestamp no existing run holds.

    If the current second is taken we wait for the next one, so each ``run-TS`` folder belongs
    to one run.
    """
    taken = {run_ts(k) for k in existing if RUN_KEY_RE.match(k)}
    key = make_run_key(tag)
    while run_ts(key) in taken:
        time.sleep(0.25)
        key = make_run_key(tag)
    return key


def register_run(instance: DagsterInstance, tag: str | None = None, key: str | None = None) -> str:
    """Add a new run partition to the instance and return its key (a new one unless given)."""
    existing = registered_runs(instance)
    if key is not None:
        ts, _ = parse_run_key(key)
        if key in existing:
            raise RunKeyError(f"run key {key!r} is already registered")
        if ts in {run_ts(k) for k in existing if RUN_KEY_RE.match(k)}:
            raise RunKeyError(f"run key {key!r}: timestamp {ts} is already used by another run")
    else:
        key = next_run_key(existing, tag)
    instance.add_dynamic_partitions(runs_partitions.name, [key])
    return key
