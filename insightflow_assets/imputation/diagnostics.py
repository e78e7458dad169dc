"""Diagnostics of the MICE stage (pure functions, no Dagster).

* :func:`day30_stats` -- how much of the data sits at Instacart's 30-day gap
  cap and in the last 30 days of each user's history, before/after imputation;
* :func:`mask_and_recover` -- hide known values, impute them, and compare MICE's
  predictive mean with mean and median imputation on the hidden truth;
* :func:`plot_day30` -- PNG bar chart of the day-30 statistics before vs after.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import polars as pl

from insightflow_assets.imputation.mice import GAP, KEY_FIELDS, POINT_ESTIMATE, impute_orders

#: Instacart caps ``days_since_prior_order`` at 30 ("30 or more days").
GAP_CAP = 30.0


def _first_order_expr(features: pl.DataFrame) -> pl.Expr:
    if "is_first_order" in features.columns:
        return pl.col("is_first_order").fill_null(False)
    return pl.col("order_number") == 1


def day30_stats(features: pl.DataFrame) -> dict[str, Any]:
    """Day-30 statistics of the inter-order gap.

    Definitions (first orders never have a gap and are not counted as gaps):

    ``day30_share``
        Among non-first orders with a known ``days_since_prior_order``, the
        share whose gap equals 30, Instacart's cap (30 means "30 days or
        more").  Counts: ``n_gap_orders`` (denominator), ``n_day30``.

    ``last30_share``
        For each user, order the history by ``order_number`` and compute for
        every order the days from it to the user's last order (sum of the gaps
        of the orders after it).  The user's share is the fraction of their
        orders (first order included) that lie within the last 30 days of the
        history (days-to-end <= 30).  ``last30_share`` is the mean of that
        share over the users whose non-first gaps are all known; users with any
        missing non-first gap (possible before imputation) are excluded.
        Because capped gaps of 30 may really be longer, days-to-end is a lower
        bound and ``last30_share`` an upper bound of the true share.
        Counts: ``n_users`` (all), ``n_users_used``, ``n_users_excluded``.
    """
    first = _first_order_expr(features)
    gap = pl.col(GAP).cast(pl.Float64).fill_nan(None)
    lf = features.lazy().select(
        "user_id", "order_number", first.alias("_first"), gap.alias("_gap")
    )

    orders = (
        lf.filter(~pl.col("_first") & pl.col("_gap").is_not_null())
        .select(
            pl.len().alias("n_gap_orders"),
            (pl.col("_gap") == GAP_CAP).sum().alias("n_day30"),
        )
        .collect()
    )
    n_gap_orders = int(orders["n_gap_orders"][0])
    n_day30 = int(orders["n_day30"][0] or 0)

    per_user = (
        lf.sort("user_id", "order_number")
        .with_columns(
            (pl.col("_gap").is_null() & ~pl.col("_first")).alias("_missing"),
            pl.when(pl.col("_first")).then(0.0).otherwise(pl.col("_gap")).alias("_g"),
        )
        .with_columns(
            (
                pl.col("_g").sum().over("user_id") - pl.col("_g").cum_sum().over("user_id")
            ).alias("_to_end")
        )
        .group_by("user_id")
        .agg(
            pl.col("_missing").any().alias("excluded"),
            (pl.col("_to_end") <= GAP_CAP).mean().alias("share"),
        )
        .collect()
    )
    used = per_user.filter(~pl.col("excluded"))
    n_users = per_user.height
    n_used = used.height
    return {
        "day30_share": (n_day30 / n_gap_orders) if n_gap_orders else float("nan"),
        "n_gap_orders": n_gap_orders,
        "n_day30": n_day30,
        "last30_share": float(used["share"].mean()) if n_used else float("nan"),
        "n_users": n_users,
        "n_users_used": n_used,
        "n_users_excluded": n_users - n_used,
    }


#: What each method of :func:`mask_and_recover` predicts for a hidden cell (all point estimates).
ESTIMATORS = {
    "mice": POINT_ESTIMATE,
    "mean": "mean of the field's values still known in the masked frame, rounded",
    "median": "median of the field's values still known in the masked frame, rounded",
}


def _errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = pred.astype(np.float64) - truth.astype(np.float64)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
    }


def _mask(
    features: pl.DataFrame, fraction: float, seed: int
) -> tuple[pl.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Hide ``fraction`` of each field's known values: (masked frame, picked rows, truth)."""
    rng = np.random.default_rng(seed)
    first = features.select(_first_order_expr(features)).to_series().to_numpy()
    picks: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    masked_cols = []
    for col in KEY_FIELDS:
        values = features[col].cast(pl.Float64).fill_nan(None)
        known = values.is_not_null().to_numpy()
        if col == GAP:
            known &= ~first
        idx = np.flatnonzero(known)  # empty for a never-observed field: nothing to mask
        k = int(round(fraction * idx.size))
        pick = np.sort(rng.choice(idx, size=k, replace=False)) if k else idx[:0]
        picks[col] = pick
        truth[col] = values.to_numpy()[pick]
        hide = np.zeros(features.height, dtype=bool)
        hide[pick] = True
        masked_cols.append(
            pl.when(pl.Series(hide)).then(None).otherwise(pl.col(col)).alias(col)
        )
    return features.with_columns(masked_cols), picks, truth


