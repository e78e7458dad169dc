"""Post-ranking: `user_recos` (hybrid + MMR + fallback for every user) and its evaluation."""

from typing import Literal

import numpy as np
import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, AssetIn, Config, MetadataValue, Output

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.evaluation.assets import EvalConfig, metrics_in_unit_interval, metrics_markdown
from insightflow_assets.evaluation.baselines import item_popularity
from insightflow_assets.evaluation.offline import (
    HEADLINE_K,
    baselines_of,
    eval_users,
    evaluation_report,
    exported_method,
    headline_metadata,
    list_diversity,
    methods_of,
    undefined_metrics,
)
from insightflow_assets.frames import customer_codes
from insightflow_assets.ingest.events_schema import is_events_form
from insightflow_assets.model.als import AlsModel, lists_from
from insightflow_assets.postrank.events_lists import (
    PEER_ALPHA,
    PEER_BETA,
    as_postrank,
    cart_popularity,
    chunked_category_lists,
    event_history,
    prior_lines,
)
from insightflow_assets.postrank.export import complete_lists
from insightflow_assets.recommenders import REGISTRY, TrainingWindow
from insightflow_assets.recommenders.als import AlsPostrank
from resources.io_manager import ArtifactFolder
from resources.layout import Artifact

GROUP = "postrank"


class ExportConfig(Config):
    """The exported method is always model_selection's winner; narrow its grid to choose."""

    k: int = 20  # list length; ≥ the largest evaluation K so every K is comparable
    # events form only: the category re-rank of the winner's top candidates (the peer's final
    # experiment: alpha 0.6 on the model rank, beta 0.4 on the category affinity)
    category_alpha: float = PEER_ALPHA
    category_beta: float = PEER_BETA
    category_candidates: int = 100


class PostrankConfig(EvalConfig):
    """The post-rank (ALS + popularity hybrid + MMR), evaluated whichever method is exported."""

    k: int = 20
    candidates: int = 100  # top-N ALS candidates re-ranked per user
    alpha: float = 0.7  # weight of ALS vs popularity in the hybrid
    mmr_lambda: float = 0.8  # 1 = pure relevance, lower = more diverse
    popularity_kind: Literal["global", "user"] = "global"

    def recommender(self, model) -> AlsPostrank:
        return AlsPostrank.from_model(
            model, postrank_alpha=self.alpha, mmr_lambda=self.mmr_lambda,
            popularity_kind=self.popularity_kind, candidates=self.candidates,
        )


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/recos/run-{ts}", ("user_recos.parquet",), latest="recsys/recos/latest"),
    kinds={"numpy", "polars", "parquet"},
    description=(
        "Recommendations for every user from the method that won on validation (model_selection), "
        "baselines included: exactly K items, topped up from popularity, cold users from popularity "
        "(source ∈ repeat/als/neighbors/popular/fallback). Event log: the top candidates re-ranked by the "
        "visitor's category affinity, cold visitors the cart-popular list, unavailable items never."
    ),
)
def user_recos(
    context: AssetExecutionContext,
    config: ExportConfig,
    model_selection: dict,
    als_model: ArtifactFolder,
    nbr_model: ArtifactFolder,
    ratings: pl.DataFrame,
    orders_imputed: pl.DataFrame,
    raw_order_products: pl.DataFrame,
    products: pl.DataFrame,
) -> Output[pl.DataFrame]:
    current_run(context)
    method, params = model_selection["winner"]["method"], model_selection["winner"]["params"]
    if method not in REGISTRY:
        raise ValueError(f"user_recos: unknown method {method!r} (known: {', '.join(REGISTRY)})")
    # baskets built only if the exported model is fitted here and reads them: stored models
    # (TIFU-KNN's lists, ALS's factors) and the baselines never do
    window = TrainingWindow(ratings=ratings, orders=orders_imputed, lines=raw_order_products)
    rec = REGISTRY[method].for_export(params, window, {"als_model": als_model, "nbr_model": nbr_model})
    users = orders_imputed["user_id"].unique().sort()
    events = is_events_form(products)
    if events:
        recos, reranked = _category_export(config, rec, users, orders_imputed, raw_order_products, products)
    else:
        recos = complete_lists(rec.recommend(users, config.k), users, config.k, item_popularity(ratings))
    codes = customer_codes(orders_imputed)
    if codes is not None:  # the retailer's ids, for the exports and the API's /customers route
        recos = recos.join(codes, on="user_id", how="left", maintain_order="left")
    sources = recos.group_by("source").agg(pl.len()).sort("source")
    return Output(
        recos,
        metadata={
            "users": users.len(),
            "exported_method": REGISTRY[method].label,
            "why": exported_method(model_selection)["why"],
            "params": MetadataValue.json(params),
            "sources": MetadataValue.json(dict(zip(sources["source"].to_list(), sources["len"].to_list()))),
            **({"category_rerank": MetadataValue.json(reranked)} if events else {}),
        },
    )


