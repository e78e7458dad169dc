"""Temporal ratings and holdout construction (pure polars, no Dagster).

Split protocol (the way a recommender is used: predict the next basket from
the past):

* Each user's **target order** is their ``eval_set == "train"`` order when it
  has lines; otherwise it is their last order (highest ``order_number``) that
  has lines. ``eval_set == "test"`` orders never have lines, so they are never
  targets.
* The **holdout** is the set of distinct products in the target basket.
* The **ratings** (training interactions) are built only from the user's
  orders strictly *before* the target (``order_number < target order_number``).
  A user whose target is their first order with lines contributes no ratings
  (but still has a holdout basket; choose the evaluated users downstream).

Days: ``day`` of an order is the cumulative sum of ``days_since_prior_order``
from the user's first order (first order = day 0; a null gap, or any gap on an
order flagged ``is_first_order``, counts as 0). ``days_before_target`` of an
order is ``target day - order day`` (>= 0).

**Events form** (`ingest.events_schema`): the order lines are a visitor's sessions with view /
cart / purchase counts, and the ``train`` order holds what the visitor carted or bought after
the cut-off. The target is that order only (a visitor without one has no target), the ratings
come from **every** visitor's sessions (all of them are before the cut-off), and a rating is the
weighted sum of the counts (`ratings.events.DEFAULT_WEIGHTS`, view 1 / cart 4 / purchase 8).

Every function accepts eager ``pl.DataFrame`` or ``pl.LazyFrame`` inputs,
builds one lazy query (joins / group_by, no dense matrices, no Python loops
over users) and returns a collected ``pl.DataFrame``.
"""

from __future__ import annotations

import math

import polars as pl

from insightflow_assets.frames import F32_TINY as _F32_TINY
from insightflow_assets.frames import lazy as _lazy
from insightflow_assets.ingest.events_schema import COUNT_OF_EVENT, is_events_form
from insightflow_assets.ratings.events import DEFAULT_WEIGHTS, check_weights

Frame = pl.DataFrame | pl.LazyFrame

_SHIFT = 1 << 32
_OFFSET = 1 << 31

__all__ = [
    "order_days",
    "target_orders",
    "build_holdout",
    "build_ratings",
    "training_baskets",
]


def _order_days_lazy(orders_imputed: Frame) -> pl.LazyFrame:
    """order_id, user_id, order_number, eval_set, day (Float32), lazily.

    Sorted by (user_id, order_number) through one Int64 key; the per-user
    cumulative sum is a global cumulative sum minus its value at the user's
    first row (cheaper than a window ``cum_sum().over``), in Float64.
    """
    first_row = (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True)
    gap = (
        pl.when(
            pl.col("_first")
            | pl.col("is_first_order").fill_null(False)
            | pl.col("days_since_prior_order").is_null()
        )
        .then(0.0)
        .otherwise(pl.col("days_since_prior_order").cast(pl.Float64))
    )
    return (
        _lazy(orders_imputed)
        .select(
            "order_id",
            "user_id",
            "order_number",
            "eval_set",
            "is_first_order",
            "days_since_prior_order",
        )
        .sort(pl.col("user_id").cast(pl.Int64) * 65_536 + pl.col("order_number").cast(pl.Int64))
        .with_columns(_first=first_row)
        .with_columns(_cum=gap.cum_sum())
        .with_columns(
            day=(
                pl.col("_cum") - pl.when(pl.col("_first")).then(pl.col("_cum")).forward_fill()
            ).cast(pl.Float32)
        )
        .select("order_id", "user_id", "order_number", "eval_set", "day")
    )


def _targets_lazy(
    days: pl.LazyFrame, order_products: Frame, back: int = 0
) -> pl.LazyFrame:
    """user_id, order_id, order_number, day of each user's target order.

    ``back=1`` moves the target one basket earlier (the validation basket: the user's
    second-to-last order with lines); users without that many baskets have no target.
    """
    # max of this key per user = the train order if any, else the highest
    # order_number among the orders with lines
    key = (pl.col("eval_set") == "train").cast(pl.Int32) * 1_000_000 + pl.col(
        "order_number"
    ).cast(pl.Int32)
    chosen = key == key.max().over("user_id") if back == 0 else key.rank("ordinal", descending=True).over("user_id") == back + 1
    if back == 0 and is_events_form(order_products):  # the target is what came after the cut-off, or nothing
        chosen = chosen & (pl.col("eval_set") == "train")
    return (
        days.join(_lazy(order_products).select("order_id"), on="order_id", how="semi")
        .filter(chosen)
        .select("user_id", "order_id", "order_number", "day")
        # (user_id, order_number) is unique in valid data; stay deterministic anyway
        .sort("user_id", "order_id")
        .unique(subset="user_id", keep="first", maintain_order=True)
    )


def order_days(orders_imputed: Frame) -> pl.DataFrame:
    """Day index of every order.

    Returns ``order_id, user_id, order_number, day`` (``day`` Float32) sorted by
    ``user_id, order_number``, where ``day`` is the cumulative
    ``days_since_prior_order`` since the user's first order (first order = 0,
    null gaps and gaps on ``is_first_order`` rows count as 0).
    """
    return (
        _order_days_lazy(orders_imputed)
        .select("order_id", "user_id", "order_number", "day")
        .collect()
    )


