"""Assets are collected from the stage packages, and each declares its storage entry."""

from __future__ import annotations

import sys
from types import ModuleType

import polars as pl
import pytest
from dagster import AssetKey

import insightflow_assets
from insightflow_assets.common import run_asset, stored
from insightflow_assets.definitions import make_definitions
from insightflow_assets.ingest.assets import instacart_snapshot
from insightflow_assets.publish.promotion import promoted_artifacts
from insightflow_assets.stages import collect, stage_modules
from insightflow_assets_tests.conftest import local_defs
from resources.layout import ARTIFACTS, Artifact, artifact

# The storage layout as the per-asset table in resources/layout.py spelled it before each
# entry moved beside its asset: moving them must not change a single path.
LAYOUT_BEFORE = {
    "raw_orders": ("recsys/raw/run-{ts}", ("orders.parquet",), None),
    "raw_order_products": ("recsys/raw/run-{ts}", ("order_products.parquet",), None),
    "products": ("recsys/raw/run-{ts}", ("products.parquet",), "recsys/products/latest"),  # latest/: serving
    "orders_imputed": ("after-MICE/run-{ts}", ("orders_imputed.parquet",), None),
    "mice_checks": ("after-MICE/run-{ts}", ("mice_checks.json", "mice_day30.png"), None),
    "ratings": ("recsys/ratings/run-{ts}", ("ratings.parquet",), None),
    "holdout": ("recsys/holdout/run-{ts}", ("holdout.parquet",), None),
    "als_model": ("recsys/models/als-{ts}", ("factors.npz", "params.json"), None),
    "als_eval": ("recsys/eval/als-{ts}", ("metrics.json", "coverage.json"), None),
    "als_postrank": ("recsys/eval/als-postrank-{ts}", ("metrics.json", "coverage.json"), None),
    "model_selection": ("recsys/eval/selection-{ts}", ("selection.json",), "recsys/eval/selection/latest"),
    "nbr_model": ("recsys/models/nbr-{ts}", ("recs.parquet", "params.json"), None),
    "user_recos": ("recsys/recos/run-{ts}", ("user_recos.parquet",), "recsys/recos/latest"),
    "eval_charts": (
        "recsys/eval_charts/publish-{ts}",
        (
            "map_trend.png",
            "ndcg_trend.png",
            "precision_trend.png",
            "recall_trend.png",
            "coverage_item_trend.png",
            "coverage_user_trend.png",
            "metrics_bar.png",
            "index.json",
        ),
        "recsys/eval_charts/latest",
    ),
    "user_seg": ("recsys/user_seg/run-{ts}", ("user_seg.parquet",), "recsys/user_seg/latest"),
    "segment_popularity": (
        "recsys/segment_popularity/run-{ts}",
        ("segment_popularity.parquet",),
        "recsys/segment_popularity/latest",
    ),
    "rfm_charts": (
        "recsys/eval_charts/rfm_analysis-{ts}",
        ("cluster_profiles.png", "pca_segments.png", "seg_pop_lift.png", "index.json"),
        None,
    ),
    "exports": (
        "recsys/exports/run-{ts}/data",
        (
            "overview.csv",
            "centroids.parquet",
            "segment_topn.parquet",
            "users_high_value.parquet",
            "users_random.parquet",
            "user_recos.csv",
            "user_recos.parquet",
            "bedrock_inputs.jsonl",
        ),
        None,
    ),
    "user_seg_diagnostics": (
        "recsys/debug/user-seg-{ts}/diag",
        ("driver_log.txt", "metrics.json", "orders_schema.json"),
        None,
    ),
}


# Entries added since, each by adding a stage package or an asset beside its own (no list to edit).
LAYOUT_ADDED = {
    "lightfm_model": (
        "recsys/models/lightfm-{ts}",
        ("item_ids.npy", "item_vectors.npy", "item_biases.npy", "user_ids.npy", "user_vectors.npy", "user_biases.npy",
         "params.json"),
        "recsys/models/lightfm/latest",
    ),
    "basket_pairs": ("recsys/basket/pairs-{ts}", ("pairs.parquet", "items.parquet", "params.json", "profiles.json"), "recsys/basket/latest"),
    "basket_eval": ("recsys/eval/basket-{ts}", ("metrics.json", "by_size.json", "basket_eval.png"), None),
    "als_candidates": ("recsys/candidates/als-{ts}", ("als_candidates.parquet",), None),
}  # fmt: skip


def test_layout_unchanged():
    assert {name: (s.folder, s.files, s.latest) for name, s in ARTIFACTS.items()} == LAYOUT_BEFORE | LAYOUT_ADDED


# What definitions.py listed by hand before the stages were collected.
ASSETS_BEFORE = {
    "raw_orders", "raw_order_products", "products", "orders_imputed", "mice_checks", "ratings", "holdout",
    "als_model", "model_selection", "nbr_model", "als_eval", "user_recos", "als_postrank", "eval_charts",
    "user_seg", "segment_popularity", "rfm_charts", "exports", "latest_manifest",
}  # fmt: skip
# (the blocking conditions of orders_imputed, user_seg and exports listed then are each one
# check of several conditions since: common.all_conditions)
CHECKS_BEFORE = {
    "als_eval:als_beats_popularity", "als_eval:als_eval_metrics_in_range", "als_model:als_factors_finite",
    "als_postrank:postrank_metrics_in_range", "exports:exports_valid", "mice_checks:mice_not_worse_than_median",
    "orders_imputed:orders_imputed_valid", "orders_imputed:no_unknown_fields", "ratings:ratings_valid",
    "segment_popularity:segment_popularity_bounded", "user_recos:every_user_gets_k_items", "user_seg:user_seg_valid",
}  # fmt: skip


