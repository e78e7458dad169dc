"""The run's basket profile, chosen on the validation split (pure).

Each customer's second-to-last basket (the validation basket) is the last basket of the
training window. The pairs are counted once over the window and once over the validation
baskets; the difference is the pairs *before* the validation baskets (counts are additive), so
choosing costs no second pass over the window. A model built from those earlier pairs answers
the PerNIR prefix queries of a seeded sample of validation baskets with each profile; the one
with the best hit@10 + MRR@10 (averaged over prefix sizes, ties: the first in the file) becomes
the run's active profile. The holdout (target) baskets are never read: the window stops before
them.

The item embeddings are the run's LightFM vectors, fitted on the whole training window (the
validation baskets included): the choice sees the embeddings the final model uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from insightflow_assets.basket import evaluate as ev
from insightflow_assets.basket import profiles as prof
from insightflow_assets.basket.pairs import PairParams, build_pairs_counted, build_pairs_split
from insightflow_assets.basket.recommender import BasketModel


@dataclass(frozen=True)
class ChoiceParams:
    baskets: int = 300  # seeded sample of validation baskets (0 = all), ~4 prefix queries each
    seed: int = 42
    m_min: int = 1
    m_max: int = 10


def validation_queries(window: pl.DataFrame, orders: pl.DataFrame | pl.LazyFrame, params: ChoiceParams) -> tuple[np.ndarray, list[ev.Query]]:
    """Which lines of the training window (`pairs.window_lines`) are the validation baskets (a
    boolean per line), and the prefix queries of a seeded sample of those baskets.

    The validation basket is each customer's last basket of the window (the one before the
    target): read off the window itself, whose lines are grouped by order id in ascending order."""
    order_id = window["order_id"].to_numpy()
    first = np.ones(order_id.size, bool)
    first[1:] = order_id[1:] != order_id[:-1]
    targets = (
        orders.lazy().select("order_id", pl.col("user_id").cast(pl.Int32), "order_number")
        .join(pl.LazyFrame({"order_id": order_id[first]}).cast({"order_id": orders.lazy().collect_schema()["order_id"]}),
              on="order_id", how="semi")
        # hash aggregations, no sort of the orders; order_id breaks (invalid) order_number ties
        .filter(pl.col("order_number") == pl.col("order_number").max().over("user_id"))
        .group_by("user_id").agg(pl.col("order_id").min())
        .select("order_id", "user_id")
        .collect()
    )
    held = window["order_id"].is_in(targets["order_id"].implode())
    eval_params = ev.EvalParams(m_min=params.m_min, m_max=params.m_max, sample_baskets=params.baskets, seed=params.seed)
    return held.to_numpy(), ev.queries(ev.baskets_of(window.filter(held), targets), eval_params)


def score_profiles(model: BasketModel, qs: list[ev.Query], names: list[str]) -> dict[str, dict[str, float]]:
    """hit@10 and MRR@10 (averaged over prefix sizes) of each profile on the queries (the
    customer's segment given, as `basket_eval` does by default)."""
    out = {}
    for name, lists in zip(names, ev.profile_lists(model, qs, 10, names)):
        m = ev.averaged(ev.score_lists(qs, lists, ks=(10,))) if qs else {}
        out[name] = {"hit@10": m.get("hit@10", 0.0), "mrr@10": m.get("mrr@10", 0.0)}
    return out


def best(table: dict[str, dict[str, float]]) -> str:
    """The profile of the highest hit@10 + MRR@10; ties go to the first."""
    return max(table, key=lambda name: table[name]["hit@10"] + table[name]["mrr@10"])


def pairs_and_profile(
    window: pl.DataFrame,
    orders: pl.DataFrame,
    products: pl.DataFrame,
    *,
    item_ids: np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
    profiles: dict | None = None,
    pair_params: PairParams = PairParams(),
    choice: ChoiceParams = ChoiceParams(),
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """`pairs.build_pairs` of the training window (``window``: `pairs.window_lines`), with the
    profile chosen on the validation split in ``info["profile_choice"]`` and the profiles
    with it as ``"active"`` in ``info["profiles"]`` (the run's profiles.json)."""
    held_out, qs = validation_queries(window, orders, choice)
    built, before = build_pairs_split(window, held_out, _focus(qs), pair_params)
    return _choose(built, before, qs, products, item_ids, item_vectors, profiles)


def pairs_and_profile_counted(
    counts: dict[str, pl.DataFrame],
    stats: dict,
    validation: pl.DataFrame,
    orders: pl.DataFrame | pl.LazyFrame,
    products: pl.DataFrame,
    *,
    item_ids: np.ndarray | None = None,
    item_vectors: np.ndarray | None = None,
    profiles: dict | None = None,
    pair_params: PairParams = PairParams(),
    choice: ChoiceParams = ChoiceParams(),
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """`pairs_and_profile` from counts made elsewhere (the Spark job): ``counts`` holds the
    window's ``pairs`` / ``items`` and the validation baskets' ``held_pairs`` / ``held_items``
    (see `pairs.build_pairs_counted`, with ``stats``); ``validation`` is the validation baskets'
    lines (`pairs.validation_lines`), which the queries are drawn from."""
    _, qs = validation_queries(validation, orders, choice)
    built, before = build_pairs_counted(
        (counts["pairs"], counts["items"]), (counts["held_pairs"], counts["held_items"]), stats, _focus(qs), pair_params
    )
    return _choose(built, before, qs, products, item_ids, item_vectors, profiles)


def _focus(qs: list[ev.Query]) -> np.ndarray:
    return np.unique(np.concatenate([q.prefix for q in qs])) if qs else np.empty(0, np.int64)


def _choose(built: tuple, before: tuple, qs: list[ev.Query], products: pl.DataFrame, item_ids: np.ndarray | None,
            item_vectors: np.ndarray | None, profiles: dict | None) -> tuple[pl.DataFrame, pl.DataFrame, dict]:  # fmt: skip
    """The window's pairs and items, with the profile scored best on the model of the pairs
    ``before`` the validation baskets."""
    (pairs, items, info), (before_pairs, before_items) = built, before
    raw = profiles if profiles is not None else prof.raw()
    model = BasketModel.build(before_pairs, before_items, products, item_ids=item_ids, item_vectors=item_vectors,
                              profiles=raw)
    # no validation basket, or none before them (every customer's only basket is the validation
    # one): nothing to choose on, so the file's default
    judged = qs if before_items.height else []
    table = score_profiles(model, judged, list(model.profiles))
    name = best(table) if judged else prof.active(raw)
    info["profile_choice"] = {"active": name, "split": "validation", "criterion": "hit@10 + mrr@10",
                              "baskets": len({q.user_id for q in qs}), "queries": len(qs),
                              "embeddings": item_vectors is not None, "validation": table}
    info["profiles"] = {**{k: v for k, v in raw.items() if k != prof.ACTIVE}, prof.ACTIVE: name}
    return pairs, items, info
