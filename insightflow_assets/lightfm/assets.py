"""LightFM: `lightfm_model`, the hybrid model's embeddings (numpy arrays, no pickle), with the
number of epochs chosen on the validation basket. Lists are scored from them where they are
read (the evaluation's users, the exports if LightFM wins), as ALS's are from its factors."""

import time

import numpy as np
import polars as pl
from dagster import AssetCheckResult, AssetExecutionContext, Config, MetadataValue, Output

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.lightfm.embeddings import FILES, LightfmEmbeddings, encode_files
from insightflow_assets.lightfm.fit import LightfmParams, train, validation_ceiling
from insightflow_assets.selection.select import validation_split
from resources.io_manager import ArtifactFolder
from resources.layout import Artifact

GROUP = "model"


class LightfmConfig(Config):
    """LightFM's hyperparameters (see lightfm.fit.LightfmParams)."""

    no_components: int = 32
    loss: str = "warp"
    learning_rate: float = 0.2
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 10
    epochs: int = 30  # ceiling of the validation phase
    patience: int = 3
    random_state: int = 42
    num_threads: int = 0  # 0 = every usable core (not reproducible to the bit; 1 is)
    validation_users: int = 10_000  # users scored after each validation epoch; 0 = all
    validation_sample_users: int = 20_000  # users the validation phase is fitted on (seeded sample); 0 = all
    final_update_budget: int = 15_000_000  # most interactions × epochs of the final fit; 0 = no cap

    def params(self) -> LightfmParams:
        return LightfmParams(**self.model_dump())


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/models/lightfm-{ts}", FILES, latest="recsys/models/lightfm/latest"),
    kinds={"lightfm", "numpy"},
    description=(
        "LightFM hybrid (WARP): products = identity + aisle + department (the category in the transactions form), "
        "customers = identity + segment. Epochs chosen by early stopping on each user's second-to-last basket, "
        "then refitted on the training window; item/user vectors and biases as .npy (no lists: a user's list is one "
        "product with the item vectors, scored where it is read, e.g. by als_eval for the users it evaluates)."
    ),
)
def lightfm_model(
    context: AssetExecutionContext,
    config: LightfmConfig,
    ratings: pl.DataFrame,
    orders_imputed: pl.DataFrame,
    raw_order_products: pl.DataFrame,
    products: pl.DataFrame,
    user_seg: pl.DataFrame,
) -> Output[ArtifactFolder]:
    current_run(context)
    params = config.params()
    t0 = time.perf_counter()
    # when the update budget leaves one epoch there is nothing to validate, so no split either
    needs_split = validation_ceiling(ratings.height, params) > 1
    window, truth = validation_split(orders_imputed, raw_order_products) if needs_split else (None, None)
    # No line per epoch: the curve is this materialization's `validation_curve` (one log line below).
    trained = train(ratings, window.ratings if window else None, truth, products, user_seg, params)
    seconds = round(time.perf_counter() - t0, 2)
    trained.embeddings.params.update(seconds=seconds)
    # the validation scores of the chosen epoch, when there was a validation phase
    best = trained.curve[trained.best_epoch - 1] if trained.curve else {}
    return Output(
        ArtifactFolder(encode_files(trained.embeddings.to_files())),
        metadata={
            "epochs_run": len(trained.curve),
            "best_epoch": trained.best_epoch,
            "epochs_final": int(trained.embeddings.params["epochs_final"]),
            **{f"validation_{m}": best[m] for m in ("precision@10", "recall@10") if m in best},
            "chosen_on": trained.embeddings.params["chosen_on"],
            "validation_curve": MetadataValue.md(_curve_markdown(trained.curve, trained.best_epoch)),
            "validation_seconds": float(trained.validation_seconds),
            "fit_seconds": float(trained.fit_seconds),
            "seconds": float(seconds),
            "shape": f"{trained.embeddings.user_ids.size} users × {trained.embeddings.item_ids.size} products × "
                     f"{trained.embeddings.dim} components",
            "threads": params.threads(),
        },
    )


def _curve_markdown(curve: list[dict], best: int) -> str:
    lines = ["| epoch | precision@10 | recall@10 | seconds |", "|---|---|---|---|"]
    for row in curve:
        mark = " (best)" if row["epoch"] == best else ""
        lines.append(f"| {row['epoch']}{mark} | {row['precision@10']:.4f} | {row['recall@10']:.4f} | {row['seconds']:.1f} |")
    return "\n".join(lines)


@run_check(asset=lightfm_model)
def lightfm_embeddings_finite(lightfm_model: ArtifactFolder) -> AssetCheckResult:
    """Every stored user and item vector and bias is a finite number."""
    emb = LightfmEmbeddings.from_files(lightfm_model.files)
    bad = {
        f"non_finite_{side}_rows": int(
            (~np.isfinite(getattr(emb, f"{side}_vectors")).all(axis=1) | ~np.isfinite(getattr(emb, f"{side}_biases"))).sum()
        )
        for side in ("user", "item")
    }
    return AssetCheckResult(passed=not any(bad.values()), metadata=bad)


CHECKS = [lightfm_embeddings_finite]
