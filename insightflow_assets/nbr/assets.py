"""Next-basket model: `nbr_model`, TIFU-KNN fitted on the run's training window with the
hyperparameters chosen on validation, stored as every user's top-K (no pickle)."""

import time

import polars as pl
from dagster import AssetExecutionContext, Config, MetadataValue, Output

from insightflow_assets.common import current_run, run_asset
from insightflow_assets.evaluation.baselines import item_popularity
from insightflow_assets.nbr.recommender import TifuKnn
from insightflow_assets.postrank.export import complete_lists
from insightflow_assets.recommenders import TrainingWindow
from resources.io_manager import ArtifactFolder
from resources.layout import Artifact

GROUP = "model"


class NbrConfig(Config):
    k: int = 20  # list length stored per user (≥ the largest evaluation K)


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/models/nbr-{ts}", ("recs.parquet", "params.json")),
    kinds={"scipy", "polars", "parquet"},
    description=(
        "TIFU-KNN next-basket model (time-decayed repeat frequencies blended with the nearest customers'), "
        "fitted on the baskets before each target with the hyperparameters model_selection chose on validation; "
        "recs.parquet holds every user's top-K with its source (repeat / neighbors; popular / fallback "
        "where the model has fewer items or no history)."
    ),
)
def nbr_model(
    context: AssetExecutionContext,
    config: NbrConfig,
    model_selection: dict,
    ratings: pl.DataFrame,
    orders_imputed: pl.DataFrame,
    raw_order_products: pl.DataFrame,
) -> Output[ArtifactFolder]:
    current_run(context)
    chosen = model_selection["best_per_method"].get(TifuKnn.name, {})
    params = chosen.get("params", {})
    t0 = time.perf_counter()
    # the model reads the orders and lines directly; the baskets frame is never built
    window = TrainingWindow(ratings=ratings, orders=orders_imputed, lines=raw_order_products)
    rec = TifuKnn(**params).fit(window)
    users = orders_imputed["user_id"].unique().sort()
    # the model lists the users with ratings (the others have no history it learnt from, or were
    # filtered out); complete lists, as exported: short and cold users topped up from popularity
    rated = ratings["user_id"].unique().sort()
    recs = complete_lists(rec.recommend(rated, config.k), users, config.k, item_popularity(ratings))
    seconds = round(time.perf_counter() - t0, 2)
    info = {"params": rec.params, "chosen_on": "validation (model_selection)", "k": config.k, "seconds": seconds,
            "validation_map@10": chosen.get("map@10")}
    return Output(
        ArtifactFolder.of({"recs.parquet": recs, "params.json": info}),
        metadata={
            "params": MetadataValue.json(rec.params),
            "users_with_list": recs["user_id"].n_unique(),
            "fit_and_score_seconds": float(seconds),
        },
    )
