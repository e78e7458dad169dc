"""The heavy per-line stages as one PySpark application, for ``spark-submit``.

Each stage computes what its polars function computes, to the row (the parity test,
``insightflow_assets_tests/test_spark_parity.py``, holds them together):

* ``ratings`` / ``holdout``: ``insightflow_assets.ratings.build.build_ratings`` / ``build_holdout``;
* ``rfm``: ``insightflow_assets.segmentation.rfm.rfm_table`` (Instacart and dated forms; KMeans
  stays in ``segment_users``, on the one-row-per-user table);
* ``segment_popularity``: ``insightflow_assets.segmentation.popularity.segment_popularity``;
* ``basket_pair_counts`` / ``basket_item_counts``: the counts of ``insightflow_assets.basket.pairs``
  (``window_lines`` then ``count_baskets``: pairs per segment and overall at ``min_support``, and
  baskets per segment and product; ``part: validation``: the validation baskets alone, which the
  profile choice subtracts); the normalising, ranking and profile choice stay in polars;
* ``validate_lines``: the order lines' per-line checks of ``insightflow_assets.ingest.loading``
  (missing ids, unknown orders and products, a product twice in one order), as one row with the
  first problem's one-line message.

This file imports only pyspark and dagster-pipes (what a cluster has), so it restates those
semantics in Spark rather than importing the polars modules.

The work comes as a spec: ``{"tasks": [{"stage", "inputs": {name: path or [paths]}, "output",
"params", "asset_key"}]}`` -- the Pipes extras under Dagster, else a JSON file named by
``--spec`` with ``--no-pipes``. Paths are local paths or ``s3a://`` URIs; every output is ONE
parquet file at ``output`` (the storage layout's key), replaced only once it is complete. Under
Pipes each task with an ``asset_key`` reports a materialization with rows / users / seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from datetime import datetime
from typing import Any, Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

_F32_TINY = 1.1754943508222875e-38  # smallest positive normal Float32 (ratings floor)
_US_PER_DAY = 86_400 * 1_000_000

STAGE_COLUMNS = {
    "orders": ("order_id", "user_id", "order_number", "eval_set", "is_first_order", "days_since_prior_order"),
    "order_products": ("order_id", "product_id"),
    "user_seg": ("user_id", "segment"),
    "ratings": ("user_id", "product_id", "purchases"),
}


# --------------------------------------------------------------------------- #
# inputs and outputs
# --------------------------------------------------------------------------- #
def read_input(spark: SparkSession, name: str, paths: str | list[str], need: tuple[str, ...] = ()) -> DataFrame:
    """The parquet file(s) of one input; a missing column is a one-line error naming file and column."""
    paths = _as_list(paths)
    return require_columns(spark.read.parquet(*paths), name, paths[0], need or STAGE_COLUMNS.get(name, ()))


def require_columns(df: DataFrame, name: str, path: str, need: tuple[str, ...]) -> DataFrame:
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{name} input {path}: column {missing[0]!r} is missing")
    return df


def write_single_parquet(spark: SparkSession, df: DataFrame, path: str, order: tuple[str, ...]) -> None:
    """Write ``df`` sorted by ``order`` as the one parquet file ``path``.

    Spark writes a folder of part files; the layout wants one file per key. The part is written
    beside the target first and renamed over it only when complete, so a failed job leaves the
    stored file as it was.
    """
    jvm = spark.sparkContext._jvm
    Path = jvm.org.apache.hadoop.fs.Path
    tmp = f"{path}.spark-{uuid.uuid4().hex[:8]}"
    # one file is one writing task anyway: sort inside it, which spares a global orderBy its
    # range-sampling pass (a second evaluation of the whole plan)
    df.repartition(1).sortWithinPartitions(*order).write.mode("overwrite").parquet(tmp)
    tmp_path, dst = Path(tmp), Path(path)
    fs = tmp_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    parts = [s.getPath() for s in fs.listStatus(tmp_path) if s.getPath().getName().endswith(".parquet")]
    if len(parts) != 1:
        raise RuntimeError(f"spark wrote {len(parts)} part files for {path}, expected 1")
    fs.mkdirs(dst.getParent())
    if fs.exists(dst):
        fs.delete(dst, False)
    if not fs.rename(parts[0], dst):
        raise RuntimeError(f"could not move the written parquet to {path}")
    fs.delete(tmp_path, True)
    crc = Path(dst.getParent(), f".{dst.getName()}.crc")  # the local file system's checksum file
    if fs.exists(crc):
        fs.delete(crc, False)


# --------------------------------------------------------------------------- #
# ratings and holdout (ratings/build.py)
# --------------------------------------------------------------------------- #
def order_days(orders: DataFrame) -> DataFrame:
    """order_id, user_id, order_number, eval_set, day (Float32): the cumulative gap since the
    user's first order (first order, ``is_first_order`` and null gaps count 0)."""
    by_user = Window.partitionBy("user_id").orderBy("order_number")
    first = F.row_number().over(by_user) == 1
    gap = F.when(
        first | F.coalesce(F.col("is_first_order"), F.lit(False)) | F.col("days_since_prior_order").isNull(), F.lit(0.0)
    ).otherwise(F.col("days_since_prior_order").cast("double"))
    running = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return orders.select(
        "order_id", "user_id", "order_number", "eval_set", F.sum(gap).over(running).cast("float").alias("day")
    )


