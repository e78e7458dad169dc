"""Evaluation charts across runs: metric trends per method and the current run's bar chart.

Pure functions (no Dagster, no storage): the caller reads every run's evaluation files and
passes them in as ``runs``::

    {"run-20261122-020646": {"als": metrics_json, "als_coverage": coverage_json,
                             "postrank": metrics_json, "postrank_coverage": coverage_json}}

where any value may be ``None`` (file missing) or an ``Exception`` instance (file unreadable).
A run is charted only if its ALS ``metrics.json`` is a readable object with an ``"als"``
section; every other run becomes a warning string, never an exception.

Runs are ordered by ``finished_at_utc`` (ISO 8601; naive stamps are read as UTC), falling back
to the timestamp in the run key (``run-YYYYMMDD-HHMMSS``, UTC) when it is missing or
unparsable, ties broken by run key: the seed's "sort by finished_at_utc with fallback".

Figures are standalone ``matplotlib.figure.Figure`` objects on an Agg canvas (no pyplot global
state, safe in threads), rendered at 100 dpi and cleared before returning.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "TREND_METRICS",
    "TREND_FILES",
    "BAR_FILE",
    "order_runs",
    "trend_series",
    "trend_chart",
    "metrics_bar",
    "publish_eval_charts",
]

DPI = 100

# metric name → file name of its trend chart (the seed's publish-TS/ file set)
TREND_FILES = {
    "map": "map_trend.png",
    "ndcg": "ndcg_trend.png",
    "precision": "precision_trend.png",
    "recall": "recall_trend.png",
    "coverage_item": "coverage_item_trend.png",
    "coverage_user": "coverage_user_trend.png",
}
TREND_METRICS = tuple(TREND_FILES)
BAR_FILE = "metrics_bar.png"

BAR_METRICS = ("precision", "recall", "map", "ndcg", "hit_rate")

# coverage metric → key in coverage.json
COVERAGE_KEYS = {"coverage_item": "coverage_item", "coverage_user": "coverage_user_eval"}

METRIC_TITLES = {
    "map": "MAP",
    "ndcg": "NDCG",
    "precision": "Precision",
    "recall": "Recall",
    "hit_rate": "Hit rate",
    "coverage_item": "Item coverage",
    "coverage_user": "User coverage (users with a full list)",
}

# method label → colour; the same colour for a method on every chart
METHOD_COLORS = {
    "ALS": "#1f77b4",
    "Popularity": "#7f7f7f",
    "P-TopFreq": "#2ca02c",
    "GP-TopFreq": "#9467bd",
    "ALS post-rank": "#ff7f0e",
}

_RUN_KEY_TS = re.compile(r"^run-(\d{8}-\d{6})(?:-|$)")


# --- small helpers ---------------------------------------------------------------------


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds")


def _parse_iso(value: Any) -> datetime | None:
    """An ISO-8601 stamp as an aware UTC datetime; naive stamps are taken as UTC; else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _run_key_time(run_key: str) -> datetime | None:
    """The UTC timestamp of a ``run-YYYYMMDD-HHMMSS[-tag]`` key, or None."""
    m = _RUN_KEY_TS.match(run_key or "")
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, inf, bool or not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _as_dict(value: Any) -> dict | None:
    return value if isinstance(value, dict) else None


def _problem(value: Any, what: str) -> str | None:
    """Why a file's content cannot be used (None when it is a usable JSON object)."""
    if isinstance(value, BaseException):
        return f"{what} unreadable ({type(value).__name__}: {value})"
    if value is None:
        return f"{what} missing"
    if not isinstance(value, dict):
        return f"{what} is not a JSON object (got {type(value).__name__})"
    return None


def _metrics_problem(run: Any) -> str | None:
    """Why a run cannot be charted, or None when its ALS metrics are usable."""
    if not isinstance(run, Mapping):
        if isinstance(run, BaseException):
            return f"run unreadable ({type(run).__name__}: {run})"
        return f"run entry is not a mapping (got {type(run).__name__})"
    reason = _problem(run.get("als"), "ALS metrics.json")
    if reason:
        return reason
    if not isinstance(run["als"].get("als"), dict):
        return "ALS metrics.json has no 'als' section"
    return None


def _metric_key(metric: str, k: int) -> str:
    return metric if "@" in metric else f"{metric}@{k}"


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot, no global state
    return fig