def _score(
    col: str, pick: np.ndarray, y: np.ndarray, masked: pl.DataFrame, imputed: pl.DataFrame
) -> dict[str, Any]:
    """RMSE/MAE of MICE, mean and median on one field's hidden cells (NaN when none)."""
    nan = {"rmse": float("nan"), "mae": float("nan")}
    if pick.size == 0:
        scores = {m: dict(nan) for m in ESTIMATORS}
    else:
        remaining = masked[col].cast(pl.Float64).fill_nan(None).drop_nulls()
        # a field whose every known value got hidden has no baseline: NaN, not a crash
        mean = float(np.rint(remaining.mean())) if remaining.len() else float("nan")
        median = float(np.rint(remaining.median())) if remaining.len() else float("nan")
        mice = imputed[col].cast(pl.Float64).fill_null(float("nan")).to_numpy()[pick]
        scores = {
            "mice": _errors(mice, y),
            "mean": _errors(np.full(y.shape, mean), y),
            "median": _errors(np.full(y.shape, median), y),
        }
    for m, label in ESTIMATORS.items():
        scores[m]["estimator"] = label
    return {**scores, "n_masked": int(pick.size)}


def mask_and_recover(
    features: pl.DataFrame,
    *,
    fraction: float = 0.1,
    seed: int = 42,
    **impute_kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Mask-and-recover validation of :func:`impute_orders`.

    For each key field, hide ``fraction`` of its *known* values (chosen at
    random with ``numpy.random.default_rng(seed)``, independently per field;
    for ``days_since_prior_order`` only non-first orders are eligible, the
    first-order null being structural), run ``impute_orders`` on the masked
    frame and score the recovered values against the hidden truth.

    Like is compared with like: MICE runs with ``point_estimate=True`` (the
    chained model's predictive mean, ``sample_posterior=False``, one
    imputation; same strata, context and fit sample; ``seed`` and
    ``impute_kwargs`` are passed through, ``n_imputations`` is then moot),
    and the baselines are point predictions too: the mean and the median of
    the field's values still known in the masked frame, rounded to an integer
    like the MICE output, applied to every hidden cell.  Scoring the stored
    pooled posterior draws instead would count the draw noise against MICE.

    Returns ``{field: {"mice": {"rmse", "mae", "estimator"}, "mean": {...},
    "median": {...}, "n_masked": n}}`` (``estimator`` says what was scored,
    see ``ESTIMATORS``); metrics are NaN when nothing could be masked, e.g. a
    field that is never observed.  Deterministic for a given ``seed``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    masked, picks, truth = _mask(features, fraction, seed)
    imputed, _ = impute_orders(masked, seed=seed, point_estimate=True, **impute_kwargs)
    return {col: _score(col, picks[col], truth[col], masked, imputed) for col in KEY_FIELDS}


def plot_day30(before: dict[str, Any], after: dict[str, Any]) -> bytes:
    """PNG bar chart of ``day30_share`` and ``last30_share`` before vs after.

    Grouped bars (one group per statistic, one bar per stage) with the value in
    percent on every bar; the legend shows how many users entered
    ``last30_share`` at each stage.  Drawn on a standalone Agg figure (no
    pyplot global state), which is cleared and released before returning.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [("day30_share", "Gap at 30-day cap"), ("last30_share", "Orders in user's last 30 days")]
    stages = [
        ("Before imputation", before, "#9e9e9e"),
        ("After MICE", after, "#1f77b4"),
    ]
    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    canvas = FigureCanvasAgg(fig)
    try:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(metrics))
        width = 0.36
        top = 0.0
        for i, (label, stats, color) in enumerate(stages):
            vals = [100.0 * float(stats.get(key, float("nan"))) for key, _ in metrics]
            users = stats.get("n_users_used")
            if users is not None:
                label = f"{label} ({users:,} users)"
            bars = ax.bar(x + (i - 0.5) * width, vals, width, label=label, color=color)
            ax.bar_label(bars, labels=[f"{v:.1f}%" for v in vals], padding=3, fontsize=9)
            top = max([top] + [v for v in vals if np.isfinite(v)])
        ax.set_xticks(x, [name for _, name in metrics])
        ax.set_ylabel("Share (%)")
        ax.set_xlabel("Statistic")
        ax.set_ylim(0, max(10.0, top * 1.18))
        ax.set_title("Day-30 statistics before vs after MICE imputation")
        ax.legend(loc="upper left", frameon=False)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        fig.tight_layout()
        buf = io.BytesIO()
        canvas.print_png(buf)
        return buf.getvalue()
    finally:
        fig.clear()
