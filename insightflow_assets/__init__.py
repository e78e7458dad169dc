"""InsightFlow: the e-commerce ML pipeline as a Dagster code location."""

import warnings

# Partitioned asset checks are what Dagster 1.13 offers for per-run checks; the "preview"
# notice would otherwise print once per check on every load.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