def target_orders(days: DataFrame, lines: DataFrame, back: int = 0) -> DataFrame:
    """user_id, order_id, order_number, day of each user's target order (``back=1``: the one
    before it, the validation basket): the train order with lines, else the last with lines."""
    key = (F.col("eval_set") == "train").cast("int") * 1_000_000 + F.col("order_number").cast("int")
    pick = Window.partitionBy("user_id").orderBy(key.desc(), F.col("order_id").asc())
    return (
        days.join(lines.select("order_id").distinct(), "order_id", "left_semi")
        .withColumn("_n", F.row_number().over(pick))
        .filter(F.col("_n") == back + 1)
        .select("user_id", "order_id", "order_number", "day")
    )


def holdout(targets: DataFrame, lines: DataFrame) -> DataFrame:
    """Distinct (user_id, product_id) of each target basket, Int32 (stored sorted: ORDER)."""
    return (
        lines.select("order_id", "product_id")
        .join(targets.select("order_id", "user_id"), "order_id")
        .select(F.col("user_id").cast("int"), F.col("product_id").cast("int"))
        .distinct()
    )


def _rating(half_life_days: float | None) -> Column:
    if half_life_days is None:
        return F.count(F.lit(1)).cast("float")
    # 0.5 ** (d / h) == exp(-d ln2 / h); floored so an old purchase never underflows to 0
    w = F.exp(F.col("_dbt").cast("double") * (-math.log(2.0) / half_life_days))
    return F.greatest(F.sum(w), F.lit(_F32_TINY)).cast("float")


def ratings(days: DataFrame, targets: DataFrame, lines: DataFrame, params: dict[str, Any]) -> DataFrame:
    """One row per (user, product) bought before the target: purchases, rating, last_day_before_target."""
    half_life = params.get("half_life_days")
    if half_life is not None and not half_life > 0:
        raise ValueError(f"half_life_days must be > 0 or None, got {half_life!r}")
    t = targets.select("user_id", F.col("order_number").alias("_t_number"), F.col("day").alias("_t_day"))
    dbt = F.greatest(F.col("_t_day") - F.col("day"), F.lit(0.0).cast("float"))  # Float32, as polars
    train = days.join(t, "user_id").filter(F.col("order_number") < F.col("_t_number"))
    pairs = (
        lines.select("order_id", "product_id")
        .join(train.select("order_id", "user_id", dbt.alias("_dbt")), "order_id")
        .groupBy(F.col("user_id").cast("int").alias("user_id"), F.col("product_id").cast("int").alias("product_id"))
        .agg(
            F.count(F.lit(1)).cast("int").alias("purchases"),
            _rating(half_life).alias("rating"),
            F.bround(F.min("_dbt"), 0).cast("int").alias("last_day_before_target"),  # polars rounds half to even
        )
    )
    pairs = _min_interactions(pairs, int(params.get("min_item_interactions", 1)), int(params.get("min_user_interactions", 1)))
    return pairs


