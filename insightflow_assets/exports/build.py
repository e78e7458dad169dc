"""Segment exports and the LLM (Bedrock) input lines (pure polars / numpy, no Dagster).

One function per export file, and :func:`build_exports` that returns them all
as ``{file name: value}`` (a ``pl.DataFrame`` for ``.csv`` / ``.parquet``
files, a ``list[dict]`` for ``bedrock_inputs.jsonl``). Knobs and defaults are
the original script's: ``hv_n=150``, ``rand_n=150``, ``topn_per_segment=5``,
``seed=42``.

Cohorts
    * ``high_value``: the ``hv_n`` users with the highest ``hv`` (ties by
      ``user_id`` ascending), ordered by hv desc;
    * ``random``: ``rand_n`` users drawn without replacement by
      ``numpy.random.default_rng(seed).choice`` over the users sorted by
      ``user_id``, ordered by user_id.

    A user can be in both cohorts; they then appear once per cohort.

Recommendations (``user_recos``): per cohort user, their personal
post-ranked list cut to the K = ``topn_per_segment`` best ranks, topped up
to K from their segment's Top-K (skipping products already listed; rows get
``source="segment_top"``), renumbered ``rank`` 1..K.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

from insightflow_assets.frames import customer_codes

Frame = pl.DataFrame | pl.LazyFrame

__all__ = [
    "COHORTS",
    "EXPORT_FILES",
    "SCHEMA_PATH",
    "bedrock_lines",
    "bedrock_schema",
    "build_exports",
    "centroids_frame",
    "jsonl_text",
    "overview_frame",
    "reason_for",
    "segment_topn_frame",
    "user_recos_frame",
    "users_high_value_frame",
    "users_random_frame",
    "validate_bedrock_lines",
    "write_exports",
]

COHORTS = ("high_value", "random")
SCHEMA_PATH = Path(__file__).with_name("bedrock_inputs.schema.json")
EXPORT_FILES = (
    "overview.csv",
    "centroids.parquet",
    "segment_topn.parquet",
    "users_high_value.parquet",
    "users_random.parquet",
    "user_recos.csv",
    "user_recos.parquet",
    "bedrock_inputs.jsonl",
)

USER_COLUMNS = [
    "user_id",
    "customer_code",
    "recency_days",
    "frequency",
    "monetary",
    "r_z",
    "f_z",
    "m_z",
    "segment",
    "segment_label",
    "hv",
]
SEGMENT_TOPN_COLUMNS = [
    "segment",
    "segment_label",
    "rank",
    "product_id",
    "product_code",
    "product_name",
    "aisle",
    "department",
    "buyers",
    "purchases",
    "share",
    "overall_share",
    "lift",
]
USER_RECOS_COLUMNS = [
    "cohort",
    "user_id",
    "customer_code",
    "segment",
    "segment_label",
    "rank",
    "product_id",
    "product_code",
    "product_name",
    "aisle",
    "department",
    "source",
]


def _df(frame: Frame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def _product_info(products: Frame) -> pl.DataFrame:
    """``product_id Int32, product_code, product_name, aisle, department`` (Strings)."""
    p = _df(products)
    cols = {
        "product_code": pl.String,
        "product_name": pl.String,
        "aisle": pl.String,
        "department": pl.String,
    }
    return p.select(
        pl.col("product_id").cast(pl.Int32),
        *[
            (pl.col(c).cast(t) if c in p.columns else pl.lit(None, dtype=t)).alias(c)
            for c, t in cols.items()
        ],
    ).unique(subset="product_id", keep="first")


def _with_product_info(frame: pl.DataFrame, products: Frame) -> pl.DataFrame:
    """Left-join codes and names; a product missing from the catalogue gets
    ``"product <id>"`` and aisle / department ``"unknown"``. ``product_code`` is the
    retailer's id (the transactions and events forms keep it), else the product id."""
    return (
        frame.join(_product_info(products), on="product_id", how="left")
        .with_columns(
            product_code=pl.coalesce("product_code", pl.col("product_id").cast(pl.String)),
            product_name=pl.coalesce(
                "product_name", pl.format("product {}", pl.col("product_id"))
            ),
            aisle=pl.col("aisle").fill_null("unknown"),
            department=pl.col("department").fill_null("unknown"),
        )
    )


