"""Evaluation: `als_eval`, ALS scored against honest baselines on the held-out baskets."""

import math
from typing import Optional

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
)
from pydantic import Field

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.evaluation.event_report import category_method, is_unbounded, peer_scores
from insightflow_assets.evaluation.offline import (
    EVAL_SAMPLE_USERS,
    HEADLINE_K,
    eval_users,
    evaluation_report,
    headline_metadata,
    list_diversity,
    metrics_table,
    undefined_metrics,
)
from insightflow_assets.evaluation.baselines import item_popularity
from insightflow_assets.ingest.events_schema import is_events_form
from insightflow_assets.lightfm.embeddings import LightfmEmbeddings
from insightflow_assets.lightfm.fit import top_n
from insightflow_assets.model.als import AlsModel, lists_from, recommend
from insightflow_assets.postrank.export import complete_lists
from resources.io_manager import ArtifactFolder, markdown_table
from resources.layout import Artifact

GROUP = "evaluation"


class EvalConfig(Config):
    ks: list[int] = [5, 10, 20]
    sample_users: Optional[int] = Field(
        EVAL_SAMPLE_USERS, description="holdout users evaluated: a seeded sample of this many when there are more; None = all"
    )
    seed: int = 42


class CandidatesConfig(Config):
    """Whose ALS lists are scored once for both evaluations, and how deep."""

    n: int = 100  # the post-rank's candidate pool; every evaluation K reads a prefix of it
    sample_users: Optional[int] = Field(
        EVAL_SAMPLE_USERS, description="as als_eval's: the evaluations' users (others are scored there); None = all"
    )
    seed: int = 42


def metrics_markdown(metrics: dict, extra: dict | None = None) -> MetadataValue:
    return MetadataValue.md(markdown_table(pl.DataFrame(metrics_table(metrics, extra=extra)), n=10))


def metrics_in_unit_interval(folder: ArtifactFolder) -> AssetCheckResult:
    """Shared by both evaluations: every reported metric lies in [0, 1].

    A metric reported as undefined (null, with the reason under ``"undefined"`` beside it: e.g.
    repeat recall when no target basket holds a repeat item) is listed, not failed; a null or
    NaN anywhere else still fails. The events form's shares (cold_share, reranked_share) are
    checked too; its novelty@K (bits) and diversity@K (categories per list) only for finite >= 0.
    """
    metrics = folder.json("metrics.json")
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}

    def walk(prefix: str, d: dict) -> None:
        if d.get("undefined"):
            undefined[prefix.rstrip(".")] = d["undefined"]
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            elif ("@" in k or k.startswith("coverage") or k.endswith("_share")) and not (v is None and d.get("undefined")):
                values[prefix + k] = v

    for section in ("als", "baseline", "baselines", "methods"):
        walk(f"{section}.", metrics.get(section, {}))
    walk("", folder.json("coverage.json"))
    # novelty (bits) and diversity (categories) of the events form are not shares: finite, >= 0
    in_range = {k: _non_negative(v) if is_unbounded(k.rsplit(".", 1)[-1]) else _in_unit_interval(v) for k, v in values.items()}
    bad = {k: v for k, v in values.items() if not in_range[k]}
    return AssetCheckResult(
        passed=not bad,
        metadata={
            "checked": len(values),
            "out_of_range": MetadataValue.json(bad),
            "undefined": MetadataValue.json(undefined),
        },
    )


def _non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0.0


def _in_unit_interval(v) -> bool:
    # NaN compares false both ways, so it is out of range too.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/candidates/als-{ts}", ("als_candidates.parquet",)),
    kinds={"implicit", "polars", "parquet"},
    description=(
        "ALS top-N (N=100) of every evaluated user, scored once: als_eval reads its top-K prefix, "
        "als_postrank re-ranks it."
    ),
)
def als_candidates(
    context: AssetExecutionContext, config: CandidatesConfig, als_model: ArtifactFolder, holdout: pl.DataFrame
) -> Output[pl.DataFrame]:
    current_run(context)
    model = AlsModel.from_files(als_model.files)
    # Already-bought products stay allowed: repurchase is the main event in groceries.
    recs = recommend(model, None, eval_users(holdout, config.sample_users, config.seed), config.n)
    return Output(recs, metadata={"users": recs["user_id"].n_unique(), "n": config.n})


