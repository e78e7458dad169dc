"""The offline evaluation report: every method scored on the same users and the same holdout.

Pure functions (numpy/polars); the asset only loads inputs and stores the result. The report
keeps the seed's schema ``{"als", "baseline", "lift", "finished_at_utc"}`` and adds the honest
baselines under ``baselines`` and the winner at the headline K.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import polars as pl

from insightflow_assets.evaluation.baselines import global_popularity, gp_topfreq, item_popularity, p_topfreq
from insightflow_assets.evaluation.metrics import coverage, evaluate, intra_list_diversity, novelty

HEADLINE_K = 10
METHOD_LABELS = {
    "als": "ALS",
    "baseline": "Popularity",
    "p_topfreq": "P-TopFreq",
    "gp_topfreq": "GP-TopFreq",
    "als_postrank": "ALS post-rank",
}


def eval_users(holdout: pl.DataFrame, sample: int | None, seed: int) -> np.ndarray:
    """The users every method is scored on: all holdout users, or a seeded sample of them."""
    users = np.sort(holdout["user_id"].unique().to_numpy())
    if sample is not None and 0 < sample < len(users):
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=sample, replace=False))
    return users.astype(np.int32)


def lift(method: dict, baseline: dict) -> dict:
    """Relative lift of a method over the baseline per top-level metric: (m − b) / b."""
    out = {}
    for key, value in method.items():
        if "@" not in key:
            continue
        base = baseline.get(key)
        out[key] = (value - base) / base if base else None
    return out


def baseline_recs(ratings: pl.DataFrame, users: np.ndarray, n: int) -> dict[str, pl.DataFrame]:
    return {
        "baseline": global_popularity(ratings, users, n),
        "p_topfreq": p_topfreq(ratings, users, n),
        "gp_topfreq": gp_topfreq(ratings, users, n),
    }


def baseline_scores(ratings: pl.DataFrame, holdout: pl.DataFrame, users: np.ndarray, ks: tuple[int, ...]) -> dict:
    """The three baselines scored on ``users``: ``{"baseline", "p_topfreq", "gp_topfreq"}``."""
    history = ratings.select("user_id", "product_id")
    return {
        name: evaluate(recs, holdout, ks, history=history, users=users)
        for name, recs in baseline_recs(ratings, users, max(ks)).items()
    }


def baselines_of(report: dict) -> dict:
    """The baseline scores inside a stored report (to reuse them for another method)."""
    return {"baseline": report["baseline"], **report["baselines"]}


def evaluation_report(
    method_recs: pl.DataFrame,
    ratings: pl.DataFrame,
    holdout: pl.DataFrame,
    users: np.ndarray,
    *,
    n_items: int,
    ks: tuple[int, ...],
    method: str = "als",
    baselines: dict | None = None,
) -> tuple[dict, dict]:
    """``(metrics, coverage)`` of one method next to the baselines, in the seed's schema.

    ``history`` for the repeat/explore split is the ratings' (user, product) pairs, i.e. what
    each user bought before the target basket. ``baselines`` (from `baseline_scores`, or a
    stored report on the same users) saves scoring them again.
    """
    kmax = max(ks)
    history = ratings.select("user_id", "product_id")
    scored = {method: evaluate(method_recs, holdout, ks, history=history, users=users)}
    scored.update(baselines if baselines is not None else baseline_scores(ratings, holdout, users, ks))

    key = f"map@{HEADLINE_K}" if HEADLINE_K in ks else f"map@{kmax}"
    ranking = sorted(scored, key=lambda m: scored[m][key], reverse=True)
    metrics = {
        "als": scored[method],
        "baseline": scored["baseline"],
        "lift": lift(scored[method], scored["baseline"]),
        "baselines": {"p_topfreq": scored["p_topfreq"], "gp_topfreq": scored["gp_topfreq"]},
        "method": method,
        "ks": list(ks),
        "n_users_evaluated": int(len(users)),
        "winner": {"metric": key, "method": ranking[0], "value": scored[ranking[0]][key], "ranking": ranking},
        "finished_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    k_cov = HEADLINE_K if HEADLINE_K in ks else kmax
    cov = coverage(method_recs, k=k_cov, n_items=n_items, users=users)
    cov["k"] = k_cov
    return metrics, cov


def list_diversity(recs: pl.DataFrame, item_ids: np.ndarray, item_factors: np.ndarray, ratings: pl.DataFrame, k: int) -> dict:
    """Intra-list diversity (mean pairwise 1 − cosine of ALS item factors) and novelty
    (mean −log2 of the share of users who bought the item) of the top-k lists."""
    return {
        "ild": intra_list_diversity(recs, (item_ids, item_factors), k),
        "novelty": novelty(recs, item_popularity(ratings), k),
    }


def metrics_table(metrics: dict, k: int = HEADLINE_K, extra: dict[str, dict] | None = None) -> list[dict]:
    """Rows (method, precision, recall, map, ndcg, hit_rate at K) for summaries and the UI."""
    methods = {metrics.get("method", "als"): metrics["als"], "baseline": metrics["baseline"], **metrics["baselines"]}
    methods.update(extra or {})
    rows = []
    for name, m in methods.items():
        row = {"method": METHOD_LABELS.get(name, name)}
        for metric in ("precision", "recall", "map", "ndcg", "hit_rate"):
            row[f"{metric}@{k}"] = m.get(f"{metric}@{k}")
        rows.append(row)
    return rows
