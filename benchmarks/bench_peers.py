"""Peers benchmark: the project's code beside the tools it replaces, on the same data, in one run.

    .venv/bin/python benchmarks/bench_peers.py [--users 206209] [--seed 42] [--skip-spark]

1. Ratings + RFM from the CSVs: plain pandas written the way the seed's scripts were
   (``pd.read_csv`` of orders and order_products__prior/train, ``merge``, ``groupby``) beside
   the project's polars path (``read_table`` + ``validate_snapshot`` -> ``order_features`` ->
   ``build_ratings``, ``rfm_table``). Both must produce the same ratings and the same RFM;
   the script stops with the differences if they do not.
2. ALS on the project's ratings: Spark MLlib ALS (``local[2]``, the seed ran
   user_seg_rfm_kmeans.py as a Spark app) beside implicit via ``fit_als``; fit time and
   map@10 of both on the same holdout and the same seeded users.

Every measured side runs in a fresh subprocess of this script (``--side ...``), so its peak
RSS (VmHWM, plus the JVM's for Spark) is its own, not left over from a previous side.
``pyspark`` is optional (``--skip-spark`` or not installed: the Spark rows are left out);
it needs a Java 17+ runtime on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import CACHE, cached_dataset, descendants, machine, proc_mb, write_results  # noqa: E402

# Instacart's real share of users whose last order is a "test" order (75,000 of 206,209): the
# target then falls back to the last order with lines, so both branches of the split are used.
TEST_SHARE = 0.364
# No missing values: MICE is not part of this comparison, and with missing_rate=0 the only
# nulls are the first orders' days_since_prior_order, which neither side ever reads as R.
MISSING_RATE = 0.0
EVAL_SAMPLE = 20_000
K = 10
RFM_SAMPLE = 1_000
RESULT_TAG = "RESULT "


# --------------------------------------------------------------------------- #
# measurement helpers (used inside the child processes)
# --------------------------------------------------------------------------- #
def _peak_rss_mb(include_children: bool = False) -> float:
    """This process's peak RSS; with ``include_children`` plus the peaks of its live
    descendants (the Spark JVM), i.e. the footprint of the whole side (an upper bound, as
    the two peaks need not coincide)."""
    total = proc_mb("self", "VmHWM", missing=0.0)
    if include_children:
        total += sum(proc_mb(p, "VmHWM", missing=0.0) for p in descendants(os.getpid()))
    return round(total)


def _emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- #
# side 1a: pandas, the way the seed's scripts did it
# --------------------------------------------------------------------------- #
def side_pandas_ratings(data: Path, work: Path) -> None:
    import numpy as np
    import pandas as pd

    t = {}
    t0 = time.perf_counter()
    # Default dtypes and no usecols, as the seed's awswrangler/pandas scripts read the files.
    orders = pd.read_csv(data / "orders.csv")
    parts = [pd.read_csv(data / f"{stem}.csv") for stem in ("order_products__prior", "order_products__train")
             if (data / f"{stem}.csv").exists()]
    lines = pd.concat(parts, ignore_index=True)
    del parts
    products = pd.read_csv(data / "products.csv")
    t["read"] = time.perf_counter() - t0

    # --- ratings (same definition as ratings.build.build_ratings, half_life_days=None) ---
    t1 = time.perf_counter()
    # Target: the eval_set=train order when it has lines, else the last order with lines.
    # Sorting on (is_train, order_number) and keeping the last row per user picks exactly that.
    with_lines = orders.loc[orders["order_id"].isin(lines["order_id"].unique())]
    with_lines = with_lines.assign(is_train=with_lines["eval_set"].eq("train"))
    target = (
        with_lines.sort_values(["user_id", "is_train", "order_number"])
        .drop_duplicates("user_id", keep="last")[["user_id", "order_number"]]
        .rename(columns={"order_number": "target_number"})
    )
    hist_orders = orders.merge(target, on="user_id")
    hist_orders = hist_orders.loc[hist_orders["order_number"] < hist_orders["target_number"]]
    hist = lines[["order_id", "product_id"]].merge(hist_orders[["order_id", "user_id"]], on="order_id")
    ratings = hist.groupby(["user_id", "product_id"]).size().reset_index(name="purchases")
    del hist, hist_orders, with_lines
    t["ratings"] = time.perf_counter() - t1

    # --- RFM (same definitions as segmentation.rfm.rfm_table, population = ratings' users,
    # as the segmentation asset calls it) ---
    t2 = time.perf_counter()
    ref = orders.groupby("user_id")["order_number"].max().rename("last_number").to_frame()
    ref = ref.join(target.set_index("user_id")["target_number"])
    ref["ref"] = ref["target_number"].fillna(ref["last_number"])  # no target: end of history
    ref = ref.loc[ref.index.isin(ratings["user_id"].unique()), ["ref"]]
    o = orders.merge(ref, left_on="user_id", right_index=True)
    recency = (
        o.loc[o["order_number"] == o["ref"]]
        .drop_duplicates("user_id")
        .set_index("user_id")["days_since_prior_order"]
        .rename("recency_days")
    )
    if "price" in products.columns:
        priced = lines[["order_id", "product_id"]].merge(products[["product_id", "price"]], on="product_id", how="left")
        per_order = priced["price"].fillna(0.0).groupby(priced["order_id"]).sum()
    else:
        per_order = lines.groupby("order_id").size().astype("float64")
    before = o.loc[o["order_number"] < o["ref"], ["order_id", "user_id"]]
    before = before.assign(m=before["order_id"].map(per_order).fillna(0.0))
    rfm = before.groupby("user_id").agg(frequency=("order_id", "size"), monetary=("m", "sum"))
    if "price" in products.columns:
        rfm["monetary"] = rfm["monetary"].round(6)
    rfm = rfm.join(recency).loc[lambda d: d["frequency"] >= 1]
    rfm["recency_days"] = rfm["recency_days"].fillna(rfm["recency_days"].median()).fillna(0.0)
    for col, z, sign in (("recency_days", "r_z", -1.0), ("frequency", "f_z", 1.0), ("monetary", "m_z", 1.0)):
        x = np.log1p(rfm[col].astype("float64").clip(lower=0.0))  # z of the logs, as add_z_scores
        std = x.std(ddof=0)
        rfm[z] = sign * (x - x.mean()) / std if std > 0 else 0.0
    rfm = rfm.reset_index().sort_values("user_id")
    t["rfm"] = time.perf_counter() - t2

    seconds = time.perf_counter() - t0
    peak = _peak_rss_mb()
    ratings.to_parquet(work / "pandas_ratings.parquet", index=False)
    rfm.to_parquet(work / "pandas_rfm.parquet", index=False)
    _emit({"seconds": seconds, "peak_rss_mb": peak, "parts": t})


# --------------------------------------------------------------------------- #
# side 1b: the project's polars path
# --------------------------------------------------------------------------- #
def side_project_ratings(data: Path, work: Path) -> None:
    # pick_source_files imports resources.layout lazily, which loads the resources package and
    # with it dagster (~1.4 s): already loaded in a pipeline run, so not part of reading here.
    import resources.layout  # noqa: F401
    from insightflow_assets.imputation.mice import order_features
    from insightflow_assets.ingest.loading import (
        pick_source_files,
        read_table,
        validate_snapshot,
    )
    from insightflow_assets.ratings.build import build_holdout, build_ratings
    from insightflow_assets.segmentation.rfm import rfm_table

    t = {}
    t0 = time.perf_counter()
    chosen = pick_source_files([p.name for p in data.iterdir()], str(data))
    raw = {stem: read_table(data / name, stem) for stem, name in chosen.items()}
    snap = validate_snapshot(raw, chosen)
    del raw
    t["read"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    # MICE skipped (no missing values in this data set); order_features adds is_first_order,
    # which build_ratings reads.
    features = order_features(snap.orders, snap.order_products)
    ratings = build_ratings(features, snap.order_products)
    t["ratings"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    rfm = rfm_table(features, snap.order_products, snap.products, users=ratings.select("user_id").unique())
    t["rfm"] = time.perf_counter() - t2

    seconds = time.perf_counter() - t0
    peak = _peak_rss_mb()
    # Untimed: the ALS sides and the comparison read these.
    ratings.write_parquet(work / "project_ratings.parquet")
    rfm.write_parquet(work / "project_rfm.parquet")
    build_holdout(features, snap.order_products).write_parquet(work / "holdout.parquet")
    _emit({"seconds": seconds, "peak_rss_mb": peak, "parts": t})


# --------------------------------------------------------------------------- #
# side 2a: implicit via the project's fit_als / recommend
# --------------------------------------------------------------------------- #
def side_implicit_als(work: Path) -> None:
    import numpy as np
    import polars as pl

    from insightflow_assets.model.als import fit_als, recommend

    t0 = time.perf_counter()
    ratings = pl.read_parquet(work / "project_ratings.parquet")
    users = np.load(work / "eval_users.npy")
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    model = fit_als(ratings)  # DEFAULT_PARAMS; builds the CSR matrix, as Spark's fit builds its blocks
    t_fit = time.perf_counter() - t1

    t2 = time.perf_counter()
    # Already-bought items allowed, as the evaluation asset does.
    recs = recommend(model, ratings, users, K, filter_already_bought=False)
    t_rec = time.perf_counter() - t2

    peak = _peak_rss_mb()
    recs.select("user_id", "rank", "product_id").write_parquet(work / "recs_implicit.parquet")
    _emit({"load": t_load, "fit": t_fit, "recommend": t_rec, "peak_rss_mb": peak, "params": model.params})


# --------------------------------------------------------------------------- #
# side 2b: Spark MLlib ALS
# --------------------------------------------------------------------------- #
def side_spark_als(work: Path) -> None:
    import numpy as np
    import polars as pl
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from insightflow_assets.model.als import DEFAULT_PARAMS

    t0 = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("insightflow-bench-peers")
        # local mode: the driver JVM is the executor, so this is the heap ALS works in
        .config("spark.driver.memory", "8g")
        # the default 200 shuffle partitions are pure overhead on 2 cores
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    t_start = time.perf_counter() - t0

    t1 = time.perf_counter()
    ratings = spark.read.parquet(str(work / "project_ratings.parquet")).select(
        F.col("user_id").cast("int"), F.col("product_id").cast("int"), F.col("rating").cast("float")
    )
    ratings = ratings.cache()
    n = ratings.count()  # materialise here so the fit time is ALS only, not parquet reading
    users = np.load(work / "eval_users.npy")
    users_df = spark.createDataFrame([(int(u),) for u in users], ["user_id"]).cache()
    users_df.count()
    t_load = time.perf_counter() - t1

    p = DEFAULT_PARAMS
    als = ALS(
        rank=p["factors"],
        maxIter=p["iterations"],
        regParam=p["regularization"],
        alpha=p["alpha"],
        implicitPrefs=True,
        seed=p["random_state"],
        userCol="user_id",
        itemCol="product_id",
        ratingCol="rating",
    )
    t2 = time.perf_counter()
    model = als.fit(ratings)  # eager: ALS.train materialises both factor RDDs before returning
    t_fit = time.perf_counter() - t2

    t3 = time.perf_counter()
    recs = (
        model.recommendForUserSubset(users_df, K)
        .select("user_id", F.posexplode("recommendations").alias("pos", "rec"))
        .select("user_id", (F.col("pos") + 1).alias("rank"), F.col("rec.product_id").alias("product_id"))
        .toPandas()
    )
    t_rec = time.perf_counter() - t3

    peak = _peak_rss_mb(include_children=True)
    blas = _spark_blas(spark)
    spark.stop()
    pl.from_pandas(recs).with_columns(
        pl.col("user_id").cast(pl.Int32), pl.col("rank").cast(pl.Int16), pl.col("product_id").cast(pl.Int32)
    ).write_parquet(work / "recs_spark.parquet")
    _emit({"start": t_start, "load": t_load, "fit": t_fit, "recommend": t_rec, "peak_rss_mb": peak,
           "ratings_rows": n, "blas": blas})


def _spark_blas(spark) -> str | None:
    # Which netlib implementation MLlib's normal-equation solves ran on (Java, vectorised or native).
    from py4j.protocol import Py4JError

    try:
        return spark.sparkContext._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName()
    except Py4JError:  # class not there in another Spark build
        return None


# --------------------------------------------------------------------------- #
# orchestration (parent process)
# --------------------------------------------------------------------------- #
def run_side(name: str, data: Path, work: Path) -> dict:
    """Run one side in a fresh interpreter; its stdout's RESULT line is the measurement."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", name, "--data", str(data), "--work", str(work)]
    load = os.getloadavg()[0]
    print(f"  {name:<18} running (load {load:.2f}) ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise SystemExit(f"side {name} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_wall"] = wall
    result["load_before"] = round(load, 2)
    print(f"  {name:<18} done in {wall:.1f} s (peak {result['peak_rss_mb']:.0f} MB)", flush=True)
    return result


def compare_ratings_rfm(work: Path, seed: int) -> dict:
    """Stop with the differences unless pandas and the project agree."""
    import numpy as np
    import polars as pl

    pl.Config.set_tbl_cols(-1)  # show every column of a mismatch, not an ellipsis
    pl.Config.set_tbl_width_chars(250)
    problems = []
    a = pl.read_parquet(work / "pandas_ratings.parquet").select(
        pl.col("user_id").cast(pl.Int64), pl.col("product_id").cast(pl.Int64), pl.col("purchases").cast(pl.Int64)
    ).sort("user_id", "product_id")
    b = pl.read_parquet(work / "project_ratings.parquet").select(
        pl.col("user_id").cast(pl.Int64), pl.col("product_id").cast(pl.Int64), pl.col("purchases").cast(pl.Int64)
    ).sort("user_id", "product_id")
    check = {"ratings_rows": [a.height, b.height], "purchases_sum": [int(a["purchases"].sum()), int(b["purchases"].sum())]}
    if a.height != b.height:
        problems.append(f"ratings rows: pandas {a.height:,} vs project {b.height:,}")
    if check["purchases_sum"][0] != check["purchases_sum"][1]:
        problems.append(f"sum of purchases: pandas {check['purchases_sum'][0]:,} vs project {check['purchases_sum'][1]:,}")
    if not problems and not a.equals(b):
        diff = a.join(b, on=["user_id", "product_id"], how="full", suffix="_project").filter(
            pl.col("purchases").ne_missing(pl.col("purchases_project"))
        )
        problems.append(f"ratings differ on {diff.height:,} (user, product) pairs, e.g.\n{diff.head(5)}")

    cols = ["recency_days", "frequency", "monetary", "r_z", "f_z", "m_z"]
    ra = pl.read_parquet(work / "pandas_rfm.parquet").select(
        pl.col("user_id").cast(pl.Int64), *[pl.col(c).cast(pl.Float64) for c in cols]
    )
    rb = pl.read_parquet(work / "project_rfm.parquet").select(
        pl.col("user_id").cast(pl.Int64), *[pl.col(c).cast(pl.Float64) for c in cols]
    )
    check["rfm_users"] = [ra.height, rb.height]
    if set(ra["user_id"].to_list()) != set(rb["user_id"].to_list()):
        problems.append(f"RFM users: pandas {ra.height:,} vs project {rb.height:,} (different sets)")
    else:
        rng = np.random.default_rng(seed)
        sample = rng.choice(rb["user_id"].to_numpy(), size=min(RFM_SAMPLE, rb.height), replace=False)
        sa = ra.filter(pl.col("user_id").is_in(sample)).sort("user_id")
        sb = rb.filter(pl.col("user_id").is_in(sample)).sort("user_id")
        bad = np.zeros(sa.height, dtype=bool)
        for c in cols:
            bad |= ~np.isclose(sa[c].to_numpy(), sb[c].to_numpy(), rtol=1e-9, atol=1e-9)
        check["rfm_sample_users"] = int(sa.height)
        if bad.any():
            shown = sa.filter(pl.Series(bad)).join(sb, on="user_id", suffix="_project").head(5)
            problems.append(f"RFM differs for {int(bad.sum())} of {sa.height} sampled users, e.g.\n{shown}")
    if problems:
        print("\nMISMATCH between pandas and the project:", *problems, sep="\n  - ", file=sys.stderr)
        raise SystemExit(1)
    print(f"  same ratings ({b.height:,} pairs, {check['purchases_sum'][1]:,} purchases) "
          f"and same RFM for {check['rfm_sample_users']:,} sampled users", flush=True)
    return check


def java_version() -> str | None:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60, check=False)
        return (out.stderr or out.stdout).splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def versions(spark: bool) -> dict:
    import implicit
    import numpy
    import pandas
    import polars

    v = {"pandas": pandas.__version__, "polars": polars.__version__, "implicit": implicit.__version__,
         "numpy": numpy.__version__, "pyspark": None, "java": java_version()}
    if spark:
        import pyspark

        v["pyspark"] = pyspark.__version__
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=206_209)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-spark", action="store_true")
    # internal: run one measured side in this (fresh) process
    ap.add_argument("--side", choices=["pandas-ratings", "project-ratings", "implicit-als", "spark-als"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:
        {
            "pandas-ratings": lambda: side_pandas_ratings(args.data, args.work),
            "project-ratings": lambda: side_project_ratings(args.data, args.work),
            "implicit-als": lambda: side_implicit_als(args.work),
            "spark-als": lambda: side_spark_als(args.work),
        }[args.side]()
        return

    import numpy as np
    import polars as pl

    from insightflow_assets.evaluation.metrics import evaluate
    from insightflow_assets.evaluation.offline import eval_users

    spark = not args.skip_spark
    if spark:
        try:
            import pyspark  # noqa: F401
        except ImportError:
            print("pyspark is not installed: the Spark rows are skipped (pip install '.[bench]')")
            spark = False
        if spark and java_version() is None:
            print("no java on PATH: the Spark rows are skipped (apt-get install openjdk-17-jre-headless)")
            spark = False

    load_start = os.getloadavg()
    print(f"peers benchmark at {args.users:,} users (load {load_start[0]:.2f})")
    data = cached_dataset(args.users, args.seed, MISSING_RATE, TEST_SHARE)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="peers-", dir=CACHE))
    try:
        # Sequential on purpose (2 cores). Both read the CSVs from the page cache: ~0.7 GB at
        # full scale, just written by cached_dataset or read by the previous side.
        pd_side = run_side("pandas-ratings", data, work)
        pj_side = run_side("project-ratings", data, work)
        check = compare_ratings_rfm(work, args.seed)

        holdout = pl.read_parquet(work / "holdout.parquet")
        users = eval_users(holdout, EVAL_SAMPLE, args.seed)
        np.save(work / "eval_users.npy", users)

        im_side = run_side("implicit-als", data, work)
        sp_side = run_side("spark-als", data, work) if spark else None

        # Both lists scored by the same function on the same users and baskets.
        def score(name: str) -> dict:
            return evaluate(pl.read_parquet(work / f"recs_{name}.parquet"), holdout, (K,), users=users)

        quality = {"implicit": score("implicit"), "spark": score("spark") if spark else None}
        map_im = quality["implicit"][f"map@{K}"]
        map_sp = quality["spark"][f"map@{K}"] if spark else None
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = ratings_rows(pd_side, pj_side) + als_rows(im_side, sp_side, map_im, map_sp)
    payload = {
        "benchmark": "peers",
        "users": args.users,
        "data": {"missing_rate": MISSING_RATE, "test_share": TEST_SHARE, "seed": args.seed, "folder": data.name},
        "eval_users": len(users),
        "k": K,
        "als_quality": quality,
        "machine": machine(),
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(spark),
        "checks": check,
        "sides": {"pandas-ratings": pd_side, "project-ratings": pj_side, "implicit-als": im_side, "spark-als": sp_side},
        "stages": rows,
        "notes": NOTES,
    }
    write_results("peers", payload, ["stage", "implementation", "seconds", "peak_rss_mb", "time_x", "rss_x", f"map@{K}"])


