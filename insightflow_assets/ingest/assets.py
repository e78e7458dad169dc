"""Ingest: the run's validated input snapshot (`raw_orders`, `raw_order_products`, `products`).

One step reads and validates the whole input set before yielding anything, so bad input
stops the run with nothing written. Snapshotting per run means that re-materializing an old
run later reads that run's inputs, not today's. Three input forms are accepted: Instacart's
files, one `transactions` table of order lines (see `ingest.transactions`), or an event log of
views, carts and purchases (`ingest.events`, turned into sessions by `ingest.events_orders`).
"""

import contextlib
from datetime import datetime

from dagster import AssetExecutionContext, AssetOut, Config, MetadataValue, Output, multi_asset
from pydantic import Field

from insightflow_assets.common import CODE_VERSION, OWNERS, current_run, metadata_on_materialization, stored
from insightflow_assets.ingest.events import events_keys, read_events_form
from insightflow_assets.ingest.events_orders import events_to_snapshot
from insightflow_assets.ingest.loading import (
    InputError,
    Snapshot,
    is_utf8,
    pick_source_files,
    read_table,
    validate_snapshot,
)
from insightflow_assets.ingest.transactions import (
    DEFAULT_NON_PRODUCT_CODES,
    DEFAULT_NON_PRODUCT_PREFIXES,
    TransactionsSpec,
    derive_snapshot,
)
from insightflow_assets.ingest.spark_lines import checked_snapshot, lines_task
from insightflow_assets.partitions import runs_partitions
from insightflow_assets.spark.engine import SparkTask, run_stages, spark_uri
from resources.compute import Compute
from resources.layout import SOURCE_SUFFIXES, SOURCE_TABLES, TRANSACTIONS_TABLE, Artifact
from resources.storage import Storage

_OUT = dict(kinds={"polars", "parquet"}, owners=OWNERS, code_version=CODE_VERSION)
_RAW = "recsys/raw/run-{ts}"  # the run's input snapshot, one folder for the three tables