def _min_interactions(pairs: DataFrame, min_item: int, min_user: int) -> DataFrame:
    """Item filter, then user filter on what remains (one pass, as build_ratings)."""
    if min_item < 1 or min_user < 1:
        raise ValueError("min_user_interactions and min_item_interactions must be >= 1")
    if min_item > 1:
        keep = pairs.groupBy("product_id").count().filter(F.col("count") >= min_item).select("product_id")
        pairs = pairs.join(keep, "product_id", "left_semi")
    if min_user > 1:
        keep = pairs.groupBy("user_id").count().filter(F.col("count") >= min_user).select("user_id")
        pairs = pairs.join(keep, "user_id", "left_semi")
    return pairs.select("user_id", "product_id", "purchases", "rating", "last_day_before_target")


# --------------------------------------------------------------------------- #
# R/F/M (segmentation/rfm.py rfm_table)
# --------------------------------------------------------------------------- #
def _line_values(lines: DataFrame, products: DataFrame | None, *, quantity: bool) -> tuple[DataFrame, bool]:
    """order_id, _v per line (what M sums) and whether it is money: quantity * unit_price (dated
    form), else the catalogue's price, else 1 per line; a null counts 0."""
    if quantity and {"quantity", "unit_price"} <= set(lines.columns):
        v = F.coalesce(F.col("quantity").cast("double") * F.col("unit_price").cast("double"), F.lit(0.0))
        return lines.select("order_id", v.alias("_v")), True
    if products is not None and "price" in products.columns:
        priced = lines.select("order_id", "product_id").join(
            products.select("product_id", F.col("price").cast("double")), "product_id", "left"
        )
        return priced.select("order_id", F.coalesce("price", F.lit(0.0)).alias("_v")), True
    return lines.select("order_id", F.lit(1.0).alias("_v")), False


def _instacart_rfm(orders: DataFrame, per_order: DataFrame, targets: DataFrame) -> DataFrame:
    """R = the target's gap, F / M = orders / value before it (end of history without target)."""
    ref = (
        orders.groupBy("user_id")
        .agg(F.max(F.col("order_number").cast("int")).alias("_last"))
        .join(targets.select("user_id", F.col("order_number").cast("int").alias("_t")), "user_id", "left")
        .select("user_id", F.coalesce("_t", "_last").alias("_ref"))
    )
    with_ref = orders.select("order_id", "user_id", "order_number", "days_since_prior_order").join(ref, "user_id")
    number = F.col("order_number").cast("int")
    recency = (
        with_ref.filter(number == F.col("_ref"))
        .select("user_id", F.col("days_since_prior_order").cast("double").alias("recency_days"))
        .dropDuplicates(["user_id"])
    )
    fm = (
        with_ref.filter(number < F.col("_ref"))
        .select("order_id", "user_id")
        .join(per_order, "order_id", "left")
        .groupBy("user_id")
        .agg(F.count(F.lit(1)).cast("int").alias("frequency"), F.sum(F.coalesce("_m", F.lit(0.0))).cast("double").alias("monetary"))
    )
    return fm.join(recency, "user_id", "left")


def reference_time(orders: DataFrame, given: str | None) -> datetime:
    """R's reference in the dated form: ``given`` (ISO, naive), else the latest ``order_ts``."""
    latest = orders.select(F.max("order_ts")).first()[0]
    if given is None:
        if latest is None:
            raise ValueError("order_ts is null on every order: no default reference time for recency")
        return latest
    ref = datetime.fromisoformat(given)
    if latest is not None and ref < latest:
        raise ValueError(f"reference time (rfm.reference_date) {ref} is before the latest order_ts {latest}: recency would be negative")
    return ref


def _micros(col: Column) -> Column:
    # session time zone is UTC (launch.SPARK_CONF): a naive order_ts maps to its own wall clock
    return F.unix_micros(col.cast("timestamp"))