def target_orders(orders_imputed: Frame, order_products: Frame, back: int = 0) -> pl.DataFrame:
    """Each user's target order: ``user_id, order_id, order_number, day``.

    Target = the user's ``eval_set == "train"`` order if it has lines, else the
    user's last order with lines. Users without any order with lines (only
    possible with truncated data) have no target. Sorted by ``user_id``.
    """
    return _targets_lazy(_order_days_lazy(orders_imputed), order_products, back).collect()


def build_holdout(orders_imputed: Frame, order_products: Frame, back: int = 0) -> pl.DataFrame:
    """Distinct products of each user's target basket.

    Returns ``user_id`` Int32, ``product_id`` Int32, one row per distinct
    (user, product) of the target order, sorted by ``user_id, product_id``.
    Includes users whose target is their first order (they have no ratings).
    """
    targets = _targets_lazy(_order_days_lazy(orders_imputed), order_products, back)
    return (
        _lazy(order_products)
        .select("order_id", "product_id")
        .join(targets.select("order_id", "user_id"), on="order_id", how="inner")
        .select(
            pl.col("user_id").cast(pl.Int32),
            pl.col("product_id").cast(pl.Int32),
        )
        .unique()
        .sort("user_id", "product_id")
        .collect()
    )


def build_ratings(
    orders_imputed: Frame,
    order_products: Frame,
    *,
    half_life_days: float | None = None,
    min_user_interactions: int | None = None,
    min_item_interactions: int | None = None,
    back: int = 0,
    event_weights: dict[str, float] | None = None,
) -> pl.DataFrame:
    """Implicit-feedback ratings from the orders before each user's target.

    ``back=1`` builds them before the validation basket instead (see `_targets_lazy`).

    One row per (user, product) bought in the user's training orders
    (``order_number < target order_number``):

    * ``user_id`` Int32, ``product_id`` Int32
    * ``purchases`` Int32: number of training order lines of the product
      (= number of training orders containing it; an order lists a product once).
    * ``rating`` Float32: ``purchases`` when ``half_life_days`` is None, else
      ``sum over those purchases of 0.5 ** (days_before_target / half_life_days)``
      with ``days_before_target = target day - order day`` (so a purchase on the
      target's day weighs 1, one half-life earlier 0.5, ...), floored at the
      smallest positive normal Float32 (~1.2e-38) so it never underflows to 0.
    * ``last_day_before_target`` Int32: ``days_before_target`` of the most
      recent training purchase of the product (min over its purchases, rounded):
      how many days before the target the user last bought it.

    Filters (applied once, in this order, on the built pairs):

    1. item filter: keep products bought by ``>= min_item_interactions``
       distinct users;
    2. user filter: then keep users with ``>= min_user_interactions`` distinct
       products *among the remaining pairs*.

    A single pass is not a fixed point: after the user filter some items may
    fall below the item threshold again; we deliberately do not iterate.

    Defaults (None) are 1/1 (no filtering) for baskets: a grocery user with few
    orders still needs recommendations and every product in a basket is a real
    purchase. On the events form they are seed 003's 5/5: on sparse click/cart
    logs low-count visitors/items are mostly noise, and the visitors filtered
    out get the popular list (at RetailRocket's size the filter keeps the
    models to the visitors they can serve; it cost 0.0025 validation Recall@20,
    `benchmarks/results/2026-11-30-events_quality-v1407580.json`). Both
    thresholds stay configurable.

    Events form (module docstring): ``purchases`` counts the sessions with the item and
    ``rating`` sums ``event_weights`` (default view 1 / cart 4 / purchase 8) times the counts,
    decayed per session like purchases; ``event_weights`` is ignored on the other forms.

    Sorted by ``user_id, product_id``.
    """
    if half_life_days is not None and not half_life_days > 0:
        raise ValueError(f"half_life_days must be > 0 or None, got {half_life_days!r}")
    events = is_events_form(order_products)
    min_user_interactions, min_item_interactions = (
        default_filter(min_user_interactions, events), default_filter(min_item_interactions, events)
    )
    if min_user_interactions < 1 or min_item_interactions < 1:
        raise ValueError("min_user_interactions and min_item_interactions must be >= 1")

    weights = check_weights(event_weights if event_weights is not None else DEFAULT_WEIGHTS) if events else None
    train_orders = _training_orders(orders_imputed, order_products, back, events)
    lines = (
        _lazy(order_products)
        .select("order_id", "product_id", *(COUNT_OF_EVENT.values() if events else ()))
        .join(train_orders, on="order_id", how="inner")
    )
    # a line's value: 1 purchase, or its weighted event counts
    value = sum(pl.col(c).cast(pl.Float64) * weights[e] for e, c in COUNT_OF_EVENT.items()) if events else pl.lit(1.0)
    if half_life_days is not None:
        # 0.5 ** (d / h) == exp(-d * ln2 / h), per line before the group_by: the aggregation stays a sum
        value = value * (pl.col("_dbt").cast(pl.Float64) * (-math.log(2.0) / half_life_days)).exp()
    if half_life_days is None and not events:
        rating = pl.len().cast(pl.Float32)
    else:
        lines = lines.with_columns(_w=value)
        # floor: very old purchases with a short half-life would underflow
        # Float32 to 0, and every bought pair must stay a positive signal
        rating = pl.col("_w").sum().clip(lower_bound=_F32_TINY).cast(pl.Float32)

    # group on one Int64 key that sorts like (user_id, product_id):
    # user * 2**32 + (product + 2**31) is order-preserving for any Int32 ids
    pair_key = pl.col("user_id").cast(pl.Int64) * _SHIFT + (
        pl.col("product_id").cast(pl.Int64) + _OFFSET
    )
    pairs = (
        lines.group_by(pair_key.alias("_key"))
        .agg(
            purchases=pl.len().cast(pl.Int32),
            rating=rating,
            last_day_before_target=pl.col("_dbt").min().round(0).cast(pl.Int32),
        )
        .with_columns(user_id=pl.col("_key").floordiv(_SHIFT))
        .with_columns(
            product_id=pl.col("_key") - pl.col("user_id") * _SHIFT - _OFFSET
        )
    )

    # one row per pair, so row counts are distinct users / distinct products.
    # Materialise the pairs once: the filters below read them twice each.
    if min_item_interactions > 1 or min_user_interactions > 1:
        pairs = pairs.collect().lazy()
    if min_item_interactions > 1:
        keep_items = (
            pairs.group_by("product_id")
            .agg(_n=pl.len())
            .filter(pl.col("_n") >= min_item_interactions)
            .select("product_id")
        )
        pairs = pairs.join(keep_items, on="product_id", how="semi")
    if min_user_interactions > 1:
        keep_users = (
            pairs.group_by("user_id")
            .agg(_n=pl.len())
            .filter(pl.col("_n") >= min_user_interactions)
            .select("user_id")
        )
        pairs = pairs.join(keep_users, on="user_id", how="semi")

    return (
        pairs.select(
            pl.col("user_id").cast(pl.Int32),
            pl.col("product_id").cast(pl.Int32),
            "purchases",
            "rating",
            "last_day_before_target",
            "_key",
        )
        .sort("_key")
        .drop("_key")
        .collect()
    )


