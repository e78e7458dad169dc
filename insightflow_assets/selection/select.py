"""Model selection without leakage (pure): every candidate is fitted on the baskets before each
user's **second-to-last** basket and scored on that basket; the last basket (the holdout) is
never read here. The winner on validation, baselines included, is what the run exports.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import polars as pl

from insightflow_assets.evaluation.baselines import item_popularity
from insightflow_assets.evaluation.metrics import evaluate, prepare_truth
from insightflow_assets.postrank.export import complete_lists
from insightflow_assets.ratings.build import build_holdout, build_ratings
from insightflow_assets.recommenders import REGISTRY, TrainingWindow
from insightflow_assets.recommenders.base import Candidate

METRIC = "map@10"
REPORTED = ("map@10", "recall@10", "ndcg@10")
PROTOCOL = ("fit on the baskets before each user's second-to-last basket, score on that basket; "
            "the last basket (holdout) is not read")
TIE = 0.01  # two methods within 1 % of each other on the metric are flagged as a tie


def validation_split(orders: pl.DataFrame, lines: pl.DataFrame) -> tuple[TrainingWindow, pl.DataFrame]:
    """The validation window (baskets before the second-to-last) and its truth (that basket)."""
    # baskets built only if a model reads them (TIFU-KNN reads the orders and lines directly)
    window = TrainingWindow(ratings=build_ratings(orders, lines, back=1), orders=orders, lines=lines, back=1)
    return window, build_holdout(orders, lines, back=1)


def validation_users(truth: pl.DataFrame, window: TrainingWindow, sample: int | None, seed: int) -> np.ndarray:
    """Users with a validation basket and some history before it (a seeded sample when large)."""
    users = truth.join(window.ratings.select("user_id").unique(), on="user_id", how="semi")["user_id"].unique().sort()
    arr = users.to_numpy().astype(np.int32)
    if sample is not None and 0 < sample < arr.size:
        arr = np.sort(np.random.default_rng(seed).choice(arr, size=sample, replace=False))
    return arr


def fit_all(candidates: list[Candidate], window: TrainingWindow) -> list:
    """Build and fit every candidate; candidates with an equal fit share it (see `fit_family`)."""
    fitted: dict[tuple, Any] = {}
    out = []
    for cand in candidates:
        rec = cand.build()
        key = (rec.fit_family, json.dumps(rec.fit_params(), sort_keys=True, default=str))
        t0 = time.perf_counter()
        if rec.fit_family is not None and key in fitted:
            rec.adopt(fitted[key], window)
        else:
            rec.fit(window)
            fitted[key] = rec
        out.append((cand, rec, time.perf_counter() - t0))
    return out


def select(
    candidates: list[Candidate],
    window: TrainingWindow,
    truth: pl.DataFrame,
    users: np.ndarray,
    *,
    n: int = 10,
    stop_fall: float | None = TIE,
) -> dict[str, Any]:
    """Score every candidate on the validation baskets and name the winner (`ranking`).
    ``stop_fall``: along a family's path parameter (ALS's iterations) the larger values are not
    tried once a method's score fell by more than this share (`EarlyStop`); None tries them all."""
    popular = item_popularity(window.ratings)
    judged = prepare_truth(truth, users=users)  # prepared once, every candidate is scored on it
    by_index: dict[int, dict] = {}
    fitted = fit_all(candidates, window)
    path = EarlyStop(stop_fall)
    for group in path.order(_sharing_groups(fitted), fitted):
        if reason := path.stopped(fitted[group[0]][1]):
            by_index.update({i: _skipped(fitted[i][0], fitted[i][1], reason) for i in group})
            continue
        t0 = time.perf_counter()
        lists = type(fitted[group[0]][1]).recommend_many([fitted[i][1] for i in group], users, n)
        shared = (time.perf_counter() - t0) / len(group)  # the group's common work, split evenly
        for i, recs in zip(group, lists):
            cand, rec, fit_seconds = fitted[i]
            by_index[i] = _scored(cand, rec, recs, users, n, popular, judged, fit_seconds + shared)
        path.record(fitted[group[0]][1], [by_index[i] for i in group])
    rows = [by_index[i] for i in range(len(fitted))]
    order = ranking(rows)
    winner = rows[order[0]]
    return {
        "metric": METRIC,
        "protocol": PROTOCOL,
        "users": int(users.size),
        "candidates": rows,
        "best_per_method": _best_per_method(rows),
        # per fit family, the fit of its best candidate: what the run's stored model (als_model) is fitted with
        "best_fit": _best_fit(rows),
        "winner": {k: winner[k] for k in ("method", "label", "params", *REPORTED)},
        # other methods (their best configuration) within 1 % of the winner
        "ties": sorted({rows[i]["method"] for i in order[1:] if rows[i]["method"] != winner["method"] and _tied(rows[i], winner)}),
        # family -> why its larger path values were not tried (their rows say "skipped")
        "early_stop": path.reasons(),
    }