def _dated_rfm(orders: DataFrame, per_order: DataFrame, reference: datetime) -> DataFrame:
    """R = days from the last order_ts to the reference, F = orders, M = value, whole history."""
    ref_us = _micros(F.lit(reference.isoformat(sep=" ")).cast("timestamp_ntz"))
    return (
        orders.select("order_id", "user_id", "order_ts")
        .join(per_order, "order_id", "left")
        .groupBy("user_id")
        .agg(
            ((ref_us - _micros(F.max("order_ts"))).cast("double") / _US_PER_DAY).alias("recency_days"),
            F.count(F.lit(1)).cast("int").alias("frequency"),
            F.sum(F.coalesce("_m", F.lit(0.0))).cast("double").alias("monetary"),
        )
    )


def _z_scores(rfm: DataFrame) -> DataFrame:
    """r_z, f_z, m_z: z of log1p(max(x, 0)) with population std, signed so higher is better."""
    cols = {"r_z": ("recency_days", -1.0), "f_z": ("frequency", 1.0), "m_z": ("monetary", 1.0)}
    logs = rfm.select("*", *[F.log1p(F.greatest(F.col(c).cast("double"), F.lit(0.0))).alias(f"_l{z}") for z, (c, _) in cols.items()])
    stats = logs.agg(*[f(f"_l{z}").alias(f"_{n}{z}") for z in cols for f, n in ((F.avg, "mean"), (F.stddev_pop, "std"))])
    out = logs.crossJoin(F.broadcast(stats))
    z = {
        name: F.coalesce(
            F.when(F.col(f"_std{name}") > 0, sign * (F.col(f"_l{name}") - F.col(f"_mean{name}")) / F.col(f"_std{name}")).otherwise(0.0),
            F.lit(0.0),
        ).alias(name)
        for name, (_, sign) in cols.items()
    }
    return out.select(F.col("user_id").cast("int"), "recency_days", "frequency", "monetary", *z.values())


def rfm(orders: DataFrame, lines: DataFrame, products: DataFrame | None, targets: DataFrame | None,
        users: DataFrame | None, params: dict[str, Any]) -> DataFrame:  # fmt: skip
    """Per-user R, F, M and their signed z-scores (rfm_table; stored sorted by user_id)."""
    dated = "order_ts" in orders.columns
    values, money = _line_values(lines, products, quantity=dated)
    per_order = values.groupBy("order_id").agg(F.sum("_v").alias("_m"))
    if dated:
        table = _dated_rfm(orders, per_order, reference_time(orders, params.get("reference_time")))
    else:
        table = _instacart_rfm(orders, per_order, targets)
    if users is not None:
        table = table.join(users.select(F.col("user_id").cast("int")).distinct(), "user_id", "left_semi")
    if money:
        table = table.withColumn("monetary", F.bround("monetary", 6))  # polars rounds half to even
    table = table.filter(F.col("frequency") >= 1).cache()
    median = table.agg(F.median("recency_days")).first()[0]
    table = table.fillna({"recency_days": 0.0 if median is None else float(median)})
    return _z_scores(table)


# --------------------------------------------------------------------------- #
# segment popularity (segmentation/popularity.py)
# --------------------------------------------------------------------------- #
def segment_popularity(user_seg: DataFrame, ratings_df: DataFrame, top_n: int | None = 100) -> DataFrame:
    """Top-N products per segment: buyers, purchases, share, overall_share, lift, rank."""
    if top_n is not None and top_n < 1:
        raise ValueError("top_n must be >= 1 or None")
    rows = ratings_df.select(
        F.col("user_id").cast("int"), F.col("product_id").cast("int"), F.col("purchases").cast("long")
    ).join(user_seg.select(F.col("user_id").cast("int"), F.col("segment").cast("byte")), "user_id")
    per = rows.groupBy("segment", "product_id").agg(
        F.count(F.lit(1)).cast("int").alias("buyers"), F.sum("purchases").alias("purchases")  # one row per (user, product)
    )
    seg, prod, every = Window.partitionBy("segment"), Window.partitionBy("product_id"), Window.partitionBy()
    rank = Window.partitionBy("segment").orderBy(F.col("purchases").desc(), F.col("product_id").asc())
    out = per.select(
        "*",
        (F.col("purchases") / F.sum("purchases").over(seg)).alias("share"),
        (F.sum("purchases").over(prod) / F.sum("purchases").over(every)).alias("overall_share"),
        F.row_number().over(rank).cast("int").alias("rank"),
    ).withColumn("lift", F.col("share") / F.col("overall_share"))
    if top_n is not None:
        out = out.filter(F.col("rank") <= top_n)
    return out.select("segment", "product_id", "buyers", "purchases", "share", "overall_share", "lift", "rank")


