"""The run summary a person reads at the end of ``make run``: headline numbers from storage.

The summary never raises: a failed run has written only part of its files (or none, when the
store cannot be reached), and the reader must still see the run's own errors, one line each,
and where its full log is.
"""

from __future__ import annotations

import io
import json
import math
import os

import polars as pl
import pyarrow.parquet as pq

from insightflow_assets.evaluation.offline import HEADLINE_K, metrics_table, methods_of, undefined_metrics
from insightflow_assets.publish.promotion import read_manifest
from resources.layout import artifact
from resources.storage import Storage


def _rows(storage: Storage, name: str, run_key: str) -> int | None:
    (key,) = artifact(name).keys(run_key).values()
    if not storage.exists(key):
        return None
    return pq.ParquetFile(io.BytesIO(storage.read_bytes(key))).metadata.num_rows


def _json(storage: Storage, name: str, file: str, run_key: str):
    key = artifact(name).keys(run_key)[file]
    return json.loads(storage.read_bytes(key)) if storage.exists(key) else None


def input_lines(ingest_metadata: dict | None, unknown_fields: list | None = None) -> list[str]:
    """What the ingest read, what it left out by reason (transactions form), and the fields
    that were never observed (left null, not imputed)."""
    meta = ingest_metadata or {}
    unknown = [f"unknown fields (never observed, left null): {', '.join(unknown_fields)}"] if unknown_fields else []
    if "excluded_lines" not in meta:
        return unknown
    excluded = meta["excluded_lines"]
    total = sum(excluded.values())
    out = [f"input form: transactions, {meta.get('lines_in', 0):,} lines read, {total:,} excluded"]
    out += [f"  excluded {reason}: {n:,}" for reason, n in excluded.items() if n]
    if not (meta.get("derivation") or {}).get("time_of_day", True):
        out.append("  no time of day in the timestamps: order_hour_of_day is unknown")
    return out + unknown


def headline(storage: Storage, run_key: str, materialized: dict | None = None) -> list[str]:
    """The summary lines; ``materialized`` is this run's metadata per asset (`RunOutcome`).

    Each section reads what the run stored and is skipped when it is not there. A section that
    fails says so in one line; an unreachable store stops the reading (every further call
    would only wait for the same timeout).
    """
    materialized = materialized or {}
    lines: list[str] = input_lines(
        materialized.get("raw_order_products"), (materialized.get("orders_imputed") or {}).get("unknown_fields")
    )
    for what, section in _SECTIONS:
        try:
            lines += section(storage, run_key)
        except Exception as exc:  # noqa: BLE001 - the summary must not hide the run's own outcome
            lines.append(f"(summary: {what} could not be read from {storage.uri()}: {one_line(exc)})")
            if not isinstance(exc, (KeyError, TypeError, ValueError)):  # the store, not the content
                break
    return lines


def _input_section(storage: Storage, run_key: str) -> list[str]:
    orders = _rows(storage, "raw_orders", run_key)
    if orders is None:
        return []
    lines_n = _rows(storage, "raw_order_products", run_key)
    products = _rows(storage, "products", run_key)
    return [f"input: {orders:,} orders, {lines_n or 0:,} order lines, {products or 0:,} products"]


def _mice_section(storage: Storage, run_key: str) -> list[str]:
    mice = _json(storage, "mice_checks", "mice_checks.json", run_key)
    if not mice:
        return []
    lines = ["MICE mask-and-recover (RMSE on hidden known values):", f"  {'column':<24}{'MICE':>8}{'mean':>8}{'median':>8}"]
    for col, v in mice["mask_and_recover"].items():
        lines.append(f"  {col:<24}" + "".join(_decimal(v[m]["rmse"], 8) for m in ("mice", "mean", "median")))
    b, a = mice["day30"]["before"], mice["day30"]["after"]
    lines.append(
        f"day-30 share {_decimal(b['day30_share'])} → {_decimal(a['day30_share'])}; "
        f"last-30-days share {_decimal(b['last30_share'])} → {_decimal(a['last30_share'])}"
    )
    return lines


