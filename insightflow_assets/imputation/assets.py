"""Imputation: `orders_imputed` (MICE) and `mice_checks` (does the imputation help?)."""


import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    Config,
    MetadataValue,
    Output,
)

from insightflow_assets.common import current_run, run_asset, run_check
from insightflow_assets.imputation.diagnostics import day30_stats, mask_and_recover, plot_day30
from insightflow_assets.imputation.mice import impute_orders, order_features
from insightflow_assets.imputation.validation import domain_violations, unexpected_nulls
from resources.io_manager import ArtifactFolder

GROUP = "imputation"


class MiceConfig(Config):
    """Multiple imputation by chained equations (scikit-learn `IterativeImputer`)."""

    n_imputations: int = 3
    max_iter: int = 10
    fit_sample: int = 200_000
    seed: int = 42


class MiceChecksConfig(MiceConfig):
    """The validation re-runs MICE with the same settings on data with known values hidden."""

    mask_fraction: float = 0.1


@run_asset(
    group=GROUP,
    kinds={"scikit-learn", "polars", "parquet"},
    description=(
        "Orders with day-of-week, hour, days-since-prior and basket size imputed by MICE; "
        "`<col>_imputed` flags mark every filled cell; first orders keep their structural null gap."
    ),
)
def orders_imputed(
    context: AssetExecutionContext,
    config: MiceConfig,
    raw_orders: pl.DataFrame,
    raw_order_products: pl.DataFrame,
) -> Output[pl.DataFrame]:
    current_run(context)
    features = order_features(raw_orders, raw_order_products)
    imputed, info = impute_orders(
        features,
        n_imputations=config.n_imputations,
        max_iter=config.max_iter,
        fit_sample=config.fit_sample,
        seed=config.seed,
    )
    return Output(imputed, metadata={"imputation": MetadataValue.json(info), "orders": imputed.height})


@run_asset(
    group=GROUP,
    kinds={"scikit-learn", "matplotlib", "json"},
    description=(
        "Day-30 metrics before vs after imputation (mice_checks.json, mice_day30.png) and a "
        "mask-and-recover validation of MICE against mean and median imputation."
    ),
)
def mice_checks(
    context: AssetExecutionContext,
    config: MiceChecksConfig,
    raw_orders: pl.DataFrame,
    raw_order_products: pl.DataFrame,
    orders_imputed: pl.DataFrame,
) -> Output[ArtifactFolder]:
    current_run(context)
    features = order_features(raw_orders, raw_order_products)
    before = day30_stats(features)
    after = day30_stats(orders_imputed)
    validation = mask_and_recover(
        features,
        fraction=config.mask_fraction,
        seed=config.seed,
        n_imputations=config.n_imputations,
        max_iter=config.max_iter,
        fit_sample=config.fit_sample,
    )
    report = {"day30": {"before": before, "after": after}, "mask_and_recover": validation}
    png = plot_day30(before, after)
    rows = [
        f"| {col} | {v['mice']['rmse']:.3f} | {v['mean']['rmse']:.3f} | {v['median']['rmse']:.3f} | {v['n_masked']} |"
        for col, v in validation.items()
    ]
    table = "| column | MICE RMSE | mean RMSE | median RMSE | masked |\n|---|---|---|---|---|\n" + "\n".join(rows)
    return Output(
        ArtifactFolder.of({"mice_checks.json": report, "mice_day30.png": png}),
        metadata={"mask_and_recover": MetadataValue.md(table)},
    )


# --- asset checks -------------------------------------------------------------------------


@run_check(asset=orders_imputed)
def imputed_columns_complete(orders_imputed: pl.DataFrame) -> AssetCheckResult:
    """No missing value left in the imputed columns (first orders' gap is structural, allowed)."""
    nulls = unexpected_nulls(orders_imputed)
    return AssetCheckResult(passed=not any(nulls.values()), metadata={"nulls": MetadataValue.json(nulls)})


@run_check(asset=orders_imputed)
def imputed_values_in_domain(orders_imputed: pl.DataFrame) -> AssetCheckResult:
    """Every imputed field in its domain: gap 0–30, hour 0–23, dow 0–6, basket ≥ 1."""
    bad = domain_violations(orders_imputed)
    return AssetCheckResult(passed=not any(bad.values()), metadata={"violations": MetadataValue.json(bad)})


@run_check(
    asset=orders_imputed,
    additional_ins={"raw_orders": AssetIn("raw_orders")},
)
def imputed_row_count_matches_input(orders_imputed: pl.DataFrame, raw_orders: pl.DataFrame) -> AssetCheckResult:
    """Imputation neither drops nor adds orders."""
    return AssetCheckResult(
        passed=orders_imputed.height == raw_orders.height
        and orders_imputed["order_id"].sort().equals(raw_orders["order_id"].sort()),
        metadata={"input_rows": raw_orders.height, "output_rows": orders_imputed.height},
    )


@run_check(asset=mice_checks)
def mice_not_worse_than_median(mice_checks: ArtifactFolder) -> AssetCheckResult:
    """On hidden known values, MICE's RMSE is not worse than median imputation, per column."""
    validation = mice_checks.json("mice_checks.json")["mask_and_recover"]
    worse = {
        col: {"mice": v["mice"]["rmse"], "median": v["median"]["rmse"]}
        for col, v in validation.items()
        if v["n_masked"] and v["mice"]["rmse"] > v["median"]["rmse"] + 1e-9
    }
    return AssetCheckResult(
        passed=not worse,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "worse_than_median": MetadataValue.json(worse),
            "rmse": MetadataValue.json({c: {m: v[m]["rmse"] for m in ("mice", "mean", "median")} for c, v in validation.items()}),
        },
    )


CHECKS = [imputed_columns_complete, imputed_values_in_domain, imputed_row_count_matches_input, mice_not_worse_than_median]
