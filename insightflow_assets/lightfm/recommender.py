"""LightFM as a recommender of the project's interface (`recommenders.base`)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import numpy as np
import polars as pl

from insightflow_assets.lightfm.embeddings import LightfmEmbeddings
from insightflow_assets.lightfm.fit import LightfmParams, Problem, fit_lightfm, top_n
from insightflow_assets.recommenders.base import Recommender, TrainingWindow, register

# What a window may carry for LightFM's side features (`TrainingWindow.memo`): a dict with
# ``products`` and ``user_seg`` frames. A window without it gives identity features only.
SIDE_FEATURES = "lightfm.side_features"
# what the fit depends on (early stopping does not run here)
_NOT_FIT = ("patience", "validation_users", "validation_sample_users")
_FIT_FIELDS = tuple(f.name for f in fields(LightfmParams) if f.name not in _NOT_FIT)


@register
class LightFm(Recommender):
    """LightFM hybrid matrix factorisation (Kula, 2015), WARP loss: a customer's and a
    product's representations are the sums of their feature embeddings (identity, aisle,
    department; identity, segment). Fitted here for a fixed number of epochs; the
    ``lightfm_model`` asset chooses that number on the validation basket."""

    name, label = "lightfm", "LightFM"

    def __init__(self, **params: Any) -> None:
        # fewer epochs than the asset's ceiling: no early stopping here, and model_selection fits it
        super().__init__(**{**asdict(LightfmParams(epochs=10)), **params})
        self.settings = LightfmParams(**self.params)

    def fit_params(self) -> dict[str, Any]:
        return {k: self.params[k] for k in _FIT_FIELDS}

    def fit(self, window: TrainingWindow) -> "Recommender":
        side = window.memo(SIDE_FEATURES, dict)
        problem = Problem.build(window.ratings, side.get("products"), side.get("user_seg"))
        self.embeddings, _ = fit_lightfm(problem, self.settings, self.settings.epochs)
        return self

    @classmethod
    def for_export(cls, params, window: TrainingWindow, stored) -> "Recommender":
        # the run's lightfm_model (fitted with the epochs chosen on validation), when given
        if stored.get("lightfm_model") is not None:
            rec = cls(**params)
            rec.embeddings = LightfmEmbeddings.from_files(stored["lightfm_model"].files)
            return rec
        return cls(**params).fit(window)

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return top_n(self.embeddings, users, n, self.settings.threads())

