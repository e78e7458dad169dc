"""Basket → complements benchmark: `basket_pairs` (with the profile choice) and `basket_eval`'s
work at full scale, query latency, and the PerNIR evaluation on generated data and on UCI
Online Retail.

    .venv/bin/python benchmarks/bench_basket.py [--users 206209] [--eval-users 2000] [--sample 1000] [--skip-full] [--skip-eval]

1. Speed at ``--users`` (generated, seed 42; item embeddings random, the cost does not depend
   on their values): `basket_pairs`' work (`window_lines` + `choose.pairs_and_profile`: the
   pairs and the profile chosen on 300 validation baskets; target ≤ 30 s on 2 cores), the same
   without the choice (`build_pairs`), `basket_eval`'s work (model, queries of 300 target
   baskets, every method) and, for reference, implicit's BM25 item-item fit over every product
   (what `basket_eval` did before it computed only the evaluated items' rows). Then one query
   of each basket size 1–10 (random popular products, segment given and detected in turn):
   p50/p99 wall and thread CPU time in process (target ≤ 2 ms p99).
2. Quality, on generated data (``--eval-users``) and UCI (the transactions form), as a run
   does it: LightFM fitted on the training window (the project's `fit_lightfm`, default
   parameters, ``--epochs``), `pairs_and_profile` chooses the profile on the validation split
   (each customer's second-to-last basket, pairs counted before it), then every method of
   `basket_eval` on the holdout (target baskets, ``--sample`` of them). The validation rows are
   the choice's own numbers (hit@10, MRR@10 of each profile).

Results: benchmarks/results/2026-11-30-basket.{json,md}. The CPU is shared: the load average
is recorded beside each timing, and CPU seconds beside wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, Stages, machine, markdown  # noqa: E402
from insightflow_assets.basket import evaluate as ev  # noqa: E402
from insightflow_assets.basket.assets import methods  # noqa: E402
from insightflow_assets.basket.choose import pairs_and_profile  # noqa: E402
from insightflow_assets.basket.pairs import build_pairs, window_lines  # noqa: E402
from insightflow_assets.basket.recommender import BasketModel  # noqa: E402
from insightflow_assets.ratings.build import build_ratings  # noqa: E402

UCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail" / "online_retail.parquet"
NAME = "2026-11-30-basket"
EVAL_COLUMNS = ["data", "split", "method", "chosen", "hit@10", "mrr@10", "recall_rest@10", "hit@20", "mrr@20", "queries"]


def load_generated(users: int, seed: int = 42):
    from insightflow_assets.data.generate import generate_instacart

    t = generate_instacart(users, seed=seed, missing_rate=0.05, test_share=0.0)
    orders = t["orders"].with_columns(is_first_order=pl.col("order_number") == 1)
    lines = pl.concat([t["order_products__prior"], t["order_products__train"]])
    return orders, lines, t["products"]


def load_uci():
    from insightflow_assets.ingest.transactions import derive_snapshot

    snap = derive_snapshot(UCI).snapshot
    return snap.orders.with_columns(is_first_order=pl.col("order_number") == 1), snap.order_products, snap.products


def segments(orders, lines, products, users) -> pl.DataFrame:
    """user_seg as the asset builds it (RFM + KMeans, default knobs)."""
    from insightflow_assets.segmentation.rfm import rfm_reference_time, rfm_table, segment_users

    table = rfm_table(orders, lines, products, users=users, reference_time=rfm_reference_time(orders))
    seg, _, _ = segment_users(table, k=0, k_min=3, k_max=8, min_segment_share=0.02, seed=42)
    return seg.select("user_id", "segment")


def table(rows: list[dict], columns: list[str]) -> str:
    """`markdown` with the metrics at 4 decimals (its 2 would hide the differences)."""
    return markdown([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows], columns)


def load_avg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# --- 1. speed ------------------------------------------------------------------------------


def speed(users: int, stages: Stages) -> dict:
    orders, lines, products = load_generated(users)
    seg = orders.select(pl.col("user_id").unique().cast(pl.Int32)).with_columns(segment=(pl.col("user_id") % 6).cast(pl.Int8))
    rng = np.random.default_rng(0)
    ids = np.sort(products["product_id"].to_numpy())
    vectors = rng.normal(size=(ids.size, 32)).astype(np.float32)
    # CPU seconds of every thread: what a step costs whatever the other processes do
    with stages.stage("basket_pairs: window_lines + pairs_and_profile", users=users, load=load_avg()) as row:
        cpu = time.process_time()
        pairs, items, info = pairs_and_profile(window_lines(orders, lines, seg), orders, products,
                                               item_ids=ids, item_vectors=vectors)
        row.update(stored_pairs=pairs.height, pair_occurrences=info["pair_occurrences"], cpu_seconds=round(time.process_time() - cpu, 1),
                   chosen=info["profile_choice"]["active"], choice_queries=info["profile_choice"]["queries"])
    with stages.stage("  the same without the choice (build_pairs)", users=users, load=load_avg()) as row:
        cpu = time.process_time()
        build_pairs(window_lines(orders, lines, seg))
        row.update(cpu_seconds=round(time.process_time() - cpu, 1))
    ratings = build_ratings(orders, lines)
    with stages.stage("basket_eval: model + queries + every method", users=users, load=load_avg()) as row:
        cpu = time.process_time()
        model = BasketModel.build(pairs, items, products, item_ids=ids, item_vectors=vectors, profiles=info["profiles"])
        qs = ev.queries(ev.target_baskets(orders, lines, seg), ev.EvalParams(sample_baskets=300))
        ev.evaluate(methods(model, ratings), qs)
        row.update(cpu_seconds=round(time.process_time() - cpu, 1), queries=len(qs))
    with stages.stage("  of which item-item (the evaluated items' rows)", users=users, load=load_avg()) as row:
        cpu = time.process_time()
        ev.item_item_lists(ratings, qs, 20, model.ids[model.popular[-1][:500]])
        row.update(cpu_seconds=round(time.process_time() - cpu, 1))
    with stages.stage("  reference: implicit BM25 fit over every product", users=users, load=load_avg()) as row:
        cpu = time.process_time()
        full_item_item_fit(ratings)
        row.update(cpu_seconds=round(time.process_time() - cpu, 1))
    del orders, lines, ratings
    return {"pairs_info": info, "latency": latency(model, rng)}


def full_item_item_fit(ratings: pl.DataFrame) -> None:
    """What `basket_eval` fitted before: the similarity of every product."""
    from implicit.nearest_neighbours import BM25Recommender

    matrix, _ = ev.user_item_matrix(ratings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit's note that BM25 weighting hands it a COO matrix
        BM25Recommender(K=100, num_threads=1).fit(matrix, show_progress=False)


def latency(model: BasketModel, rng) -> list[dict]:
    """p50/p99 of one query per basket size, wall and thread CPU (1,000 queries each)."""
    pool = model.ids[model.popular[-1][:5000]]
    out = []
    for size in range(1, 11):
        wall, cpu = [], []
        for q in range(1000):
            basket = rng.choice(pool, size, replace=False)
            t0, c0 = time.perf_counter(), time.thread_time()
            model.recommend(basket, 10, segment=None if q % 2 else int(q % 6))
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
        # wall time includes waiting for a core on a shared machine; the thread's CPU time does not
        out.append({"size": size, "p50_ms": float(np.percentile(wall, 50)), "p99_ms": float(np.percentile(wall, 99)),
                    "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p99_ms": float(np.percentile(cpu, 99)),
                    "load": load_avg()})
        print(f"  size {size:>2}: p50 {out[-1]['p50_ms']:.3f} ms  p99 {out[-1]['p99_ms']:.3f} ms  "
              f"cpu p99 {out[-1]['cpu_p99_ms']:.3f} ms", flush=True)
    return out


# --- 2. quality ------------------------------------------------------------------------------


def quality(data: str, orders, lines, products, sample: int, epochs: int) -> tuple[list[dict], dict]:
    """As a run does it: LightFM on the training window, the profile chosen on validation by
    `pairs_and_profile`, then every `basket_eval` method on the holdout."""
    from insightflow_assets.lightfm.fit import LightfmParams, Problem, fit_lightfm

    t0 = time.perf_counter()
    seg = segments(orders, lines, products, orders.select(pl.col("user_id").unique()))
    ratings = build_ratings(orders, lines)
    emb, _ = fit_lightfm(Problem.build(ratings, products, seg), LightfmParams(), epochs)
    pairs, items, info = pairs_and_profile(window_lines(orders, lines, seg), orders, products,
                                           item_ids=emb.item_ids, item_vectors=emb.item_vectors)
    choice = info["profile_choice"]
    print(f"  {data}: chose {choice['active']!r} on {choice['queries']} validation queries", flush=True)
    rows = [{"data": data, "split": "validation", "method": f"blend:{name}", "chosen": "yes" if name == choice["active"] else "",
             **m, "queries": choice["queries"]} for name, m in choice["validation"].items()]
    model = BasketModel.build(pairs, items, products, item_ids=emb.item_ids, item_vectors=emb.item_vectors,
                              profiles=info["profiles"])
    qs = ev.queries(ev.target_baskets(orders, lines, seg), ev.EvalParams(sample_baskets=sample))
    result = ev.evaluate(methods(model, ratings), qs)
    for name, m in result["methods"].items():
        chosen = "yes" if name == f"blend:{choice['active']}" else ""
        rows.append({"data": data, "split": "holdout", "method": name, "chosen": chosen, **m})
    print(f"  {data}: {len(qs)} holdout queries, {time.perf_counter() - t0:.1f} s (load {load_avg()})", flush=True)
    print(table([r for r in rows if r["data"] == data], EVAL_COLUMNS), flush=True)
    return rows, choice


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=206_209)
    ap.add_argument("--eval-users", type=int, default=2000)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip-full", action="store_true", help="keep the last full-scale speed measurement")
    ap.add_argument("--skip-eval", action="store_true", help="keep the last evaluation tables")
    args = ap.parse_args()
    stages = Stages()
    payload: dict = {"machine": machine(), "load_start": load_avg(), "args": vars(args)}
    if not args.skip_full:
        payload["speed_load"] = load_avg()
        payload.update(speed(args.users, stages))
    elif (RESULTS / f"{NAME}.json").exists():  # keep the last full-scale measurement
        last = json.loads((RESULTS / f"{NAME}.json").read_text())
        payload.update({k: last[k] for k in ("pairs_info", "latency", "speed_load") if k in last})
        stages.rows = last.get("stages", [])
    rows, chosen = [], {}
    datasets = ((f"generated {args.eval_users}", lambda: load_generated(args.eval_users)), ("UCI online retail", load_uci))
    if args.skip_eval and (RESULTS / f"{NAME}.json").exists():  # keep the last evaluation
        last = json.loads((RESULTS / f"{NAME}.json").read_text())
        rows, chosen, datasets = last["eval"], last.get("chosen", {}), ()
        payload["eval_load"] = last.get("eval_load", "?") + " (kept from the previous run)"
    eval_start = load_avg()
    for data, tables in datasets:
        got, chosen[data] = quality(data, *tables(), args.sample, args.epochs)
        rows += got
    if datasets:
        payload["eval_load"] = f"{eval_start} at its start, {load_avg()} at its end"
    payload.update(stages=stages.rows, eval=rows, chosen=chosen, load_end=load_avg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(payload, indent=2, default=str))
    md = [f"Load average (1/5/15 min) at start {payload['load_start']}, at end {payload['load_end']} on {os.cpu_count()} cores"
          f" (speed part: at its start {payload.get('speed_load', '?')}).", ""]
    if stages.rows:
        md += [markdown(stages.rows, ["stage", "users", "seconds", "cpu_seconds", "peak_rss_mb", "chosen", "load"]), "",
               table(payload["latency"], ["size", "p50_ms", "p99_ms", "cpu_p50_ms", "cpu_p99_ms", "load"]), ""]
    md += [f"Evaluation: load average {payload.get('eval_load', '?')}.", "", table(rows, EVAL_COLUMNS)]
    md += ["", "Profile chosen on the validation split (hit@10 + MRR@10, pairs counted before the validation baskets):", ""]
    md += [f"- {data}: `{c['active']}` ({c['queries']} queries of {c['baskets']} baskets)" for data, c in chosen.items()]
    (RESULTS / f"{NAME}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