def _ratio(x: float | None, base: float | None) -> float | None:
    return round(x / base, 2) if x is not None and base else None


def ratings_rows(pd_side: dict, pj_side: dict) -> list[dict]:
    rows = []
    for impl, side in (("polars (project)", pj_side), ("pandas (seed style)", pd_side)):
        rows.append({"stage": "ratings + RFM from CSV", "implementation": impl, "seconds": round(side["seconds"], 2),
                     "peak_rss_mb": side["peak_rss_mb"], "time_x": _ratio(side["seconds"], pj_side["seconds"]),
                     "rss_x": _ratio(side["peak_rss_mb"], pj_side["peak_rss_mb"])})
    # Time only: one process, one peak; the split shows where each side spends it.
    for part, label in (("read", "read CSV"), ("ratings", "ratings"), ("rfm", "RFM")):
        for impl, side in (("polars (project)", pj_side), ("pandas (seed style)", pd_side)):
            rows.append({"stage": f"  of which {label}", "implementation": impl, "seconds": round(side["parts"][part], 2),
                         "time_x": _ratio(side["parts"][part], pj_side["parts"][part])})
    return rows


def als_rows(im: dict, sp: dict | None, map_im: float, map_sp: float | None) -> list[dict]:
    sides = [("implicit (project)", im, map_im)] + ([("Spark MLlib local[2]", sp, map_sp)] if sp else [])
    rows = []
    for impl, side, m in sides:
        rows.append({"stage": "ALS fit (64 x 15)", "implementation": impl, "seconds": round(side["fit"], 2),
                     "peak_rss_mb": side["peak_rss_mb"], "time_x": _ratio(side["fit"], im["fit"]),
                     # a string: the shared table formats floats with 2 decimals
                     "rss_x": _ratio(side["peak_rss_mb"], im["peak_rss_mb"]), f"map@{K}": f"{m:.4f}"})
    for impl, side, _ in sides:
        rows.append({"stage": f"ALS top-{K}, {EVAL_SAMPLE:,} users", "implementation": impl,
                     "seconds": round(side["recommend"], 2), "time_x": _ratio(side["recommend"], im["recommend"])})
    for impl, side, _ in sides:
        # whole process: interpreter + imports (+ JVM start for Spark), load, fit, top-K
        rows.append({"stage": "ALS process end to end", "implementation": impl, "seconds": round(side["process_wall"], 2),
                     "time_x": _ratio(side["process_wall"], im["process_wall"])})
    return rows


