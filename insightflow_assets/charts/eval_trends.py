"""Evaluation charts across runs: metric trends per method and the current run's bar chart.

Pure functions (no Dagster, no storage): the caller reads every run's evaluation files and
passes them in as ``runs``::

    {"run-20261122-020646": {"als": metrics_json, "als_coverage": coverage_json,
                             "postrank": metrics_json, "postrank_coverage": coverage_json}}

where any value may be ``None`` (file missing) or an ``Exception`` instance (file unreadable).
A run is charted only if its ALS ``metrics.json`` is a readable object with an ``"als"``
section; every other run becomes a warning string, never an exception.

Methods are not hard-coded: each run's are its reports' ``methods`` map (``methods_of`` of
evaluation/offline.py, which also reads older reports without one; see ``run_methods``),
labelled by ``method_label``. The post-rank file's ``exported_method`` is marked on the charts
rather than its ``exported`` entry drawn as a method of its own.

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
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from insightflow_assets.evaluation.offline import method_label, methods_of

__all__ = [
    "TREND_METRICS",
    "TREND_FILES",
    "BAR_FILE",
    "order_runs",
    "run_methods",
    "exported_of",
    "method_order",
    "method_color",
    "trend_series",
    "trend_lines",
    "bar_groups",
    "marked_method",
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

# method key → colour, fixed so a method keeps its colour on every chart and in every run
METHOD_COLORS = {
    "als": "#1f77b4",
    "baseline": "#7f7f7f",
    "p_topfreq": "#2ca02c",
    "gp_topfreq": "#9467bd",
    "als_postrank": "#ff7f0e",
    "tifu_knn": "#d62728",
}
# methods added later draw from here by a hash of their key, not by position, so adding or
# dropping a method never recolours the others
EXTRA_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")

# the ``methods`` entry scoring the exported lists: the exported method is marked instead,
# since a second line of (nearly) the same numbers would only clutter the chart
EXPORTED_ENTRY = "exported"
EXPORTED_MARK = "★ exported"
# coverage.json files exist only for ALS (als_eval) and the post-rank (als_postrank)
COVERAGE_SOURCES = {"als": "als_coverage", "als_postrank": "postrank_coverage"}

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


def _report_methods(report: Any) -> dict[str, dict]:
    """``methods_of(report)`` keeping only usable entries; {} when the report has none.

    Old or damaged reports may lack a seed key that ``methods_of`` indexes directly (e.g. no
    ``baseline``): the methods that are there are still charted, rather than the whole run.
    """
    report = _as_dict(report)
    if not report:
        return {}
    try:
        found = methods_of(report)
    except (KeyError, TypeError, AttributeError):
        baselines = _as_dict(report.get("baselines")) or {}
        found = {report.get("method", "als"): report.get("als"), "baseline": report.get("baseline"), **baselines}
    return {str(m): d for m, d in found.items() if isinstance(d, dict)}


def run_methods(run: Mapping[str, Any]) -> dict[str, dict]:
    """Method key → flat metrics of one run, in the order of the run's ``methods`` map.

    The post-rank file's map (a superset of als_eval's) wins where both have a method; an old
    post-rank file (no ``methods``) contributes its ``"als"`` section as ``als_postrank``. The
    ``exported`` entry is left out (see ``EXPORTED_ENTRY``).
    """
    out = _report_methods(run.get("als"))
    postrank = _as_dict(run.get("postrank")) or {}
    if isinstance(postrank.get("methods"), dict):
        out.update(_report_methods(postrank))
    elif isinstance(postrank.get("als"), dict):
        out["als_postrank"] = postrank["als"]
    out.pop(EXPORTED_ENTRY, None)
    return out


def exported_of(run: Any) -> dict | None:
    """The post-rank file's ``exported_method`` (``{"method", "label", "why", …}``) or None."""
    postrank = _as_dict(run.get("postrank")) if isinstance(run, Mapping) else None
    exported = _as_dict((postrank or {}).get("exported_method"))
    return exported if exported and isinstance(exported.get("method"), str) else None


def method_order(ordered: Sequence[Mapping[str, Any]], runs: Mapping[str, Any]) -> list[str]:
    """Every method key of the ordered runs: the latest run's map order, then the methods only
    older runs have (newest run first), so the legend follows what the pipeline runs now."""
    keys: dict[str, None] = {}
    for entry in reversed(ordered):
        keys.update(dict.fromkeys(run_methods(runs[entry["run_key"]])))
    return list(keys)


