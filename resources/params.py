"""Run knobs shared by several assets, with the seed's names and defaults.

A resource rather than per-asset config so that one value (e.g. ``seed``) reaches the
segmentation, the charts and the exports alike; override it per run in the launchpad under
``resources: rfm: config:``.
"""

from typing import Optional

from dagster import ConfigurableResource


class RfmParams(ConfigurableResource):
    """Segmentation and export knobs: KMeans k and its range, cohort sizes, Top-N, the PCA sample and the random seed."""

    strict_parquet: bool = True  # refuse stored inputs whose columns/dtypes drift, instead of casting
    pca_sample: int = 50_000  # users drawn for the PCA scatter
    hv_n: int = 150  # high-value cohort size (hv = 0.4*r_z + 0.3*f_z + 0.3*m_z)
    rand_n: int = 150  # random cohort size
    topn_per_segment: int = 5  # Top-K per segment and per cohort user in the exports
    seed: int = 42
    k: int = 0  # KMeans clusters; 0 = choose k in [k_min, k_max] by silhouette under min_segment_share
    k_min: int = 3
    k_max: int = 8
    min_segment_share: float = 0.02  # no segment below this share of users (smaller ones are merged)
    # dated (transactions) input only: recency is measured to this ISO date/datetime, default the last order_ts
    reference_date: Optional[str] = None
    top_n: int = 100  # products kept per segment in segment_popularity
