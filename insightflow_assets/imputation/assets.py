"""Imputation: `orders_imputed` (MICE) and `mice_checks` (does the imputation help?)."""

import math
from typing import Any

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

from insightflow_assets.common import all_conditions, conditions_description, current_run, run_asset, run_check
from insightflow_assets.imputation.diagnostics import ESTIMATORS, day30_stats, mask_and_recover, plot_day30
from insightflow_assets.imputation.mice import impute_orders, order_features
from insightflow_assets.imputation.validation import dominant_customer, domain_violations, unexpected_nulls, unknown_fields
from resources.io_manager import ArtifactFolder
from resources.layout import Artifact

GROUP = "imputation"
_AFTER_MICE = "after-MICE/run-{ts}"  # the seed's folder, shared by both imputation assets


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
    storage=Artifact(_AFTER_MICE, ("orders_imputed.parquet",)),
    kinds={"scikit-learn", "polars", "parquet"},
    description=(
        "Orders with day-of-week, hour, days-since-prior and basket size imputed by MICE; "
        "`<col>_imputed` flags mark every filled cell; first orders keep their structural null gap; "
        "a field never observed in the input stays null (listed in `unknown_fields`)."
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
    return Output(
        imputed,
        metadata={
            "imputation": MetadataValue.json(info),
            "unknown_fields": MetadataValue.json(info["unknown_fields"]),
        },
    )


@run_asset(
    group=GROUP,
    storage=Artifact(_AFTER_MICE, ("mice_checks.json", "mice_day30.png")),
    kinds={"scikit-learn", "matplotlib", "json"},
    description=(
        "Day-30 metrics before vs after imputation (mice_checks.json, mice_day30.png) and a "
        "mask-and-recover validation of MICE's predictive mean against mean and median imputation."
    ),
    # 2: mask-and-recover scores the predictive mean, no longer the pooled posterior draws
    code_version="2",
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
        max_iter=config.max_iter,
        fit_sample=config.fit_sample,
    )
    report = {
        "day30": {"before": before, "after": after},
        "mask_and_recover": validation,
        # cells orders_imputed filled per field: a field with none is not judged (nothing to harm)
        "imputed": {c: int(orders_imputed[f"{c}_imputed"].sum()) for c in validation if f"{c}_imputed" in orders_imputed.columns},
        # what was compared: MICE's predictive mean vs the baselines, on the same hidden cells
        "mask_and_recover_setup": {
            "estimators": ESTIMATORS,
            "note": (
                "orders_imputed stores pooled posterior draws; here MICE is scored by its "
                "predictive mean, so all three methods are point predictions of the same cells"
            ),
            "mask_fraction": config.mask_fraction,
            "seed": config.seed,
        },
    }
    png = plot_day30(before, after)
    return Output(
        ArtifactFolder.of({"mice_checks.json": report, "mice_day30.png": png}),
        metadata={
            "mask_and_recover": MetadataValue.md(_rmse_table(validation)),
            "mice_estimator": ESTIMATORS["mice"],
        },
    )


def _finite(x: Any) -> float | None:
    """A metric as a finite float, or None (NaN/None: nothing was masked, or nothing to score)."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _fmt(x: Any) -> str:
    v = _finite(x)
    return "–" if v is None else f"{v:.3f}"


def _rmse_table(validation: dict[str, dict[str, Any]]) -> str:
    head = "| column | MICE RMSE (predictive mean) | mean RMSE | median RMSE | masked |\n|---|---|---|---|---|\n"
    rows = [
        f"| {col} | " + " | ".join(_fmt(v[m]["rmse"]) for m in ("mice", "mean", "median")) + f" | {v['n_masked']} |"
        for col, v in validation.items()
    ]
    return head + "\n".join(rows)


# --- asset checks -------------------------------------------------------------------------


def imputed_columns_complete(orders_imputed: pl.DataFrame) -> AssetCheckResult:
    """No missing value left in the imputed columns.

    Allowed: first orders' gap (structural) and fields never observed in the input, which
    MICE leaves null on purpose (reported by the WARN check `no_unknown_fields`).
    """
    unknown = unknown_fields(orders_imputed)
    nulls = unexpected_nulls(orders_imputed, unknown)
    return AssetCheckResult(
        passed=not any(nulls.values()),
        metadata={"nulls": MetadataValue.json(nulls), "unknown_fields": MetadataValue.json(unknown)},
    )


@run_check(asset=orders_imputed, blocking=False)
def no_unknown_fields(orders_imputed: pl.DataFrame) -> AssetCheckResult:
    """Every key field was observed somewhere; a never-observed one (e.g. no time of day) stays null."""
    unknown = unknown_fields(orders_imputed)
    return AssetCheckResult(
        passed=not unknown,
        severity=AssetCheckSeverity.WARN,
        description=(f"never observed, left null: {', '.join(unknown)}" if unknown else None),
        metadata={"unknown_fields": MetadataValue.json(unknown)},
    )


@run_check(asset=orders_imputed, blocking=False)
def no_dominant_customer(orders_imputed: pl.DataFrame) -> AssetCheckResult:
    """No customer holds more than 5 % of the orders and 20× the median customer's: such an id
    is a shared account (a till's guest id, a B2B account) better left out of the input."""
    top = dominant_customer(orders_imputed)
    code = None
    if top["dominant"] and "customer_code" in orders_imputed.columns:
        code = orders_imputed.filter(pl.col("user_id") == top["user_id"])["customer_code"][0]
    return AssetCheckResult(
        passed=not top["dominant"],
        severity=AssetCheckSeverity.WARN,
        description=(f"customer {code or top['user_id']} holds {top['orders']:,} orders ({top['share']:.1%}), "
                     f"{top['orders'] / max(top['median_orders'], 1):.0f}× the median customer's: a shared account?"
                     if top["dominant"] else None),
        metadata={"top_customer": top["user_id"], **({"top_customer_code": code} if code is not None else {}),
                  "top_orders": top["orders"], "top_share": float(top["share"]), "median_orders": float(top["median_orders"])},
    )


def imputed_values_in_domain(orders_imputed: pl.DataFrame) -> AssetCheckResult:
    """Every imputed field in its domain: gap 0–30, hour 0–23, dow 0–6, basket ≥ 1."""
    bad = domain_violations(orders_imputed)
    return AssetCheckResult(passed=not any(bad.values()), metadata={"violations": MetadataValue.json(bad)})


def imputed_row_count_matches_input(orders_imputed: pl.DataFrame, raw_orders: pl.DataFrame) -> AssetCheckResult:
    """Imputation neither drops nor adds orders."""
    return AssetCheckResult(
        passed=orders_imputed.height == raw_orders.height
        and orders_imputed["order_id"].sort().equals(raw_orders["order_id"].sort()),
        metadata={"input_rows": raw_orders.height, "output_rows": orders_imputed.height},
    )


# The blocking conditions on orders_imputed, evaluated as one Dagster check (`all_conditions`).
ORDERS_IMPUTED_CONDITIONS = [imputed_columns_complete, imputed_values_in_domain, imputed_row_count_matches_input]


@run_check(
    asset=orders_imputed,
    additional_ins={"raw_orders": AssetIn("raw_orders")},
    description=conditions_description(ORDERS_IMPUTED_CONDITIONS),
)
def orders_imputed_valid(orders_imputed: pl.DataFrame, raw_orders: pl.DataFrame) -> AssetCheckResult:
    """Every blocking condition on the imputed orders (ORDERS_IMPUTED_CONDITIONS) holds."""
    return all_conditions(ORDERS_IMPUTED_CONDITIONS, orders_imputed=orders_imputed, raw_orders=raw_orders)


@run_check(asset=mice_checks)
def mice_not_worse_than_median(mice_checks: ArtifactFolder) -> AssetCheckResult:
    """On hidden known values, MICE's predictive mean is not worse than the median (RMSE, per column).

    Fields with nothing masked (e.g. never observed) or nothing imputed (no missing value, as in
    an event log's sessions) are skipped; a field MICE failed to recover (NaN RMSE) while the
    median could counts as worse.
    """
    report = mice_checks.json("mice_checks.json")
    validation = report["mask_and_recover"]
    imputed = report.get("imputed", {})  # runs before it was recorded: every field judged
    worse = {}
    for col, v in validation.items():
        mice, median = _finite(v["mice"]["rmse"]), _finite(v["median"]["rmse"])
        if not v["n_masked"] or median is None or imputed.get(col) == 0:
            continue
        if mice is None or mice > median + 1e-9:
            worse[col] = {"mice": mice, "median": median}
    # every field's RMSE is the materialization's mask_and_recover table: not repeated here
    return AssetCheckResult(
        passed=not worse,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "worse_than_median": MetadataValue.json(worse),
            "mice_estimator": _scored_estimator(validation),
        },
    )


def _scored_estimator(validation: dict[str, dict[str, Any]]) -> str:
    """What was scored as MICE (recorded per field in mice_checks.json; older runs: pooled draws)."""
    labels = {v["mice"].get("estimator") for v in validation.values()} - {None}
    return ", ".join(sorted(labels)) or "pooled posterior draws (recorded before the estimator was)"


CHECKS = [orders_imputed_valid, no_unknown_fields, no_dominant_customer, mice_not_worse_than_median]
