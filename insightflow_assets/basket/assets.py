"""Basket → complements: `basket_pairs` (directional pairs with lift/npmi) and `basket_eval`
(the PerNIR next-item protocol, every method side by side), with their checks."""

import time

import numpy as np
import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, AssetIn, Config, MetadataValue, Output
from pydantic import Field

from insightflow_assets.basket import evaluate as ev
from insightflow_assets.basket import profiles as prof
from insightflow_assets.basket.choose import ChoiceParams, pairs_and_profile, pairs_and_profile_counted
from insightflow_assets.basket.pairs import PairParams, window_lines
from insightflow_assets.basket.recommender import BasketModel
from insightflow_assets.basket.report import CHART_FILE, blend_vs_pairs, chart, query_problems
from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.lightfm.embeddings import LightfmEmbeddings
from insightflow_assets.spark.engine import SparkTask, run_stages
from resources.compute import Compute
from resources.io_manager import ArtifactFolder
from resources.layout import Artifact
from resources.storage import Storage

GROUP = "basket"
# profiles.json: the profiles this run was built and evaluated with, its "active" one chosen on
# validation (choose.py), published for serving
PAIRS_FILES = ("pairs.parquet", "items.parquet", "params.json", "profiles.json")


class BasketPairsConfig(Config):
    window: int = Field(5, description="B counts after A when added at most this many positions later (the pair cap).")
    min_support: int = Field(3, description="Baskets a pair needs before its lift is trusted.")
    max_neighbours: int = Field(100, description="Followers and predecessors kept per (segment, product).")
    choice_baskets: int = Field(300, description="Seeded sample of validation baskets the run's profile is chosen on (0 = all).")
    seed: int = 42


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/basket/pairs-{ts}", PAIRS_FILES, latest="recsys/basket/latest"),
    kinds={"numpy", "polars", "parquet"},
    description=(
        "Directional basket pairs A→B (B added within `window` cart positions after A) over the training window, "
        "overall (segment -1) and per user_seg segment, with confidence, lift and npmi (min support; lift ≤ 1 dropped); "
        "each product's best followers (direction 0) and predecessors (direction 1, the reverse index) by npmi, "
        "plus baskets per (segment, product). profiles.json: the basket profiles, with the run's `active` one chosen "
        "on the validation split (second-to-last baskets, pairs counted before them; the holdout is not read). "
        "Counts on polars, or Spark under compute: spark; normalising, ranking and the profile choice on polars."
    ),
)
def basket_pairs(
    context: AssetExecutionContext,
    config: BasketPairsConfig,
    compute: Compute,
    curated: Storage,
    orders_imputed: pl.LazyFrame,
    raw_order_products: pl.LazyFrame,
    user_seg: pl.DataFrame,
    products: pl.DataFrame,
    lightfm_model: ArtifactFolder,
) -> Output[ArtifactFolder]:
    current_run(context)
    # scans: under spark the step reads the orders' ids and numbers, never the lines
    t0 = time.perf_counter()
    params = PairParams(window=config.window, min_support=config.min_support, max_neighbours=config.max_neighbours)
    emb = LightfmEmbeddings.from_files(lightfm_model.files)
    common = dict(item_ids=emb.item_ids, item_vectors=emb.item_vectors, pair_params=params,
                  choice=ChoiceParams(baskets=config.choice_baskets, seed=config.seed))
    (pairs, items, info), engine = run_stages(
        context, compute, curated, basket_tasks(params),
        local=lambda: _local_pairs(orders_imputed.collect(), raw_order_products.collect(), user_seg, products, common),
        spark=lambda counts, reports: pairs_and_profile_counted(
            counts, reports["pairs"], _cart_lines(counts["validation"], orders_imputed), orders_imputed, products, **common),
    )  # fmt: skip
    choice = info["profile_choice"]
    profiles = info.pop("profiles")  # profiles.json, not params.json
    info["seconds"] = round(time.perf_counter() - t0, 2)
    info["cart_order_missing_lines"] = _missing_cart_positions(raw_order_products)
    return Output(
        ArtifactFolder.of({"pairs.parquet": pairs, "items.parquet": items, "params.json": info,
                           "profiles.json": profiles}),
        metadata={
            "seconds": float(info["seconds"]),
            "stored_pairs": pairs.height,
            "distinct_pairs": info["distinct_pairs"],
            "pairs_at_min_support": info["pairs_at_min_support"],
            "cart_order_missing_lines": info["cart_order_missing_lines"],
            "params": MetadataValue.json(params.__dict__),
            "active_profile": choice["active"],
            "profile_choice": MetadataValue.json(choice),
            **engine,
        },
    )