ASSETS_ADDED = {"lightfm_model", "basket_pairs", "basket_eval", "als_candidates"}
CHECKS_ADDED = {
    "lightfm_model:lightfm_embeddings_finite", "basket_eval:basket_queries_return_k_new_products",
    "basket_eval:basket_blend_not_worse_than_pairs", "orders_imputed:no_dominant_customer",
}  # fmt: skip


def test_every_stage_collected():
    assets, checks = collect(stage_modules())
    assert {k.to_user_string() for a in assets for k in a.keys} == ASSETS_BEFORE | ASSETS_ADDED
    # a check runs in its asset's step (common.run_check) or, when defined apart, in its own
    in_step = {k.to_user_string() for a in assets for k in a.check_keys}
    apart = {k.to_user_string() for c in checks for k in c.check_keys}
    assert in_step | apart == CHECKS_BEFORE | CHECKS_ADDED


def test_promoted_are_the_latest_entries():
    assert promoted_artifacts() == [
        "basket_pairs", "eval_charts", "lightfm_model", "model_selection", "products", "segment_popularity", "user_recos", "user_seg",
    ]  # fmt: skip


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as the stages declared it, given back unchanged after the test."""
    len(ARTIFACTS)  # loaded first, so the copies are complete
    for attr in ("entries", "writers", "declared"):
        monkeypatch.setattr(ARTIFACTS, attr, getattr(ARTIFACTS, attr).copy())


def _module(**defs) -> ModuleType:
    module = ModuleType("extra_stage")
    module.__dict__.update(defs)
    return module


def _load_error(*extra: ModuleType) -> str:
    with pytest.raises(ValueError) as caught:
        make_definitions(resources={}, modules=[*stage_modules(), *extra])
    return str(caught.value)


def test_an_asset_without_storage_fails_the_load():
    @run_asset(group="extra", kinds={"polars"}, description="declares no storage")
    def unstored_scores(): ...

    error = _load_error(_module(unstored_scores=unstored_scores))
    assert error.startswith("asset 'unstored_scores' has no storage entry") and "\n" not in error


def test_a_scanned_input_is_refused_where_it_cannot_work():
    """A ``pl.LazyFrame`` input is a scan valid while the body runs (`common.lean_step`): an
    asset that yields (runs after the scan is closed) or an input of every run is refused at
    definition, in one line."""
    from dagster import AllPartitionMapping, AssetIn

    from resources.io_manager import ALL_RUNS

    def yielding(ratings: pl.LazyFrame):
        yield ratings

    def every_run(ratings: pl.LazyFrame): ...

    decorate = run_asset(group="extra", kinds={"polars"}, description="scans")
    with pytest.raises(TypeError, match=r"^asset yielding: a pl.LazyFrame input needs an asset that returns its value$"):
        decorate(yielding)
    every = AssetIn("ratings", partition_mapping=AllPartitionMapping(), metadata={ALL_RUNS: True})
    with pytest.raises(TypeError, match=r"^asset every_run: input 'ratings' reads every run, which is loaded, not scanned$"):
        run_asset(group="extra", kinds={"polars"}, description="scans", ins={"ratings": every})(every_run)


def test_a_storage_entry_naming_no_asset_fails_the_load(scratch_registry):
    # The ingest's outputs, one misspelled: the entry names no asset, and the output has none.
    stored({"raw_order": Artifact("recsys/raw/run-{ts}", ("orders.parquet",))})(instacart_snapshot)
    error = _load_error()
    assert error.startswith("storage entry 'raw_order' names no asset") and "\n" not in error


def test_a_latest_entry_the_publisher_does_not_wait_for_fails_the_load(scratch_registry):
    @run_asset(
        group="extra",
        kinds={"polars"},
        description="promoted, but not a dep of latest_manifest",
        storage=Artifact("recsys/extra/run-{ts}", ("extra.parquet",), latest="recsys/extra/latest"),
    )
    def extra_promoted(): ...

    error = _load_error(_module(extra_promoted=extra_promoted))
    assert error.startswith("asset 'extra_promoted' has a latest/ entry but latest_manifest does not depend on it")


# The README's example of a new stage ("The asset graph"), word for word.
NEW_STAGE = """
import polars as pl
from dagster import AssetExecutionContext

from insightflow_assets.common import current_run, run_asset
from resources.layout import Artifact


@run_asset(
    group="loyalty",
    kinds={"polars", "parquet"},
    description="Each user's share of purchases that are repeats.",
    storage=Artifact("recsys/loyalty/run-{ts}", ("loyalty.parquet",)),
)
def loyalty(context: AssetExecutionContext, ratings: pl.DataFrame) -> pl.DataFrame:
    current_run(context)
    return ratings.group_by("user_id").agg((pl.col("purchases") > 1).mean().alias("repeat_share"))
"""


def test_adding_an_asset_is_adding_a_package(tmp_path, monkeypatch, scratch_registry):
    package = tmp_path / "loyalty"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "assets.py").write_text(NEW_STAGE)
    monkeypatch.setattr(insightflow_assets, "__path__", [*insightflow_assets.__path__, str(tmp_path)])
    stage_modules.cache_clear()
    try:
        defs = local_defs(tmp_path / "clean", tmp_path / "curated")
        graph = defs.resolve_asset_graph()
        assert graph.get(AssetKey("loyalty")).parent_keys == {AssetKey("ratings")}
        assert artifact("loyalty").keys("run-20261122-013000") == {"loyalty.parquet": "recsys/loyalty/run-20261122-013000/loyalty.parquet"}
    finally:
        stage_modules.cache_clear()
        for name in ("insightflow_assets.loyalty.assets", "insightflow_assets.loyalty"):
            sys.modules.pop(name, None)
