"""PySpark versions of the heavy per-line stages (`jobs.py`, run by ``spark-submit``) and the
launcher that runs them through Dagster Pipes (`launch.py`).

No ``assets`` module here: the stage collector (``insightflow_assets.stages``) skips this
package, and the assets keep their graph nodes whichever engine computes them.
"""