def method_color(method: str) -> str:
    """A method key's fixed colour (a stable hash for keys without one of their own)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return EXTRA_COLORS[zlib.crc32(method.encode()) % len(EXTRA_COLORS)]


def _coverage_value(cov: Any, metric: str, k: int) -> float | None:
    cov = _as_dict(cov)
    if cov is None:
        return None
    cov_k = cov.get("k")
    if cov_k is not None and _num(cov_k) != float(k):
        return None  # coverage measured at another K: not this chart's number
    return _num(cov.get(COVERAGE_KEYS[metric]))


def _series_by_key(
    ordered: Sequence[Mapping[str, Any]], runs: Mapping[str, Any], metric: str, k: int
) -> dict[str, list[float | None]]:
    """Method key → values aligned with ``ordered`` (None where a run lacks the value)."""
    keys = [e["run_key"] for e in ordered]
    if metric in COVERAGE_KEYS:
        return {
            method: [_coverage_value(runs[r].get(part), metric, k) for r in keys]
            for method, part in COVERAGE_SOURCES.items()
        }
    key = _metric_key(metric, k)
    per_run = [run_methods(runs[r]) for r in keys]
    return {
        method: [_num(m[method].get(key)) if method in m else None for m in per_run]
        for method in method_order(ordered, runs)
    }


def trend_series(
    ordered: Sequence[Mapping[str, Any]],
    runs: Mapping[str, Any],
    metric: str,
    k: int,
) -> dict[str, list[float | None]]:
    """One list per method label, aligned with ``ordered``; None where a run lacks the value.

    Ranking metrics (``map``, ``ndcg``, ``precision``, ``recall``, ``hit_rate`` or an explicit
    ``"map@10"``) give every method of the runs' ``methods`` maps (see ``run_methods``;
    ``method_order`` for the order). Coverage metrics (``coverage_item``, ``coverage_user`` →
    ``coverage_user_eval``) give ALS and ALS post-rank only, read from the coverage files, and
    only when the file's ``k`` equals ``k``.
    """
    return {method_label(m): v for m, v in _series_by_key(ordered, runs, metric, k).items()}


def _legend_label(method: str, exported: str | None) -> str:
    return f"{method_label(method)} {EXPORTED_MARK}" if method == exported else method_label(method)


def trend_lines(
    ordered: Sequence[Mapping[str, Any]],
    runs: Mapping[str, Any],
    metric: str,
    k: int,
    *,
    exported: str | None = None,
) -> list[dict]:
    """What a trend chart draws, one dict per method (a pure function, so tests can check it)::

        {"method": key, "label": legend label, "values": [...], "color": str, "exported": bool}

    ``exported`` (a method key) gets ``EXPORTED_MARK`` in its label and is drawn thicker.
    """
    return [
        {
            "method": m,
            "label": _legend_label(m, exported),
            "values": values,
            "color": method_color(m),
            "exported": m == exported,
        }
        for m, values in _series_by_key(ordered, runs, metric, k).items()
    ]


def bar_groups(run: Mapping[str, Any], k: int = 10) -> list[dict]:
    """What ``metrics_bar`` draws for one run, one dict per method present, in its map order::

        {"method", "label", "values": {metric: value|None for BAR_METRICS}, "color", "exported"}
    """
    exported = (exported_of(run) or {}).get("method")
    return [
        {
            "method": m,
            "label": _legend_label(m, exported),
            "values": {metric: _num(d.get(f"{metric}@{k}")) for metric in BAR_METRICS},
            "color": method_color(m),
            "exported": m == exported,
        }
        for m, d in run_methods(run).items()
    ]


# --- charts ------------------------------------------------------------------------------


def marked_method(ordered: Sequence[Mapping[str, Any]], runs: Mapping[str, Any], highlight: str | None = None) -> str | None:
    """The method key marked as exported on a trend chart: the exported method of ``highlight``
    (the run being published, so re-publishing an old run marks what that run exported),
    else of the latest run; None for runs from before the exports were chosen."""
    keys = [e["run_key"] for e in ordered]
    run_key = highlight if highlight in keys else (keys[-1] if keys else None)
    exported = exported_of(runs[run_key]) if run_key is not None else None
    return exported["method"] if exported else None


def _plot_lines(ax, lines: Sequence[Mapping[str, Any]], n: int) -> int:
    """Draw the trend lines; returns how many had at least one point."""
    x = np.arange(n)
    drawn = 0
    for line in lines:
        y = np.array([np.nan if v is None else v for v in line["values"]], dtype=float)
        if not np.isfinite(y).any():
            continue
        ax.plot(
            x, y, marker="o", markersize=7 if line["exported"] else 5, linewidth=3.2 if line["exported"] else 1.8,
            label=line["label"], color=line["color"], zorder=3 if line["exported"] else 2,
            linestyle="--" if line["method"] == "als_postrank" else "-",
        )
        drawn += 1
    return drawn


def trend_chart(
    ordered: Sequence[Mapping[str, Any]],
    runs: Mapping[str, Any],
    metric: str,
    k: int,
    *,
    highlight: str | None = None,
) -> bytes:
    """PNG line chart of ``metric@k`` per method across the ordered runs (see ``trend_lines``).

    x = run keys in order (rotated labels; thinned past 40 runs), markers on every point so a
    single run still shows, gaps where a value is missing. ``highlight`` (a run key) gets a
    shaded band, e.g. the run being published; its exported method (``marked_method``) is
    drawn thicker with ``EXPORTED_MARK`` in the legend.
    """
    lines = trend_lines(ordered, runs, metric, k, exported=marked_method(ordered, runs, highlight))
    keys = [e["run_key"] for e in ordered]
    n = len(keys)
    title_metric = METRIC_TITLES.get(metric.split("@")[0], metric)

    fig = new_figure(min(18.0, max(8.0, 3.5 + 0.38 * n)), 5.2)
    try:
        ax = fig.add_subplot(1, 1, 1)
        drawn = _plot_lines(ax, lines, n)
        if highlight in keys:
            i = keys.index(highlight)
            ax.axvspan(i - 0.3, i + 0.3, color="#ffd54f", alpha=0.25, zorder=0, label="this run")
        if not drawn:
            ax.text(0.5, 0.5, "no data for this metric", ha="center", va="center", transform=ax.transAxes,
                    fontsize=12, color="#666666")
        ticks = np.arange(n)[:: max(1, math.ceil(n / 40))]
        ax.set_xticks(ticks, [keys[i] for i in ticks], rotation=45, ha="right", fontsize=8)
        pad = 1.5 if n <= 1 else 0.6
        ax.set_xlim(-pad, max(n - 1, 0) + pad)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("run (ordered by finished_at_utc, fallback run key time)")
        ax.set_ylabel(f"{metric.split('@')[0]}@{k}")
        ax.set_title(f"{title_metric} @ {k} across {n} run{'s' if n != 1 else ''}")
        ax.grid(True, alpha=0.3)
        ax.set_axisbelow(True)
        if drawn:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
        fig.tight_layout()
        return render_png(fig)
    finally:
        fig.clear()


def _bar_title(run_key: str, run: Mapping[str, Any], groups: Sequence[Mapping[str, Any]], k: int) -> str:
    n_users = _num((run_methods(run).get("als") or {}).get("n_users"))
    users = f", {int(n_users):,} users" if n_users is not None else ""
    exported = exported_of(run)
    tail = f"\nexported: {method_label(exported['method'])}" if exported else ""
    return f"{run_key}: {len(groups)} methods @ {k}{users}{tail}"


def metrics_bar(run_key: str, run: Mapping[str, Any], k: int = 10) -> bytes:
    """PNG grouped bars of one run: precision/recall/map/ndcg/hit_rate at ``k`` per method.

    Methods: every method of the run (see ``bar_groups``), side by side in each metric group,
    the value on every bar; the exported method's bars are hatched and the title names it.
    Raises ``ValueError`` when the run's ALS metrics are not usable.
    """
    reason = _metrics_problem(run)
    if reason:
        raise ValueError(f"{run_key}: {reason}")
    groups = bar_groups(run, k)
    fig = new_figure(11.0, 5.4)
    try:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(BAR_METRICS))
        width = 0.8 / max(len(groups), 1)
        top = 0.0
        for i, group in enumerate(groups):
            vals = [group["values"][metric] for metric in BAR_METRICS]
            heights = [np.nan if v is None else v for v in vals]
            bars = ax.bar(x + (i - (len(groups) - 1) / 2) * width, heights, width * 0.95, label=group["label"],
                          color=group["color"], hatch="//" if group["exported"] else None,
                          edgecolor="black" if group["exported"] else None, linewidth=0.8 if group["exported"] else 0)
            ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.3f}" for v in vals],
                         padding=2, fontsize=7, rotation=90)
            top = max([top] + [v for v in vals if v is not None])
        ax.set_xticks(x, [f"{metric}@{k}" for metric in BAR_METRICS])
        ax.set_ylim(0, max(top * 1.25, 0.05))
        ax.set_ylabel(f"metric value at K={k}")
        ax.set_xlabel("metric")
        ax.set_title(_bar_title(run_key, run, groups, k))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", frameon=False, fontsize=9, ncols=min(max(len(groups), 1), 4))
        fig.tight_layout()
        return render_png(fig)
    finally:
        fig.clear()


def publish_eval_charts(runs: Mapping[str, Any], current_run: str, k: int = 10) -> tuple[dict[str, bytes], dict]:
    """All evaluation charts of ``current_run`` and its ``index.json`` content.

    Returns ``(files, index)``: files are the six trend charts (every readable run passed in,
    in time order, ``current_run`` shaded) and ``metrics_bar.png`` (``current_run`` only).
    ``index = {"run_key", "k", "runs": [ordered entries], "methods": [method keys charted],
    "exported_method": current run's (or None), "files", "skipped": [warnings],
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
        "methods": method_order(ordered, runs),
        "exported_method": exported_of(runs[current_run]),
        "files": list(files),
        "skipped": warnings,
        "generated_at_utc": _utc_now_iso(),
    }
    return files, index
