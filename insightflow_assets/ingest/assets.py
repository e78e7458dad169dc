"""Ingest: the run's validated input snapshot (`raw_orders`, `raw_order_products`, `products`).

One step reads and validates the whole input set before yielding anything, so bad input
stops the run with nothing written. Snapshotting per run means that re-materializing an old
run later reads that run's inputs, not today's.
"""

from dagster import AssetExecutionContext, AssetOut, MetadataValue, Output, multi_asset

from insightflow_assets.common import CODE_VERSION, OWNERS, current_run
from insightflow_assets.ingest.loading import pick_source_files, read_table, validate_snapshot
from insightflow_assets.partitions import runs_partitions
from resources.storage import Storage

_OUT = dict(kinds={"polars", "parquet"}, owners=OWNERS, code_version=CODE_VERSION)

@multi_asset(
    name="instacart_snapshot",
    outs={
        "raw_orders": AssetOut(description="The run's orders.csv, typed and validated.", **_OUT),
        "raw_order_products": AssetOut(
            description="order_products__prior + __train lines of the run, validated against orders and products.",
            **_OUT,
        ),
        "products": AssetOut(description="Products with their aisle and department names joined.", **_OUT),
    },
    partitions_def=runs_partitions,
    group_name="ingest",
)
def instacart_snapshot(context: AssetExecutionContext, source: Storage):
    current_run(context)
    listing = {o.key: o for o in source.list("")}
    chosen = pick_source_files(list(listing), source.uri())

    tables = {}
    for stem, key in chosen.items():
        with source.local_path(key) as path:
            tables[stem] = read_table(path, stem, display_name=key)
        context.log.info(f"read {source.uri(key)}: {tables[stem].height:,} rows")
    snap = validate_snapshot(tables, names=chosen)

    provenance = {
        key: {"uri": source.uri(key), "size": listing[key].size, "version": listing[key].version}
        for key in chosen.values()
    }
    src = MetadataValue.json(provenance)
    yield Output(snap.orders, "raw_orders", metadata={"source": src, "users": snap.orders["user_id"].n_unique()})
    yield Output(snap.order_products, "raw_order_products", metadata={"source": src})
    yield Output(snap.products, "products", metadata={"source": src})