def _decimal(x, width: int = 0) -> str:
    """``x`` to 3 decimals, or "–" when it is undefined (null in the stored JSON, or NaN)."""
    defined = isinstance(x, (int, float)) and math.isfinite(x)
    return f"{x:>{width}.3f}" if defined else f"{'–':>{width}}"


def _evaluation_section(storage: Storage, run_key: str) -> list[str]:
    als = _json(storage, "als_eval", "metrics.json", run_key)
    if not als:
        return []
    post = _json(storage, "als_postrank", "metrics.json", run_key)
    report = post if post and "methods" in post else als
    lines = evaluation_lines(report)
    selection = _json(storage, "model_selection", "selection.json", run_key)
    if post and selection:
        lines += exported_lines(post, selection)
    return lines


def _segments_section(storage: Storage, run_key: str) -> list[str]:
    seg_key = artifact("user_seg").keys(run_key)["user_seg.parquet"]
    if not storage.exists(seg_key):
        return []
    seg = pl.read_parquet(io.BytesIO(storage.read_bytes(seg_key)))
    counts = seg.group_by("segment", "segment_label").len().sort("segment")
    return ["\nsegments: " + ", ".join(f"{r['segment']} {r['segment_label']} ({r['len']:,})" for r in counts.iter_rows(named=True))]


def _exports_section(storage: Storage, run_key: str) -> list[str]:
    exports = artifact("exports").keys(run_key)["bedrock_inputs.jsonl"]
    if not storage.exists(exports):
        return []
    n = storage.read_bytes(exports).count(b"\n")
    return [f"exports: {n} cohort users in bedrock_inputs.jsonl"]


def _latest_section(storage: Storage, run_key: str) -> list[str]:
    manifest = read_manifest(storage)
    if not manifest:
        return []
    note = (
        "this run"
        if manifest["run_key"] == run_key
        else "not this run: a blocking check failed or was skipped, or a newer run is latest"
    )
    return [f"latest/ → {manifest['run_key']} ({note})"]


_SECTIONS = (
    ("the input snapshot", _input_section),
    ("the MICE checks", _mice_section),
    ("the evaluation", _evaluation_section),
    ("the segments", _segments_section),
    ("the exports", _exports_section),
    ("latest/", _latest_section),
)


def run_summary(storage: Storage, outcome) -> list[str]:
    """Everything printed after a run (`RunOutcome`) but its failures: headline numbers,
    checks and the files written, each part read only if the run got that far."""
    from insightflow_assets.runner import written_tree

    lines = headline(storage, outcome.run_key, outcome.materialized)
    summary = checks_summary(outcome.checks, outcome.skipped_checks, run_failed=not outcome.success)
    if summary:
        lines += [""] + summary
    lines += ["", "files written:"]
    try:
        lines += ["  " + line for line in written_tree(storage, outcome.run_key)]
    except Exception as exc:  # noqa: BLE001 - see `headline`
        lines.append(f"  (cannot list {storage.uri()}: {one_line(exc)})")
    return lines


def failure_lines(outcome) -> list[str]:
    """One line per failure of a run (its root cause), then where the full log is."""
    if outcome.ok:
        return []
    lines = [f"FAILED: {one_line(e)}" for e in outcome.errors]
    if not lines:  # no step failed: a check with ERROR severity did
        lines = [f"FAILED: check {c['asset']}:{c['check']}" for c in outcome.failed_error_checks]
    lines += [f"FAILED: step {s}" for s in outcome.failed_steps if not outcome.errors]
    return lines + [log_pointer(outcome.run_id, outcome.run_key)]


def log_pointer(run_id: str, run_key: str) -> str:
    home = os.getenv("DAGSTER_HOME", "DAGSTER_HOME")
    return (
        f"full log: Dagster run {run_id or '?'} of partition {run_key} — `make ui` (or `dg dev`) → Runs, "
        f"DAGSTER_HOME={home}; or rerun with --log-level INFO"
    )


