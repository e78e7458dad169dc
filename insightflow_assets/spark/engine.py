"""The engine switch of the heavy per-line stages: polars in the step, or the Spark job
through Dagster Pipes (the `resources.compute.Compute` resource chooses).

Under ``spark`` the job reads the upstream assets' stored parquet (this run's keys in the
storage layout) and writes its output to a scratch folder of the same storage (`_scratch`); the
step loads that file and returns it, so the IO manager stores it at the asset's own key. The
node, lineage, table metadata and checks are those of a local run, and the layout stays owned
by ``resources.layout``.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from insightflow_assets.common import current_run
from insightflow_assets.spark.launch import run_spark_pipes, spark_missing
from resources.compute import Compute
from resources.layout import artifact, spark_scratch
from resources.storage import LocalStorage, Storage


T = TypeVar("T")


@dataclass(frozen=True)
class SparkTask:
    """One task of the job (``jobs.TASKS``): its ``stage``, ``inputs`` (job input name -> the
    upstream asset stored in this run, or ready paths when ``paths``) and ``params``."""

    stage: str
    inputs: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    paths: bool = False


def run_stage(
    context: Any,
    compute: Compute,
    curated: Storage,
    stage: str,
    *,
    inputs: Mapping[str, str],
    params: Mapping[str, Any],
    local: Callable[[], pl.DataFrame],
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The stage's frame and its engine metadata.

    ``local`` computes it with polars; under ``spark`` the job's ``stage`` (``jobs.TASKS``)
    computes it from ``inputs`` (job input name -> upstream asset stored in this run) and
    ``params``.
    """
    tasks = {stage: SparkTask(stage, inputs, params)}
    return run_stages(context, compute, curated, tasks, local=local, spark=lambda frames, _: frames[stage])


def run_stages(
    context: Any,
    compute: Compute,
    curated: Storage,
    tasks: Mapping[str, SparkTask],
    *,
    local: Callable[[], T],
    spark: Callable[[dict[str, pl.DataFrame], dict[str, dict]], T],
) -> tuple[T, dict[str, Any]]:
    """The one engine switch: ``local()`` under ``local``; under ``spark`` the named ``tasks`` in
    one Spark application (one JVM), then ``spark(frames, reports)`` with each task's output and
    what the job reported of it (rows, seconds, a task's own stats). ``spark_seconds`` sums the
    tasks' (the JVM's start-up not included)."""
    if compute.engine_name() == "local":
        return local(), {"engine": "local"}
    missing = spark_missing()
    if missing:
        raise RuntimeError(f"compute.engine is 'spark' but {missing}")
    run_key = current_run(context)
    with _scratch(compute, curated, run_key) as (where, read):
        specs = {name: _task_spec(curated, run_key, task, where(f"{name}.parquet")) for name, task in tasks.items()}
        invocation = run_spark_pipes(
            context, list(specs.values()), master=compute.master, driver_memory=compute.driver_memory, conf=dict(compute.conf)
        )
        frames = {name: read(f"{name}.parquet") for name in specs}
    messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict)]
    reports = {name: next((m for m in messages if m.get("path") == spec["output"]), {}) for name, spec in specs.items()}
    seconds = sum(float(r.get("seconds", math.nan)) for r in reports.values())
    result = spark(frames, reports)
    return result, {"engine": "spark", "spark_master": compute.master, "spark_seconds": seconds}


@contextlib.contextmanager
def _scratch(compute: Compute, curated: Storage, run_key: str) -> Iterator[tuple[Callable[[str], str], Callable[[str], pl.DataFrame]]]:
    """Where the job writes its outputs, and how the step reads one back: ``compute.scratch``
    (a local folder) when set, else a folder of the curated storage itself (`layout.spark_scratch`:
    a local path, or ``s3a://`` on a bucket), which a cluster's driver can write and the step read.
    Deleted afterwards either way."""
    if compute.scratch:
        with tempfile.TemporaryDirectory(prefix="insightflow-spark-", dir=compute.scratch) as tmp:
            yield (lambda name: str(Path(tmp) / name)), (lambda name: pl.read_parquet(Path(tmp) / name))
        return
    folder = spark_scratch(run_key, uuid.uuid4().hex[:12])
    try:
        yield (lambda name: spark_uri(curated.uri(f"{folder}/{name}"))), (
            lambda name: pl.read_parquet(io.BytesIO(curated.read_bytes(f"{folder}/{name}"))))
    finally:
        for obj in curated.list(folder):
            curated.delete(obj.key)
        if isinstance(curated, LocalStorage):  # a bucket has no empty folders; a disk keeps them
            shutil.rmtree(curated.uri(folder), ignore_errors=True)
            with contextlib.suppress(OSError):  # only when no other application's folder is left
                Path(curated.uri(folder)).parent.rmdir()


def _task_spec(curated: Storage, run_key: str, task: SparkTask, output: Path) -> dict[str, Any]:
    inputs = dict(task.inputs) if task.paths else {k: stored_uri(curated, a, run_key) for k, a in task.inputs.items()}
    return {"stage": task.stage, "inputs": inputs, "params": dict(task.params), "output": str(output)}


def stored_uri(curated: Storage, asset: str, run_key: str) -> str:
    """Where Spark reads ``asset``'s one stored file of ``run_key``: a local path, or an
    ``s3a://`` URI (Hadoop's S3 connector) for a bucket."""
    spec = artifact(asset)
    if len(spec.files) != 1 or not spec.files[0].endswith(".parquet"):
        raise ValueError(f"{asset} is not stored as one parquet file ({spec.files}): Spark cannot read it")
    return spark_uri(curated.uri(spec.keys(run_key)[spec.files[0]]))


def spark_uri(uri: str) -> str:
    """A storage URI as Spark reads it: ``s3://`` becomes ``s3a://`` (Hadoop's S3 connector)."""
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri
