"""The one interface every recommender implements (pure: polars/numpy, no Dagster).

A recommender is fitted on a `TrainingWindow` (everything each user did before their target
basket) and returns, for any users, a top-``n`` list in the common ``recs`` schema plus a
``source`` per item (why the item is there: ``repeat``, ``als``, ``neighbors``, ``popular``…).
Every implementation registers itself with `register`; the evaluation, the model selection
and the exports iterate over `REGISTRY`, and one shared contract test runs every entry (as
benfred/implicit tests every model against ``RecommenderBase``). Adding a model means adding a
module that defines and registers a subclass, and importing it in `recommenders/__init__`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl

RECS_SCHEMA = {
    "user_id": pl.Int32,
    "rank": pl.Int32,
    "product_id": pl.Int32,
    "score": pl.Float32,
    "source": pl.String,
}


class TrainingWindow:
    """What the users did before their target baskets.

    ``ratings``: one row per (user, product) — ``user_id, product_id, purchases, rating`` — as
    built by `ratings.build.build_ratings`; ``baskets``: ``user_id, order_number, product_id``
    of the same orders (`ratings.build.training_baskets`), for models that need basket order.

    Give the baskets, or the ``orders`` and order ``lines`` they come from (``back`` as in
    `training_baskets`): then they are built on first read only. Building them at full scale
    costs more than most models (a 32 M-row unique + sort), an export that reuses a stored
    model never reads them, and a model may read the orders and lines directly instead.
    """

    def __init__(
        self,
        ratings: pl.DataFrame,
        baskets: pl.DataFrame | None = None,
        *,
        orders: pl.DataFrame | None = None,
        lines: pl.DataFrame | None = None,
        back: int = 0,
    ) -> None:
        if baskets is None and (orders is None or lines is None):
            raise ValueError("TrainingWindow needs the baskets, or the orders and lines they come from")
        self.ratings = ratings
        self.orders, self.lines, self.back = orders, lines, back
        self._baskets = baskets
        self._memo: dict[str, Any] = {}

    @property
    def baskets(self) -> pl.DataFrame:
        if self._baskets is None:
            from insightflow_assets.ratings.build import training_baskets

            self._baskets = training_baskets(self.orders, self.lines, back=self.back)
        return self._baskets

    def memo(self, key: str, build: Callable[[], Any]) -> Any:
        """What models derive from the window alone, built once per window however many
        configurations ask (e.g. TIFU-KNN's basket layout, the same for every decay)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


class Recommender(ABC):
    """Fit on a training window, then recommend top-``n`` per user with a ``source``."""

    name: ClassVar[str]  # the key in metrics.json's ``methods`` map
    label: ClassVar[str]  # how people read it (tables, charts)
    # Recommenders of one family whose `fit_params` are equal share one fit (e.g. ALS and the
    # post-rank of the same ALS): the model selection fits once and `adopt`s it.
    fit_family: ClassVar[str | None] = None
    # a baseline (no model, nothing tuned) wins an exact tie of validation scores: a model is
    # exported only when it beats one (the model selection's tie rule)
    baseline: ClassVar[bool] = False
    # a fit parameter along which one fit is continued (ALS: iterations): the selection scores
    # the family's candidates in ascending order of it and stops advancing once validation falls
    path_param: ClassVar[str | None] = None

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)

    def fit_params(self) -> dict[str, Any]:
        return dict(self.params)

    def adopt(self, fitted: "Recommender", window: TrainingWindow) -> "Recommender":
        """Take over the fitted state of an equal-fit recommender of the same family."""
        raise NotImplementedError(f"{type(self).__name__} shares no fit")

    @classmethod
    def for_export(cls, params: dict[str, Any], window: TrainingWindow, stored: dict[str, Any]) -> "Recommender":
        """The fitted recommender for the run's exports. ``stored`` holds the run's model
        artifacts by asset name (e.g. ``als_model``); a model that has one reuses it instead of
        fitting again. Default: fit on the window."""
        return cls(**params).fit(window)

    @abstractmethod
    def fit(self, window: TrainingWindow) -> "Recommender":
        """Learn from the window; returns self."""

    @abstractmethod
    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        """user_id, rank, product_id, score, source for the users it can serve."""

    def recommend(self, users: Any, n: int) -> pl.DataFrame:
        """Top-``n`` distinct products per user, ranks 1.. in order, in `RECS_SCHEMA`.

        Users the model knows nothing about may get fewer rows or none: the caller decides
        how to fill (the exports fall back to popularity).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return as_recs(self._recommend(_ids(users), n))

    @classmethod
    def recommend_many(cls, recs: list["Recommender"], users: Any, n: int) -> list[pl.DataFrame]:
        """`recommend` of several fitted recommenders of this class that share one fit, on the
        same users. One by one here; a class whose configurations share more than the fit
        (neighbourhoods, candidate lists) overrides `_recommend_many` to compute that once."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return [as_recs(out) for out in cls._recommend_many(recs, _ids(users), n)]

    @classmethod
    def _recommend_many(cls, recs: list["Recommender"], users: np.ndarray, n: int) -> list[pl.DataFrame]:
        return [rec._recommend(users, n) for rec in recs]


def _ids(users: Any) -> np.ndarray:
    """Distinct sorted int32 user ids of a series, array or list."""
    ids = np.unique(np.asarray(users.to_numpy() if isinstance(users, pl.Series) else users, dtype=np.int64))
    return ids.astype(np.int32)


def as_recs(frame: pl.DataFrame) -> pl.DataFrame:
    """A recs frame in `RECS_SCHEMA`, sorted by (user_id, rank)."""
    return frame.select([pl.col(c).cast(t) for c, t in RECS_SCHEMA.items()]).sort("user_id", "rank")


def with_source(recs: pl.DataFrame, source: str | pl.Expr) -> pl.DataFrame:
    expr = pl.lit(source) if isinstance(source, str) else source
    return recs.with_columns(expr.alias("source"))


REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator: make a recommender known to the evaluation, selection and contract test."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two recommenders are named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class Candidate:
    """One configuration of one recommender, as tried by the model selection."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Recommender:
        return REGISTRY[self.method](**self.params)