def one_line(exc_or_text) -> str:
    """A message on one line: the further lines of a multi-line error joined with spaces."""
    text = exc_or_text if isinstance(exc_or_text, str) else _describe(exc_or_text)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _describe(exc: BaseException) -> str:
    # Our own errors (and plain ValueError / RuntimeError raised with a sentence) read as they
    # are; a library's is named (EndpointConnectionError: …).
    text = str(exc)
    if type(exc) in (ValueError, RuntimeError) or type(exc).__module__.startswith(("insightflow_assets", "resources")):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def checks_summary(checks: list[dict], skipped: list[str], run_failed: bool = False) -> list[str]:
    """The asset-check lines of the run summary: counts, then each failure and warning.

    Skipped checks are named on the count line: a check that never ran is the one a reader
    would otherwise take for passed. After a failed step they are only counted: they were not
    reached, and the failure lines say why.
    """
    if not checks and not skipped:
        return []
    passed = sum(c["passed"] for c in checks)
    line = f"asset checks: {passed}/{len(checks)} passed"
    if skipped and run_failed:
        line += f", {len(skipped)} not reached (the run stopped at a failed step)"
    elif skipped:
        line += f", {len(skipped)} skipped: " + ", ".join(skipped)
    lines = [line]
    for c in checks:
        if not c["passed"]:
            values = ", ".join(f"{k}={_short(v)}" for k, v in c["metadata"].items())
            word = "warning" if c["severity"] == "WARN" else "FAILED"
            lines.append(f"  {word}: {c['asset']}:{c['check']} ({values})")
    return lines


def _short(value) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def evaluation_lines(report: dict, k: int = HEADLINE_K) -> list[str]:
    """The holdout table at K, one row per method of the report's ``methods`` map."""
    cols = ["precision", "recall", "map", "ndcg", "hit_rate"]
    out = [f"\noffline evaluation at K={k} on {report['n_users_evaluated']:,} users (held-out target baskets):"]
    out.append(f"  {'method':<20}" + "".join(f"{c + '@' + str(k):>14}" for c in cols))
    rows = metrics_table(report, k)
    for row in rows:
        out.append(f"  {row['method']:<20}" + "".join(_num(row[c + '@' + str(k)], 14) for c in cols))
    ranking = {r["method"]: r[f"map@{k}"] for r in rows if r["method"] != "exported" and r[f"map@{k}"] is not None}
    if ranking:
        best = max(ranking, key=ranking.get)
        out.append(f"  best on the holdout at map@{k}: {best} ({ranking[best]:.4f})")
    return out + undefined_lines(methods_of(report))


def undefined_lines(methods: dict) -> list[str]:
    """Metrics reported as undefined (null), one line per reason: not zero, not a failure."""
    by_reason: dict[str, list[str]] = {}
    for where, reason in undefined_metrics(methods).items():
        by_reason.setdefault(reason, []).append(where)
    out = []
    for reason, where in by_reason.items():
        splits = sorted({w.split(".", 1)[1] if "." in w else "all" for w in where})
        out.append(f"  undefined (null in metrics.json): {', '.join(splits)} metrics of {len(where)} method(s): {reason}")
    return out


def exported_lines(post: dict, selection: dict, k: int = HEADLINE_K) -> list[str]:
    """Which method the exports carry, why, and its lead over GP-TopFreq on the holdout."""
    exp = post.get("exported_method") or {}
    methods = post["methods"]
    mine, gp = methods.get("exported", {}), methods.get("gp_topfreq", {})
    out = [f"exported: {exp.get('label', '?')} — {exp.get('why', '')}"]
    for metric in ("map", "recall"):
        a, b = mine.get(f"{metric}@{k}"), gp.get(f"{metric}@{k}")
        if a is not None and b:
            out.append(f"  holdout {metric}@{k}: {a:.4f} vs GP-TopFreq {b:.4f} ({(a - b) / b:+.1%})")
    if exp.get("ties_within_1pct"):
        out.append(f"  within 1 % of it on validation: {', '.join(exp['ties_within_1pct'])}")
    cold = post.get("users_without_history")
    if cold is not None:
        out.append(f"  users with no history before the target: {cold:.1%} (they get popular items)")
    return out


def _num(v, width: int) -> str:
    return f"{v:>{width}.4f}" if isinstance(v, (int, float)) else f"{'–':>{width}}"
