"""Every recommender of the project, registered in `base.REGISTRY` on import."""

from insightflow_assets.recommenders import als, baselines  # noqa: F401  (registration)
from insightflow_assets.recommenders.base import REGISTRY, RECS_SCHEMA, Recommender, TrainingWindow, register

__all__ = ["REGISTRY", "RECS_SCHEMA", "Recommender", "TrainingWindow", "register"]
