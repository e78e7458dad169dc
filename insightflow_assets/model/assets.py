"""Model: `als_model`, implicit's conjugate-gradient ALS on the ratings (factors + id maps, no pickle)."""

import numpy as np
from dagster import AssetCheckResult, AssetExecutionContext, Config, MetadataValue, Output
import polars as pl

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.model.als import DEFAULT_PARAMS, AlsModel, fit_als
from resources.io_manager import ArtifactFolder
from resources.layout import Artifact

GROUP = "model"


class AlsConfig(Config):
    factors: int = DEFAULT_PARAMS["factors"]
    regularization: float = DEFAULT_PARAMS["regularization"]
    alpha: float = DEFAULT_PARAMS["alpha"]
    iterations: int = DEFAULT_PARAMS["iterations"]
    random_state: int = DEFAULT_PARAMS["random_state"]


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/models/als-{ts}", ("factors.npz", "params.json")),
    kinds={"implicit", "numpy"},
    description="implicit ALS (CG solver): user/item factors and id maps in factors.npz, parameters in params.json.",
)
def als_model(context: AssetExecutionContext, config: AlsConfig, ratings: pl.DataFrame) -> Output[ArtifactFolder]:
    current_run(context)
    model = fit_als(ratings, **config.model_dump())
    p = model.params
    return Output(
        ArtifactFolder(model.to_files()),
        metadata={
            "params": MetadataValue.json(p),
            "fit_seconds": float(p.get("fit_seconds", float("nan"))),
            "shape": f"{model.n_users} users × {model.n_items} items",
            "density": float(p.get("density", float("nan"))),
        },
    )


@run_check(asset=als_model)
def als_factors_finite(als_model: ArtifactFolder) -> AssetCheckResult:
    """Every user and item factor is a finite number."""
    model = AlsModel.from_files(als_model.files)
    bad_users = int((~np.isfinite(model.user_factors)).any(axis=1).sum())
    bad_items = int((~np.isfinite(model.item_factors)).any(axis=1).sum())
    return AssetCheckResult(
        passed=bad_users == 0 and bad_items == 0,
        metadata={"non_finite_user_rows": bad_users, "non_finite_item_rows": bad_items},
    )


CHECKS = [als_factors_finite]