UNVALIDATED_DEFAULT = "gp_topfreq"  # what is exported when nothing can be validated: it needs no tuning


def ranking(rows: list[dict]) -> list[int]:
    """Indices of the scored candidates, best first: highest `METRIC`, then recall@10; on an
    exact tie of both a baseline before a model (GP-TopFreq first), then the earlier candidate.
    A model that only equals a baseline (every score 0 on a tiny validation set) is not exported."""

    def tie_rank(row: dict) -> int:
        if row["method"] == UNVALIDATED_DEFAULT:
            return 0
        return 1 if REGISTRY[row["method"]].baseline else 2

    scored = [i for i, row in enumerate(rows) if row[METRIC] is not None]  # not the skipped ones
    return sorted(scored, key=lambda i: (-rows[i][METRIC], -rows[i]["recall@10"], tie_rank(rows[i]), i))


def unvalidated(candidates: list[Candidate]) -> dict[str, Any]:
    """`select`'s report when no user has a validation basket with history before it (e.g. a
    log where everyone has one basket before their last): nothing is scored, every method runs
    with its defaults, and GP-TopFreq (the Reality Check's bar, which needs no tuning) is
    exported. ``unvalidated`` says so in the report, the metadata and the run summary."""
    cls = REGISTRY[UNVALIDATED_DEFAULT]
    return {
        "metric": METRIC,
        "protocol": PROTOCOL,
        "users": 0,
        "candidates": [{"method": c.method, "params": c.params, **{m: None for m in REPORTED}} for c in candidates],
        "best_per_method": {},
        "best_fit": {},
        "winner": {"method": cls.name, "label": cls.label, "params": {}, **{m: None for m in REPORTED}},
        "ties": [],
        "early_stop": {},
        "unvalidated": f"no user has a basket before their second-to-last one, so nothing could be validated; "
        f"{cls.label} (no hyperparameters) is exported and every model runs with its defaults",
    }


class EarlyStop:
    """Early stopping along a family's path parameter (`Recommender.path_param`, ALS's
    iterations): its candidates are scored in ascending order of the parameter, and once a
    method's best validation `METRIC` at one value falls by more than ``fall`` (a share) below
    its score at the previous value, the family's larger values are not tried — the fit would
    only continue a path that already turned down. A fall within ``fall`` (a tie) goes on."""

    def __init__(self, fall: float | None) -> None:
        self.fall = fall
        self.scores: dict[tuple[str, Any], float] = {}  # (method, value) -> best METRIC there
        self.stops: dict[str, tuple[Any, str]] = {}  # family -> (last value tried, why)

    @staticmethod
    def value(rec) -> Any:
        return rec.fit_params().get(rec.path_param) if rec.path_param else None

    def order(self, groups: list[list[int]], fitted: list) -> list[list[int]]:
        """Groups off any path first, in order, then by ascending path value."""
        return sorted(groups, key=lambda g: (self.value(fitted[g[0]][1]) is not None, self.value(fitted[g[0]][1]) or 0))

    def stopped(self, rec) -> str | None:
        value, stop = self.value(rec), self.stops.get(rec.fit_family)
        return stop[1] if value is not None and stop is not None and value > stop[0] else None

    def record(self, rec, rows: list[dict]) -> None:
        value = self.value(rec)
        if self.fall is None or value is None:
            return
        method, score = type(rec).name, max(r[METRIC] for r in rows)
        earlier = [(v, s) for (m, v), s in self.scores.items() if m == method and v < value]
        self.scores[(method, value)] = score
        if not earlier or rec.fit_family in self.stops:
            return
        before, was = max(earlier)
        if was > 0 and (was - score) / was > self.fall:
            self.stops[rec.fit_family] = (value, (
                f"{type(rec).label}'s validation {METRIC} fell from {was:.4f} at {rec.path_param}={before} "
                f"to {score:.4f} at {value} ({(score - was) / was:+.1%}, more than {self.fall:.0%}): "
                f"larger {rec.path_param} not tried"))

    def reasons(self) -> dict[str, str]:
        return {family: why for family, (_, why) in self.stops.items()}


def _skipped(cand: Candidate, rec, reason: str) -> dict:
    return {"method": cand.method, "label": type(rec).label, "params": cand.params,
            **{m: None for m in REPORTED}, "seconds": 0.0, "skipped": reason}


