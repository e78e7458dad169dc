"""The snapshot's order-lines checks under `compute: spark` (pure; no Dagster).

The Spark job's ``validate_lines`` task (insightflow_assets/spark/jobs.py) runs the per-line
checks of the order lines files on the source files themselves: missing ids, lines pointing at
unknown orders or products, a product twice in one order. It returns the first problem with the
message `loading.validate_snapshot` gives. Reading and typing every file (their types, nulls and
ranges) and the orders / products checks stay on polars: the step writes the snapshot from
those frames.
"""

from __future__ import annotations

import polars as pl

from insightflow_assets.ingest.loading import InputError, Snapshot, validate_snapshot

LINE_STEMS = ("order_products__prior", "order_products__train")


def lines_task(chosen: dict[str, str], uri) -> tuple[dict, dict]:
    """The task's ``inputs`` (source URIs, via ``uri(key)``) and ``params`` (the files' names
    for the messages) for the chosen Instacart files."""
    stems = [s for s in LINE_STEMS if s in chosen]
    inputs = {"order_products": [uri(chosen[s]) for s in stems], "orders": uri(chosen["orders"]),
              "products": uri(chosen["products"])}  # fmt: skip
    return inputs, {"names": [chosen[s] for s in stems]}


def checked_snapshot(tables: dict[str, pl.DataFrame], names: dict[str, str], verdict: pl.DataFrame) -> Snapshot:
    """`validate_snapshot` with the lines' checks taken from the Spark job's ``verdict`` (one
    row: ``lines``, ``problem``): the orders' and products' own checks first, as locally, then
    the lines' first problem, raised as `InputError`."""
    # validate_snapshot on empty lines runs the orders and products checks alone
    snap = validate_snapshot({**tables, **{s: tables[s].head(0) for s in LINE_STEMS if s in tables}}, names)
    problem = verdict["problem"][0] if verdict.height == 1 else "the Spark lines check returned no verdict"
    if problem is not None:
        raise InputError(problem)
    lines = pl.concat([tables[s] for s in LINE_STEMS if s in tables], how="vertical")
    if lines.height != verdict["lines"][0]:
        raise InputError(f"the Spark lines check read {verdict['lines'][0]} lines, the snapshot has {lines.height}")
    return Snapshot(orders=snap.orders, order_products=lines, products=snap.products)
