"""TIFU-KNN next-basket benchmark: fit + top-20 for every user, and its quality.

    .venv/bin/python benchmarks/bench_nbr.py [--users 206209] [--seed 42] [--design 2000] [--als]

Target (issue "Recommendations that beat the customer's own history", 2 cores): building
the TIFU vectors, the neighbours and the top-20 of every user <= 90 s and <= 2 GB extra peak
memory. Data: ``generate_instacart(users, seed)`` in memory; the model is fitted on the
baskets strictly before each user's target basket (``target_cutoffs``, the ``ratings`` rule).

1. Stages (wall time, peak RSS, extra = peak - RSS when the stage started): vectors,
   neighbours (SVD codes + micro-clusters + top-k search), scoring top-20 for all users.
2. Quality on the target baskets (``build_holdout``), all users: map@10 / recall@10 of
   TIFU-KNN beside P-TopFreq and GP-TopFreq (``ratings`` + ``evaluation.baselines``), and
   recall@10 on the explore split (target items new to the user). Hyper-parameters: the
   paper's Instacart values (``TifuParams()``), never tuned on the target.
3. ``--design N``: the neighbour-search choice, measured on a *validation* split (each user's
   basket before the target is the holdout; the model sees only the baskets before it) for N
   sampled users: exact euclidean kNN on the sparse vectors (the paper's search) against the
   SVD space per user and with micro-clusters; neighbour recall against the exact lists, top-10
   agreement with the exact model, map@10 / recall@10, seconds on the sample, and for per-user
   variants the projected full-scale seconds. ``--als`` adds ALS user factors (fitted on the
   validation ratings) as a search space.

Results: ``benchmarks/results/DATE-nbr.json`` (``DATE-nbr-u{users}`` at other sizes) and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Stages, _rss_mb, machine, markdown, write_results  # noqa: E402
from insightflow_assets.evaluation.baselines import gp_topfreq, p_topfreq  # noqa: E402
from insightflow_assets.evaluation.metrics import evaluate  # noqa: E402
from insightflow_assets.nbr.neighbors import search_space  # noqa: E402
from insightflow_assets.nbr.tifu import TifuParams, neighbour_lists, score_users  # noqa: E402
from insightflow_assets.nbr.vectors import (  # noqa: E402
    previous_basket_cutoffs,
    target_cutoffs,
    tifu_user_vectors,
)
from insightflow_assets.ratings.build import build_holdout, build_ratings  # noqa: E402

K = 10
N_RECS = 20


def load(users: int, seed: int, test_share: float):
    """orders (+ is_first_order for the ratings), all order lines, target cutoffs."""
    from insightflow_assets.data.generate import generate_instacart

    tables = generate_instacart(users, seed=seed, test_share=test_share)
    orders = tables["orders"].with_columns(is_first_order=pl.col("order_number") == 1)
    lines = pl.concat([tables["order_products__prior"], tables["order_products__train"]]).select(
        "order_id", "product_id"
    )
    return orders, lines, target_cutoffs(orders, lines)


def fit_and_score(st: Stages, orders, lines, cutoff, params: TifuParams):
    """The three measured stages; returns (recs, vectors, user_ids, item_ids, hoods)."""
    kw = params.knn_kwargs()
    alpha = kw.pop("alpha")
    with st.stage("TIFU vectors") as row:
        row["rss_start_mb"] = round(_rss_mb("VmRSS"))
        x, user_ids, item_ids = tifu_user_vectors(orders, lines, cutoff, **params.vector_kwargs())
        row.update(rows_in=lines.height, rows_out=int(x.nnz))
    with st.stage("neighbours (svd + clusters + top-k)") as row:
        row["rss_start_mb"] = round(_rss_mb("VmRSS"))
        hoods = neighbour_lists(x, None, **kw)
        row.update(rows_in=x.shape[0], rows_out=int(hoods.clusters.size))
    with st.stage(f"score top-{N_RECS}, all users") as row:
        row["rss_start_mb"] = round(_rss_mb("VmRSS"))
        recs = score_users(x, user_ids, item_ids, np.arange(x.shape[0]), hoods, N_RECS, alpha=alpha)
        row.update(rows_in=x.shape[0], rows_out=recs.height)
    fit = st.rows[-3:]
    for r in fit:
        r["extra_mb"] = r["peak_rss_mb"] - r["rss_start_mb"]
    total = {
        "stage": f"fit + top-{N_RECS}, all users", "seconds": round(sum(r["seconds"] for r in fit), 2),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in fit), "rss_start_mb": fit[0]["rss_start_mb"],
        "rows_out": recs.height,
    }
    # conservative: RSS can fall between stages (freed arenas), so take the larger of the
    # worst single-stage extra and the overall peak above the RSS before the fit
    total["extra_mb"] = max(max(r["extra_mb"] for r in fit), total["peak_rss_mb"] - total["rss_start_mb"])
    st.rows.append(total)
    return recs, x, user_ids, item_ids, hoods


def quality(recs_by_method: dict, holdout, history, users=None) -> list[dict]:
    """map@10 / recall@10 (and recall@10 on the explore split) of each method."""
    rows = []
    for name, recs in recs_by_method.items():
        e = evaluate(recs, holdout, (K,), history=history, users=users)
        # 4-decimal strings: the shared markdown helper prints floats with 2 decimals
        rows.append({
            "stage": name, "map@10": _f4(e[f"map@{K}"]), "recall@10": _f4(e[f"recall@{K}"]),
            "explore_recall@10": _f4(e["explore"][f"recall@{K}"]), "n_users": e["n_users"],
        })
    return rows


def _f4(v: float) -> str:
    return f"{v:.4f}"


def _f3(v: float) -> str:
    return f"{float(v):.3f}"


def target_quality(orders, lines, recs, x, user_ids, item_ids, hoods, params) -> list[dict]:
    holdout = build_holdout(orders, lines)
    ratings = build_ratings(orders, lines)
    users = holdout.select("user_id").unique()
    own_only = score_users(x, user_ids, item_ids, np.arange(x.shape[0]), hoods, N_RECS, alpha=1.0)
    return quality(
        {
            "P-TopFreq": p_topfreq(ratings, users, N_RECS),
            "GP-TopFreq": gp_topfreq(ratings, users, N_RECS),
            f"TIFU-KNN (k={params.k_neighbors}, alpha={params.alpha})": recs,
            "TIFU own vector only (alpha=1)": own_only,
        },
        holdout,
        ratings.select("user_id", "product_id"),
    )


# --------------------------------------------------------------------------- #
# design study: how to find the neighbours (validation split)
# --------------------------------------------------------------------------- #
def validation_split(orders, lines, cutoff, params: TifuParams):
    """Vectors fitted before each user's basket-before-target, that basket as
    holdout, and the ratings of the same truncated history (for baselines/ALS)."""
    vcut = previous_basket_cutoffs(orders, lines, cutoff)
    kept = orders.join(vcut.select("user_id", pl.col("cutoff").alias("_c")), on="user_id").filter(
        pl.col("order_number") <= pl.col("_c")
    ).drop("_c")
    kept_lines = lines.join(kept.select("order_id"), on="order_id", how="semi")
    # in the truncated history the validation basket is the last order with lines = the target
    holdout = build_holdout(kept, kept_lines)
    ratings = build_ratings(kept, kept_lines)
    x, user_ids, item_ids = tifu_user_vectors(orders, lines, vcut.select("user_id", "cutoff"), **params.vector_kwargs())
    return x, user_ids, item_ids, holdout, ratings


def _effective_lists(hoods, rows) -> list[set]:
    """Each user's neighbours: its cluster's list without itself, first k."""
    pos = np.searchsorted(hoods.clusters, hoods.labels[rows])
    out = []
    for r, p in zip(rows, pos):
        lst = hoods.lists[p]
        out.append(set(lst[lst != r][: hoods.k].tolist()))
    return out


def _variants(params: TifuParams, factors) -> list[tuple[str, dict]]:
    out = [
        ("exact sparse, per user (paper)", {"neighbor_space": "exact", "cluster_size": 1}),
        ("svd-32, per user", {"neighbor_space": "svd", "dim": 32, "cluster_size": 1}),
        ("svd-64, per user", {"neighbor_space": "svd", "dim": 64, "cluster_size": 1}),
        (f"svd-{params.dim}, clusters of {params.cluster_size} (default)", {}),
        (f"svd-{params.dim}, clusters of 256", {"cluster_size": 256}),
    ]
    if factors is not None:
        out += [
            ("ALS-64 factors, per user", {"neighbor_space": "factors", "cluster_size": 1, "factors": factors}),
            (f"ALS-64 factors, clusters of {params.cluster_size}", {"neighbor_space": "factors", "factors": factors}),
        ]
    return out


def _run_variant(x, user_ids, item_ids, rows, params: TifuParams, overrides: dict) -> dict:
    kw = {**params.knn_kwargs(), **overrides}
    alpha, factors = kw.pop("alpha"), kw.pop("factors", None)
    t0 = time.perf_counter()
    space = search_space(x, kw["neighbor_space"], metric=kw["metric"], dim=kw["dim"], factors=factors, seed=kw["seed"])
    t1 = time.perf_counter()
    hoods = neighbour_lists(x, rows, **kw, space=space)
    t2 = time.perf_counter()
    recs = score_users(x, user_ids, item_ids, rows, hoods, N_RECS, alpha=alpha)
    t3 = time.perf_counter()
    return {"recs": recs, "hoods": hoods, "space_s": t1 - t0, "search_s": t2 - t1, "score_s": t3 - t2}


def _als_factors(ratings, user_ids):
    from insightflow_assets.model.als import fit_als

    model = fit_als(ratings)
    _, rows = model.user_index(user_ids)
    assert rows.size == user_ids.size, "every user with a vector has ratings"
    return model.user_factors[rows]


def design_study(orders, lines, cutoff, params: TifuParams, sample: int, *, als: bool) -> list[dict]:
    x, user_ids, item_ids, holdout, ratings = validation_split(orders, lines, cutoff, params)
    n = x.shape[0]
    rows = np.sort(np.random.default_rng(params.seed).choice(n, min(sample, n), replace=False))
    users = pl.DataFrame({"user_id": user_ids[rows]})
    base = quality({"P-TopFreq": p_topfreq(ratings, users, N_RECS)}, holdout, ratings, users)[0]
    out = [{"variant": "P-TopFreq (validation)", "map@10": base["map@10"], "recall@10": base["recall@10"]}]
    factors = _als_factors(ratings, user_ids) if als else None
    ref_lists = ref_top = None
    for name, overrides in _variants(params, factors):
        res = _run_variant(x, user_ids, item_ids, rows, params, overrides)
        lists = _effective_lists(res["hoods"], rows)
        top = res["recs"].filter(pl.col("rank") <= K).select("user_id", "product_id")
        if ref_lists is None:  # the first variant is the exact reference
            ref_lists, ref_top = lists, top
        q = quality({name: res["recs"]}, holdout, ratings, users)[0]
        row = {
            "variant": name, "map@10": q["map@10"], "recall@10": q["recall@10"],
            "neighbour_recall": _f3(np.mean([len(a & b) / max(len(b), 1) for a, b in zip(lists, ref_lists)])),
            "top10_agreement": _f3(top.join(ref_top, on=["user_id", "product_id"]).height / max(ref_top.height, 1)),
            "space_s": f"{res['space_s']:.1f}", "search_s": f"{res['search_s']:.1f}", "score_s": f"{res['score_s']:.1f}",
        }
        if overrides.get("cluster_size") == 1:  # per-user search and neighbour sums grow with the users
            row["projected_full_s"] = round(res["space_s"] + (res["search_s"] + res["score_s"]) * n / rows.size)
        out.append(row)
        print(f"  {name:<44} {row}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=206_209)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--test-share", type=float, default=0.0)
    ap.add_argument("--design", type=int, default=0, help="users sampled for the neighbour-search study (0: skip)")
    ap.add_argument("--als", action="store_true", help="add ALS user factors to the design study")
    args = ap.parse_args()

    params = TifuParams(seed=args.seed)
    load0 = os.getloadavg()
    print(f"TIFU-KNN benchmark at {args.users:,} users, {params}", flush=True)
    t0 = time.perf_counter()
    orders, lines, cutoff = load(args.users, args.seed, args.test_share)
    print(f"  generated in {time.perf_counter() - t0:.1f} s: {orders.height:,} orders, {lines.height:,} lines")

    st = Stages()
    recs, x, user_ids, item_ids, hoods = fit_and_score(st, orders, lines, cutoff, params)
    print("  evaluating on the target baskets ...", flush=True)
    st.rows += target_quality(orders, lines, recs, x, user_ids, item_ids, hoods, params)
    del recs, x, hoods
    design = design_study(orders, lines, cutoff, params, args.design, als=args.als) if args.design else []

    payload = {
        "benchmark": "nbr", "users": args.users, "seed": args.seed, "test_share": args.test_share,
        "params": params.__dict__, "machine": machine(), "stages": st.rows, "design": design,
        "load_average": {"start": load0, "end": os.getloadavg()},
        "targets": {f"fit + top-{N_RECS}, all users": "<= 90 s and <= 2048 MB extra"},
    }
    name = "nbr" if args.users == 206_209 else f"nbr-u{args.users}"
    cols = ["stage", "seconds", "peak_rss_mb", "extra_mb", "rows_out", "map@10", "recall@10", "explore_recall@10"]
    write_results(name, payload, cols)
    if design:
        print("\nneighbour search (validation split, sampled users):\n")
        print(markdown(design, list(dict.fromkeys(k for r in design for k in r))))


if __name__ == "__main__":
    main()