def render_png(fig: Figure) -> bytes:
    """Render to PNG bytes: a 256-colour palette PNG (charts are flat colours; dense scatters
    would otherwise weigh several hundred KB), no timestamp metadata, so equal inputs give
    equal bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    try:
        from PIL import Image  # a matplotlib dependency
    except ImportError:  # pragma: no cover
        return buf.getvalue()
    buf.seek(0)
    with Image.open(buf) as im:
        palette = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- ordering ----------------------------------------------------------------------------


def order_runs(runs: Mapping[str, Any]) -> tuple[list[dict], list[str]]:
    """Chartable runs in time order, plus one warning per run (or input) left out.

    A run is kept when its ALS ``metrics.json`` is a readable object with an ``"als"``
    section. Its time is ``finished_at_utc`` when that parses as ISO 8601, else the run key's
    timestamp (``source`` says which); a run with neither is skipped with a warning. Ties are
    broken by run key. Each entry is::

        {"run_key", "finished_at_utc" (resolved, ISO UTC), "source": "finished_at_utc"|"run_key",
         "has_coverage", "has_postrank", "has_postrank_coverage"}

    Unreadable optional files (coverage, post-rank) of a kept run also produce a warning (their
    points are simply absent); a missing optional file is normal and silent.
    """
    warnings: list[str] = []
    keyed: list[tuple[datetime, str, dict]] = []
    for run_key in sorted(runs, key=str):
        run = runs[run_key]
        reason = _metrics_problem(run)
        if reason:
            warnings.append(f"{run_key}: skipped, {reason}")
            continue
        metrics = run["als"]
        dt = _parse_iso(metrics.get("finished_at_utc"))
        source = "finished_at_utc"
        if dt is None:
            dt, source = _run_key_time(run_key), "run_key"
        if dt is None:
            warnings.append(
                f"{run_key}: skipped, no parsable finished_at_utc "
                f"({metrics.get('finished_at_utc')!r}) and no timestamp in the run key"
            )
            continue
        for part, what in (
            ("als_coverage", "ALS coverage.json"),
            ("postrank", "post-rank metrics.json"),
            ("postrank_coverage", "post-rank coverage.json"),
        ):
            value = run.get(part)
            if value is not None and (reason := _problem(value, what)):
                warnings.append(f"{run_key}: {reason}; its points are left out")
        postrank = _as_dict(run.get("postrank"))
        entry = {
            "run_key": run_key,
            "finished_at_utc": _iso(dt),
            "source": source,
            "has_coverage": isinstance(run.get("als_coverage"), dict),
            "has_postrank": bool(postrank) and isinstance(postrank.get("als"), dict),
            "has_postrank_coverage": isinstance(run.get("postrank_coverage"), dict),
        }
        keyed.append((dt, run_key, entry))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [entry for _, _, entry in keyed], warnings


# --- series ------------------------------------------------------------------------------


def _method_metrics(run: Mapping[str, Any]) -> dict[str, dict | None]:
    """Method label → that method's flat metrics dict (or None) for one run."""
    als = _as_dict(run.get("als")) or {}
    baselines = _as_dict(als.get("baselines")) or {}
    postrank = _as_dict(run.get("postrank")) or {}
    return {
        "ALS": _as_dict(als.get("als")),
        "Popularity": _as_dict(als.get("baseline")),
        "P-TopFreq": _as_dict(baselines.get("p_topfreq")),
        "GP-TopFreq": _as_dict(baselines.get("gp_topfreq")),
        "ALS post-rank": _as_dict(postrank.get("als")),
    }


def _coverage_value(cov: Any, metric: str, k: int) -> float | None:
    cov = _as_dict(cov)
    if cov is None:
        return None
    cov_k = cov.get("k")
    if cov_k is not None and _num(cov_k) != float(k):
        return None  # coverage measured at another K: not this chart's number
    return _num(cov.get(COVERAGE_KEYS[metric]))


def trend_series(
    ordered: Sequence[Mapping[str, Any]],
    runs: Mapping[str, Any],
    metric: str,
    k: int,
) -> dict[str, list[float | None]]:
    """One list per method, aligned with ``ordered``; None where a run lacks the value.

    Ranking metrics (``map``, ``ndcg``, ``precision``, ``recall``, ``hit_rate`` or an explicit
    ``"map@10"``) give ALS, Popularity (``baseline``), P-TopFreq (``baselines.p_topfreq``) and
    ALS post-rank (the post-rank file's ``"als"``). Coverage metrics (``coverage_item``,
    ``coverage_user`` → ``coverage_user_eval``) give ALS and ALS post-rank only, read from the
    coverage files, and only when the file's ``k`` equals ``k``.
    """
    keys = [e["run_key"] for e in ordered]
    if metric in COVERAGE_KEYS:
        return {
            "ALS": [_coverage_value(runs[r].get("als_coverage"), metric, k) for r in keys],
            "ALS post-rank": [_coverage_value(runs[r].get("postrank_coverage"), metric, k) for r in keys],
        }
    key = _metric_key(metric, k)
    out: dict[str, list[float | None]] = {m: [] for m in ("ALS", "Popularity", "P-TopFreq", "ALS post-rank")}
    for r in keys:
        by_method = _method_metrics(runs[r])
        for method in out:
            m = by_method[method]
            out[method].append(_num(m.get(key)) if m else None)
    return out


# --- charts ------------------------------------------------------------------------------