# --------------------------------------------------------------------------- #
# basket pair counts (basket/pairs.py: window_lines, segment_pairs, basket_counts)
# --------------------------------------------------------------------------- #
ANY_SEGMENT = -1  # every basket ("any segment"), and the segment of a customer without one


def window_lines(orders: DataFrame, lines: DataFrame, user_seg: DataFrame | None, back: int = 0,
                 part: str = "window") -> DataFrame:  # fmt: skip
    """order_id, segment, product_id, _key, _line of the lines of each customer's orders before
    the target (``part="validation"``: of the last of those orders only, the basket the profile
    choice holds out, as choose.validation_queries picks it); (``_key``, ``_line``) orders a cart
    as pairs.cart_lines does: add_to_cart_order, a null after the known ones, ties in the file's
    line order."""
    if part not in ("window", "validation"):
        raise ValueError(f"basket window part must be 'window' or 'validation', got {part!r}")
    targets = target_orders(order_days(orders), lines, back).select("user_id", F.col("order_number").alias("_t"))
    window = (
        orders.select("order_id", "user_id", "order_number").join(targets, "user_id")
        .filter(F.col("order_number") < F.col("_t")).select("order_id", F.col("user_id").cast("int"), "order_number")
    )  # fmt: skip
    if part == "validation":  # the window's last order with lines; order_id breaks (invalid) number ties
        last = Window.partitionBy("user_id").orderBy(F.col("order_number").desc(), F.col("order_id").asc())
        window = (
            window.join(lines.select("order_id").distinct(), "order_id", "left_semi")
            .withColumn("_n", F.row_number().over(last)).filter(F.col("_n") == 1)
        )  # fmt: skip
    window = window.select("order_id", "user_id")
    if user_seg is not None:
        window = window.join(user_seg.select(F.col("user_id").cast("int"), F.col("segment").cast("int")), "user_id", "left")
    else:
        window = window.withColumn("segment", F.lit(None).cast("int"))
    cart = F.col("add_to_cart_order").cast("long") if "add_to_cart_order" in lines.columns else F.lit(None).cast("long")
    # the line's place in the file, taken at the scan (one file's splits are numbered in order)
    ordered = lines.select(
        "order_id", "product_id", F.coalesce(cart, F.lit(1 << 40)).alias("_key"), F.monotonically_increasing_id().alias("_line")
    )
    return ordered.join(window.select("order_id", "segment"), "order_id").select(
        "order_id", F.coalesce("segment", F.lit(ANY_SEGMENT)).alias("segment"), F.col("product_id").cast("int"), "_key", "_line"
    )


def _counts_per_segment_and_any(df: DataFrame, keys: list[str], name: str) -> DataFrame:
    """Rows per (segment, keys) for the customers' segments, and per keys over every row as
    segment ANY_SEGMENT (rows without a segment count there only): the sum of the segments'."""
    per = df.groupBy("segment", *keys).agg(F.count(F.lit(1)).alias(name)).persist()
    overall = per.groupBy(*keys).agg(F.sum(name).alias(name)).withColumn("segment", F.lit(ANY_SEGMENT))
    both = per.filter(F.col("segment") != ANY_SEGMENT).unionByName(overall)
    return both.select(F.col("segment").cast("byte"), *keys, F.col(name).cast("int"))


