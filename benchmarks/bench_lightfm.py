"""LightFM (`lightfm_model`'s pure functions): fit time and holdout quality beside GP-TopFreq.

    .venv/bin/python benchmarks/bench_lightfm.py [--data gen2000,uci,gen206209] [--epochs 30]
        [--threads 2] [--validation-sample 0] [--components 32] [--tag NAME]

Per data set, what the asset does, timed in stages: the validation split (each user's
second-to-last basket; the model fitted on the baskets before it), epochs with early stopping
on it, the final fit on the training window for the best number of epochs, and every holdout
user's top-10. Quality: map@10 / recall@10 on the holdout (the last basket, never read
before scoring) with `evaluation.metrics.evaluate`, beside GP-TopFreq (`evaluation.baselines`).
Segments for the customer features come from the segmentation's own functions (RFM + KMeans).

Data: ``gen2000`` / ``gen206209`` = ``generate_instacart(N, seed=42)`` (cached CSVs, see
_common.cached_dataset); ``uci`` = ../shared/data/online_retail through the transactions form.
Timings share 2 cores with other jobs: the load average is recorded with every row.

Results: ``benchmarks/results/DATE-lightfm.{json,md}`` (rows kept per data set and setting,
so a later run at one size adds its rows to the others).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, Stages, cached_dataset, machine, write_results  # noqa: E402

UCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail" / "online_retail.parquet"
K = 10
METRICS = ("map@10", "recall@10", "gp map@10", "gp recall@10")
COLUMNS = ["data", "setting", "stage", "seconds", "cpu_seconds", "peak_rss_mb", "load", "epochs", "best_epoch",
           "map@10", "recall@10", "gp map@10", "gp recall@10", "note"]


def snapshot(data: str):
    """orders (with is_first_order), order lines and products of one data set."""
    from insightflow_assets.imputation.mice import order_features
    from insightflow_assets.ingest.loading import pick_source_files, read_table, validate_snapshot
    from insightflow_assets.ingest.transactions import derive_snapshot

    if data == "uci":
        snap = derive_snapshot(UCI).snapshot
    else:
        users = int(data.removeprefix("gen"))
        # the test share of the data sets other benchmarks cached (no test orders at full scale)
        folder = cached_dataset(users, 42, 0.05, 0.05 if users <= 2000 else 0.0)
        chosen = pick_source_files([p.name for p in folder.iterdir()], str(folder))
        snap = validate_snapshot({stem: read_table(folder / name, stem) for stem, name in chosen.items()}, chosen)
    lines = snap.order_products.select("order_id", "product_id")
    return order_features(snap.orders, snap.order_products), lines, snap.products


def segments(orders, lines, products, ratings) -> pl.DataFrame:
    from insightflow_assets.segmentation.rfm import rfm_reference_time, rfm_table, segment_users

    table = rfm_table(orders, lines, products, users=ratings.select("user_id").unique(),
                      reference_time=rfm_reference_time(orders))
    return segment_users(table, seed=42)[0]


def run(data: str, args) -> list[dict]:
    from insightflow_assets.evaluation.baselines import gp_topfreq
    from insightflow_assets.evaluation.metrics import evaluate, prepare_truth
    from insightflow_assets.lightfm.fit import LightfmParams, top_n, train
    from insightflow_assets.ratings.build import build_holdout, build_ratings
    from insightflow_assets.selection.select import validation_split

    st = Stages()
    setting = (f"d={args.components}, lr {args.learning_rate}, ≤{args.epochs} epochs, patience {args.patience}, {args.threads} threads"
               + (f", validation fitted on {args.validation_sample:,} users" if args.validation_sample else ""))
    print(f"\n== {data}: {setting}", flush=True)
    with st.stage("inputs (ratings, splits, segments)") as row:
        orders, lines, products = snapshot(data)
        ratings, holdout = build_ratings(orders, lines), build_holdout(orders, lines)
        window, truth = validation_split(orders, lines)
        seg = segments(orders, lines, products, ratings)
        row["note"] = f"{ratings['user_id'].n_unique():,} users × {products.height:,} products, {ratings.height:,} pairs"
    params = LightfmParams(no_components=args.components, epochs=args.epochs, patience=args.patience,
                           learning_rate=args.learning_rate,
                           num_threads=args.threads, validation_sample_users=args.validation_sample)
    with st.stage("lightfm_model: validation + final fit") as row:
        row["load"], cpu0 = os.getloadavg()[0], _cpu()
        trained = train(ratings, window.ratings, truth, products, seg, params, log=print)
        users = holdout.join(ratings.select("user_id").unique(), on="user_id", how="semi")["user_id"].unique().sort()
        recs = top_n(trained.embeddings, users, K, params.threads())
        row.update(epochs=len(trained.curve), best_epoch=trained.best_epoch,
                   note=f"validation {trained.validation_seconds:.0f} s, final fit {trained.fit_seconds:.0f} s, "
                        f"top-10 {users.len():,} users")
        row["cpu_seconds"] = round(_cpu() - cpu0, 1)  # all threads: comparable under a shared load
    judged = prepare_truth(holdout, users=users)
    ours, gp = evaluate(recs, judged, (K,)), evaluate(gp_topfreq(ratings, users, K), judged, (K,))
    row.update({"map@10": ours["map@10"], "recall@10": ours["recall@10"],
                "gp map@10": gp["map@10"], "gp recall@10": gp["recall@10"]})
    row["load"] = round((row["load"] + os.getloadavg()[0]) / 2, 1)  # mean of start and end
    for r in st.rows:
        r.update(data=data, setting=setting)
    return st.rows


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="gen2000,uci")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--components", type=int, default=32)
    ap.add_argument("--validation-sample", type=int, default=0)
    ap.add_argument("--learning-rate", type=float, default=0.2)
    args = ap.parse_args()
    saved = sorted(RESULTS.glob("*-lightfm.json"))
    kept = json.loads(saved[-1].read_text())["stages"] if saved else []
    rows: list[dict] = []
    for data in args.data.split(","):
        rows += run(data, args)
    # a rerun of one data set and setting replaces its rows, the others stay
    fresh = {(r["data"], r["setting"]) for r in rows}
    rows = [r for r in kept if (r["data"], r["setting"]) not in fresh] + rows
    for r in rows:  # quality to 4 places (the table's default is 2)
        r.update({m: f"{r[m]:.4f}" for m in METRICS if isinstance(r.get(m), float)})
    sets = sorted({r["data"] for r in rows})
    payload = {"benchmark": "lightfm", "users": " / ".join(sets), "machine": machine(), "stages": rows,
               "targets": {"lightfm_model at 206,209 users": "<= 180 s on 2 cores"}}
    write_results("lightfm", payload, COLUMNS)


if __name__ == "__main__":
    main()