class IngestConfig(Config):
    """How to read the transactions and events forms (ignored for Instacart files)."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Logical field -> column of transactions.*: customer_id, order_id, timestamp, product_id "
            "(required), quantity, unit_price, product_name, category. Unmapped fields are looked up "
            "under common names (the UCI Online Retail names included)."
        ),
    )
    cancel_prefixes: list[str] = Field(default_factory=lambda: ["C"], description="Order ids starting with these are cancellations.")
    non_product_codes: list[str] = Field(default_factory=lambda: list(DEFAULT_NON_PRODUCT_CODES))
    non_product_prefixes: list[str] = Field(default_factory=lambda: list(DEFAULT_NON_PRODUCT_PREFIXES))
    encoding: str = Field(
        default="utf-8",
        description=(
            "Text encoding of the CSV files (e.g. latin-1, cp1252). Not guessed: the same bytes are "
            "different letters in Latin-1 and Windows-1250, so a file that is not valid in this "
            "encoding is refused with its line and column."
        ),
    )

    timestamp_unit: str | None = Field(
        default=None,
        description="Transactions form: integer times in this unit since 1970 (day, s or ms), e.g. a DAY column numbered 1, 2, …",
    )
    timestamp_format: str | None = Field(
        default=None,
        description=(
            "Transactions form: the format of text timestamps (strftime, e.g. '%d/%m/%Y %H:%M', '%d.%m.%Y'). "
            "Default: the known formats; a column two of them read differently (day/month order) is refused."
        ),
    )

    decimal_mark: str | None = Field(
        default=None,
        description=(
            "Transactions form: the decimal mark of quantities and prices, ',' (dots group thousands: 1.234,50) "
            "or '.'. Default: ',' in a ';'-separated file with a decimal comma in a number column, else '.'; "
            "a ';' file whose dotted numbers all look like thousands (1.200) is refused until this is set."
        ),
    )

    duplicate_lines: str = Field(
        default="drop",
        description=(
            "Transactions form: a line equal in every mapped column to an earlier one is a double export "
            "('drop', the default) or another scan of the same item ('add': repeats add up to the quantity)."
        ),
    )

    cutoff: str | None = Field(
        default=None,
        description=(
            "Events form: the cut-off time (ISO 8601, UTC when no zone is given); events before it "
            "train, carts and purchases after it are the target. Default: the last 15 % of the log's time span."
        ),
    )
    holdout_days: float | None = Field(default=None, description="Events form: length of the holdout window after the cut-off (default: to the end of the log).")
    session_gap_minutes: float = Field(default=30.0, description="Events form: a visitor's events with no longer gap are one session (one order).")

    def cutoff_time(self) -> datetime | None:
        if self.cutoff is None:
            return None
        try:
            return datetime.fromisoformat(self.cutoff)
        except ValueError:
            raise InputError(f"instacart_snapshot config: cutoff {self.cutoff!r} is not an ISO 8601 time") from None

    def spec(self) -> TransactionsSpec:
        return TransactionsSpec(
            columns=dict(self.columns),
            cancel_prefixes=tuple(self.cancel_prefixes),
            non_product_codes=tuple(self.non_product_codes),
            non_product_prefixes=tuple(self.non_product_prefixes),
            timestamp_unit=self.timestamp_unit,
            timestamp_format=self.timestamp_format,
            decimal_mark=self.decimal_mark,
            duplicate_lines=self.duplicate_lines,
        )


@stored(
    {
        "raw_orders": Artifact(_RAW, ("orders.parquet",)),
        "raw_order_products": Artifact(_RAW, ("order_products.parquet",)),
        "products": Artifact(_RAW, ("products.parquet",), latest="recsys/products/latest"),
    }
)
@multi_asset(
    name="instacart_snapshot",
    outs={
        "raw_orders": AssetOut(description="The run's orders, typed and validated (Instacart orders.csv or derived from transactions).", **_OUT),
        "raw_order_products": AssetOut(
            description="The run's order lines, validated against orders and products.",
            **_OUT,
        ),
        "products": AssetOut(description="Products with their aisle and department (or category) names.", **_OUT),
    },
    partitions_def=runs_partitions,
    group_name="ingest",
)
@metadata_on_materialization
def instacart_snapshot(
    context: AssetExecutionContext, config: IngestConfig, source: Storage, curated: Storage, compute: Compute
):
    current_run(context)
    _check_encoding(config.encoding)
    listing = {o.key: o for o in source.list("")}
    events = _events_files(list(listing), source.uri())
    if events is not None:
        snap, details = _events(context, source, events, config)
        used = [events["events"], *events["item_properties"], events["category_tree"]]
    else:
        chosen = pick_source_files(list(listing), source.uri())
        used = list(chosen.values())
        if TRANSACTIONS_TABLE in chosen:
            snap, details = _transactions(context, source, chosen[TRANSACTIONS_TABLE], config.spec(), config.encoding)
        else:
            snap, engine = _instacart(context, source, curated, chosen, config.encoding, compute)
            details = {"form": "instacart", "engine": engine}

    provenance = {key: {"uri": source.uri(key), "size": listing[key].size, "version": listing[key].version} for key in used}
    meta = {"input_form": details["form"]}
    # Each fact is recorded once: the source files on raw_orders (the three outputs come from
    # one read), the line exclusions and the derivation on raw_order_products (they are per line).
    lines = {}
    if "derivation" in details:
        lines = {"derivation": MetadataValue.json(details["derivation"])}
    if "excluded" in details:
        lines = {
            "excluded_lines": MetadataValue.json(details["excluded"]),
            "lines_in": details["lines_in"],
            "derivation": MetadataValue.json(details["info"]),
        }
    orders = {"source": MetadataValue.json(provenance), "users": snap.orders["user_id"].n_unique()}
    yield Output(snap.orders, "raw_orders", metadata={**meta, **orders})
    # which engine checked the lines (the Instacart form; the others are checked on polars)
    lines.update(details.get("engine", {"engine": "local"}))
    yield Output(snap.order_products, "raw_order_products", metadata={**meta, **lines})
    yield Output(snap.products, "products", metadata=meta)


def _check_encoding(encoding: str) -> None:
    try:
        is_utf8(encoding)
    except LookupError:
        raise InputError(f"instacart_snapshot config: encoding {encoding!r} is not a known text encoding") from None


def _instacart(context, source: Storage, curated: Storage, chosen: dict[str, str], encoding: str,
               compute: Compute) -> tuple[Snapshot, dict]:
    """The snapshot and the engine of the lines' checks: polars, or under ``compute: spark`` the
    Spark job on the source files (spark_lines.py; reading, typing and the orders / products
    checks stay on polars, which writes the snapshot). The job's output goes to the curated
    storage's scratch, never beside the source files (the new-data sensor watches those)."""
    tables = {}
    for stem, key in chosen.items():
        with source.local_path(key) as path:
            tables[stem] = read_table(path, stem, display_name=key, encoding=encoding)
    # One line for the whole read (the source's files are in raw_orders' `source` metadata).
    rows = ", ".join(f"{key} {tables[stem].height:,}" for stem, key in chosen.items())
    context.log.info(f"read {source.uri()}: {rows} rows")
    inputs, params = lines_task(chosen, lambda key: spark_uri(source.uri(key)))
    return run_stages(
        context, compute, curated, {"lines": SparkTask("validate_lines", inputs, params, paths=True)},
        local=lambda: validate_snapshot(tables, names=chosen),
        spark=lambda frames, _: checked_snapshot(tables, chosen, frames["lines"]),
    )  # fmt: skip