NOTES = [
    (
        "Each side runs in its own fresh Python process; peak_rss_mb is that process's VmHWM "
        "(for Spark: Python driver VmHWM + JVM VmHWM, an upper bound of their joint peak). "
        "time_x / rss_x are ratios to the project's row of the same stage (>1 = slower / bigger). "
        "One run per side, not a median; the machine is shared (see load_average)."
    ),
    (
        "Data: generated Instacart-shaped CSVs with missing_rate=0 (MICE skipped on both sides) and "
        "test_share=0.364 (Instacart's share of test users, so targets use both branches: the train "
        "order, or the last order with lines)."
    ),
    (
        "pandas side reads with default dtypes (int64/float64, string eval_set) as the seed's scripts "
        "did, and does no validation; the project's side includes read_table's typed parse and "
        "validate_snapshot's cross-table checks. pandas runs single-threaded, polars on both cores."
    ),
    (
        "Ratings: the same definition on both sides (target order = train order, else last order with "
        "lines; purchases = lines of the (user, product) in orders before the target). Checked: equal "
        "row counts, equal purchase sums and identical (user, product, purchases) rows. RFM: R = the "
        "target's days_since_prior_order, F = orders before the target, M = lines in them, "
        "z-scores ddof=0 with r_z negated, population = users with ratings; checked on a seeded "
        "sample of users (rtol 1e-9)."
    ),
    (
        "ALS: both on the project's ratings (rating = purchases), rank 64, 15 iterations, "
        "regularization 0.05, alpha 15, seed 42 (insightflow_assets.model.als.DEFAULT_PARAMS), not "
        "tuned per library. The objectives differ: MLlib's implicit ALS scales regParam by each "
        "user's / item's number of ratings (ALS-WR: lambda_u = 0.05 * n_u), implicit uses a flat "
        "0.05, so MLlib is far more regularised at the same value; MLlib's confidence is "
        "1 + alpha * r, implicit's alpha * r; MLlib solves exactly (Cholesky), implicit runs 3 CG "
        "steps per sweep. map@10 therefore compares the libraries at the project's settings, not at "
        "each one's best."
    ),
    (
        "Spark: local[2], driver memory 8g, spark.sql.shuffle.partitions=8, default 10 user/item "
        "blocks. Fit time excludes JVM start and reading the ratings (cached and counted before "
        "fit); 'ALS process end to end' includes everything. Top-10 by recommendForUserSubset "
        "(already-bought items allowed, as the project's evaluation does), scored with the "
        "project's evaluate on the same build_holdout baskets and the same eval_users sample."
    ),
]


if __name__ == "__main__":
    main()
