"""Ratings and the cut-off split of the events form (pure polars, no Dagster).

Input: the ``events`` frame of `ingest.events.EventsSnapshot` (``ts`` UTC datetime,
``visitor_id``, ``event`` ∈ view / addtocart / transaction, ``item_id``, ...).

**Ratings** (`event_ratings`), in the schema of `ratings.build.build_ratings` so every recommender
reads them unchanged (``user_id`` = visitor, ``product_id`` = item):

* ``rating`` Float32 = sum over the pair's events of ``weights[event]`` (peer defaults view 1,
  add-to-cart 4, purchase 8), each times ``0.5 ** (age_days / half_life_days)`` when a half-life
  is set, the age measured to ``reference_time`` (the cut-off);
* ``purchases`` Int32 = the pair's events of positive weight: the interaction count the
  frequency baselines rank by (the name is the shared schema's; here it counts every kind);
* ``last_day_before_target`` Int32 = whole days from the pair's last event to the reference;
* ``views``, ``addtocarts``, ``transactions`` Int32: the pair's events per kind.

Event kinds missing from ``weights`` weigh 0, and events of weight 0 are dropped before anything
is counted, so ``{"transaction": 1}`` gives purchase-only ratings.

Filters as the peer applies them (seed 003, ``build_interactions``): **one pass**, both counts
taken on the aggregated pairs *before* either filter (distinct items per visitor, distinct
visitors per item), and a pair kept when both pass. Not iterated: after the pass some items may
have fewer than ``min_item_interactions`` visitors left. Defaults 1/1 (no filter); the peer
runs 5/5.

**Split** (`cutoff_split`): training = every event strictly before the cut-off; the target of a
visitor = the distinct items they add to the cart or buy in ``[cutoff, end)`` (what the peer
optimises; a view after the cut-off is not a target). Default cut-off as the peer's validation
chooses it: the last ``holdout_share`` (15 %) of the log's time span. Visitors with a target but
no training event are **cold**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping

import polars as pl

from insightflow_assets.ingest.events import EVENT_TYPES, as_utc
from insightflow_assets.frames import F32_TINY as _F32_TINY

__all__ = [
    "DEFAULT_WEIGHTS", "TARGET_EVENTS", "CutoffSplit", "event_ratings", "cutoff_split", "split_cutoff",
    "check_weights", "reference_of",
]  # fmt: skip

DEFAULT_WEIGHTS: dict[str, float] = {"view": 1.0, "addtocart": 4.0, "transaction": 8.0}
TARGET_EVENTS = ("addtocart", "transaction")
_INT32_MAX = 2**31 - 1
MS_PER_DAY = 86_400_000


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The weights as floats for every event kind (missing kinds 0); a bad one is a ValueError."""
    unknown = [k for k in weights if k not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"weights: unknown event type {unknown[0]!r} (known: {', '.join(EVENT_TYPES)})")
    out = {t: float(weights.get(t, 0.0)) for t in EVENT_TYPES}
    bad = [t for t, w in out.items() if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"weights.{bad[0]}: must be a finite number >= 0, got {weights[bad[0]]!r}")
    if not any(out.values()):
        raise ValueError("weights: every event type weighs 0, no event would count")
    return out


def _check_ids(events: pl.DataFrame) -> None:
    # the shared ratings/recs schema holds ids as Int32
    for col in ("visitor_id", "item_id"):
        lo, hi = events[col].min(), events[col].max()
        if lo is not None and (lo < 0 or hi > _INT32_MAX):
            bad = lo if lo < 0 else hi
            raise ValueError(f"events: column {col}: id {bad} is outside 0..{_INT32_MAX}")


def reference_of(events: pl.DataFrame, reference_time: datetime | int | None) -> datetime:
    """Where ages are measured to: ``reference_time`` (UTC), else the latest event; a reference
    before the latest event is a ValueError (ages would be negative)."""
    latest = events["ts"].max()
    if latest is None:
        raise ValueError("events: the table is empty")
    if reference_time is None:
        return latest
    ref = as_utc(reference_time)
    if ref < latest:
        raise ValueError(f"reference_time {ref} is before the latest event {latest}: ages would be negative")
    return ref