def _transactions(context, source: Storage, key: str, spec: TransactionsSpec, encoding: str) -> tuple[Snapshot, dict]:
    with source.local_path(key) as path:
        result = derive_snapshot(path, spec, display_name=key, encoding=encoding)
    excluded = dict(result.excluded)
    context.log.info(
        f"read {source.uri(key)}: {result.lines_in:,} lines, {sum(excluded.values()):,} excluded "
        + ", ".join(f"{k}={v:,}" for k, v in excluded.items() if v)
    )
    if not result.info["time_of_day"]:
        context.log.warning(f"{key}: timestamps carry no time of day; order_hour_of_day is unknown")
    return result.snapshot, {"form": "transactions", "excluded": excluded, "lines_in": result.lines_in, "info": result.info}


def _events_files(keys: list[str], where: str) -> dict | None:
    """The events form's files, or None; refused beside another form's files."""
    events = events_keys(keys, where)
    if events is not None:
        others = sorted(k for k in keys for stem in (*SOURCE_TABLES, TRANSACTIONS_TABLE) if k in {stem + s for s in SOURCE_SUFFIXES})
        if others:
            raise InputError(f"{where}: holds both {events['events']} and {others[0]}; keep one input form")
    return events


def _events(context, source: Storage, files: dict, config: IngestConfig) -> tuple[Snapshot, dict]:
    cutoff = config.cutoff_time()
    with contextlib.ExitStack() as stack:
        local = {
            "events": stack.enter_context(source.local_path(files["events"])),
            "item_properties": [stack.enter_context(source.local_path(k)) for k in files["item_properties"]],
            "category_tree": stack.enter_context(source.local_path(files["category_tree"])),
        }
        events = read_events_form(local, encoding=config.encoding)
    snap, info = events_to_snapshot(
        events, cutoff=cutoff, holdout_days=config.holdout_days, session_gap_minutes=config.session_gap_minutes
    )
    context.log.info(
        f"read {source.uri()}: {info.get('events', 0):,} events, {info['sessions']:,} sessions before "
        f"{info['cutoff']}, {info['targets']:,} visitors with a target"
    )
    return snap, {"form": "events", "derivation": info}
