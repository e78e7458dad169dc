"""Post-ranking: `user_recos` (hybrid + MMR + fallback for every user) and its evaluation."""

from typing import Literal

import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, AssetIn, Config, MetadataValue, Output

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.evaluation.assets import EvalConfig, metrics_in_unit_interval, metrics_markdown
from insightflow_assets.evaluation.baselines import item_popularity
from insightflow_assets.evaluation.offline import HEADLINE_K, baselines_of, eval_users, evaluation_report, list_diversity
from insightflow_assets.model.als import AlsModel, recommend
from insightflow_assets.postrank.rerank import postrank
from resources.io_manager import ArtifactFolder

GROUP = "postrank"


class PostrankConfig(Config):
    k: int = 20  # list length; ≥ the largest evaluation K so every K is comparable
    candidates: int = 100  # top-N ALS candidates re-ranked per user
    alpha: float = 0.7  # weight of ALS vs popularity in the hybrid
    mmr_lambda: float = 0.8  # 1 = pure relevance, lower = more diverse
    similarity: Literal["factors", "aisle", "department"] = "factors"
    popularity_kind: Literal["global", "user"] = "global"


@run_asset(
    group=GROUP,
    kinds={"numpy", "polars", "parquet"},
    description=(
        "Post-ranked recommendations for every user: ALS candidates re-scored with popularity, "
        "diversified by MMR, cold users filled from popularity (source ∈ als/popular/fallback)."
    ),
)
def user_recos(
    context: AssetExecutionContext,
    config: PostrankConfig,
    als_model: ArtifactFolder,
    ratings: pl.DataFrame,
    products: pl.DataFrame,
    orders_imputed: pl.DataFrame,
) -> Output[pl.DataFrame]:
    current_run(context)
    model = AlsModel.from_files(als_model.files)
    users = orders_imputed["user_id"].unique().sort()
    candidates = recommend(model, ratings, users, config.candidates)
    recos = postrank(
        candidates,
        k=config.k,
        users=users,
        popularity=item_popularity(ratings),
        alpha=config.alpha,
        mmr_lambda=config.mmr_lambda,
        similarity=config.similarity,
        item_factors=model.item_factors,
        item_ids=model.item_ids,
        products=products,
        popularity_kind=config.popularity_kind,
        user_popularity=ratings if config.popularity_kind == "user" else None,
    )
    sources = recos.group_by("source").agg(pl.len()).sort("source")
    return Output(
        recos,
        metadata={
            "users": users.len(),
            "sources": MetadataValue.json(dict(zip(sources["source"].to_list(), sources["len"].to_list()))),
        },
    )


@run_asset(
    group=GROUP,
    kinds={"polars", "json"},
    description="The post-ranked lists scored like als_eval (same users, same baselines) plus diversity and novelty.",
)
def als_postrank(
    context: AssetExecutionContext,
    config: EvalConfig,
    user_recos: pl.DataFrame,
    als_eval: ArtifactFolder,
    als_model: ArtifactFolder,
    ratings: pl.DataFrame,
    holdout: pl.DataFrame,
    products: pl.DataFrame,
) -> Output[ArtifactFolder]:
    current_run(context)
    model = AlsModel.from_files(als_model.files)
    users = eval_users(holdout, config.sample_users, config.seed)
    reference = als_eval.json("metrics.json")
    # The baselines were scored by als_eval on the same users: reuse them, unless this
    # evaluation was configured differently.
    same = reference.get("eval_config") == config.model_dump() and reference["n_users_evaluated"] == len(users)
    metrics, cov = evaluation_report(
        user_recos,
        ratings,
        holdout,
        users,
        n_items=products.height,
        ks=tuple(config.ks),
        method="als_postrank",
        baselines=baselines_of(reference) if same else None,
    )
    # Diversity and novelty of the post-ranked lists next to plain ALS top-K, to show MMR's effect.
    k = HEADLINE_K
    evaluated = user_recos.filter(pl.col("user_id").is_in(pl.Series(users).implode()))
    metrics["diversity"] = {
        "k": k,
        "als_postrank": list_diversity(evaluated, model.item_ids, model.item_factors, ratings, k),
        "als": reference["diversity"]["als"],
    }
    metrics["eval_config"] = config.model_dump()
    return Output(
        ArtifactFolder.of({"metrics.json": metrics, "coverage.json": cov}),
        metadata={
            f"metrics@{k}": metrics_markdown(metrics),
            "diversity": MetadataValue.json(metrics["diversity"]),
            "baselines_reused_from_als_eval": same,
            **{key: float(v) for key, v in cov.items() if key.startswith("coverage")},
        },
    )


@run_check(
    asset=user_recos,
    additional_ins={"orders_imputed": AssetIn("orders_imputed")},
)
def every_user_gets_k_items(user_recos: pl.DataFrame, orders_imputed: pl.DataFrame) -> AssetCheckResult:
    """Every user of the run has exactly K distinct recommended products ranked 1..K."""
    k = int(user_recos["rank"].max() or 0)
    per_user = user_recos.group_by("user_id").agg(
        n=pl.len(), distinct=pl.col("product_id").n_unique(), rank_sum=pl.col("rank").cast(pl.Int64).sum()
    )
    wrong = per_user.filter((pl.col("n") != k) | (pl.col("distinct") != k) | (pl.col("rank_sum") != k * (k + 1) // 2))
    missing = orders_imputed.select("user_id").unique().join(per_user, on="user_id", how="anti").height
    return AssetCheckResult(
        passed=k > 0 and wrong.height == 0 and missing == 0,
        metadata={"k": k, "users_with_wrong_lists": wrong.height, "users_without_list": missing},
    )


@run_check(asset=als_postrank)
def postrank_metrics_in_range(als_postrank: ArtifactFolder) -> AssetCheckResult:
    """Every metric of the post-rank report is within [0, 1]."""
    return metrics_in_unit_interval(als_postrank)


CHECKS = [every_user_gets_k_items, postrank_metrics_in_range]
