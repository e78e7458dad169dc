"""implicit's ALS as a recommender (the factors themselves live in `model.als`)."""

from __future__ import annotations

import numpy as np
import polars as pl

from insightflow_assets.model.als import AlsModel, fit_als_sampled, recommend
from insightflow_assets.recommenders.base import Recommender, TrainingWindow, _ids, as_recs, register, with_source


@register
class Als(Recommender):
    """Top-n by user·item factor score; already-bought products allowed (repurchase matters)."""

    name, label = "als", "ALS"
    fit_family = "als"

    def fit(self, window: TrainingWindow) -> "Recommender":
        # ``fit_users``: item factors from a seeded sample of users (model selection's validation fit)
        params = dict(self.params)
        self.model = fit_als_sampled(window.ratings, params.pop("fit_users", None), **params)
        return self

    def adopt(self, fitted: "Recommender", window: TrainingWindow) -> "Recommender":
        self.model = fitted.model
        return self

    @classmethod
    def from_model(cls, model: AlsModel) -> "Als":
        """Wrap an already fitted model (the stored `als_model`)."""
        rec = cls(**{k: v for k, v in model.params.items() if k in ("factors", "regularization", "alpha", "iterations")})
        rec.model = model
        return rec

    @classmethod
    def for_export(cls, params, window: TrainingWindow, stored) -> "Recommender":
        rec = cls(**params)
        return rec.adopt(_Fitted(AlsModel.from_files(stored["als_model"].files)), window)

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return with_source(recommend(self.model, None, users, n, filter_already_bought=False), "als")


class _Fitted:
    """A stored ALS model in the shape `adopt` takes."""

    def __init__(self, model: AlsModel) -> None:
        self.model = model


@register
class AlsPostrank(Als):
    """The seed's post-rank: top-``candidates`` ALS items re-scored with popularity (global or
    the user's own frequency, weight ``1 - alpha``) and diversified by MMR on item factors."""

    name, label = "als_postrank", "ALS post-rank"

    def __init__(self, postrank_alpha: float = 0.7, mmr_lambda: float = 0.8, popularity_kind: str = "global",
                 candidates: int = 100, **als_params) -> None:
        # ``postrank_alpha`` is the hybrid's weight; ALS's own ``alpha`` (confidence) is in als_params.
        super().__init__(**als_params)
        self.postrank = {"alpha": postrank_alpha, "mmr_lambda": mmr_lambda, "popularity_kind": popularity_kind, "candidates": candidates}

    def fit(self, window: TrainingWindow) -> "Recommender":
        super().fit(window)
        return self.with_window(window)

    def adopt(self, fitted: "Recommender", window: TrainingWindow) -> "Recommender":
        self.model = fitted.model
        return self.with_window(window)

    def with_window(self, window: TrainingWindow) -> "AlsPostrank":
        """Keep the training ratings, for the popularity the re-ranking mixes in."""
        from insightflow_assets.evaluation.baselines import item_popularity

        self.ratings = window.ratings
        self.popularity = item_popularity(window.ratings)
        return self

    @classmethod
    def from_model(cls, model: AlsModel, **postrank) -> "AlsPostrank":
        rec = cls(**postrank)
        rec.model = model
        return rec

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return self._rerank(self._candidates(users, n), users, n)

    def _candidates(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return recommend(self.model, None, users, max(self.postrank["candidates"], n), filter_already_bought=False)

    def recommend_from(self, candidates: pl.DataFrame, users, n: int) -> pl.DataFrame:
        """`recommend` on this model's top-``max(candidates, n)`` lists scored elsewhere (the
        run's `als_candidates`), instead of scoring every user again."""
        return as_recs(self._rerank(candidates, _ids(users), n))

    @classmethod
    def _recommend_many(cls, recs: list["Recommender"], users: np.ndarray, n: int) -> list[pl.DataFrame]:
        # one ALS scoring for every re-ranking of the same model and candidate count
        pools: dict[tuple, pl.DataFrame] = {}
        out = []
        for rec in recs:
            key = (id(rec.model), max(rec.postrank["candidates"], n))
            if key not in pools:
                pools[key] = rec._candidates(users, n)
            out.append(rec._rerank(pools[key], users, n))
        return out

    def _rerank(self, candidates: pl.DataFrame, users: np.ndarray, n: int) -> pl.DataFrame:
        from insightflow_assets.postrank.rerank import postrank

        p = self.postrank
        out = postrank(
            candidates,
            k=n,
            users=np.intersect1d(users, self.model.user_ids),
            popularity=self.popularity,
            alpha=p["alpha"],
            mmr_lambda=p["mmr_lambda"],
            similarity="factors",
            item_factors=self.model.item_factors,
            item_ids=self.model.item_ids,
            popularity_kind=p["popularity_kind"],
            user_popularity=self.ratings if p["popularity_kind"] == "user" else None,
        )
        return out.with_columns(pl.col("score").cast(pl.Float32))