def _sharing_groups(fitted: list) -> list[list[int]]:
    """Candidate indices grouped by class and shared fit (`fit_all`), in order of first
    appearance: a group's lists come from one `recommend_many` call."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, rec, _) in enumerate(fitted):
        key = (type(rec), rec.fit_family, json.dumps(rec.fit_params(), sort_keys=True, default=str))
        groups.setdefault(key if rec.fit_family is not None else (i,), []).append(i)
    return list(groups.values())


def _scored(
    cand: Candidate, rec, recs: pl.DataFrame, users: np.ndarray, n: int, popular, truth, seconds: float
) -> dict:
    """One candidate's row of the report."""
    t0 = time.perf_counter()
    # scored as they would be exported: topped up from popularity to n items
    lists = complete_lists(recs, pl.Series(users), n, popular)
    scores = evaluate(lists, truth, (10,))
    return {
        "method": cand.method,
        "label": type(rec).label,
        "params": cand.params,
        **{m: float(scores[m]) for m in REPORTED},
        "seconds": round(seconds + time.perf_counter() - t0, 2),
    }


def _tied(row: dict, winner: dict) -> bool:
    return winner[METRIC] > 0 and (winner[METRIC] - row[METRIC]) / winner[METRIC] <= TIE


def _best_per_method(rows: list[dict]) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for row in rows:
        if row[METRIC] is not None and (row["method"] not in best or row[METRIC] > best[row["method"]][METRIC]):
            best[row["method"]] = row
    return {m: {"params": r["params"], **{k: r[k] for k in REPORTED}} for m, r in best.items()}


def _best_fit(rows: list[dict]) -> dict[str, dict]:
    """Family -> fit parameters of the family's best candidate on `METRIC` (the earlier one on a
    tie), e.g. ALS's iterations as the ALS or post-rank candidate that scored best chose them."""
    best: dict[str, dict] = {}
    for row in rows:
        cls = REGISTRY[row["method"]]
        if row[METRIC] is None or cls.fit_family is None:
            continue
        if cls.fit_family not in best or row[METRIC] > best[cls.fit_family][METRIC]:
            best[cls.fit_family] = row
    return {fam: {"method": r["method"], "params": REGISTRY[r["method"]](**r["params"]).fit_params(), METRIC: r[METRIC]}
            for fam, r in best.items()}


def default_candidates(als_params: dict[str, Any], grid: dict[str, list[dict[str, Any]]] | None = None) -> list[Candidate]:
    """Every registered method with its grid (ALS-based ones with the run's ALS parameters)."""
    grid = grid if grid is not None else DEFAULT_GRID
    out = []
    for method in REGISTRY:
        for params in grid.get(method, [{}]):
            merged = {**als_params, **params} if REGISTRY[method].fit_family == "als" else dict(params)
            out.append(Candidate(method, merged))
    return out


ALS_ITERATIONS = (2, 5, 15)  # ascending: each count continues the fit of the one before

DEFAULT_GRID: dict[str, list[dict[str, Any]]] = {
    # One set of decays: each set costs a fit and its neighbourhoods (~half the grid's time at
    # 206k users), and the paper's (0.9, 0.7) lost to (1.0, 0.9) on every data set measured
    # (generated 2k and 206k, UCI; README "Model selection"). Alpha rides on the neighbourhood.
    "tifu_knn": [
        {"within_decay": 1.0, "group_decay": 0.9, "k_neighbors": k, "alpha": a}
        for k, a in ((100, 0.7), (900, 0.7), (900, 0.9))
    ],
    # ALS iterations: one fit continued (model.als.AlsPath), so the grid costs one 15-iteration
    # fit plus the validation users' solve and scoring per count. The post-rank re-ranks the
    # ends of that range only: each count costs it a candidate pool and four re-rankings
    # (~14 CPU s at 206k), and at 206k 5 iterations ranked between 2 and 15 in all four of them.
    "als": [{"iterations": i} for i in ALS_ITERATIONS],
    "als_postrank": [
        {"iterations": i, "postrank_alpha": a, "popularity_kind": kind}
        for i in (ALS_ITERATIONS[0], ALS_ITERATIONS[-1]) for kind in ("global", "user") for a in (0.7, 0.3)
    ],
    # Not a candidate: `lightfm_model` chooses its epochs by early stopping on this same
    # validation basket itself, and one more fit here cost ~13 min at 206k users (its
    # holdout numbers are in the evaluation like every method's).
    "lightfm": [],
}
