"""RFM analysis charts: cluster profiles, users in PCA space, per-segment lift products.

Pure functions (no Dagster, no storage). Tables may be polars (Data/Lazy)Frames or pandas
DataFrames; they are read with polars.

* ``user_seg``: user_id, recency_days, frequency, monetary, r_z, f_z, m_z, segment, segment_label, hv
* ``centroids``: segment, segment_label, users, share, r_z, f_z, m_z, ...
* ``segment_popularity``: segment, product_id, buyers, purchases, share, overall_share, lift, rank
* ``products``: product_id, product_name, aisle, department

The z-scores are oriented so that higher is better (``r_z`` is the z-score of *negated*
recency upstream). Figures are standalone ``matplotlib.figure.Figure`` objects on an Agg
canvas at 100 dpi, cleared before returning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import polars as pl
from matplotlib.lines import Line2D

from insightflow_assets.charts.eval_trends import new_figure, render_png

__all__ = [
    "RFM_FILES",
    "cluster_profiles",
    "pca_segments",
    "seg_pop_lift",
    "top_lift_products",
    "lift_min_buyers",
    "publish_rfm_charts",
]

DPI = 100
RFM_FILES = ("cluster_profiles.png", "pca_segments.png", "seg_pop_lift.png")
Z_COLS = ("r_z", "f_z", "m_z")
Z_LABELS = {"r_z": "recency (r_z)", "f_z": "frequency (f_z)", "m_z": "monetary (m_z)"}
Z_COLORS = {"r_z": "#1f77b4", "f_z": "#2ca02c", "m_z": "#d62728"}
NAME_MAX = 32
MIN_BUYERS_FLOOR = 3
MIN_BUYERS_SHARE = 0.01


# --- helpers -----------------------------------------------------------------------------


def _pl(frame: Any) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    return pl.from_pandas(frame) if hasattr(frame, "iloc") else pl.DataFrame(frame)


def _segment_color(segment: int):
    from matplotlib import colormaps

    return colormaps["tab10"](int(segment) % 10)


def _truncate(name: str, n: int = NAME_MAX) -> str:
    name = " ".join(str(name).split())
    return name if len(name) <= n else name[: n - 1].rstrip() + "…"


def _pct(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 or share == 0 else f"{share:.1%}"


def _labels_from(frame: pl.DataFrame) -> dict[int, str]:
    """segment → segment_label from any table carrying both columns."""
    if "segment" not in frame.columns or "segment_label" not in frame.columns:
        return {}
    pairs = frame.select("segment", "segment_label").unique(subset="segment", keep="first").drop_nulls("segment")
    return {int(s): str(lbl) for s, lbl in pairs.iter_rows()}


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="#666666")


# --- cluster profiles --------------------------------------------------------------------


def cluster_profiles(centroids: Any) -> bytes:
    """PNG grouped bars of each segment's centroid r_z / f_z / m_z.

    x labels ``"0 · champions (12%)"`` (share of users; computed from ``users`` when ``share``
    is absent), a zero line, value on every bar.
    """
    c = _pl(centroids).sort("segment")
    segs = c["segment"].to_list()
    labels = c["segment_label"].to_list() if "segment_label" in c.columns else [f"segment {s}" for s in segs]
    if "share" in c.columns:
        shares = [None if v is None else float(v) for v in c["share"].to_list()]
    elif "users" in c.columns and c["users"].sum():
        total = float(c["users"].sum())
        shares = [float(u) / total for u in c["users"].to_list()]
    else:
        shares = [None] * len(segs)
    xlabels = [
        f"{s} · {lbl}" + (f" ({_pct(sh)})" if sh is not None and math.isfinite(sh) else "")
        for s, lbl, sh in zip(segs, labels, shares)
    ]

    fig = new_figure(max(8.0, 1.7 * len(segs) + 2.5), 5.2)
    try:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(segs))
        width = 0.26
        for i, col in enumerate(Z_COLS):
            vals = np.array([np.nan if v is None else float(v) for v in c[col].to_list()], dtype=float)
            bars = ax.bar(x + (i - 1) * width, vals, width * 0.95, label=Z_LABELS[col], color=Z_COLORS[col])
            ax.bar_label(bars, labels=[f"{v:+.2f}" if np.isfinite(v) else "" for v in vals], padding=2, fontsize=7)
        if not segs:
            _no_data(ax, "no segments")
        ax.axhline(0, color="black", linewidth=0.9)
        ax.set_xticks(x, xlabels, rotation=15 if len(segs) > 5 else 0, ha="right" if len(segs) > 5 else "center")
        ax.margins(y=0.15)
        ax.set_xlabel("segment · label (share of users)")
        ax.set_ylabel("z-score (higher is better)")
        ax.set_title("RFM cluster profiles: centroid z-scores per segment")
        ax.legend(loc="best", frameon=False, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        fig.tight_layout()
        return render_png(fig)
    finally:
        fig.clear()


# --- PCA scatter -------------------------------------------------------------------------


def pca_segments(user_seg: Any, sample: int = 50_000, seed: int = 42) -> bytes:
    """PNG scatter of users on the first two principal components of (r_z, f_z, m_z).

    PCA (scikit-learn, centred, unscaled: the inputs are z-scores already) is fitted on every
    user with finite z-scores; a seeded random sample of ``sample`` users is drawn (all users
    when fewer), coloured by segment. Segment means are marked with a black-edged ✕. Axis
    labels carry the explained variance.
    """
    from sklearn.decomposition import PCA

    df = _pl(user_seg)
    df = df.select("segment", *Z_COLS, *(["segment_label"] if "segment_label" in df.columns else []))
    labels = _labels_from(df)
    z = df.select(Z_COLS).to_numpy().astype(float)
    ok = np.isfinite(z).all(axis=1) & df["segment"].is_not_null().to_numpy()
    z, seg = z[ok], df["segment"].to_numpy()[ok].astype(int)
    n = len(z)

    fig = new_figure(10.5, 6.6)
    try:
        ax = fig.add_subplot(1, 1, 1)
        if n < 3:
            _no_data(ax, f"not enough users for PCA ({n})")
            ax.set_title("Users in RFM space (PCA)")
            fig.tight_layout()
            return render_png(fig)
        pca = PCA(n_components=2, random_state=seed).fit(z)
        evr = pca.explained_variance_ratio_
        idx = np.arange(n)
        if sample is not None and 0 < sample < n:
            idx = np.sort(np.random.default_rng(seed).choice(n, size=int(sample), replace=False))
        xy = pca.transform(z[idx])
        s_seg = seg[idx]
        size = 4.0 if len(idx) > 20_000 else 8.0 if len(idx) > 2_000 else 16.0
        handles = []
        for s in sorted(np.unique(seg)):
            color = _segment_color(s)
            m = s_seg == s
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=color, alpha=0.35, linewidths=0, rasterized=True)
            centre = pca.transform(z[seg == s].mean(axis=0, keepdims=True))[0]
            ax.scatter([centre[0]], [centre[1]], s=140, marker="X", color=color, edgecolors="black", linewidths=1.2, zorder=5)
            share = (seg == s).mean()
            handles.append(
                Line2D([], [], marker="o", linestyle="", color=color, markersize=8,
                       label=f"{s} · {labels.get(int(s), f'segment {s}')} ({_pct(share)})")
            )
        handles.append(Line2D([], [], marker="X", linestyle="", color="white", markeredgecolor="black",
                              markersize=10, label="segment mean"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=True, framealpha=0.85, fontsize=9, title="segment")
        ax.axhline(0, color="#999999", linewidth=0.6)
        ax.axvline(0, color="#999999", linewidth=0.6)
        ax.set_xlabel(f"PC1 ({evr[0]:.1%} of variance)")
        ax.set_ylabel(f"PC2 ({evr[1]:.1%} of variance)")
        shown = f"{len(idx):,} of {n:,} users" if len(idx) < n else f"all {n:,} users"
        ax.set_title(f"Users in RFM z-space, PCA of (r_z, f_z, m_z): {shown} (seed {seed})")
        ax.grid(True, alpha=0.25)
        ax.set_axisbelow(True)
        fig.tight_layout()
        return render_png(fig)
    finally:
        fig.clear()


# --- segment lift ------------------------------------------------------------------------


def lift_min_buyers(segment_users: float | None, fallback_buyers: float = 0) -> int:
    """The support a product needs in a segment to be shown: max(3, ceil(1% of the segment's users)).

    Without the segment size, ``fallback_buyers`` (the segment's most-bought product's buyers,
    a lower bound of the segment's buyers) stands in for it.
    """
    base = segment_users if segment_users is not None else fallback_buyers
    return max(MIN_BUYERS_FLOOR, math.ceil(MIN_BUYERS_SHARE * float(base or 0)))


def top_lift_products(
    segment_popularity: Any,
    products: Any,
    top: int = 5,
    min_buyers: int | None = None,
    *,
    segment_users: Mapping[int, float] | None = None,
) -> tuple[pl.DataFrame, dict[int, int]]:
    """Each segment's ``top`` highest-lift products among those with enough buyers.

    Support rule: a product is eligible in a segment when ``buyers >= need``, where ``need`` is
    ``min_buyers`` when given, else ``lift_min_buyers(segment_users[segment])`` =
    max(3, ceil(1% of the segment's users)); without ``segment_users``, 1% of the segment's
    most-bought product's buyers stands in for the segment size. Rows with a non-finite lift
    are dropped. Ties: more buyers first, then lower product_id.

    Returns ``(rows, need)``: rows (segment, product_id, product_name, buyers, lift, position)
    sorted by segment then position (1 = highest lift; ``product_name`` null when unknown), and
    the threshold used per segment (every segment of ``segment_popularity`` and ``segment_users``).
    """
    sp = _pl(segment_popularity)
    prods = _pl(products).select("product_id", "product_name")
    sp = (
        sp.select("segment", "product_id", "buyers", "lift")
        .with_columns(
            pl.col("segment").cast(pl.Int64), pl.col("product_id").cast(pl.Int64),
            pl.col("lift").cast(pl.Float64), pl.col("buyers").cast(pl.Float64),
        )
        .filter(pl.col("lift").is_finite() & pl.col("segment").is_not_null() & pl.col("buyers").is_not_null())
    )
    segs = {int(s) for s in sp["segment"].unique().to_list()} | {int(s) for s in (segment_users or {})}
    need: dict[int, int] = {}
    for s in sorted(segs):
        if min_buyers is not None:
            need[s] = int(min_buyers)
        else:
            rows = sp.filter(pl.col("segment") == s)
            need[s] = lift_min_buyers((segment_users or {}).get(s), rows["buyers"].max() if rows.height else 0)
    thresholds = pl.DataFrame({"segment": list(need), "need": list(need.values())}, schema={"segment": pl.Int64, "need": pl.Float64})
    best = (
        sp.join(thresholds, on="segment", how="inner")
        .filter(pl.col("buyers") >= pl.col("need"))
        .sort(["segment", "lift", "buyers", "product_id"], descending=[False, True, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over("segment").alias("position"))
        .filter(pl.col("position") <= top)
        .join(prods.with_columns(pl.col("product_id").cast(pl.Int64)).unique("product_id", keep="first"),
              on="product_id", how="left")
        .select("segment", "product_id", "product_name", pl.col("buyers").cast(pl.Int64), "lift", "position")
        .sort("segment", "position")
    )
    return best, need


def seg_pop_lift(
    segment_popularity: Any,
    products: Any,
    top: int = 5,
    min_buyers: int | None = None,
    *,
    segment_users: Mapping[int, float] | None = None,
    segment_labels: Mapping[int, str] | None = None,
) -> bytes:
    """PNG of each segment's ``top`` highest-lift products, one horizontal-bar subplot per segment.

    Products are chosen by `top_lift_products` (support: ``buyers >= max(3, ceil(1% of the
    segment's users))`` by default, see there), named from ``products`` (truncated to 32
    characters; ``product <id>`` when unknown); each bar says ``lift× · buyers``. Subplots are
    titled ``"<segment> · <label>"`` from ``segment_labels`` (else a ``segment_label`` column of
    ``segment_popularity``, else ``segment <n>``).
    """
    sp = _pl(segment_popularity)
    labels = dict(segment_labels or {}) or _labels_from(sp)
    best, need = top_lift_products(sp, products, top, min_buyers, segment_users=segment_users)
    segs = sorted(need)

    ncols = 1 if len(segs) <= 1 else 2 if len(segs) <= 6 else 3
    nrows = max(1, math.ceil(len(segs) / ncols))
    fig = new_figure(6.6 * ncols, 0.6 + 0.42 * max(top, 3) * nrows + 0.9 * nrows)
    try:
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(segs):]:
            ax.set_visible(False)
        if not segs:
            axes[0].set_visible(True)
            _no_data(axes[0], "no segment popularity rows")
        for ax, s in zip(axes, segs):
            rows = best.filter(pl.col("segment") == s)
            label = labels.get(s, f"segment {s}")
            ax.set_title(f"{s} · {label}  (products with ≥ {need[s]:,} buyers)", fontsize=10)
            ax.set_xlabel("lift (share in segment / share overall)")
            if rows.height == 0:
                ax.set_yticks([])
                ax.set_xticks([])
                _no_data(ax, f"no product with ≥ {need[s]:,} buyers")
                continue
            names = [
                _truncate(n) if n is not None else f"product {pid}"
                for pid, n in zip(rows["product_id"].to_list(), rows["product_name"].to_list())
            ]
            lifts = rows["lift"].to_numpy()
            y = np.arange(rows.height)
            bars = ax.barh(y, lifts, color=_segment_color(s), alpha=0.85)
            ax.bar_label(
                bars,
                labels=[f"{lv:.2f}× · {b:,} buyers" for lv, b in zip(lifts, rows["buyers"].to_list())],
                padding=3, fontsize=8,
            )
            ax.set_yticks(y, names, fontsize=9)
            ax.invert_yaxis()
            ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
            ax.set_xlim(0, max(float(lifts.max()), 1.0) * 1.45)
            ax.grid(axis="x", alpha=0.3)
            ax.set_axisbelow(True)
        fig.suptitle(f"Top {top} products by lift per segment (dotted line: lift 1 = no preference)", fontsize=12)
        fig.tight_layout()
        return render_png(fig)
    finally:
        fig.clear()


# --- publish -----------------------------------------------------------------------------


def publish_rfm_charts(
    user_seg: Any,
    centroids: Any,
    segment_popularity: Any,
    products: Any,
    *,
    run_key: str,
    params: dict,
    pca_sample: int = 50_000,
    seed: int = 42,
) -> tuple[dict[str, bytes], dict]:
    """The three RFM charts and their ``index.json`` content.

    Returns ``(files, index)`` with files ``cluster_profiles.png``, ``pca_segments.png``,
    ``seg_pop_lift.png`` and ``index = {"run_key", "files", "params", "generated_at_utc"}``;
    ``params`` is the caller's dict plus the ``pca_sample`` and ``seed`` actually used.
    Segment sizes and labels for the lift chart come from ``centroids``.
    """
    c = _pl(centroids)
    segment_users = (
        {int(s): float(u) for s, u in c.select("segment", "users").iter_rows() if u is not None}
        if "users" in c.columns
        else None
    )
    labels = _labels_from(c) or _labels_from(_pl(user_seg))
    files = {
        "cluster_profiles.png": cluster_profiles(c),
        "pca_segments.png": pca_segments(user_seg, sample=pca_sample, seed=seed),
        "seg_pop_lift.png": seg_pop_lift(
            segment_popularity, products, segment_users=segment_users, segment_labels=labels
        ),
    }
    index = {
        "run_key": run_key,
        "files": list(files),
        "params": {**dict(params or {}), "pca_sample": pca_sample, "seed": seed},
        "generated_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return files, index
