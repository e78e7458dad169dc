"""Run `jobs.py` with ``spark-submit``: through Dagster Pipes from an asset, or plainly.

Locally (tests, benchmarks, one machine) the master is ``local[2]``: the driver JVM is the
executor too, so ``--driver-memory`` caps the whole job's heap. On a cluster the same script
runs under another Pipes client (EMR Serverless, Databricks) with the same extras.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

JOB = Path(__file__).with_name("jobs.py")

# Two cores: a few shuffle partitions (Spark's default 200 is for clusters and costs a task per
# partition here); UTC so a naive order_ts keeps its wall-clock value; no UI port to collide on.
SPARK_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.sql.adaptive.enabled": "true",
}
DRIVER_MEMORY = "8g"  # as resources.compute.Compute: 2g ran out at Instacart size


def spark_missing() -> str | None:
    """Why Spark cannot run here (no java, no pyspark), or None when it can."""
    if shutil.which("java") is None:
        return "java is not installed (make spark-deps installs Debian's default-jre-headless)"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (make spark-deps installs the spark extra)"
    return None


def spark_submit() -> str:
    """The ``spark-submit`` of the installed pyspark (not whichever is first on PATH)."""
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def submit_command(
    *, master: str = "local[2]", driver_memory: str = DRIVER_MEMORY, conf: Mapping[str, str] | None = None,
    job_args: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """``spark-submit --master ... --driver-memory ... --conf k=v ... jobs.py [job_args]``."""
    confs = [a for k, v in {**SPARK_CONF, **(conf or {})}.items() for a in ("--conf", f"{k}={v}")]
    return [spark_submit(), "--master", master, "--driver-memory", driver_memory, *confs, str(JOB), *job_args]


def submit_env() -> dict[str, str]:
    """This interpreter for the driver and its Python workers: it has dagster-pipes and pyarrow."""
    return {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def run_spark_pipes(context: Any, tasks: Sequence[Mapping[str, Any]], *, client: Any | None = None, **submit: Any):
    """Run the tasks as one Spark application through Dagster Pipes; returns the
    ``PipesClientCompletedInvocation`` (``.get_results()`` gives the reported materializations).

    ``context`` is the asset's execution context; every task's ``asset_key`` must be one of the
    keys it materializes. ``submit`` goes to `submit_command` (master, driver_memory, conf).
    """
    from dagster import PipesSubprocessClient

    client = client or PipesSubprocessClient(env=submit_env())
    return client.run(context=context, command=submit_command(**submit), extras={"tasks": [dict(t) for t in tasks]})


def run_spark(tasks: Sequence[Mapping[str, Any]], *, log: Path | None = None, **submit: Any) -> list[dict[str, Any]]:
    """Run the tasks with ``spark-submit`` outside Dagster (``--no-pipes``): the parity tests and
    benchmarks. Returns each task's metadata; raises with the log's tail when the job fails."""
    with tempfile.TemporaryDirectory(prefix="insightflow-spark-") as tmp:
        spec_path, results = Path(tmp) / "spec.json", Path(tmp) / "results.json"
        spec_path.write_text(json.dumps({"tasks": [dict(t) for t in tasks], "results": str(results)}))
        out = log or Path(tmp) / "spark.log"
        with open(out, "w") as f:
            proc = subprocess.run(
                submit_command(job_args=["--no-pipes", "--spec", str(spec_path)], **submit),
                env={**os.environ, **submit_env()}, stdout=f, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if proc.returncode != 0:
            tail = out.read_text().strip().splitlines()[-15:]
            raise RuntimeError(f"spark-submit failed (exit {proc.returncode}):\n" + "\n".join(tail))
        return json.loads(results.read_text())
