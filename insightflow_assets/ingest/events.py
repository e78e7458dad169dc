"""The events input form: a RetailRocket-style event log (pure polars; nothing is written).

A folder holds

* ``events.csv``: ``timestamp`` (ms since the epoch), ``visitorid``, ``event`` (view,
  addtocart or transaction), ``itemid``, ``transactionid`` (required on transactions);
* ``item_properties*.csv`` (RetailRocket splits it in ``_part1`` and ``_part2``):
  ``timestamp, itemid, property, value``; only ``categoryid`` and ``available`` (0/1) are used;
* ``category_tree.csv``: ``categoryid, parentid`` (empty parent for a root).

`read_events_form` returns an `EventsSnapshot`: the typed events with each item's category and
availability **as of** the event's time (the latest value whose timestamp is not after the
event's; none before the item's first value), each category's path from its root, and the
histories to resolve properties at any cut-off (`EventsSnapshot.available_at`). Anything wrong
raises `InputError`, one line naming the file and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl

from insightflow_assets.ingest.loading import InputError, one_file, read_csv_checked

__all__ = ["EVENT_TYPES", "EventsSnapshot", "find_events_files", "read_events_form"]

EVENT_TYPES = ("view", "addtocart", "transaction")
EVENT_ENUM = pl.Enum(list(EVENT_TYPES))
TS_TYPE = pl.Datetime("ms", "UTC")
# Plausible ms timestamps: anything outside is another unit (seconds, µs) or garbage.
TS_MIN_MS, TS_MAX_MS = 946_684_800_000, 4_102_444_800_000  # 2000-01-01 .. 2100-01-01

EVENTS_COLUMNS = {"timestamp": pl.Int64, "visitorid": pl.Int64, "event": pl.String, "itemid": pl.Int64, "transactionid": pl.Int64}
PROPERTIES_COLUMNS = {"timestamp": pl.Int64, "itemid": pl.Int64, "property": pl.String, "value": pl.String}
TREE_COLUMNS = {"categoryid": pl.Int64, "parentid": pl.Int64}
USED_PROPERTIES = ("categoryid", "available")
_SUFFIXES = (".csv", ".csv.gz")


@dataclass
class EventsSnapshot:
    """The validated events-form input of one run.

    events: ts (UTC ms), visitor_id, event (enum), item_id, transaction_id, and the item's
        category_id and available (0/1) as of ts (null when the item had no value yet);
    categories: category_id, parent_id, path (ancestor ids, root first, itself last), depth
        (1 for a root);
    category_history / availability_history: item_id, ts, category_id / available, sorted.
    """

    events: pl.DataFrame
    categories: pl.DataFrame
    category_history: pl.DataFrame
    availability_history: pl.DataFrame
    info: dict = field(default_factory=dict)

    def available_at(self, cutoff: datetime | int) -> pl.DataFrame:
        """item_id, available: each item's latest availability not after ``cutoff`` (a datetime,
        naive meaning UTC, or ms since the epoch); items with no value by then are absent."""
        return _latest(self.availability_history, cutoff, "available")

    def category_at(self, cutoff: datetime | int) -> pl.DataFrame:
        """item_id, category_id: each item's latest category not after ``cutoff``."""
        return _latest(self.category_history, cutoff, "category_id")

    def paths_at(self, cutoff: datetime | int) -> pl.DataFrame:
        """``product_id`` Int32, ``category_path`` (category ids root first, the item's own last)
        of every item with a category as of ``cutoff``. An item whose category the tree lacks
        (RetailRocket has a few) gets the one-element path of its category."""
        cats = self.categories.select("category_id", "path")
        return (
            self.category_at(cutoff)
            .join(cats, on="category_id", how="left")
            .select(
                pl.col("item_id").cast(pl.Int32).alias("product_id"),
                pl.coalesce(pl.col("path"), pl.concat_list(pl.col("category_id"))).alias("category_path"),
            )
            .sort("product_id")
        )