def basket_pair_counts(wl: DataFrame, window: int) -> DataFrame:
    """segment, product_id, neighbour_id, count: baskets where the neighbour was added at most
    ``window`` positions after the product (every pair: the task applies the minimum support)."""
    # one cart per row, in cart order: each line then meets the `window` lines after it in its
    # own array, with no join (a self-join on order and position shuffled n * window rows)
    carts = wl.groupBy("order_id", "segment").agg(F.sort_array(F.collect_list(F.struct("_key", "_line", "product_id"))).alias("_c"))
    items = carts.select("segment", F.transform("_c", lambda x: x["product_id"]).alias("_p"))
    lined = items.select("segment", "_p", F.posexplode("_p").alias("_i", "product_id"))
    pairs = lined.select("segment", "product_id", F.explode(F.slice("_p", F.col("_i") + 2, F.lit(window))).alias("neighbour_id"))
    return _counts_per_segment_and_any(pairs, ["product_id", "neighbour_id"], "count")


def basket_item_counts(wl: DataFrame) -> DataFrame:
    """segment, product_id, baskets (one line per product and basket), segment_baskets."""
    items = _counts_per_segment_and_any(wl, ["product_id"], "baskets")
    totals = _counts_per_segment_and_any(wl.select("order_id", "segment").distinct(), [], "segment_baskets")
    return items.join(F.broadcast(totals), "segment").select("segment", "product_id", "baskets", "segment_baskets")


# --------------------------------------------------------------------------- #
# input snapshot: the order lines' per-line checks (ingest/loading.py)
# --------------------------------------------------------------------------- #
NULL_MARKERS = ("", "NA", "NaN", "nan", "null", "NULL", "None")  # loading.NULLS: a missing number
LINE_IDS = ("order_id", "product_id")


def read_source_file(spark: SparkSession, path: str) -> DataFrame:
    """One source file as written (CSV: text, header, gzip by extension; parquet: its types),
    with ``_line``, the line's place in the file."""
    if path.endswith(".parquet"):
        df = spark.read.parquet(path)
    else:
        df = spark.read.option("header", True).option("quote", '"').option("escape", '"').csv(path)
    return df.withColumn("_line", F.monotonically_increasing_id())


def _id_value(col: str) -> Column:
    # typed (and its bad values named) by the polars read of the snapshot: here only its nulls
    v = F.regexp_replace(F.trim(F.col(col).cast("string")), '^"+|"+$', "")
    return F.when(v.isin(*NULL_MARKERS), F.lit(None)).otherwise(v).cast("long")


def lines_problem(files: list[tuple[str, DataFrame]], orders: DataFrame, products: DataFrame) -> str | None:
    """The first problem of the lines files (display name, frame), with loading.py's one-line
    message, in its order: every file's columns and missing ids, then each file's unknown
    orders and products, then a product twice in one order (across the files)."""
    typed = []
    for name, df in files:
        missing = [c for c in LINE_IDS if c not in df.columns]
        if missing:
            found = ", ".join(c for c in df.columns if c != "_line")
            return f"{name}: missing column {missing[0]} (found: {found})"
        df = df.select(*[_id_value(c).alias(c) for c in LINE_IDS], "_line")
        for col in LINE_IDS:
            n_null = df.filter(F.col(col).isNull()).count()
            if n_null:
                return f"{name}: column {col}: {n_null} missing value(s)"
        typed.append((name, df))
    for name, df in typed:
        for col, known, what in (("order_id", orders, "orders"), ("product_id", products, "products")):
            unknown = df.join(known.distinct(), col, "left_anti")
            row = unknown.agg(F.count(F.lit(1)).alias("n"), F.min_by(col, "_line").alias("first")).first()
            if row["n"]:
                return f"{name}: column {col}: {row['n']} line(s) point at unknown {what} (e.g. {row['first']})"
    return _twice_in_order(typed)


def _twice_in_order(typed: list[tuple[str, DataFrame]]) -> str | None:
    every = None
    for i, (_, df) in enumerate(typed):
        part = df.withColumn("_file", F.lit(i))
        every = part if every is None else every.unionByName(part)
    key = Window.partitionBy(*LINE_IDS)
    dup = every.withColumn("_n", F.count(F.lit(1)).over(key)).filter(F.col("_n") > 1)
    first = dup.orderBy("_file", "_line").select(*LINE_IDS).first()
    if first is None:
        return None
    holders = dup.filter((F.col("order_id") == first["order_id"]) & (F.col("product_id") == first["product_id"]))
    files = sorted({r["_file"] for r in holders.select("_file").distinct().collect()})
    names = " and ".join(typed[i][0] for i in files)
    return f"{names}: column product_id: product {first['product_id']} appears twice in order {first['order_id']}"


