"""Run partitions: one `DynamicPartitionsDefinition` shared by every per-run asset.

The key grammar lives with the storage layout (`resources.layout`), because the key names the
run's folders: distinct keys never share a folder, even within one second.

Registering a key is one step: reading the registered keys, choosing a new one and adding it
happen under one lock in the instance's directory (`instance.registration_lock`), so two
commands started in the same second get two keys. Dagster's own add is a check-then-insert
that silently keeps an existing key, which is why the lock, not the add, decides.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from dagster import DagsterInstance, DynamicPartitionsDefinition
from sqlalchemy.exc import IntegrityError

from insightflow_assets.instance import registration_lock
from resources.layout import RunKeyError, parse_run_key

runs_partitions = DynamicPartitionsDefinition(name="runs")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _before_add(key: str) -> None:
    """Called under the lock between choosing a key and adding it. A seam for the tests, which
    start a second registration here; nothing to do in production."""


def make_run_key(tag: str | None = None, now: datetime | None = None) -> str:
    now = now or _now()
    key = "run-" + now.strftime("%Y%m%d-%H%M%S") + (f"-{tag}" if tag else "")
    parse_run_key(key)
    return key


def registered_runs(instance: DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(runs_partitions.name))


def next_run_key(existing: list[str], tag: str | None = None) -> str:
    """A key for now (UTC) that no registered run holds.

    When this second's key is taken we wait for the next second rather than add a suffix: the
    key stays ``run-<time>[-tag]``, and a later registration always sorts later.
    """
    taken = set(existing)
    key = make_run_key(tag)
    while key in taken:
        _sleep(0.2)
        key = make_run_key(tag)
    return key


def register_run(
    instance: DagsterInstance, tag: str | None = None, key: str | None = None, *, exist_ok: bool = False
) -> str:
    """Add a run partition to the instance and return its key: a new one, unless ``key`` is given.

    A given key that is already registered is refused, or accepted as is with ``exist_ok``
    (re-running an existing run).
    """
    if key is not None:
        parse_run_key(key)  # a malformed key is refused before anything else
    with registration_lock(instance):
        existing = registered_runs(instance)
        if key is None:
            key = next_run_key(existing, tag)
        elif key in existing:
            if exist_ok:
                return key
            raise RunKeyError(f"run key {key!r} is already registered")
        _before_add(key)
        _add(instance, key)
    return key


def _add(instance: DagsterInstance, key: str) -> None:
    try:
        instance.add_dynamic_partitions(runs_partitions.name, [key])
    except IntegrityError:
        # Another door that does not take our lock (the UI, or a second machine on a shared
        # database) inserted the same key between Dagster's own check and its insert.
        raise RunKeyError(f"run key {key!r} was registered by another process at the same moment; retry") from None