def read_events_form(source: str | Path | Mapping[str, object], encoding: str = "utf-8") -> EventsSnapshot:
    """Read and validate an events-form folder (or ``{"events": path, "item_properties":
    [paths], "category_tree": path}``); raise `InputError` on bad input."""
    files = find_events_files(source)
    events = _read_events(Path(files["events"]), encoding)
    props = [_read_properties(Path(p), encoding) for p in files["item_properties"]]
    if not any(p.height for p in props):
        names = ", ".join(Path(p).name for p in files["item_properties"])
        raise InputError(f"{names}: column property: no {' or '.join(USED_PROPERTIES)} rows")
    categories = category_paths(_read_tree(Path(files["category_tree"]), encoding), Path(files["category_tree"]).name)
    cat_hist, avail_hist = _histories(props)
    resolved = _as_of(events, cat_hist, "category_id")
    resolved = _as_of(resolved, avail_hist, "available")
    info = {
        "events": resolved.height,
        "visitors": resolved["visitor_id"].n_unique(),
        "items": resolved["item_id"].n_unique(),
        **{t: int((resolved["event"] == t).sum()) for t in EVENT_TYPES},
        "events_without_category": resolved["category_id"].null_count(),
        "categories": categories.height,
        "max_category_depth": int(categories["depth"].max() or 0),
        # RetailRocket's items point at a few categories its tree lacks: kept, with no path.
        "categories_not_in_tree": cat_hist.select("category_id").unique().join(categories, on="category_id", how="anti").height,
    }
    return EventsSnapshot(resolved, categories, cat_hist, avail_hist, info)


def find_events_files(source: str | Path | Mapping[str, object]) -> dict[str, object]:
    """events / item_properties (a sorted list) / category_tree paths; a missing one is an error."""
    if isinstance(source, Mapping):
        out = dict(source)
        if isinstance(out.get("item_properties"), (str, Path)):
            out["item_properties"] = [out["item_properties"]]
        for key in ("events", "item_properties", "category_tree"):
            if not out.get(key):
                raise InputError(f"events form: missing file {key}.csv")
        return out
    folder = Path(source)
    keys = events_keys([p.name for p in folder.iterdir() if p.is_file()], str(folder))
    if keys is None:
        raise InputError(f"{folder}: missing file events.csv")
    return {k: [folder / p for p in v] if isinstance(v, list) else folder / v for k, v in keys.items()}


def events_keys(keys: list[str], where: str) -> dict[str, object] | None:
    """The events form's files among the top-level ``keys`` of a location (None when there is no
    events file): ``{"events": key, "item_properties": [keys, sorted], "category_tree": key}``."""
    top = {k for k in keys if "/" not in k}
    events = one_file(top, "events", _SUFFIXES, where)
    if events is None:
        return None
    parts = sorted(k for k in top if k.startswith("item_properties") and k.endswith(_SUFFIXES))
    if not parts:
        raise InputError(f"{where}: missing file item_properties.csv (or item_properties_part1.csv, _part2.csv, ...)")
    tree = one_file(top, "category_tree", _SUFFIXES, where)
    if tree is None:
        raise InputError(f"{where}: missing file category_tree.csv")
    return {"events": events, "item_properties": parts, "category_tree": tree}


# ---- reading -------------------------------------------------------------------------------


def _read_csv(path: Path, columns: dict[str, pl.DataType], encoding: str, keep: pl.Expr | None = None) -> pl.DataFrame:
    """The columns of a CSV file typed (integers as Int64), with ``_line`` (1-based file line),
    filtered by ``keep``; a missing column or a value that is not an integer is an `InputError`."""
    name = path.name

    def read(p: Path) -> pl.DataFrame:
        found = pl.read_csv(p, n_rows=0, infer_schema=False).columns
        missing = [c for c in columns if c not in found]
        if missing:
            raise InputError(f"{name}: missing column {missing[0]} (found: {', '.join(found)})")
        text = pl.scan_csv(p, infer_schema=False).select(list(columns)).with_row_index("_line", offset=2)
        # A blank line reads as a row of nulls (and keeps the line numbers right): skipped.
        text = text.filter(~pl.all_horizontal(pl.col(c).is_null() for c in columns))
        text = text.filter(keep) if keep is not None else text
        try:  # fast path: integers parse as written
            return text.with_columns(pl.col(c).cast(t, strict=True) for c, t in columns.items() if t != pl.String).collect()
        except pl.exceptions.InvalidOperationError:
            return _careful_ints(text.collect(), columns, name)

    df = read_csv_checked(path, name, encoding, read)
    if df.height == 0 and keep is None:  # a filtered table may be empty: the caller judges
        raise InputError(f"{name}: the table is empty")
    return df