def event_ratings(
    events: pl.DataFrame,
    *,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    half_life_days: float | None = None,
    reference_time: datetime | int | None = None,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
) -> pl.DataFrame:
    """Weighted (optionally decayed) ratings per (visitor, item), filtered (module docstring).

    ``reference_time``: where ages are measured to (default: the latest event; pass the
    cut-off). Sorted by ``user_id, product_id``.
    """
    w = check_weights(weights)
    if half_life_days is not None and not (isinstance(half_life_days, (int, float)) and half_life_days > 0):
        raise ValueError(f"half_life_days must be > 0 or None, got {half_life_days!r}")
    for name, value in (("min_user_interactions", min_user_interactions), ("min_item_interactions", min_item_interactions)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    _check_ids(events)
    ref = reference_of(events, reference_time)

    weight = pl.col("event").cast(pl.String).replace_strict(w, return_dtype=pl.Float64)
    age_days = (pl.lit(ref) - pl.col("ts")).dt.total_milliseconds().cast(pl.Float64) / MS_PER_DAY
    lf = events.lazy().select("visitor_id", "item_id", "event", _w=weight, _age=age_days).filter(pl.col("_w") > 0)
    if half_life_days is not None:
        # 0.5 ** (age / h) == exp(-age * ln2 / h)
        lf = lf.with_columns(_w=pl.col("_w") * (pl.col("_age") * (-math.log(2.0) / half_life_days)).exp())
    rating = pl.col("_w").sum()
    if half_life_days is not None:
        rating = rating.clip(lower_bound=_F32_TINY)
    kind = pl.col("event").cast(pl.String)
    pairs = (
        lf.group_by("visitor_id", "item_id")
        .agg(
            purchases=pl.len().cast(pl.Int32),
            rating=rating.cast(pl.Float32),
            last_day_before_target=pl.col("_age").min().floor().cast(pl.Int32),
            views=(kind == "view").sum().cast(pl.Int32),
            addtocarts=(kind == "addtocart").sum().cast(pl.Int32),
            transactions=(kind == "transaction").sum().cast(pl.Int32),
        )
        .collect()
    )
    pairs = _filter_pairs(pairs, min_user_interactions, min_item_interactions)
    return pairs.select(
        pl.col("visitor_id").cast(pl.Int32).alias("user_id"),
        pl.col("item_id").cast(pl.Int32).alias("product_id"),
        "purchases", "rating", "last_day_before_target", "views", "addtocarts", "transactions",
    ).sort("user_id", "product_id")  # fmt: skip


def _filter_pairs(pairs: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """The peer's one pass: both counts on the unfiltered pairs, a pair kept when both pass."""
    if min_user <= 1 and min_item <= 1:
        return pairs
    return pairs.filter(
        (pl.len().over("visitor_id") >= min_user) & (pl.len().over("item_id") >= min_item)
    )


# ---- the cut-off split ---------------------------------------------------------------------


@dataclass(frozen=True)
class CutoffSplit:
    """``train``: the events before ``cutoff`` (the input's columns); ``truth``: ``user_id,
    product_id`` (Int32) of the target events in ``[cutoff, end)``, distinct and sorted, the shape
    `evaluation.metrics.prepare_truth` reads; ``users``: ``user_id, cold`` for every visitor
    with a target (``cold``: no training event at all)."""

    train: pl.DataFrame
    truth: pl.DataFrame
    users: pl.DataFrame
    cutoff: datetime
    end: datetime

    @property
    def cold_share(self) -> float:
        return float(self.users["cold"].mean()) if self.users.height else 0.0


def split_cutoff(
    events: pl.DataFrame,
    cutoff: datetime | int | None = None,
    *,
    holdout_days: float | None = None,
    holdout_share: float = 0.15,
) -> tuple[datetime, datetime]:
    """(cutoff, end) of the holdout window.

    No ``cutoff``: the last ``holdout_days`` of the log, or without them its last
    ``holdout_share`` of the time span (the peer's rule), to its end. A given ``cutoff`` runs to
    ``cutoff + holdout_days`` (or to the end of the log without them).
    """
    if holdout_days is not None and not holdout_days > 0:
        raise ValueError(f"holdout_days must be > 0 or None, got {holdout_days!r}")
    if not 0 < holdout_share < 1:
        raise ValueError(f"holdout_share must be in (0, 1), got {holdout_share!r}")
    first, last = events["ts"].min(), events["ts"].max()
    if first is None:
        raise ValueError("events: the table is empty, no cut-off")
    end = last + timedelta(milliseconds=1)  # the window is half-open and holds the last event
    if cutoff is not None:
        start = as_utc(cutoff)
        if holdout_days is not None:
            end = min(end, start + timedelta(days=holdout_days))
        return start, end
    span = timedelta(days=holdout_days) if holdout_days is not None else (last - first) * holdout_share
    return last - span, end


def cutoff_split(
    events: pl.DataFrame,
    cutoff: datetime | int | None = None,
    *,
    holdout_days: float | None = None,
    holdout_share: float = 0.15,
    target_events: tuple[str, ...] = TARGET_EVENTS,
) -> CutoffSplit:
    """Training events before the cut-off and each visitor's target after it (module docstring).

    A cut-off that leaves no training event or no target is a ValueError.
    """
    unknown = [t for t in target_events if t not in EVENT_TYPES]
    if unknown or not target_events:
        raise ValueError(f"target_events: unknown event type {unknown[0] if unknown else None!r}")
    _check_ids(events)
    start, end = split_cutoff(events, cutoff, holdout_days=holdout_days, holdout_share=holdout_share)
    train = events.filter(pl.col("ts") < start)
    truth = (
        events.lazy()
        .filter((pl.col("ts") >= start) & (pl.col("ts") < end) & pl.col("event").cast(pl.String).is_in(target_events))
        .select(pl.col("visitor_id").cast(pl.Int32).alias("user_id"), pl.col("item_id").cast(pl.Int32).alias("product_id"))
        .unique()
        .sort("user_id", "product_id")
        .collect()
    )
    if train.height == 0:
        raise ValueError(f"cut-off {start}: no event before it, nothing to train on")
    if truth.height == 0:
        raise ValueError(f"cut-off {start}: no {' or '.join(target_events)} event in [{start}, {end}), nothing to evaluate")
    seen = train.select(pl.col("visitor_id").cast(pl.Int32).alias("user_id")).unique()
    users = (
        truth.select("user_id").unique()
        .join(seen.with_columns(cold=pl.lit(False)), on="user_id", how="left")
        .select("user_id", pl.col("cold").fill_null(True))
        .sort("user_id")
    )  # fmt: skip
    return CutoffSplit(train, truth, users, start, end)
