"""Events form (issue 16): does weighting views / carts / purchases help, and does the category
re-rank cost recall? Measured on generated RetailRocket-shaped data, on the cut-off holdout.

    .venv/bin/python benchmarks/bench_events_quality.py                  # 200,000 visitors
    .venv/bin/python benchmarks/bench_events_quality.py --visitors 1407580 --small-grid

Protocol (`ratings.events`): test cut-off = the last 15 % of the log's span (the peer's rule);
the target of a visitor = the items they add to the cart or buy after it. Hyperparameters are
chosen on a validation cut-off taken the same way inside the test split's training events (the
model never sees the test window while choosing). Every target visitor is scored: visitors the
model does not know (cold ones, and for purchase-only ALS every visitor who never bought) get
the popular list -- the peer's fallback -- so the methods differ on the warm visitors only;
``warm_recall@20`` is Recall@20 over the visitors with a training event.

Methods: popularity (distinct visitors who carted or bought), ALS on weighted ratings (view 1,
cart 4, purchase 8), ALS on purchase-only ratings, and, on the weighted ALS's top-100, the
availability filter alone (alpha 1, beta 0) and the peer's category re-rank (0.6 / 0.4, fixed
and adaptive). Metrics: `evaluation.event_metrics` (the peer's set). The machine may be
shared: each stage records CPU seconds and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from benchmarks._common import RESULTS, Stages, machine, markdown, write_results  # noqa: E402
from benchmarks.bench_transactions import cpu_and_load  # noqa: E402
from insightflow_assets.ratings.events import DEFAULT_WEIGHTS  # noqa: E402

N = 20  # list length: Recall@20 is the peer's headline
DEPTH = 100  # candidates the re-rank reorders (the peer's popular_k / candidate depth)
COLUMNS = ["method", "params", "recall@20", "warm_recall@20", "precision@5", "ndcg@10", "hit_rate@5",
           "coverage@5", "novelty@5", "diversity@5", "warm_coverage@5", "warm_diversity@5", "cold_share",
           "reranked_share"]  # fmt: skip
TIMING_COLUMNS = ["stage", "rows", "seconds", "cpu_s", "load_1m", "peak_rss_mb"]
VARIANTS = {"weighted": DEFAULT_WEIGHTS, "purchase_only": {"transaction": 1}}
POPULAR = {"addtocart": 1, "transaction": 1}  # the peer's popular list counts carts and purchases
EMPTY_BASKETS = pl.DataFrame(schema={"user_id": pl.Int32, "order_number": pl.Int16, "product_id": pl.Int32})


@dataclass
class Fold:
    """One cut-off: its split and what every method of it is served and scored with."""

    split: object  # ratings.events.CutoffSplit
    history: pl.DataFrame  # user_id, product_id per training event
    item_paths: pl.DataFrame
    available: pl.DataFrame
    popular: pl.DataFrame  # ratings of carts/purchases: global_popularity reads them
    users: pl.Series  # every target visitor
    warm: pl.Series


def make_fold(snap, split) -> Fold:
    from insightflow_assets.postrank.category import item_paths_at
    from insightflow_assets.ratings.events import event_ratings

    history = split.train.select(pl.col("visitor_id").cast(pl.Int32).alias("user_id"), pl.col("item_id").cast(pl.Int32).alias("product_id"))
    available = snap.available_at(split.cutoff).select(pl.col("item_id").cast(pl.Int32).alias("product_id"), "available")
    return Fold(
        split, history, item_paths_at(snap, split.cutoff), available,
        event_ratings(split.train, weights=POPULAR, reference_time=split.cutoff),
        split.users["user_id"], split.users.filter(~pl.col("cold"))["user_id"],
    )  # fmt: skip


def with_fallback(recs: pl.DataFrame, fold: Fold) -> pl.DataFrame:
    """Every target visitor's list: the model's, else the popular one."""
    from insightflow_assets.evaluation.baselines import global_popularity
    from insightflow_assets.recommenders.base import with_source

    missing = fold.users.filter(~fold.users.is_in(recs["user_id"].unique().implode()))
    fill = with_source(global_popularity(fold.popular, missing, N), "fallback")
    return pl.concat([recs.select(fill.columns).cast(fill.schema), fill])


def als_lists(fold: Fold, variant: str, params: dict, windows: dict, n: int) -> pl.DataFrame:
    """Top-``n`` ALS lists of the fold's target visitors the model knows (no fallback)."""
    from insightflow_assets.ratings.events import event_ratings
    from insightflow_assets.recommenders.als import Als
    from insightflow_assets.recommenders.base import TrainingWindow

    rating_keys = ("half_life_days", "min_interactions")
    key = (variant, *(params.get(k) for k in rating_keys))
    if key not in windows:  # one window per ratings: ALS fits differing in iterations share it
        m = params.get("min_interactions", 1)
        r = event_ratings(fold.split.train, weights=VARIANTS[variant], half_life_days=params.get("half_life_days"),
                          reference_time=fold.split.cutoff, min_user_interactions=m, min_item_interactions=m)
        windows[key] = TrainingWindow(r, baskets=EMPTY_BASKETS)
    rec = Als(**{k: v for k, v in params.items() if k not in rating_keys}).fit(windows[key])
    return rec.recommend(fold.users.to_numpy(), n)


