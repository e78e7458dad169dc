"""Every recommender of the project, registered in `base.REGISTRY` on import."""

from insightflow_assets.recommenders.base import REGISTRY, RECS_SCHEMA, Recommender, TrainingWindow, register

# Registration: each package that brings a recommender is imported once here.
from insightflow_assets.recommenders import als, baselines  # noqa: E402,F401
from insightflow_assets.nbr import recommender as _nbr  # noqa: E402,F401
from insightflow_assets.lightfm import recommender as _lightfm  # noqa: E402,F401

__all__ = ["REGISTRY", "RECS_SCHEMA", "Recommender", "TrainingWindow", "register"]