def _category_export(config: ExportConfig, rec, users: pl.Series, orders: pl.DataFrame, lines: pl.DataFrame,
                     products: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """The events form's lists (`postrank.events_lists`): warm visitors' candidates re-ranked by
    category, cold visitors (a target but no session before the cut-off) the cart-popular list."""
    prior = prior_lines(orders, lines)
    depth = max(config.category_candidates, config.k)
    lists = chunked_category_lists(lambda some: rec.recommend(some, depth), event_history(prior), products, users,
                                   cart_popularity(prior), alpha=config.category_alpha, beta=config.category_beta, n=config.k)
    warm = lists.filter(pl.col("reranked"))["user_id"].n_unique()
    info = {"alpha": config.category_alpha, "beta": config.category_beta, "candidates": config.category_candidates,
            "reranked_users": warm, "popular_users": users.len() - warm}
    return as_postrank(lists), info


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/eval/als-postrank-{ts}", ("metrics.json", "coverage.json")),
    kinds={"polars", "json"},
    description=(
        "ALS lists post-ranked (popularity hybrid + MMR) and scored like als_eval (same users, same "
        "baselines), plus diversity and novelty, and the exported lists (user_recos) beside it."
    ),
)
def als_postrank(
    context: AssetExecutionContext,
    config: PostrankConfig,
    user_recos: pl.DataFrame,
    model_selection: dict,
    als_eval: ArtifactFolder,
    als_model: ArtifactFolder,
    als_candidates: pl.DataFrame,
    ratings: pl.DataFrame,
    holdout: pl.DataFrame,
    products: pl.DataFrame,
) -> Output[ArtifactFolder]:
    current_run(context)
    model = AlsModel.from_files(als_model.files)
    users = eval_users(holdout, config.sample_users, config.seed)
    reference = als_eval.json("metrics.json")
    eval_keys = set(EvalConfig.model_fields)
    same = {k: v for k, v in reference.get("eval_config", {}).items() if k in eval_keys} == {
        k: v for k, v in config.model_dump().items() if k in eval_keys
    } and reference["n_users_evaluated"] == len(users)
    rec = config.recommender(model).with_window(TrainingWindow(ratings=ratings, baskets=pl.DataFrame()))
    # ALS scored once for the run, in als_candidates
    pool = lists_from(model, als_candidates, users, max(config.candidates, config.k))
    lists = complete_lists(rec.recommend_from(pool, users, config.k), pl.Series(users), config.k,
                           item_popularity(ratings))
    metrics, cov = evaluation_report(
        lists, ratings, holdout, users, n_items=products.height, ks=tuple(config.ks), method="als_postrank",
        baselines=baselines_of(reference) if same else None,
        extra_recs={"exported": user_recos},
    )
    metrics["methods"] = {**methods_of(reference), **metrics["methods"]}
    metrics["exported_method"] = exported_method(model_selection)
    metrics["selection"] = model_selection  # the grid, every validation score and the choice
    # Users with no basket before the target get popular items whatever the method.
    metrics["users_without_history"] = float(1.0 - np.isin(users, ratings["user_id"].unique().to_numpy()).mean())
    k = HEADLINE_K
    metrics["diversity"] = {
        "k": k,
        "als_postrank": list_diversity(lists, model.item_ids, model.item_factors, ratings, k),
        "als": reference["diversity"]["als"],
    }
    metrics["eval_config"] = config.model_dump()
    return Output(
        ArtifactFolder.of({"metrics.json": metrics, "coverage.json": cov}),
        metadata={
            f"metrics@{k}": metrics_markdown(metrics),
            "diversity": MetadataValue.json(metrics["diversity"]),
            "baselines_reused_from_als_eval": same,
            "undefined_metrics": MetadataValue.json(undefined_metrics(metrics["methods"])),
            # the methods als_eval evaluated are plotted there; here only what this step adds
            **headline_metadata({m: v for m, v in metrics["methods"].items() if m not in reference["methods"]}),
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