def score(fold: Fold, recs: pl.DataFrame) -> dict:
    from insightflow_assets.evaluation.event_metrics import event_metrics

    out = event_metrics(recs, fold.split.truth, train=fold.history, item_paths=fold.item_paths, users=fold.users)
    # cold visitors all get the same popular list: the warm ones show what a method changes
    warm = event_metrics(recs, fold.split.truth, train=fold.history, item_paths=fold.item_paths, users=fold.warm)
    out.update({f"warm_{k}": warm[k] for k in ("recall@20", "coverage@5", "diversity@5")})
    return out


def grid(small: bool) -> dict[str, list[dict]]:
    base = {"factors": 64, "regularization": 0.05}
    alphas = (4.0, 16.0) if small else (1.0, 4.0, 16.0)
    filters = (1, 5)  # the peer filters 5/5
    lives = (None, 14.0)
    out: dict[str, list[dict]] = {}
    for variant in VARIANTS:
        decays = lives if variant == "weighted" else (None,)
        out[variant] = [
            {**base, "alpha": a, "iterations": it, "min_interactions": m, "half_life_days": h}
            for a, m, h, it in itertools.product(alphas, filters, decays, (5, 15))
        ]
    return out


def choose(fold: Fold, candidates: dict[str, list[dict]]) -> tuple[dict[str, dict], list[dict]]:
    """Per variant, the parameters with the best validation Recall@20 (all target visitors);
    also under ``VARIANT, unfiltered`` the best with ``min_interactions`` 1."""
    from insightflow_assets.evaluation.metrics import evaluate

    best, rows = {}, []
    for variant, params_list in candidates.items():
        # one fit per group (only iterations differ): dropped after it, so memory holds one fit
        for _, group in itertools.groupby(params_list, key=lambda p: [(k, v) for k, v in p.items() if k != "iterations"]):
            windows: dict = {}
            for params in group:
                lists = with_fallback(als_lists(fold, variant, params, windows, N), fold)
                recall = evaluate(lists, fold.split.truth, ks=(N,))["recall@20"]
                rows.append({"variant": variant, **params, "val_recall@20": recall})
                print(f"    {variant:<14} {_short(params):<60} recall@20={recall:.4f}", flush=True)
                for name in (variant, f"{variant}, unfiltered") if params["min_interactions"] == 1 else (variant,):
                    if name not in best or recall > best[name][1]:
                        best[name] = (params, recall)
    return {v: p for v, (p, _) in best.items()}, rows


def test_methods(fold: Fold, chosen: dict[str, dict]) -> list[dict]:
    from insightflow_assets.evaluation.baselines import global_popularity
    from insightflow_assets.postrank.category import category_rerank
    from insightflow_assets.recommenders.base import with_source

    rows = [_row("popularity (carts+purchases)", "", score(fold, with_source(global_popularity(fold.popular, fold.users, N), "popular")))]
    for variant, params in chosen.items():
        base = variant.split(",")[0]
        if variant != base and params == chosen.get(base):
            continue  # the chosen one is unfiltered already
        lists = als_lists(fold, base, params, {}, DEPTH)  # a fresh window: one fit in memory at a time
        rows.append(_row(f"ALS {variant}", params, score(fold, with_fallback(lists.filter(pl.col("rank") <= N), fold))))
        if variant != "weighted":
            continue
        pop = fold.popular.group_by("product_id").agg(n_users=pl.len())
        # the generator's availability is independent of the events (a third of the target pairs
        # are of items unavailable at the cut-off): the re-rank is also measured without the filter
        for label, a, b, adaptive, avail in (
            ("category re-rank, no availability filter", 0.6, 0.4, False, None),
            ("available only", 1.0, 0.0, False, fold.available),
            ("available + category re-rank", 0.6, 0.4, False, fold.available),
            ("available + category re-rank adaptive", 0.6, 0.4, True, fold.available),
        ):
            recs = category_rerank(lists, fold.history, fold.item_paths, alpha=a, beta=b, n=N, available=avail,
                                   popular=pop, users=fold.users, adaptive=adaptive)  # fmt: skip
            rows.append(_row(f"ALS {variant} + {label}", {"alpha": a, "beta": b, "adaptive": adaptive}, score(fold, recs)))
    return rows


