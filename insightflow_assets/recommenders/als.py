"""implicit's ALS as a recommender (the factors themselves live in `model.als`)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from insightflow_assets.model.als import DEFAULT_PARAMS, AlsModel, AlsPath, recommend
from insightflow_assets.recommenders.base import Recommender, TrainingWindow, _ids, as_recs, register, with_source


@register
class Als(Recommender):
    """Top-n by user·item factor score; already-bought products allowed (repurchase matters)."""

    name, label = "als", "ALS"
    fit_family = "als"
    path_param = "iterations"  # one fit continued (AlsPath): a later count costs only the extra iterations
    # fitted state: a stored or fully solved model, or a path (AlsPath) and its iteration count
    _model: AlsModel | None = None
    _path: AlsPath | None = None
    _iterations: int | None = None

    def fit(self, window: TrainingWindow) -> "Recommender":
        # ``fit_users``: item factors from a seeded sample of users (model selection's validation fit)
        params = dict(self.params)
        fit_users, iterations = params.pop("fit_users", None), params.pop("iterations", DEFAULT_PARAMS["iterations"])
        # configurations that differ only in iterations share one fit, continued (AlsPath)
        key = "als_path:" + json.dumps({**params, "fit_users": fit_users}, sort_keys=True, default=str)
        self._path = window.memo(key, lambda: AlsPath(window.ratings, fit_users, **params))
        self._iterations, self._model = iterations, None
        return self

    def adopt(self, fitted: "Recommender", window: TrainingWindow) -> "Recommender":
        self._path, self._iterations, self._model = fitted._path, fitted._iterations, fitted._model
        return self

    @property
    def model(self) -> AlsModel:
        """The fitted model, every user's factor included."""
        if self._model is None:
            self._model = self._path.at(self._iterations)
        return self._model

    @model.setter
    def model(self, model: AlsModel) -> None:
        self._model = model

    def scoring_model(self, users: np.ndarray) -> AlsModel:
        """A model that scores ``users``: after a fit on a user sample, only their factors are
        solved (model selection scores 20,000 validation users, not every user)."""
        return self._model if self._model is not None else self._path.at(self._iterations, users)

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
        return with_source(recommend(self.scoring_model(users), None, users, n, filter_already_bought=False), "als")


class _Fitted:
    """A stored ALS model in the shape `adopt` takes."""

    _path = _iterations = None

    def __init__(self, model: AlsModel) -> None:
        self._model = model


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
        return super().adopt(fitted, window).with_window(window)

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
        depth = max(self.postrank["candidates"], n)
        return recommend(self.scoring_model(users), None, users, depth, filter_already_bought=False)

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
            key = (id(rec._model), id(rec._path), rec._iterations, max(rec.postrank["candidates"], n))
            if key not in pools:
                pools[key] = rec._candidates(users, n)
            out.append(rec._rerank(pools[key], users, n))
        return out

    def _rerank(self, candidates: pl.DataFrame, users: np.ndarray, n: int) -> pl.DataFrame:
        from insightflow_assets.postrank.rerank import postrank

        p = self.postrank
        model = self.scoring_model(users)
        out = postrank(
            candidates,
            k=n,
            users=np.intersect1d(users, model.user_ids),
            popularity=self.popularity,
            alpha=p["alpha"],
            mmr_lambda=p["mmr_lambda"],
            similarity="factors",
            item_factors=model.item_factors,
            item_ids=model.item_ids,
            popularity_kind=p["popularity_kind"],
            user_popularity=self.ratings if p["popularity_kind"] == "user" else None,
        )
        return out.with_columns(pl.col("score").cast(pl.Float32))
