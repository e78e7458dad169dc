"""Fitting LightFM with early stopping on the validation basket (pure: lightfm / numpy / polars).

Protocol (no leakage): the model is fitted epoch by epoch on the baskets before each user's
**second-to-last** basket and scored after every epoch on that basket (precision/recall@10
of its top-10 over a seeded sample of users); training stops after ``patience`` epochs without
a better precision@10; that phase may be fitted on a seeded sample of users
(``validation_sample_users``) to stay cheap at full scale. The final model is then fitted
again, same seed, on the run's training window (the baskets before the holdout), every user
included, for the best number of epochs. The holdout is never read here.

Threads: LightFM's Hogwild SGD with ``num_threads > 1`` is not reproducible to the last bit;
with one thread and a fixed seed it is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from insightflow_assets.evaluation.metrics import evaluate, prepare_truth
from insightflow_assets.lightfm.embeddings import LightfmEmbeddings
from insightflow_assets.lightfm.features import FeatureMatrix, interactions, item_features, user_features
from insightflow_assets.model.als import AlsModel, recommend
from insightflow_assets.parallel import usable_cores


# epochs of the final fit when no user has a validation basket (tiny logs): LightFM's own
# examples train for 10-30 epochs; the low end, since there is no early stopping to catch overfit
UNVALIDATED_EPOCHS = 10


@dataclass(frozen=True)
class LightfmParams:
    """LightFM's hyperparameters and the early-stopping rule."""

    no_components: int = 32
    loss: str = "warp"
    learning_rate: float = 0.2  # chosen on the validation basket (bench_lightfm.py): 0.05 learns too slowly
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 10
    epochs: int = 30  # the most epochs tried on validation (or run, without validation)
    patience: int = 3  # epochs without a better validation precision@10 before stopping
    random_state: int = 42
    num_threads: int = 1  # capped at the usable cores, 0 = all of them; 1 = reproducible
    validation_users: int = 10_000  # users scored after each epoch (seeded sample); 0 = all
    # users the validation phase is fitted on (seeded sample; 0 = all): at full scale the epochs
    # are chosen on a sample, only the final fit sees everyone (see benchmarks/bench_lightfm.py)
    validation_sample_users: int = 20_000
    # most interactions × epochs of the final fit (0 = no cap): at full scale an epoch over every
    # user costs more than the validation phase, so the budget allows one there (13.2 M pairs at
    # 206k; measured cost vs two epochs: holdout map@10 0.0817 -> 0.0768, README "LightFM"), and
    # then no validation phase runs (`validation_ceiling`); smaller data keep the epochs chosen
    # on validation
    final_update_budget: int = 15_000_000

    def __post_init__(self) -> None:
        if self.loss not in ("warp", "bpr", "warp-kos", "logistic"):
            raise ValueError(f"LightFM loss must be warp, bpr, warp-kos or logistic, got {self.loss!r}")
        if self.final_update_budget < 0:
            raise ValueError(f"LightFM final_update_budget must be >= 0 (0 = no cap), got {self.final_update_budget}")
        for name in ("no_components", "epochs", "patience", "max_sampled"):
            if getattr(self, name) < 1:
                raise ValueError(f"LightFM {name} must be >= 1, got {getattr(self, name)}")
        if self.num_threads < 0:
            raise ValueError(f"LightFM num_threads must be >= 0 (0 = every usable core), got {self.num_threads}")

    def threads(self) -> int:
        cores = usable_cores()
        return cores if self.num_threads == 0 else min(self.num_threads, cores)


@dataclass
class Problem:
    """One window's LightFM inputs: interactions and the two feature matrices."""

    items: FeatureMatrix
    users: FeatureMatrix
    interactions: sp.coo_matrix  # users × items

    @classmethod
    def build(cls, ratings: pl.DataFrame, products: pl.DataFrame | None, user_seg: pl.DataFrame | None) -> "Problem":
        rated = np.unique(ratings["product_id"].to_numpy()).astype(np.int32)
        catalog = rated if products is None else np.union1d(rated, products["product_id"].to_numpy()).astype(np.int32)
        users = np.unique(ratings["user_id"].to_numpy()).astype(np.int32)
        items = (item_features(products, catalog, rated) if products is not None
                 else FeatureMatrix(catalog, _identity(catalog.size), [f"id:{i}" for i in catalog]))
        return cls(items, user_features(user_seg, users), interactions(ratings, users, catalog))


def _identity(n: int) -> sp.csr_matrix:
    return sp.identity(n, dtype=np.float32, format="csr")


