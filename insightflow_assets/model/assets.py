"""Model: `als_model`, implicit's conjugate-gradient ALS on the ratings (factors + id maps, no pickle)."""

from typing import Optional

import numpy as np
from dagster import AssetCheckResult, AssetExecutionContext, Config, MetadataValue, Output
import polars as pl

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.model.als import AlsModel, chosen_params, fit_als
from resources.io_manager import ArtifactFolder
from resources.layout import Artifact

GROUP = "model"


class AlsConfig(Config):
    """ALS parameters; a value left unset (None) is the one model_selection chose on validation
    (the best ALS-based candidate), or DEFAULT_PARAMS when its report has no ALS choice."""

    factors: Optional[int] = None
    regularization: Optional[float] = None
    alpha: Optional[float] = None
    iterations: Optional[int] = None
    random_state: Optional[int] = None


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/models/als-{ts}", ("factors.npz", "params.json")),
    kinds={"implicit", "numpy"},
    description=(
        "implicit ALS (CG solver) with the parameters model_selection chose on validation (iterations included): "
        "user/item factors and id maps in factors.npz, parameters in params.json."
    ),
)
def als_model(
    context: AssetExecutionContext, config: AlsConfig, ratings: pl.DataFrame, model_selection: dict
) -> Output[ArtifactFolder]:
    current_run(context)
    params, source = chosen_params(model_selection, {k: v for k, v in config.model_dump().items() if v is not None})
    model = fit_als(ratings, **params)
    model.params["chosen_on"] = source
    p = model.params
    return Output(
        ArtifactFolder(model.to_files()),
        metadata={
            "params": MetadataValue.json(p),
            "chosen_on": source,
            "iterations": int(p["iterations"]),
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