def trend_chart(
    ordered: Sequence[Mapping[str, Any]],
    runs: Mapping[str, Any],
    metric: str,
    k: int,
    *,
    highlight: str | None = None,
) -> bytes:
    """PNG line chart of ``metric@k`` per method across the ordered runs.

    x = run keys in order (rotated labels; thinned past 40 runs), markers on every point so a
    single run still shows, gaps where a value is missing. ``highlight`` (a run key) gets a
    shaded band, e.g. the run being published.
    """
    series = trend_series(ordered, runs, metric, k)
    keys = [e["run_key"] for e in ordered]
    n = len(keys)
    title_metric = METRIC_TITLES.get(metric.split("@")[0], metric)
    ylabel = f"{metric.split('@')[0]}@{k}"

    fig = new_figure(min(18.0, max(8.0, 3.5 + 0.38 * n)), 5.2)
    try:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(n)
        drawn = 0
        for method, values in series.items():
            y = np.array([np.nan if v is None else v for v in values], dtype=float)
            if not np.isfinite(y).any():
                continue
            ax.plot(
                x, y, marker="o", markersize=5, linewidth=1.8, label=method,
                color=METHOD_COLORS.get(method), linestyle="--" if method == "ALS post-rank" else "-",
            )
            drawn += 1
        if highlight in keys:
            i = keys.index(highlight)
            ax.axvspan(i - 0.3, i + 0.3, color="#ffd54f", alpha=0.25, zorder=0, label="this run")
        if not drawn:
            ax.text(0.5, 0.5, "no data for this metric", ha="center", va="center", transform=ax.transAxes,
                    fontsize=12, color="#666666")
        step = max(1, math.ceil(n / 40))
        ticks = x[::step]
        ax.set_xticks(ticks, [keys[i] for i in ticks], rotation=45, ha="right", fontsize=8)
        pad = 1.5 if n <= 1 else 0.6
        ax.set_xlim(-pad, max(n - 1, 0) + pad)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("run (ordered by finished_at_utc, fallback run key time)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title_metric} @ {k} across {n} run{'s' if n != 1 else ''}")
        ax.grid(True, alpha=0.3)
        ax.set_axisbelow(True)
        if drawn:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
        fig.tight_layout()
        return render_png(fig)
    finally:
        fig.clear()


def metrics_bar(run_key: str, run: Mapping[str, Any], k: int = 10) -> bytes:
    """PNG grouped bars of one run: precision/recall/map/ndcg/hit_rate at ``k`` per method.

    Methods: ALS, Popularity, P-TopFreq, GP-TopFreq, ALS post-rank (those present in the run),
    side by side in each metric group, the value on every bar. Raises ``ValueError`` when the
    run's ALS metrics are not usable.
    """
    reason = _metrics_problem(run)
    if reason:
        raise ValueError(f"{run_key}: {reason}")
    methods = {m: d for m, d in _method_metrics(run).items() if d}
    fig = new_figure(11.0, 5.4)
    try:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(BAR_METRICS))
        width = 0.8 / max(len(methods), 1)
        top = 0.0
        for i, (method, m) in enumerate(methods.items()):
            vals = [_num(m.get(f"{metric}@{k}")) for metric in BAR_METRICS]
            heights = [np.nan if v is None else v for v in vals]
            bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, heights, width * 0.95,
                          label=method, color=METHOD_COLORS.get(method))
            ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.3f}" for v in vals],
                         padding=2, fontsize=7, rotation=90)
            top = max([top] + [v for v in vals if v is not None])
        ax.set_xticks(x, [f"{metric}@{k}" for metric in BAR_METRICS])
        ax.set_ylim(0, max(top * 1.25, 0.05))
        ax.set_ylabel(f"metric value at K={k}")
        ax.set_xlabel("metric")
        n_users = _num((methods.get("ALS") or {}).get("n_users"))
        users = f", {int(n_users):,} users" if n_users is not None else ""
        ax.set_title(f"{run_key}: ALS vs baselines @ {k}{users}")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", frameon=False, fontsize=9, ncols=min(len(methods), 5))
        fig.tight_layout()
        return render_png(fig)
    finally:
        fig.clear()


def publish_eval_charts(runs: Mapping[str, Any], current_run: str, k: int = 10) -> tuple[dict[str, bytes], dict]:
    """All evaluation charts of ``current_run`` and its ``index.json`` content.

    Returns ``(files, index)``: files are the six trend charts (every readable run passed in,
    in time order, ``current_run`` shaded) and ``metrics_bar.png`` (``current_run`` only).
    ``index = {"run_key", "k", "runs": [ordered entries], "files", "skipped": [warnings],
    "generated_at_utc"}``. Raises ``ValueError`` when ``current_run`` is absent or unreadable.
    """
    if current_run not in runs:
        raise ValueError(f"{current_run}: current run not among the runs passed in")
    reason = _metrics_problem(runs[current_run])
    if reason:
        raise ValueError(f"{current_run}: the current run must be published but {reason}")
    ordered, warnings = order_runs(runs)
    if current_run not in {e["run_key"] for e in ordered}:
        raise ValueError(f"{current_run}: cannot be placed in time ({'; '.join(warnings)})")
    files: dict[str, bytes] = {}
    for metric, name in TREND_FILES.items():
        files[name] = trend_chart(ordered, runs, metric, k, highlight=current_run)
    files[BAR_FILE] = metrics_bar(current_run, runs[current_run], k)
    index = {
        "run_key": current_run,
        "k": k,
        "runs": ordered,
        "files": list(files),
        "skipped": warnings,
        "generated_at_utc": _utc_now_iso(),
    }
    return files, index