def _task_validate_lines(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    """One row: ``lines`` checked and the first ``problem`` (null when none). The step raises it
    (ingest.spark_check), so the message is the one line of a local run, not a Spark trace."""
    paths, names = _as_list(inputs["order_products"]), list(params["names"])
    files = [(name, read_source_file(spark, path)) for name, path in zip(names, paths, strict=True)]
    # the source orders and products files, already read and checked by the step (polars)
    orders, products = (read_source_file(spark, inputs[t]).select(_id_value(c).alias(c)) for t, c in
                        (("orders", "order_id"), ("products", "product_id")))  # fmt: skip
    problem = lines_problem(files, orders, products)
    lines = sum(df.count() for _, df in files) if problem is None else None
    return spark.createDataFrame([(lines, problem)], "lines long, problem string")


# --------------------------------------------------------------------------- #
# tasks
# --------------------------------------------------------------------------- #
def _lines(spark: SparkSession, inputs: dict) -> DataFrame:
    return read_input(spark, "order_products", inputs["order_products"])


def _days_targets(spark: SparkSession, inputs: dict, back: int) -> tuple[DataFrame, DataFrame, DataFrame]:
    days = order_days(read_input(spark, "orders", inputs["orders"]))
    lines = _lines(spark, inputs)
    return days, target_orders(days, lines, back), lines


def _task_ratings(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    days, targets, lines = _days_targets(spark, inputs, int(params.get("back", 0)))
    return ratings(days, targets, lines, params)


def _task_holdout(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    _, targets, lines = _days_targets(spark, inputs, int(params.get("back", 0)))
    return holdout(targets, lines)


def _task_rfm(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    paths = _as_list(inputs["orders"])
    orders = spark.read.parquet(*paths)
    dated = "order_ts" in orders.columns
    require_columns(orders, "orders", paths[0], ("order_id", "user_id", "order_ts") if dated else STAGE_COLUMNS["orders"])
    lines = _lines(spark, inputs)
    targets = None if dated else target_orders(order_days(orders), lines)
    products = read_input(spark, "products", inputs["products"], ("product_id",)) if inputs.get("products") else None
    users = read_input(spark, "ratings", inputs["users"], ("user_id",)) if inputs.get("users") else None
    return rfm(orders, lines, products, targets, users, params)


def _task_segment_popularity(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    user_seg = read_input(spark, "user_seg", inputs["user_seg"])
    rated = read_input(spark, "ratings", inputs["ratings"])
    return segment_popularity(user_seg, rated, top_n=params.get("top_n", 100))


def _basket_window(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    orders = read_input(spark, "orders", inputs["orders"])
    user_seg = read_input(spark, "user_seg", inputs["user_seg"]) if inputs.get("user_seg") else None
    return window_lines(orders, _lines(spark, inputs), user_seg, int(params.get("back", 0)), params.get("part", "window"))


def _task_basket_pair_counts(spark: SparkSession, inputs: dict, params: dict) -> tuple[DataFrame, Callable[[], dict]]:
    """The supported counts, and (after the write, from the cached counts) the overall pairs'
    occurrences and distinct pairs before the support: pairs.segment_pairs' stats."""
    window, support = int(params.get("window", 5)), int(params.get("min_support", 3))  # pairs.PairParams' defaults
    if window < 1 or support < 1:
        raise ValueError(f"basket pairs: window and min_support must be >= 1, got {window}, {support}")
    counts = basket_pair_counts(_basket_window(spark, inputs, params), window)
    overall = counts.filter(F.col("segment") == ANY_SEGMENT).agg(
        F.count(F.lit(1)).alias("distinct_pairs"), F.coalesce(F.sum("count"), F.lit(0)).alias("pair_occurrences")
    )
    return counts.filter(F.col("count") >= support), lambda: {k: int(v) for k, v in overall.first().asDict().items()}


def _task_basket_item_counts(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    return basket_item_counts(_basket_window(spark, inputs, params))


def _task_basket_validation_lines(spark: SparkSession, inputs: dict, params: dict) -> DataFrame:
    """The validation baskets' lines (pairs.validation_lines), which the profile choice draws
    its queries from; written in cart order (ORDER), ``_key`` / ``_line`` kept for it."""
    return _basket_window(spark, inputs, {**params, "part": "validation"})


def _as_list(paths: str | list[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


# a task returns its frame, or its frame and a function of metadata to read once it is written
TASKS: dict[str, Callable[[SparkSession, dict, dict], DataFrame | tuple[DataFrame, Callable[[], dict]]]] = {
    "ratings": _task_ratings,
    "holdout": _task_holdout,
    "rfm": _task_rfm,
    "segment_popularity": _task_segment_popularity,
    "basket_pair_counts": _task_basket_pair_counts,
    "basket_item_counts": _task_basket_item_counts,
    "basket_validation_lines": _task_basket_validation_lines,
    "validate_lines": _task_validate_lines,
}


# every output's row order (the polars functions' sort)
ORDER = {
    "ratings": ("user_id", "product_id"),
    "holdout": ("user_id", "product_id"),
    "rfm": ("user_id",),
    "segment_popularity": ("segment", "rank"),
    "basket_pair_counts": ("segment", "product_id", "neighbour_id"),
    "basket_item_counts": ("segment", "product_id"),
    "basket_validation_lines": ("order_id", "_key", "_line"),
    "validate_lines": ("lines",),
}


def run_task(spark: SparkSession, task: dict, pipes: Any | None) -> dict[str, Any]:
    """Compute one task, write its output, report it (under Pipes); returns its metadata."""
    stage = task["stage"]
    if stage not in TASKS:
        raise ValueError(f"unknown stage {stage!r}: expected one of {sorted(TASKS)}")
    t0 = time.perf_counter()
    out = TASKS[stage](spark, task["inputs"], task.get("params") or {})
    df, stats = out if isinstance(out, tuple) else (out, None)  # stats: read after the write
    write_single_parquet(spark, df, task["output"], ORDER[stage])
    extra = stats() if stats is not None else {}
    # a cached frame keeps its share of the heap (up to spark.memory.storageFraction) from the
    # next task's execution memory: with 2g, the basket item counts after the pairs ran out
    spark.catalog.clearCache()
    stored = spark.read.parquet(task["output"])
    meta: dict[str, Any] = {"rows": stored.count(), "path": task["output"], "engine": "spark", **extra}
    if "user_id" in stored.columns:
        meta["users"] = stored.select("user_id").distinct().count()
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    if pipes is not None:
        pipes.log.info(f"spark {stage}: {meta['rows']} rows -> {task['output']}")
        if task.get("asset_key"):
            pipes.report_asset_materialization(asset_key=task["asset_key"], metadata=meta)
        else:  # the launching asset stores the output itself (insightflow_assets.spark.engine)
            pipes.report_custom_message({"stage": stage, **meta})
    return meta


def run_spec(spec: dict, pipes: Any | None = None) -> list[dict[str, Any]]:
    spark = SparkSession.builder.appName(spec.get("app_name", "insightflow-spark")).getOrCreate()
    spark.sparkContext.setLogLevel(spec.get("log_level", "WARN"))
    try:
        return [run_task(spark, task, pipes) for task in spec["tasks"]]
    finally:
        spark.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="InsightFlow's heavy stages on Spark")
    parser.add_argument("--no-pipes", action="store_true", help="run outside Dagster: the spec comes from --spec")
    parser.add_argument("--spec", help="JSON file with the tasks (with --no-pipes)")
    args = parser.parse_args(argv)
    if args.no_pipes:
        if not args.spec:
            parser.error("--no-pipes needs --spec FILE")
        with open(args.spec) as f:
            spec = json.load(f)
        results = run_spec(spec)
        if spec.get("results"):
            with open(spec["results"], "w") as f:
                json.dump(results, f)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        run_spec(dict(pipes.extras), pipes)


if __name__ == "__main__":
    main()