EVENTS_MIN_INTERACTIONS = 5  # seed 003's filters, the events form's default


def default_filter(value: int | None, events: bool) -> int:
    """A minimum-interactions setting: as given, else the form's default."""
    return value if value is not None else (EVENTS_MIN_INTERACTIONS if events else 1)


def _training_orders(orders_imputed: Frame, order_products: Frame, back: int, events: bool) -> pl.LazyFrame:
    """``order_id, user_id, _dbt`` (days before the target) of the orders ratings learn from."""
    days = _order_days_lazy(orders_imputed)
    if events and back == 0:  # every session is before the cut-off; days before the visitor's last
        return days.filter(pl.col("eval_set") != "train").select(
            "order_id", "user_id", (pl.col("day").max().over("user_id") - pl.col("day")).alias("_dbt")
        )
    targets = _targets_lazy(days, order_products, back).select(
        "user_id",
        pl.col("order_number").alias("_t_number"),
        pl.col("day").alias("_t_day"),
    )
    return (
        days.join(targets, on="user_id", how="inner")
        .filter(pl.col("order_number") < pl.col("_t_number"))
        .select(
            "order_id",
            "user_id",
            (pl.col("_t_day") - pl.col("day")).clip(lower_bound=0.0).alias("_dbt"),
        )
    )


def training_baskets(orders_imputed: Frame, order_products: Frame, *, back: int = 0) -> pl.DataFrame:
    """The baskets before each user's target (``back=1``: before the validation basket).

    ``user_id, order_number, product_id`` (Int32, Int16, Int32), one row per distinct product of
    each training order, sorted by ``user_id, order_number, product_id``: what a basket model
    (e.g. TIFU-KNN) learns from, the same window as `build_ratings`.
    """
    days = _order_days_lazy(orders_imputed)
    if back == 0 and is_events_form(order_products):  # every visitor's sessions, as for ratings
        orders = days.filter(pl.col("eval_set") != "train").select("order_id", "user_id", "order_number")
    else:
        targets = _targets_lazy(days, order_products, back).select("user_id", pl.col("order_number").alias("_t"))
        orders = (
            days.join(targets, on="user_id", how="inner")
            .filter(pl.col("order_number") < pl.col("_t"))
            .select("order_id", "user_id", "order_number")
        )
    return (
        _lazy(order_products)
        .select("order_id", "product_id")
        .join(orders, on="order_id", how="inner")
        .select(
            pl.col("user_id").cast(pl.Int32),
            pl.col("order_number").cast(pl.Int16),
            pl.col("product_id").cast(pl.Int32),
        )
        .unique()
        .sort("user_id", "order_number", "product_id")
        .collect()
    )
