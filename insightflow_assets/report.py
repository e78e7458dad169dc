"""The run summary a person reads at the end of ``make run``: headline numbers from storage."""

from __future__ import annotations

import io
import json

import polars as pl
import pyarrow.parquet as pq

from insightflow_assets.evaluation.offline import HEADLINE_K, metrics_table
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
    """The summary lines; ``materialized`` is this run's metadata per asset (`RunOutcome`)."""
    materialized = materialized or {}
    lines: list[str] = input_lines(
        materialized.get("raw_order_products"), (materialized.get("orders_imputed") or {}).get("unknown_fields")
    )
    orders = _rows(storage, "raw_orders", run_key)
    lines_n = _rows(storage, "raw_order_products", run_key)
    products = _rows(storage, "products", run_key)
    if orders is not None:
        lines.append(f"input: {orders:,} orders, {lines_n or 0:,} order lines, {products or 0:,} products")

    mice = _json(storage, "mice_checks", "mice_checks.json", run_key)
    if mice:
        lines.append("MICE mask-and-recover (RMSE on hidden known values):")
        lines.append(f"  {'column':<24}{'MICE':>8}{'mean':>8}{'median':>8}")
        for col, v in mice["mask_and_recover"].items():
            lines.append(f"  {col:<24}{v['mice']['rmse']:>8.3f}{v['mean']['rmse']:>8.3f}{v['median']['rmse']:>8.3f}")
        b, a = mice["day30"]["before"], mice["day30"]["after"]
        lines.append(
            f"day-30 share {b['day30_share']:.3f} → {a['day30_share']:.3f}; "
            f"last-30-days share {b['last30_share']:.3f} → {a['last30_share']:.3f}"
        )

    als = _json(storage, "als_eval", "metrics.json", run_key)
    if als:
        post = _json(storage, "als_postrank", "metrics.json", run_key)
        report = post if post and "methods" in post else als
        lines += evaluation_lines(report)
        selection = _json(storage, "model_selection", "selection.json", run_key)
        if post and selection:
            lines += exported_lines(post, selection)

    seg_key = artifact("user_seg").keys(run_key)["user_seg.parquet"]
    if storage.exists(seg_key):
        seg = pl.read_parquet(io.BytesIO(storage.read_bytes(seg_key)))
        counts = seg.group_by("segment", "segment_label").len().sort("segment")
        lines.append(
            "\nsegments: " + ", ".join(f"{r['segment']} {r['segment_label']} ({r['len']:,})" for r in counts.iter_rows(named=True))
        )
    exports = artifact("exports").keys(run_key)["bedrock_inputs.jsonl"]
    if storage.exists(exports):
        n = storage.read_bytes(exports).count(b"\n")
        lines.append(f"exports: {n} cohort users in bedrock_inputs.jsonl")

    manifest = read_manifest(storage)
    if manifest:
        note = (
            "this run"
            if manifest["run_key"] == run_key
            else "not this run: a blocking check failed or was skipped, or a newer run is latest"
        )
        lines.append(f"latest/ → {manifest['run_key']} ({note})")
    return lines


def checks_summary(checks: list[dict], skipped: list[str]) -> list[str]:
    """The asset-check lines of the run summary: counts, then each failure and warning.

    Skipped checks are named on the count line: a check that never ran is the one a reader
    would otherwise take for passed.
    """
    if not checks and not skipped:
        return []
    passed = sum(c["passed"] for c in checks)
    line = f"asset checks: {passed}/{len(checks)} passed"
    if skipped:
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
    best = max(ranking, key=ranking.get)
    out.append(f"  best on the holdout at map@{k}: {best} ({ranking[best]:.4f})")
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
