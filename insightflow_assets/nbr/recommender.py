"""TIFU-KNN as a recommender of the project's interface (`recommenders.base`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import polars as pl

from insightflow_assets.nbr.tifu import TifuParams, tifu_knn_recommend, tifu_knn_recommend_many
from insightflow_assets.nbr.vectors import BasketLayout, basket_layout, layout_vectors, target_cutoffs
from insightflow_assets.recommenders.base import Recommender, TrainingWindow, register

_VECTOR_PARAMS = ("group_size", "within_decay", "group_decay")


@register
class TifuKnn(Recommender):
    """Repeat-aware next-basket model (Hu et al., SIGIR 2020): the user's decayed basket
    history, blended with the mean vector of the nearest customers (explore items)."""

    name, label = "tifu_knn", "TIFU-KNN"
    fit_family = "tifu_knn"  # candidates with equal decays share the user vectors

    def __init__(self, **params: Any) -> None:
        # the paper's Instacart values, and how neighbours are searched (see nbr.tifu.TifuParams)
        super().__init__(**{**asdict(TifuParams()), **params})

    def fit_params(self) -> dict[str, Any]:
        return {k: self.params[k] for k in _VECTOR_PARAMS}

    def fit(self, window: TrainingWindow) -> "Recommender":
        # the layout does not depend on the decays: every decay setting of a window shares it
        layout = window.memo("tifu_knn.layout", lambda: _layout(window))
        self.vectors, self.user_ids, self.item_ids = layout_vectors(
            layout, **{k: self.params[k] for k in _VECTOR_PARAMS}
        )
        return self

    def adopt(self, fitted: "Recommender", window: TrainingWindow) -> "Recommender":
        self.vectors, self.user_ids, self.item_ids = fitted.vectors, fitted.user_ids, fitted.item_ids
        return self

    @classmethod
    def for_export(cls, params, window: TrainingWindow, stored) -> "Recommender":
        return StoredLists(stored["nbr_model"].frame("recs.parquet"))

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        knn = TifuParams(**self.params).knn_kwargs()
        return tifu_knn_recommend(self.vectors, self.user_ids, self.item_ids, users, n, **knn)

    @classmethod
    def _recommend_many(cls, recs: list["Recommender"], users: np.ndarray, n: int) -> list[pl.DataFrame]:
        # configurations on the same vectors share the search space, clusters, neighbour lists
        # and sums (see nbr.tifu.tifu_knn_recommend_many)
        out: list[pl.DataFrame] = [pl.DataFrame()] * len(recs)
        by_fit: dict[int, list[int]] = {}
        for i, rec in enumerate(recs):
            by_fit.setdefault(id(rec.vectors), []).append(i)
        for members in by_fit.values():
            first = recs[members[0]]
            configs = [TifuParams(**recs[i].params).knn_kwargs() for i in members]
            lists = tifu_knn_recommend_many(first.vectors, first.user_ids, first.item_ids, users, n, configs)
            for i, frame in zip(members, lists):
                out[i] = frame
        return out


class StoredLists(Recommender):
    """Lists already computed by a model asset of this run (not registered: a view, not a model)."""

    name, label = "stored", "stored lists"

    def __init__(self, recs: pl.DataFrame) -> None:
        super().__init__()
        self.recs = recs

    def fit(self, window: TrainingWindow) -> "Recommender":
        return self

    def _recommend(self, users: np.ndarray, n: int) -> pl.DataFrame:
        return self.recs.filter((pl.col("rank") <= n) & pl.col("user_id").is_in(pl.Series(users).implode()))


def _layout(window: TrainingWindow) -> BasketLayout:
    if window.orders is not None:
        # straight from the orders and lines (same baskets, same vectors): the window's
        # baskets frame, a 32 M-row unique + sort at full scale, is never built
        cutoff = target_cutoffs(window.orders, window.lines, window.back)
        return basket_layout(window.orders, window.lines, cutoff)
    return basket_layout(*baskets_as_orders(window.baskets))


def baskets_as_orders(baskets: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The window's ``user_id, order_number, product_id`` as TIFU's orders + lines."""
    keyed = baskets.with_columns(order_id=pl.col("user_id").cast(pl.Int64) * 65_536 + pl.col("order_number").cast(pl.Int64))
    orders = keyed.select("order_id", "user_id", "order_number").unique().sort("order_id")
    return orders, keyed.select("order_id", "product_id")