@run_asset(
    group=GROUP,
    storage=Artifact("recsys/eval/als-{ts}", ("metrics.json", "coverage.json")),
    kinds={"polars", "json"},
    description=(
        "precision/recall/MAP/NDCG/hit-rate@K on the held-out baskets of every method: ALS, the next-basket "
        "model (TIFU-KNN), LightFM, global popularity, P-TopFreq and GP-TopFreq (the `methods` map). Event log: "
        "also ALS + category re-rank, and the peer's Coverage/Novelty/Diversity@5, cold and re-ranked shares."
    ),
)
def als_eval(
    context: AssetExecutionContext,
    config: EvalConfig,
    als_model: ArtifactFolder,
    als_candidates: pl.DataFrame,
    nbr_model: ArtifactFolder,
    lightfm_model: ArtifactFolder,
    ratings: pl.DataFrame,
    holdout: pl.DataFrame,
    products: pl.DataFrame,
) -> Output[ArtifactFolder]:
    current_run(context)
    model = AlsModel.from_files(als_model.files)
    users = eval_users(holdout, config.sample_users, config.seed)
    recs = lists_from(model, als_candidates, users, max(config.ks))
    k = max(config.ks)
    # LightFM stores its embeddings; its lists are scored here, for the evaluated users only
    # (topped up from popularity, as an export would be)
    lightfm = top_n(LightfmEmbeddings.from_files(lightfm_model.files), users, k, num_threads=0)
    extra = {"tifu_knn": nbr_model.frame("recs.parquet"),
             "lightfm": complete_lists(lightfm, pl.Series(users), k, item_popularity(ratings))}
    more = None
    if is_events_form(products):
        # the peer's metric set in every entry, and the category re-rank of the same ALS candidates
        extra["als_category"] = category_method(als_candidates, users, ratings, products, max(config.ks))
        more = peer_scores(ratings, products)
    metrics, cov = evaluation_report(
        recs, ratings, holdout, users, n_items=products.height, ks=tuple(config.ks),
        extra_recs=extra, more_scores=more,
    )  # fmt: skip
    metrics["diversity"] = {"k": HEADLINE_K, "als": list_diversity(recs, model.item_ids, model.item_factors, ratings, HEADLINE_K)}
    metrics["eval_config"] = config.model_dump()
    winner = metrics["winner"]
    return Output(
        ArtifactFolder.of({"metrics.json": metrics, "coverage.json": cov}),
        metadata={
            f"metrics@{HEADLINE_K}": metrics_markdown(metrics),
            "winner": f"{winner['method']} on {winner['metric']}",
            "users_evaluated": int(len(users)),
            "undefined_metrics": MetadataValue.json(undefined_metrics(metrics["methods"])),
            **headline_metadata(metrics["methods"]),
            **{k: float(v) for k, v in cov.items() if k.startswith("coverage")},
        },
    )


@run_check(asset=als_eval)
def als_eval_metrics_in_range(als_eval: ArtifactFolder) -> AssetCheckResult:
    """Every metric of the report is within [0, 1]."""
    return metrics_in_unit_interval(als_eval)


@run_check(asset=als_eval, blocking=False)
def als_beats_popularity(als_eval: ArtifactFolder) -> AssetCheckResult:
    """ALS vs global popularity on map@10, recorded as a warning when ALS does not win."""
    metrics = als_eval.json("metrics.json")
    key = f"map@{HEADLINE_K}"
    als, pop = metrics["als"][key], metrics["baseline"][key]
    return AssetCheckResult(
        passed=als is not None and pop is not None and als >= pop,
        severity=AssetCheckSeverity.WARN,
        metadata={f"als_{key}": als, f"popularity_{key}": pop},
    )


CHECKS = [als_eval_metrics_in_range, als_beats_popularity]