def _careful_ints(text: pl.DataFrame, columns: dict[str, pl.DataType], name: str) -> pl.DataFrame:
    """Integers with surrounding spaces allowed; the first value that is not one is named."""
    for col, dtype in columns.items():
        if dtype == pl.String:
            continue
        s = text[col].str.strip_chars()
        as_int = s.cast(pl.Int64, strict=False)
        bad = text.filter(as_int.is_null() & s.is_not_null() & (s != ""))
        if bad.height:
            kind = "a time in milliseconds since 1970" if col == "timestamp" else "an integer"
            raise InputError(
                f"{name}: column {col}: value {bad[col][0]!r} is not {kind} (line {bad['_line'][0]}, {bad.height} row(s))"
            )
        text = text.with_columns(as_int.alias(col))
    return text


def _no_missing(df: pl.DataFrame, columns, name: str) -> None:
    for col in columns:
        n = df[col].null_count()
        if n:
            line = df.filter(pl.col(col).is_null())["_line"][0]
            raise InputError(f"{name}: column {col}: {n} missing value(s) (first at line {line})")


def _check_timestamps(df: pl.DataFrame, name: str) -> None:
    bad = df.filter((pl.col("timestamp") < TS_MIN_MS) | (pl.col("timestamp") >= TS_MAX_MS))
    if bad.height:
        raise InputError(
            f"{name}: column timestamp: value {bad['timestamp'][0]} is not a time in milliseconds since 1970 "
            f"between 2000 and 2100 (line {bad['_line'][0]}, {bad.height} row(s))"
        )


def _read_events(path: Path, encoding: str) -> pl.DataFrame:
    name = path.name
    df = _read_csv(path, EVENTS_COLUMNS, encoding)
    _no_missing(df, ("timestamp", "visitorid", "event", "itemid"), name)
    _check_timestamps(df, name)
    unknown = df.filter(~pl.col("event").is_in(EVENT_TYPES))
    if unknown.height:
        value = unknown["event"][0]
        n = int((unknown["event"] == value).sum())
        raise InputError(
            f"{name}: column event: unknown value {value!r} on {n} line(s) (first at line {unknown['_line'][0]}; "
            f"{unknown.height} line(s) in all not one of {', '.join(EVENT_TYPES)})"
        )
    no_id = df.filter((pl.col("event") == "transaction") & pl.col("transactionid").is_null())
    if no_id.height:
        raise InputError(
            f"{name}: column transactionid: {no_id.height} transaction event(s) without a transactionid "
            f"(first at line {no_id['_line'][0]})"
        )
    return df.sort("timestamp", "_line").select(
        _utc_ms("timestamp").alias("ts"),
        pl.col("visitorid").alias("visitor_id"),
        pl.col("event").cast(EVENT_ENUM),
        pl.col("itemid").alias("item_id"),
        pl.col("transactionid").alias("transaction_id"),
    )


def _utc_ms(col: str) -> pl.Expr:
    return pl.from_epoch(col, "ms").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")


def _read_properties(path: Path, encoding: str) -> pl.DataFrame:
    """The used properties (`USED_PROPERTIES`) of one file, values typed: categoryid an integer,
    available 0 or 1. Other properties are opaque to us and skipped unread."""
    name = path.name
    df = _read_csv(path, PROPERTIES_COLUMNS, encoding, keep=pl.col("property").is_in(USED_PROPERTIES))
    _no_missing(df, ("timestamp", "itemid", "value"), name)
    _check_timestamps(df, name)
    value = df["value"].str.strip_chars()
    as_int = value.cast(pl.Int64, strict=False)
    bad = df.filter(as_int.is_null() & (pl.col("property") == "categoryid"))
    if bad.height:
        raise InputError(
            f"{name}: column value: categoryid {bad['value'][0]!r} is not an integer (line {bad['_line'][0]}, {bad.height} row(s))"
        )
    bad = df.filter(~as_int.is_in([0, 1]).fill_null(False) & (pl.col("property") == "available"))
    if bad.height:
        raise InputError(
            f"{name}: column value: available {bad['value'][0]!r} is not 0 or 1 (line {bad['_line'][0]}, {bad.height} row(s))"
        )
    return df.select(
        pl.col("itemid").alias("item_id"),
        _utc_ms("timestamp").alias("ts"),
        "property",
        value=as_int,
    )


