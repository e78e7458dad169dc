"""Where the heavy per-line stages compute: ``local`` (polars, in the asset's step) or ``spark``
(the PySpark application of ``insightflow_assets.spark``, launched through Dagster Pipes)."""

from typing import Dict, Optional

from dagster import ConfigurableResource

ENGINES = ("local", "spark")


class Compute(ConfigurableResource):
    """The engine of ratings, holdout, the R/F/M of user_seg, segment_popularity, the counts of
    basket_pairs and the order lines' checks of the input snapshot: ``local`` computes them with
    polars in the step; ``spark`` runs them with spark-submit (master,
    driver memory and extra --conf here) through Dagster Pipes. Either way the asset, its
    storage, metadata and checks are the same."""

    engine: str = "local"
    master: str = "local[2]"
    # local[N]: the driver JVM is the executor too, so this caps the job's heap; 2g ran out at
    # Instacart's size (basket item counts), 8g completed 2x that (README "Beyond one machine")
    driver_memory: str = "8g"
    conf: Dict[str, str] = {}  # extra spark-submit --conf, over insightflow_assets.spark.launch.SPARK_CONF
    # a local folder where the job writes its outputs before the step loads them; default: a
    # scratch folder of the curated storage itself (shared by a cluster's driver and the step)
    scratch: Optional[str] = None

    def engine_name(self) -> str:
        """The engine, refused in one line naming the setting when it is neither local nor spark."""
        return check_engine(self.engine, "compute.engine (INSIGHTFLOW_COMPUTE)")


def check_engine(value: str, setting: str) -> str:
    engine = (value or "").strip().lower()
    if engine not in ENGINES:
        raise ValueError(f"{setting} must be 'local' or 'spark', not {value!r}")
    return engine
