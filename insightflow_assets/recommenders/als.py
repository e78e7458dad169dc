"""implicit's ALS as a recommender (the factors themselves live in `model.als`)."""

from __future__ import annotations

import numpy as np
import polars as pl

from insightflow_assets.model.als import AlsModel, fit_als, recommend
from insightflow_assets.recommenders.base import Recommender, TrainingWindow, register, with_source


@register
class Als(Recommender):
    """Top-n by user·item factor score; already-bought products allowed (repurchase matters)."""

    name, label = "als", "ALS"

    def fit(self, window: TrainingWindow) -> "Recommender":
        self.model = fit_als(window.ratings, **self.params)
        return self

    @classmethod
    def from_model(cls, model: AlsModel) -> "Als":
        """Wrap an already fitted model (the stored `als_model`)."""
        rec = cls(**{k: v for k, v in model.params.items() if k in ("factors", "regularization", "alpha", "iterations")})
        rec.model = model
        return rec

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return with_source(recommend(self.model, None, users, n, filter_already_bought=False), "als")
