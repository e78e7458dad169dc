"""The Dagster instance, initialised once, and the file locks kept in its directory.

Dagster's SQLite storages create their tables and stamp their alembic revision the first time
an instance is opened on a fresh ``DAGSTER_HOME``, and nothing serializes two processes doing
it: two commands at once can stamp two revisions, and every later command then fails with
"Version table 'alembic_version' has more than one head present". So the instance is opened
under an exclusive lock in ``DAGSTER_HOME`` (``make ui`` takes it too, through
``insightflow init``, before ``dg dev`` opens the instance itself).

The locks are ``flock`` locks: released by the kernel when their process dies, so a killed
command never leaves a stale lock behind; and held per open file, so they serialize threads
as well as processes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

INIT_LOCK = ".insightflow-init.lock"
RUNS_LOCK = ".insightflow-runs.lock"


def _waiting(path: Path) -> None:
    """Called when a lock is held elsewhere, just before blocking on it. A seam for the tests,
    which force interleavings with it; nothing to do in production."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _waiting(path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def dagster_home() -> Path:
    """``DAGSTER_HOME`` as an existing directory, or a one-line `RuntimeError`."""
    home = os.getenv("DAGSTER_HOME")
    if not home:
        raise RuntimeError("DAGSTER_HOME is not set (make run/ui use ./.dagster_home)")
    path = Path(home).expanduser()
    if not path.is_absolute():
        raise RuntimeError(f"DAGSTER_HOME must be an absolute path, not {home!r}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_instance() -> DagsterInstance:
    """`DagsterInstance.get()`, opened under the init lock so a fresh home is set up once.

    Opening an instance creates and stamps its storages when they are missing; the lock makes
    the first opener do that alone, and the others then find it done.
    """
    home = dagster_home()
    with file_lock(home / INIT_LOCK):
        return DagsterInstance.get()


def registration_lock(instance: DagsterInstance):
    """The lock that makes registering a run key one step (see partitions.register_run).

    In the instance's directory, so every process using this instance (CLI, daemon, webserver
    on one machine) shares it; an ephemeral instance gets its own temporary directory."""
    return file_lock(Path(instance.root_directory) / RUNS_LOCK)