def new_model(params: LightfmParams):
    from lightfm import LightFM

    return LightFM(
        no_components=params.no_components, loss=params.loss, learning_rate=params.learning_rate,
        item_alpha=params.item_alpha, user_alpha=params.user_alpha, max_sampled=params.max_sampled,
        random_state=params.random_state,
    )


def train_epochs(model, problem: Problem, epochs: int, params: LightfmParams) -> None:
    """``epochs`` more epochs of SGD on the problem (BLAS at one thread: LightFM threads itself)."""
    with threadpool_limits(1, "blas"):
        model.fit_partial(
            problem.interactions, user_features=problem.users.matrix, item_features=problem.items.matrix,
            epochs=epochs, num_threads=params.threads(),
        )


def embeddings(model, problem: Problem, params: dict[str, Any]) -> LightfmEmbeddings:
    """The fitted model as the stored contract: summed feature embeddings and biases."""
    item_biases, item_vectors = model.get_item_representations(problem.items.matrix)
    user_biases, user_vectors = model.get_user_representations(problem.users.matrix)
    return LightfmEmbeddings(
        item_ids=problem.items.ids, item_vectors=item_vectors, item_biases=item_biases,
        user_ids=problem.users.ids, user_vectors=user_vectors, user_biases=user_biases, params=params,
    )


def scorer(emb: LightfmEmbeddings) -> AlsModel:
    """The embeddings as factors whose dot product is LightFM's ranking score: the user bias is
    constant per user, so ``[u, 1] · [i, b_i]`` ranks like ``predict`` (the ALS top-k, reused)."""
    ones = np.ones((emb.user_ids.size, 1), dtype=np.float32)
    return AlsModel(
        user_ids=emb.user_ids, item_ids=emb.item_ids,
        user_factors=np.hstack([emb.user_vectors, ones]),
        item_factors=np.hstack([emb.item_vectors, emb.item_biases[:, None]]),
    )


def top_n(emb: LightfmEmbeddings, users, n: int, num_threads: int = 1) -> pl.DataFrame:
    """``user_id, rank, product_id, score, source='lightfm'`` for the users the model knows
    (already-bought products stay: repurchase is the main event in groceries)."""
    recs = recommend(scorer(emb), None, users, n, num_threads=num_threads)
    return recs.with_columns(pl.col("rank").cast(pl.Int32), source=pl.lit("lightfm"))


def validation_curve_point(emb: LightfmEmbeddings, truth, users: np.ndarray, threads: int) -> dict[str, float]:
    scores = evaluate(top_n(emb, users, 10, threads), truth, (10,))
    return {"precision@10": float(scores["precision@10"]), "recall@10": float(scores["recall@10"])}


def fit_early_stopping(
    problem: Problem, truth_basket: pl.DataFrame, params: LightfmParams, *, log=None, ceiling: int | None = None
) -> tuple[int, list[dict[str, float]]]:
    """Epochs on the validation problem until ``patience`` epochs bring no better precision@10
    (at most ``params.epochs``, and ``ceiling`` when given: the final fit's cap, see `train`).

    ``truth_basket``: ``user_id, product_id`` of each user's validation basket. Returns the best
    epoch (≥ 1; 0 when no user can be scored) and the curve (one row per epoch run: epoch,
    precision@10, recall@10, seconds).
    """
    users = _scored_users(truth_basket, problem.users.ids, params)
    if users.size == 0:
        return 0, []  # nothing to validate on (`train` says so and uses UNVALIDATED_EPOCHS)
    truth = prepare_truth(truth_basket, users=users)
    model, curve, best = new_model(params), [], 0
    for epoch in range(1, min(params.epochs, ceiling or params.epochs) + 1):
        t0 = time.perf_counter()
        train_epochs(model, problem, 1, params)
        point = validation_curve_point(embeddings(model, problem, {}), truth, users, params.threads())
        curve.append({"epoch": epoch, **point, "seconds": round(time.perf_counter() - t0, 2)})
        if log:
            log(f"LightFM epoch {epoch}: validation precision@10={point['precision@10']:.4f} "
                f"recall@10={point['recall@10']:.4f} ({curve[-1]['seconds']:.1f} s)")
        if best == 0 or point["precision@10"] > curve[best - 1]["precision@10"]:
            best = epoch
        elif epoch - best >= params.patience:
            break
    return best, curve


def _scored_users(truth_basket: pl.DataFrame, known: np.ndarray, params: LightfmParams) -> np.ndarray:
    users = np.intersect1d(truth_basket["user_id"].unique().to_numpy(), known).astype(np.int32)
    if 0 < params.validation_users < users.size:
        users = np.sort(np.random.default_rng(params.random_state).choice(users, params.validation_users, replace=False))
    return users