def _local_pairs(orders: pl.DataFrame, lines: pl.DataFrame, user_seg: pl.DataFrame, products: pl.DataFrame,
                 common: dict) -> tuple:
    return pairs_and_profile(window_lines(orders, lines, user_seg), orders, products, **common)


def _cart_lines(job_lines: pl.DataFrame, orders: pl.LazyFrame) -> pl.DataFrame:
    """The job's validation lines (in cart order) typed as `pairs.cart_lines` types them."""
    return job_lines.select(pl.col("order_id").cast(orders.collect_schema()["order_id"]), pl.col("segment").cast(pl.Int8),
                            pl.col("product_id").cast(pl.Int32))


def _missing_cart_positions(lines: pl.LazyFrame) -> int:
    """Lines without an ``add_to_cart_order`` (every line when the column is absent): one column read."""
    if "add_to_cart_order" in lines.collect_schema().names():
        return int(lines.select(pl.col("add_to_cart_order").null_count()).collect().item())
    return int(lines.select(pl.len()).collect().item())


def basket_tasks(params: PairParams) -> dict[str, SparkTask]:
    """The Spark job's work for `basket_pairs`: pairs and items of the training window, and of
    its validation baskets alone (every pair: choose subtracts them), and those baskets' lines in
    cart order (the profile choice's queries). Normalising, ranking and the choice stay in polars."""
    inputs = {"orders": "orders_imputed", "order_products": "raw_order_products", "user_seg": "user_seg"}
    held = {"part": "validation"}
    return {
        "pairs": SparkTask("basket_pair_counts", inputs, {"window": params.window, "min_support": params.min_support}),
        "items": SparkTask("basket_item_counts", inputs),
        "held_pairs": SparkTask("basket_pair_counts", inputs, {"window": params.window, "min_support": 1, **held}),
        "held_items": SparkTask("basket_item_counts", inputs, held),
        "validation": SparkTask("basket_validation_lines", inputs),
    }


class BasketEvalConfig(Config):
    m_min: int = 1
    m_max: int = 10
    sample_baskets: int = Field(300, description="Seeded sample of target baskets (0 = all); ~4 queries each.")
    seed: int = 42
    segment_mode: str = Field("user", description="user: the customer's user_seg segment; auto: detected from the basket.")
    headline_profile: str = Field("", description="The blend reported as the headline; empty: the run's active profile (chosen on validation).")


def load_model(basket_pairs: ArtifactFolder, products: pl.DataFrame, lightfm_model: ArtifactFolder | None) -> BasketModel:
    """The basket recommender from the stored artifacts (what a serving process loads), its
    default profile the run's active one."""
    emb = LightfmEmbeddings.from_files(lightfm_model.files) if lightfm_model is not None else None
    return BasketModel.build(
        basket_pairs.frame("pairs.parquet"), basket_pairs.frame("items.parquet"), products,
        item_ids=emb.item_ids if emb else None, item_vectors=emb.item_vectors if emb else None,
        profiles=basket_pairs.json("profiles.json") if "profiles.json" in basket_pairs.files else None,
    )


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/eval/basket-{ts}", ("metrics.json", "by_size.json", CHART_FILE)),
    kinds={"numpy", "implicit", "matplotlib", "json"},
    description=(
        "Basket completion, PerNIR protocol: each prefix of M items (add-to-cart order) of a sample of target baskets "
        "predicts the next item (hit/MRR@K) and the rest (recall/hit@K), K = 10, 20, basket items excluded, averaged per M "
        "then over M; global popularity, pairs only, implicit BM25 item-item, LightFM embeddings only, and the blend of "
        "each profile; the headline is the run's active profile (chosen on validation by basket_pairs)."
    ),
)
def basket_eval(
    context: AssetExecutionContext,
    config: BasketEvalConfig,
    basket_pairs: ArtifactFolder,
    lightfm_model: ArtifactFolder,
    ratings: pl.DataFrame,
    orders_imputed: pl.DataFrame,
    raw_order_products: pl.DataFrame,
    user_seg: pl.DataFrame,
    products: pl.DataFrame,
) -> Output[ArtifactFolder]:
    current_run(context)
    if config.segment_mode not in ("user", "auto"):
        raise ValueError(f"basket_eval config: segment_mode must be 'user' or 'auto', got {config.segment_mode!r}")
    t0 = time.perf_counter()
    model = load_model(basket_pairs, products, lightfm_model)
    headline = config.headline_profile or model.active
    if headline not in model.profiles:
        raise ValueError(f"basket_eval config: headline_profile {headline!r} is not one of {sorted(model.profiles)}")
    params = ev.EvalParams(m_min=config.m_min, m_max=config.m_max, sample_baskets=config.sample_baskets, seed=config.seed)
    qs = ev.queries(ev.target_baskets(orders_imputed, raw_order_products, user_seg), params)
    if config.segment_mode == "auto":
        qs = [ev.Query(q.user_id, None, q.prefix, q.next_item, q.rest) for q in qs]
    result = ev.evaluate(methods(model, ratings), qs)
    result.update(headline=f"blend:{headline}", active_profile=model.active,
                  profile_choice=basket_pairs.json("params.json").get("profile_choice"),
                  eval_config=config.model_dump(), seconds=round(time.perf_counter() - t0, 2))
    metrics = {k: v for k, v in result.items() if k != "by_size"}
    numbers = {f"{_label(name)}_{key}": float(v) for name, m in result["methods"].items()
               for key, v in m.items() if key in ("hit@10", "mrr@10", "recall_rest@10")}
    return Output(
        ArtifactFolder.of({"metrics.json": metrics, "by_size.json": result["by_size"], CHART_FILE: chart(result["by_size"])}),
        metadata={"queries": len(qs), "seconds": float(result["seconds"]), "active_profile": model.active,
                  "headline": result["headline"], **numbers},
    )


