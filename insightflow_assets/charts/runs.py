"""Gathering the evaluation outputs of several runs for the trend charts (pure)."""

from __future__ import annotations

import json
from typing import Any

from resources.layout import RunKeyError, parse_run_key


def _json_or_exc(folder: Any, name: str) -> Any:
    """The parsed file, None when absent, or the exception that reading it raised."""
    if isinstance(folder, Exception):
        return folder
    try:
        return json.loads(folder[name]) if name in folder else None
    except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, not fatal
        return exc


def runs_up_to(current: str, als_eval_runs: dict[str, Any], postrank_runs: dict[str, Any]) -> dict[str, dict]:
    """``{run_key: {"als", "als_coverage", "postrank", "postrank_coverage"}}`` for every run
    not later than ``current`` (by the timestamp of the run key), so re-materializing an old run
    reproduces its charts. A value is a dict, None (absent) or the exception met reading it."""
    limit = parse_run_key(current)
    out: dict[str, dict] = {}
    for key in sorted(set(als_eval_runs) | set(postrank_runs)):
        try:
            ts, tag = parse_run_key(key)
        except RunKeyError:
            continue
        if (ts, tag or "") > (limit[0], limit[1] or ""):
            continue
        als = als_eval_runs.get(key)
        post = postrank_runs.get(key)
        out[key] = {
            "als": _json_or_exc(als, "metrics.json") if als is not None else None,
            "als_coverage": _json_or_exc(als, "coverage.json") if als is not None else None,
            "postrank": _json_or_exc(post, "metrics.json") if post is not None else None,
            "postrank_coverage": _json_or_exc(post, "coverage.json") if post is not None else None,
        }
    return out