def _row(method: str, params, metrics: dict) -> dict:
    return {"method": method, "params": _short(params), **{c: metrics.get(c) for c in COLUMNS[2:]}}


def _table_rows(rows: list[dict]) -> list[dict]:
    """Four decimals (the shared markdown helper prints two)."""
    return [{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def _short(params) -> str:
    if not isinstance(params, dict):
        return str(params)
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None and k not in ("factors", "regularization"))


def load(args, st: Stages):
    from insightflow_assets.data.events import generate_events
    from insightflow_assets.ingest.events import read_events_form

    with tempfile.TemporaryDirectory(prefix="bench-events-q-") as tmp:
        with st.stage("generate + write csv") as row, cpu_and_load(row):
            counts = generate_events(tmp, visitors=args.visitors, seed=args.seed)
            row["rows"] = counts["events"]
        size_mb = round(sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20, 1)
        with st.stage("read + validate + as-of") as row, cpu_and_load(row):
            snap = read_events_form(tmp)
            row["rows"] = snap.events.height
    return snap, counts, size_mb


def main() -> None:
    import insightflow_assets.evaluation.event_metrics  # noqa: F401  (fail before the grid, not after)
    import insightflow_assets.postrank.category  # noqa: F401
    from insightflow_assets.ratings.events import cutoff_split

    ap = argparse.ArgumentParser()
    ap.add_argument("--visitors", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--small-grid", action="store_true", help="fewer ALS candidates (full-size runs)")
    args = ap.parse_args()
    st = Stages()
    print(f"events quality benchmark at {args.visitors:,} visitors")
    snap, counts, size_mb = load(args, st)
    with st.stage("splits + folds") as row, cpu_and_load(row):
        test_split = cutoff_split(snap.events)
        val_split = cutoff_split(test_split.train)  # the same rule inside the training events
        test, val = make_fold(snap, test_split), make_fold(snap, val_split)
        row["rows"] = test_split.train.height
    with st.stage("validation grid (ALS fits)") as row, cpu_and_load(row):
        chosen, grid_rows = choose(val, grid(args.small_grid))
        row["rows"] = len(grid_rows)
    with st.stage("test: fit chosen + score") as row, cpu_and_load(row):
        methods = test_methods(test, chosen)
        row["rows"] = len(methods)
    payload = {
        "visitors": args.visitors, "users": args.visitors, "seed": args.seed, "generated": counts, "csv_mb": size_mb,
        "splits": {name: _split_info(f) for name, f in (("validation", val), ("test", test))},
        "chosen": chosen, "validation_grid": grid_rows, "methods": methods, "stages": _table_rows(methods), "timings": st.rows, "machine": machine(),
    }  # fmt: skip
    name = f"events_quality-v{args.visitors}" + (f"-s{args.seed}" if args.seed != 42 else "")
    write_results(name, payload, COLUMNS)
    timings = markdown(st.rows, TIMING_COLUMNS)
    md = sorted(RESULTS.glob(f"*-{name}.md"))[-1]
    md.write_text(md.read_text() + "\n" + timings + "\n")
    print("\n" + timings)


def _split_info(fold: Fold) -> dict:
    s = fold.split
    return {"cutoff": str(s.cutoff), "end": str(s.end), "train_events": s.train.height, "target_pairs": s.truth.height,
            "target_visitors": s.users.height, "warm_target_visitors": fold.warm.len(), "cold_share": round(s.cold_share, 4)}  # fmt: skip


if __name__ == "__main__":
    main()