def _read_tree(path: Path, encoding: str) -> pl.DataFrame:
    name = path.name
    df = _read_csv(path, TREE_COLUMNS, encoding)
    _no_missing(df, ("categoryid",), name)
    dup = df.filter(pl.col("categoryid").is_duplicated())
    if dup.height:
        first = dup.filter(pl.col("categoryid") == dup["categoryid"][0])
        lines = ", ".join(str(x) for x in first["_line"])
        raise InputError(f"{name}: column categoryid: category {dup['categoryid'][0]} is listed {first.height} times (lines {lines})")
    orphan = df.filter(pl.col("parentid").is_not_null() & ~pl.col("parentid").is_in(df["categoryid"].implode()))
    if orphan.height:
        raise InputError(
            f"{name}: column parentid: parent {orphan['parentid'][0]} of category {orphan['categoryid'][0]} "
            f"is not a category in the file (line {orphan['_line'][0]}, {orphan.height} row(s))"
        )
    return df.select(pl.col("categoryid").alias("category_id"), pl.col("parentid").alias("parent_id"))


# ---- derived tables ------------------------------------------------------------------------


def category_paths(tree: pl.DataFrame, name: str = "category_tree.csv") -> pl.DataFrame:
    """category_id, parent_id, path (root first, itself last), depth; a cycle is an `InputError`.

    Walks all categories up one level at a time (as many steps as the deepest path), so the
    cost does not depend on the number of categories in Python.
    """
    ids = tree["category_id"].to_numpy()
    pos = {int(c): i for i, c in enumerate(ids)}  # one dict of ~2k entries; parents checked before
    parent = np.array([-1 if p is None else pos[p] for p in tree["parent_id"].to_list()], np.int64)
    cur = np.arange(ids.size)
    steps: list[np.ndarray] = [cur]
    for _ in range(ids.size):
        cur = np.where(cur >= 0, parent[np.maximum(cur, 0)], -1)
        if (cur < 0).all():
            break
        steps.append(cur)
    else:
        # Still climbing after as many steps as there are categories: the walk is in a cycle,
        # and where it stands now is a category of that cycle.
        stuck = int(ids[cur[cur >= 0][0]])
        raise InputError(f"{name}: column parentid: the tree has a cycle through category {stuck}")
    anc = np.stack(steps)  # steps x categories, -1 past the root
    depth = (anc >= 0).sum(axis=0)
    paths = [ids[anc[: depth[j], j][::-1]].tolist() for j in range(ids.size)]
    return tree.with_columns(
        path=pl.Series(paths, dtype=pl.List(pl.Int64)), depth=pl.Series(depth, dtype=pl.Int8)
    ).sort("category_id")


def _histories(props: list[pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per property, item_id / ts / value sorted by (item, ts); several rows of one item at one
    time keep the last one read (files in name order, rows in file order)."""
    allp = pl.concat(props)
    out = []
    for prop, col, dtype in (("categoryid", "category_id", pl.Int64), ("available", "available", pl.Int8)):
        hist = allp.filter(pl.col("property") == prop).select("item_id", "ts", pl.col("value").cast(dtype).alias(col))
        hist = hist.unique(["item_id", "ts"], keep="last", maintain_order=True).sort("item_id", "ts")
        out.append(hist)
    return out[0], out[1]


def _as_of(events: pl.DataFrame, history: pl.DataFrame, col: str) -> pl.DataFrame:
    """``col`` of each event's item as of the event's time: the latest value not after it."""
    right = history.sort("ts")
    return events.join_asof(right, on="ts", by="item_id", strategy="backward", check_sortedness=False)


def _latest(history: pl.DataFrame, cutoff: datetime | int, col: str) -> pl.DataFrame:
    return (
        history.filter(pl.col("ts") <= as_utc(cutoff))
        .group_by("item_id")
        .agg(pl.col(col).last())  # history is sorted by (item, ts)
        .sort("item_id")
    )


def as_utc(cutoff: datetime | int) -> datetime:
    """A cut-off as an aware UTC datetime: naive datetimes are UTC, integers ms since the epoch."""
    if isinstance(cutoff, (int, np.integer)):
        return datetime.fromtimestamp(int(cutoff) / 1000, tz=timezone.utc)
    return cutoff.replace(tzinfo=timezone.utc) if cutoff.tzinfo is None else cutoff.astimezone(timezone.utc)
