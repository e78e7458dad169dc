"""The honest baselines as recommenders: global popularity, P-TopFreq and GP-TopFreq."""

from __future__ import annotations

import numpy as np
import polars as pl

from insightflow_assets.evaluation.baselines import global_popularity, gp_topfreq, p_topfreq
from insightflow_assets.recommenders.base import Recommender, TrainingWindow, register, with_source


class _FromRatings(Recommender):
    baseline = True

    def fit(self, window: TrainingWindow) -> "Recommender":
        self.ratings = window.ratings
        return self


@register
class Popularity(_FromRatings):
    """The products with most distinct buyers, the same list for everyone (the seed's baseline)."""

    name, label = "baseline", "Popularity"

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return with_source(global_popularity(self.ratings, users, n), "popular")


@register
class PTopFreq(_FromRatings):
    """The user's own most-bought products."""

    name, label = "p_topfreq", "P-TopFreq"

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return with_source(p_topfreq(self.ratings, users, n), "repeat")


@register
class GPTopFreq(_FromRatings):
    """Own most-bought products, then filled from global popularity."""

    name, label = "gp_topfreq", "GP-TopFreq"

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        recs = gp_topfreq(self.ratings, users, n)
        own = self.ratings.select(pl.col("user_id").cast(pl.Int32), pl.col("product_id").cast(pl.Int32), _own=pl.lit(True))
        recs = recs.join(own, on=["user_id", "product_id"], how="left")
        return with_source(recs, pl.when(pl.col("_own")).then(pl.lit("repeat")).otherwise(pl.lit("popular"))).drop("_own")