def _sampled(ratings: pl.DataFrame, params: LightfmParams) -> pl.DataFrame:
    """The ratings of a seeded sample of ``validation_sample_users`` users (all when 0 or fewer)."""
    users = np.unique(ratings["user_id"].to_numpy())
    if not 0 < params.validation_sample_users < users.size:
        return ratings
    keep = np.random.default_rng(params.random_state).choice(users, params.validation_sample_users, replace=False)
    return ratings.filter(pl.col("user_id").is_in(pl.Series(keep).implode()))


def fit_lightfm(problem: Problem, params: LightfmParams, epochs: int) -> tuple[LightfmEmbeddings, float]:
    """The model fitted from scratch for ``epochs`` epochs; its embeddings and fit seconds."""
    import lightfm

    t0 = time.perf_counter()
    model = new_model(params)
    train_epochs(model, problem, epochs, params)
    seconds = time.perf_counter() - t0
    info = {
        **asdict(params), "epochs_final": int(epochs), "threads_used": params.threads(),
        "lightfm_version": lightfm.__version__, "n_users": int(problem.users.ids.size),
        "n_items": int(problem.items.ids.size), "nnz": int(problem.interactions.nnz),
        "item_features": _feature_map(problem.items), "user_features": _feature_map(problem.users),
    }
    return embeddings(model, problem, info), seconds


def _feature_map(features: FeatureMatrix) -> dict[str, Any]:
    """Feature name → column of the feature embedding; identities by count only (the id
    arrays name them, and 200 k of them would swell params.json)."""
    named = {n: j for j, n in enumerate(features.names) if not n.startswith("id:")}
    return {"identity_features": len(features.names) - len(named), "columns": named}


@dataclass
class Trained:
    """The final model and how its number of epochs was chosen."""

    embeddings: LightfmEmbeddings
    best_epoch: int
    curve: list[dict[str, float]]  # the validation phase, one row per epoch run
    validation_seconds: float
    fit_seconds: float


def final_epochs(best: int, interactions: int, params: LightfmParams) -> int:
    """The best epoch on validation, capped by the final fit's update budget (at least one)."""
    if params.final_update_budget == 0 or interactions == 0:
        return best
    return max(1, min(best, params.final_update_budget // interactions))


def validation_ceiling(interactions: int, params: LightfmParams) -> int:
    """The most epochs worth trying on validation: the final fit never runs more than its update
    budget allows, so a better epoch beyond that could not be used. 1 = nothing to choose."""
    return final_epochs(params.epochs, interactions, params)


def train(
    ratings: pl.DataFrame,
    validation_ratings: pl.DataFrame | None,
    validation_truth: pl.DataFrame | None,
    products: pl.DataFrame | None,
    user_seg: pl.DataFrame | None,
    params: LightfmParams,
    *,
    log=None,
) -> Trained:
    """Early stopping on the validation split (up to `validation_ceiling` epochs), then the final
    fit on ``ratings`` (the training window) for the best number of epochs; the curve and both
    phases' seconds go in params. When the ceiling is one epoch (the update budget at full
    scale) there is nothing to choose: no validation phase, and the split may be None."""
    t0 = time.perf_counter()
    ceiling = validation_ceiling(ratings.height, params)
    if ceiling == 1:
        best, curve = 1, []
        budget = f"{params.final_update_budget:,}"
        chosen_on = f"the final fit's update budget ({budget} updates: one epoch); no validation phase"
    elif validation_ratings is None or validation_truth is None:
        raise ValueError(f"LightFM: the validation split is needed to choose among {ceiling} epochs")
    else:
        validation_ratings = _sampled(validation_ratings, params)
        problem = Problem.build(validation_ratings, products, user_seg)
        best, curve = fit_early_stopping(problem, validation_truth, params, log=log, ceiling=ceiling)
        chosen_on = "validation (each user's second-to-last basket)"
        if best == 0:
            best = min(UNVALIDATED_EPOCHS, ceiling)
            chosen_on = (f"no user has a validation basket with history before it, so nothing could be "
                         f"validated: {best} epochs (the default)")
    validation_seconds = time.perf_counter() - t0
    emb, fit_seconds = fit_lightfm(Problem.build(ratings, products, user_seg), params, final_epochs(best, ratings.height, params))
    emb.params.update(best_epoch=best, epochs_run=len(curve), validation_curve=curve, chosen_on=chosen_on)
    return Trained(emb, best, curve, round(validation_seconds, 2), round(fit_seconds, 2))
