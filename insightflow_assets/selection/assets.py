"""Model selection: every method and its hyperparameters scored on the validation basket."""

from typing import Any, Optional

import polars as pl
from dagster import AssetExecutionContext, Config, Output
from pydantic import Field

from insightflow_assets.common import current_run, run_asset
from insightflow_assets.model.als import DEFAULT_PARAMS
from insightflow_assets.selection.select import (
    REPORTED,
    TIE,
    default_candidates,
    select,
    unvalidated,
    validation_split,
    validation_users,
)
from resources.layout import Artifact

GROUP = "evaluation"


class SelectionConfig(Config):
    """Which candidates are tried, on how many validation users."""

    # 10,000 validation users at 206k chose the same winner and parameters as 20,000 (map@10
    # within 0.001 for every method) for 38 fewer CPU s (README "Model selection")
    sample_users: Optional[int] = Field(10_000, description="validation users scored (seeded sample); None = all")
    seed: int = 42
    als: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_PARAMS), description="ALS parameters of the ALS-based candidates")
    als_fit_users: Optional[int] = Field(
        25_000, description="ALS-based candidates: item factors fitted on a seeded sample of this many users (None = all)"
    )
    grid: Optional[dict[str, list[dict[str, Any]]]] = Field(
        None, description="method -> list of parameter sets; None = the default grid (selection.select.DEFAULT_GRID)"
    )
    early_stop_fall: Optional[float] = Field(
        TIE, ge=0, description="ALS iterations: larger counts are not tried once a method's validation map@10 fell by "
        "more than this share from one count to the next (selection.select.EarlyStop); None = try every count",
    )


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/eval/selection-{ts}", ("selection.json",), latest="recsys/eval/selection/latest"),
    kinds={"polars", "json"},
    description=(
        "Every recommender (baselines included) and its grid fitted on the baskets before each user's "
        "second-to-last basket and scored on it; the winner is what user_recos exports. The holdout is not read."
    ),
)
def model_selection(
    context: AssetExecutionContext, config: SelectionConfig, orders_imputed: pl.DataFrame, raw_order_products: pl.DataFrame
) -> Output[dict]:
    current_run(context)
    window, truth = validation_split(orders_imputed, raw_order_products)
    users = validation_users(truth, window, config.sample_users, config.seed)
    als = {**config.als, "fit_users": config.als_fit_users}
    candidates = default_candidates(als, config.grid)
    report = select(candidates, window, truth, users, stop_fall=config.early_stop_fall) if users.size else unvalidated(candidates)
    win = report["winner"]
    best = report["best_per_method"]
    return Output(
        report,
        metadata={
            "winner": win["label"],
            "validation_users": report["users"],
            # every method's best validation scores as floats: the UI plots them across runs
            **{f"validation_{m}_{metric}": float(v[metric]) for m, v in best.items() for metric in REPORTED},
            # the grid and every score are in the stored selection.json (path above)
            "candidates": len(report["candidates"]),
            "candidates_skipped": sum("skipped" in c for c in report["candidates"]),
            **({"early_stop": "; ".join(report["early_stop"].values())} if report["early_stop"] else {}),
            **({"unvalidated": report["unvalidated"]} if "unvalidated" in report else {}),
        },
    )