def methods(model: BasketModel, ratings: pl.DataFrame) -> dict:
    """Every method of the comparison, by name: a function of (queries, K) to top-K lists.
    Pairs only and the blends share their candidate pools (one pool per query for all)."""
    fallback = model.ids[model.popular[-1][:500]]
    pairs_only = prof.single(W_PAIR=1.0, W_EMB=0.0, W_POPP=0.0, W_POPG=1e-4, W_COVER=0.0, PAIR_QUOTA=0)
    emb_only = prof.single(W_PAIR=0.0, W_EMB=1.0, W_POPP=0.0, W_POPG=1e-4, W_COVER=0.0, PAIR_QUOTA=0, TOP_POPG=2000)
    shared = {"pairs": pairs_only, **{f"blend:{name}": name for name in model.profiles}}
    memo: dict = {}

    def pooled(name: str):
        def run(qs, k):
            key = (id(qs), k)
            if key not in memo:  # qs kept in the memo: its id cannot be reused meanwhile
                memo.clear()
                memo[key] = (qs, dict(zip(shared, ev.profile_lists(model, qs, k, list(shared.values())))))
            return memo[key][1][name]
        return run

    out = {
        "popularity": lambda qs, k: ev.popularity_lists(model, qs, k),
        "pairs": pooled("pairs"),
        "item_item": lambda qs, k: ev.item_item_lists(ratings, qs, k, fallback),
        "embeddings": lambda qs, k: ev.model_lists(model, qs, k, emb_only),
    }
    out.update({name: pooled(name) for name in shared if name != "pairs"})
    return out


def _label(method: str) -> str:
    """Metadata key prefix: ``blend:precision_pair_heavy`` → ``blend_precision_pair_heavy``."""
    return method.replace(":", "_")


# --- checks ---------------------------------------------------------------------------------


@run_check(asset=basket_eval, additional_ins={"basket_pairs": AssetIn("basket_pairs"), "products": AssetIn("products"),
                                              "lightfm_model": AssetIn("lightfm_model")})
def basket_queries_return_k_new_products(
    basket_eval: ArtifactFolder, basket_pairs: ArtifactFolder, products: pl.DataFrame, lightfm_model: ArtifactFolder
) -> AssetCheckResult:
    """200 seeded basket queries (sizes 0–10, each segment and detected) each return K=10
    distinct products, none of them in the basket."""
    metrics = basket_eval.json("metrics.json")
    model = load_model(basket_pairs, products, lightfm_model)
    problems = query_problems(model, k=10, n=200, seed=0, profile=metrics["headline"].split(":", 1)[1])
    return AssetCheckResult(passed=not problems, metadata={"queries": 200, "problems": len(problems),
                                                           "first_problems": MetadataValue.json(problems[:5])})


@run_check(asset=basket_eval, blocking=False)
def basket_blend_not_worse_than_pairs(basket_eval: ArtifactFolder) -> AssetCheckResult:
    """The headline blend's next-item hit@10 is at least pairs-only's (a warning otherwise)."""
    passed, meta = blend_vs_pairs(basket_eval.json("metrics.json"))
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.WARN, metadata=meta)