# --------------------------------------------------------------------------- #
# segment-level files
# --------------------------------------------------------------------------- #
def overview_frame(centroids: pl.DataFrame) -> pl.DataFrame:
    """``overview.csv``: segment, segment_label, users, share and the mean
    recency_days, frequency, monetary of the segment (one row per segment)."""
    return centroids.select(
        "segment", "segment_label", "users", "share", "recency_days", "frequency", "monetary"
    ).sort("segment")


def centroids_frame(centroids: pl.DataFrame) -> pl.DataFrame:
    """``centroids.parquet``: the centroid frame of ``segment_users``, by segment."""
    return centroids.sort("segment")


def segment_topn_frame(
    segment_popularity: Frame,
    products: Frame,
    centroids: pl.DataFrame | None = None,
    *,
    topn_per_segment: int = 5,
) -> pl.DataFrame:
    """``segment_topn.parquet``: the Top-K (``topn_per_segment``) of each
    segment, narrowed from ``segment_popularity``'s Top-N (rank <= K after
    re-ranking by the popularity rank), with product name, aisle, department
    and the segment label (null without ``centroids``).

    Columns: ``segment, segment_label, rank, product_id, product_name, aisle,
    department, buyers, purchases, share, overall_share, lift`` sorted by
    ``segment, rank``.
    """
    if topn_per_segment < 1:
        raise ValueError("topn_per_segment must be >= 1")
    sp = _df(segment_popularity)
    top = (
        sp.sort("segment", "rank", "product_id")
        .with_columns(rank=(pl.int_range(pl.len()).over("segment") + 1).cast(pl.Int32))
        .filter(pl.col("rank") <= topn_per_segment)
    )
    if centroids is not None:
        top = top.join(
            centroids.select("segment", "segment_label"), on="segment", how="left"
        )
    else:
        top = top.with_columns(segment_label=pl.lit(None, dtype=pl.String))
    return _with_product_info(top, products).select(SEGMENT_TOPN_COLUMNS).sort("segment", "rank")


# --------------------------------------------------------------------------- #
# cohorts
# --------------------------------------------------------------------------- #
def _with_codes(users: pl.DataFrame) -> pl.DataFrame:
    """``customer_code``: the retailer's id of each user (`frames.customer_codes`), else the user id."""
    code = pl.col("user_id").cast(pl.String)
    if "customer_code" in users.columns:
        code = pl.coalesce(pl.col("customer_code").cast(pl.String), code)
    return users.with_columns(customer_code=code)


def users_high_value_frame(user_seg: pl.DataFrame, *, hv_n: int = 150) -> pl.DataFrame:
    """``users_high_value.parquet``: exactly the ``hv_n`` users with the highest
    ``hv`` (ties by user_id asc; fewer if fewer users), ordered by hv desc."""
    if hv_n < 0:
        raise ValueError("hv_n must be >= 0")
    return (
        _with_codes(user_seg).select(USER_COLUMNS)
        .sort(["hv", "user_id"], descending=[True, False])
        .head(hv_n)
    )


def users_random_frame(user_seg: pl.DataFrame, *, rand_n: int = 150, seed: int = 42) -> pl.DataFrame:
    """``users_random.parquet``: ``min(rand_n, users)`` users drawn without
    replacement with ``numpy.random.default_rng(seed).choice`` over the users
    sorted by ``user_id`` (so the draw only depends on the set of users and
    the seed), returned sorted by ``user_id``."""
    if rand_n < 0:
        raise ValueError("rand_n must be >= 0")
    base = _with_codes(user_seg).select(USER_COLUMNS).sort("user_id")
    n = min(int(rand_n), base.height)
    idx = np.sort(np.random.default_rng(seed).choice(base.height, size=n, replace=False))
    return base[idx] if n else base.head(0)


def _cohorts(high_value: pl.DataFrame, random: pl.DataFrame) -> pl.DataFrame:
    """``cohort, _pos, user_id, customer_code, segment, segment_label`` in output order."""
    parts = []
    for name, frame in zip(COHORTS, (high_value, random)):
        parts.append(
            frame.select(
                pl.lit(name).alias("cohort"),
                pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos"),
                pl.col("user_id").cast(pl.Int32),
                pl.col("customer_code").cast(pl.String),
                pl.col("segment").cast(pl.Int8),
                pl.col("segment_label").cast(pl.String),
            )
        )
    return pl.concat(parts, how="vertical").with_columns(
        _cohort_order=pl.col("cohort").replace_strict(
            {c: i for i, c in enumerate(COHORTS)}, return_dtype=pl.Int8
        )
    )


def user_recos_frame(
    high_value: pl.DataFrame,
    random: pl.DataFrame,
    user_recos: Frame,
    segment_topn: pl.DataFrame,
    products: Frame,
    *,
    topn_per_segment: int = 5,
) -> pl.DataFrame:
    """``user_recos.csv`` / ``.parquet``: cohort x Top-K recommendations.

    Per cohort user: their ``user_recos`` rows with the K best ranks
    (K = ``topn_per_segment``), then -- when fewer than K -- their segment's
    Top-K products (``segment_topn`` order) not already listed, with
    ``source="segment_top"``; ``rank`` renumbered 1..K (Int16). A segment
    Top-K of K products always completes a list to K.

    Columns: ``cohort, user_id, segment, segment_label, rank, product_id,
    product_name, aisle, department, source``; rows in cohort order
    (high_value by hv desc, then random by user_id), then rank.
    """
    k = int(topn_per_segment)
    if k < 1:
        raise ValueError("topn_per_segment must be >= 1")
    cohorts = _cohorts(high_value, random)
    users = cohorts.select("user_id").unique()
    personal = (
        _df(
            user_recos.lazy()
            .select(
                pl.col("user_id").cast(pl.Int32),
                pl.col("rank").cast(pl.Int32),
                pl.col("product_id").cast(pl.Int32),
                pl.col("source").cast(pl.String),
            )
            .join(users.lazy(), on="user_id", how="semi")
        )
        .sort("user_id", "rank", "product_id")
        .unique(subset=["user_id", "product_id"], keep="first", maintain_order=True)
        .with_columns(_r=pl.int_range(pl.len()).over("user_id"))
        .filter(pl.col("_r") < k)
        .select("user_id", "product_id", "source", _o=pl.col("_r").cast(pl.Int64))
    )
    seg_top = segment_topn.select(
        pl.col("segment").cast(pl.Int8),
        pl.col("product_id").cast(pl.Int32),
        _o=pl.col("rank").cast(pl.Int64) + k,  # after any personal row
    )
    user_seg_of = cohorts.select("user_id", "segment").unique(subset="user_id")
    fill = (
        user_seg_of.join(seg_top, on="segment", how="inner")
        .join(personal.select("user_id", "product_id"), on=["user_id", "product_id"], how="anti")
        .select("user_id", "product_id", pl.lit("segment_top").alias("source"), "_o")
    )
    lists = (
        pl.concat([personal, fill], how="vertical")
        .sort("user_id", "_o", "product_id")
        .with_columns(rank=(pl.int_range(pl.len()).over("user_id") + 1).cast(pl.Int16))
        .filter(pl.col("rank") <= k)
        .select("user_id", "rank", "product_id", "source")
    )
    out = cohorts.join(lists, on="user_id", how="inner").sort("_cohort_order", "_pos", "rank")
    return _with_product_info(out, products).select(USER_RECOS_COLUMNS)


# --------------------------------------------------------------------------- #
# Bedrock / LLM lines
# --------------------------------------------------------------------------- #
def reason_for(source: str, purchases_before: int = 0, segment_label: str | None = None) -> str:
    """A short human-readable reason for one recommendation.

    A product the user already bought is a repurchase whatever the source:
    ``"bought N times before"`` (``"bought once before"`` for 1). Otherwise by
    source: ``segment_top`` -> ``"popular in your segment '<label>'"``,
    ``als`` -> ``"people with similar baskets buy it"``, ``neighbors`` (the next-basket
    model's nearest customers) -> ``"customers whose baskets are like yours buy it"``, ``popular`` /
    ``fallback`` (and anything else) -> ``"popular overall"``.
    """
    n = int(purchases_before or 0)
    if n > 0:
        return "bought once before" if n == 1 else f"bought {n} times before"
    if source == "segment_top":
        return f"popular in your segment '{segment_label}'" if segment_label else "popular in your segment"
    if source == "als":
        return "people with similar baskets buy it"
    if source == "neighbors":
        return "customers whose baskets are like yours buy it"
    return "popular overall"


def _r(x: Any, nd: int = 4) -> float:
    return round(float(x), nd)


def bedrock_lines(
    high_value: pl.DataFrame,
    random: pl.DataFrame,
    user_recos: pl.DataFrame,
    ratings: Frame,
    products: Frame,
    *,
    top_products_n: int = 5,
) -> list[dict[str, Any]]:
    """``bedrock_inputs.jsonl``: one dict per cohort user (cohort order as in
    :func:`user_recos_frame`), matching ``bedrock_inputs.schema.json``:

    ``user_id, customer_code, cohort, segment {id, label}, rfm {recency_days, frequency,
    monetary, r_z, f_z, m_z, hv}`` (z and hv rounded to 4 decimals),
    ``top_products`` (up to ``top_products_n`` products the user bought most
    before their target -- ratings ``purchases`` desc, product_id asc -- with
    product_id, product_name, aisle, department, purchases) and
    ``recommendations`` (``user_recos`` = the output of
    :func:`user_recos_frame`: rank, product_id, product_name, aisle,
    department, source, reason from :func:`reason_for`).

    Vectorised up to the final assembly; the only Python loop is over the
    (few hundred) cohort users.
    """
    cohorts = _cohorts(high_value, random)
    users = cohorts.select("user_id").unique()
    rows = pl.concat(
        [
            high_value.select(USER_COLUMNS).with_columns(cohort=pl.lit(COHORTS[0])),
            random.select(USER_COLUMNS).with_columns(cohort=pl.lit(COHORTS[1])),
        ],
        how="vertical",
    )
    bought = (
        _df(
            ratings.lazy()
            .select(
                pl.col("user_id").cast(pl.Int32),
                pl.col("product_id").cast(pl.Int32),
                pl.col("purchases").cast(pl.Int64),
            )
            .join(users.lazy(), on="user_id", how="semi")
        )
        .group_by("user_id", "product_id")
        .agg(pl.col("purchases").sum())
    )
    top = _with_product_info(
        bought.sort(["user_id", "purchases", "product_id"], descending=[False, True, False])
        .with_columns(_r=pl.int_range(pl.len()).over("user_id"))
        .filter(pl.col("_r") < top_products_n),
        products,
    )
    top_by_user: dict[int, list[dict[str, Any]]] = {}
    for d in top.select(
        "user_id", "product_id", "product_code", "product_name", "aisle", "department", "purchases"
    ).iter_rows(named=True):
        uid = d.pop("user_id")
        top_by_user.setdefault(uid, []).append(d)

    recs = user_recos.join(bought, on=["user_id", "product_id"], how="left").with_columns(
        pl.col("purchases").fill_null(0)
    )
    recs_by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for d in recs.sort("cohort", "user_id", "rank").iter_rows(named=True):
        recs_by_key.setdefault((d["cohort"], d["user_id"]), []).append(
            {
                "rank": int(d["rank"]),
                "product_id": int(d["product_id"]),
                "product_code": d["product_code"],
                "product_name": d["product_name"],
                "aisle": d["aisle"],
                "department": d["department"],
                "source": d["source"],
                "reason": reason_for(d["source"], d["purchases"], d["segment_label"]),
            }
        )

    lines: list[dict[str, Any]] = []
    for d in rows.iter_rows(named=True):
        uid = int(d["user_id"])
        lines.append(
            {
                "user_id": uid,
                "customer_code": d["customer_code"],
                "cohort": d["cohort"],
                "segment": {"id": int(d["segment"]), "label": d["segment_label"]},
                "rfm": {
                    "recency_days": _r(d["recency_days"], 2),
                    "frequency": int(d["frequency"]),
                    "monetary": _r(d["monetary"], 2),
                    "r_z": _r(d["r_z"]),
                    "f_z": _r(d["f_z"]),
                    "m_z": _r(d["m_z"]),
                    "hv": _r(d["hv"]),
                },
                "top_products": top_by_user.get(uid, []),
                "recommendations": recs_by_key.get((d["cohort"], uid), []),
            }
        )
    return lines


def bedrock_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one ``bedrock_inputs.jsonl`` line."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_bedrock_lines(lines: list[dict]) -> list[str]:
    """Validate every line against ``bedrock_inputs.schema.json``.

    Returns one message per error, ``"line <i> (user_id <id>): <path>: <message>"``
    with the 0-based line index and the JSON path of the offending value;
    empty when every line is valid.
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(bedrock_schema())
    errors: list[str] = []
    for i, line in enumerate(lines):
        uid = line.get("user_id") if isinstance(line, dict) else None
        for err in sorted(validator.iter_errors(line), key=lambda e: list(map(str, e.absolute_path))):
            path = "$" + "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path
            )
            errors.append(f"line {i} (user_id {uid}): {path}: {err.message}")
    return errors


def jsonl_text(lines: Iterable[dict]) -> str:
    """JSON Lines text: one compact JSON object per line, UTF-8 kept readable."""
    return "".join(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n" for d in lines)


# --------------------------------------------------------------------------- #
# all files
# --------------------------------------------------------------------------- #
def build_exports(
    user_seg: pl.DataFrame,
    centroids: pl.DataFrame,
    segment_popularity: Frame,
    ratings: Frame,
    user_recos: Frame,
    products: Frame,
    *,
    hv_n: int = 150,
    rand_n: int = 150,
    topn_per_segment: int = 5,
    seed: int = 42,
) -> dict[str, Any]:
    """Every export, keyed by file name (:data:`EXPORT_FILES` order).

    Users carry ``customer_code`` and products ``product_code``, the retailer's own ids:
    from ``user_recos`` and ``products`` where the ingest numbered them, else the ids.

    DataFrames for the ``.csv`` / ``.parquet`` files (``user_recos.csv`` and
    ``user_recos.parquet`` are the same frame) and a ``list[dict]`` for
    ``bedrock_inputs.jsonl`` (serialise with :func:`jsonl_text`).
    """
    seg_topn = segment_topn_frame(
        segment_popularity, products, centroids, topn_per_segment=topn_per_segment
    )
    codes = customer_codes(user_recos)
    if codes is not None:
        user_seg = user_seg.join(codes, on="user_id", how="left", maintain_order="left")
    high_value = users_high_value_frame(user_seg, hv_n=hv_n)
    random = users_random_frame(user_seg, rand_n=rand_n, seed=seed)
    recos = user_recos_frame(
        high_value, random, user_recos, seg_topn, products, topn_per_segment=topn_per_segment
    )
    return {
        "overview.csv": overview_frame(centroids),
        "centroids.parquet": centroids_frame(centroids),
        "segment_topn.parquet": seg_topn,
        "users_high_value.parquet": high_value,
        "users_random.parquet": random,
        "user_recos.csv": recos,
        "user_recos.parquet": recos,
        "bedrock_inputs.jsonl": bedrock_lines(high_value, random, recos, ratings, products),
    }


def write_exports(exports: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write :func:`build_exports`' output to a local folder (by extension:
    ``.csv`` -> CSV, ``.parquet`` -> Parquet, ``.jsonl`` -> JSON Lines)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, value in exports.items():
        path = out / name
        if name.endswith(".csv"):
            value.write_csv(path)
        elif name.endswith(".parquet"):
            value.write_parquet(path)
        elif name.endswith(".jsonl"):
            path.write_text(jsonl_text(value), encoding="utf-8")
        else:
            raise ValueError(f"unknown export type: {name}")
        written.append(path)
    return written


def shortened(line: dict, n: int = 2) -> dict:
    """A line of bedrock_inputs.jsonl with its lists cut to ``n`` items: the shape of what the
    LLM gets, at a tenth of the event-log bytes (the whole line is in the stored file)."""
    return {key: value[:n] if isinstance(value, list) else value for key, value in line.items()}
