"""The engine switch of the heavy per-line stages: polars in the step, or the Spark job
through Dagster Pipes (the `resources.compute.Compute` resource chooses).

Under ``spark`` the job reads the upstream assets' stored parquet (this run's keys in the
storage layout) and writes its output to a scratch folder; the step loads that file and returns
it, so the IO manager stores it at the asset's own key. The node, lineage, table metadata and
checks are those of a local run, and the layout stays owned by ``resources.layout``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from insightflow_assets.common import current_run
from insightflow_assets.spark.launch import run_spark_pipes, spark_missing
from resources.compute import Compute
from resources.layout import artifact
from resources.storage import Storage


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
    if compute.engine_name() == "local":
        return local(), {"engine": "local"}
    missing = spark_missing()
    if missing:
        raise RuntimeError(f"compute.engine is 'spark' but {missing}")
    run_key = current_run(context)
    with tempfile.TemporaryDirectory(prefix=f"insightflow-spark-{stage}-", dir=compute.scratch) as tmp:
        task = {
            "stage": stage,
            "inputs": {name: stored_uri(curated, asset, run_key) for name, asset in inputs.items()},
            "params": dict(params),
            "output": str(Path(tmp) / f"{stage}.parquet"),
        }
        invocation = run_spark_pipes(
            context, [task], master=compute.master, driver_memory=compute.driver_memory, conf=dict(compute.conf)
        )
        df = pl.read_parquet(task["output"])
    report = next((m for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("stage") == stage), {})
    return df, {"engine": "spark", "spark_master": compute.master, "spark_seconds": float(report.get("seconds", math.nan))}


def stored_uri(curated: Storage, asset: str, run_key: str) -> str:
    """Where Spark reads ``asset``'s one stored file of ``run_key``: a local path, or an
    ``s3a://`` URI (Hadoop's S3 connector) for a bucket."""
    spec = artifact(asset)
    if len(spec.files) != 1 or not spec.files[0].endswith(".parquet"):
        raise ValueError(f"{asset} is not stored as one parquet file ({spec.files}): Spark cannot read it")
    uri = curated.uri(spec.keys(run_key)[spec.files[0]])
    return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri
