"""The curated IO manager: asset values in and out of the storage layout.

What is stored, by the layout's file names:
- one ``.parquet`` file  ↔ a polars DataFrame;
- one ``.json`` file     ↔ a dict;
- several files          ↔ an `ArtifactFolder` (charts with their ``index.json``, the model's
  ``factors.npz`` + ``params.json``, the exports folder), written file by file.

Values reach downstream assets only through here, so the lineage in the UI is the lineage of
the data. Each materialization gets the storage path, Dagster's table metadata (row count and
column schema, `resources.table_metadata`), and its charts' paths with one small inline
preview (`resources.previews`), recorded on the materialization event alone.
"""


import contextlib
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    ConfigurableIOManager,
    DagsterInvariantViolationError,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)

from resources.layout import Artifact, artifact, run_ts
from resources.previews import chart_metadata
from resources.storage import Storage
from resources.table_metadata import folder_table_metadata, table_metadata


# Input metadata flag: load every upstream run partition as {run_key: value or exception}.
ALL_RUNS = "insightflow/all_runs"


def encode_value(name: str, value: Any) -> bytes:
    """Bytes of one stored file, chosen by its extension."""
    if isinstance(value, bytes):
        return value
    if name.endswith(".parquet"):
        if not isinstance(value, pl.DataFrame):
            raise TypeError(f"{name} must be a polars DataFrame, got {type(value).__name__}")
        buf = io.BytesIO()
        value.write_parquet(buf, compression="zstd", statistics=True)
        return buf.getvalue()
    if name.endswith(".json"):
        return json.dumps(_json_safe(value), indent=2, sort_keys=False, default=_json_default).encode()
    if name.endswith(".csv") and isinstance(value, pl.DataFrame):
        return value.write_csv().encode()
    if name.endswith(".jsonl") and isinstance(value, list):
        return "".join(json.dumps(_json_safe(v), default=_json_default) + "\n" for v in value).encode()
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"do not know how to store {type(value).__name__} as {name}")


def decode_value(name: str, data: bytes) -> Any:
    if name.endswith(".parquet"):
        return pl.read_parquet(io.BytesIO(data))
    if name.endswith(".json"):
        return json.loads(data)
    return data


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity as null: JSON has neither, and Python's ``NaN``
    token makes the file unreadable to other JSON readers (BI tools, the LLM's loader)."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class ArtifactFolder(Mapping):
    """Several named files stored together as one asset output (name → bytes)."""

    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "ArtifactFolder":
        return cls({name: encode_value(name, v) for name, v in values.items()})

    def __getitem__(self, name: str) -> bytes:
        return self.files[name]

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])

    def frame(self, name: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.files[name]))


def materialization_metadata(context: OutputContext, meta: Mapping[str, Any]) -> None:
    """Attach ``meta`` to the asset's materialization event alone.

    ``add_output_metadata`` copies it into the step's HANDLED_OUTPUT event as well: every
    schema and preview twice in the run's event log. Outside a step (a bare OutputContext in a
    unit test) there is no materialization, so it goes where the context keeps output metadata.
    """
    try:
        step = AssetExecutionContext.get()
    except DagsterInvariantViolationError:
        context.add_output_metadata(dict(meta))
        return
    step.add_asset_metadata(dict(meta), asset_key=context.asset_key)


def markdown_table(df: pl.DataFrame, n: int = 5) -> str:
    """A small Markdown preview of a frame, for the UI."""
    head = df.head(n)
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class CuratedIOManager(ConfigurableIOManager):
    """Stores each asset at its layout location in the curated `Storage` (local or S3)."""

    storage: ResourceDependency[Storage]

    # --- helpers --------------------------------------------------------------------
    def keys_for(self, name: str, partition_key: str) -> dict[str, str]:
        return artifact(name).keys(partition_key)

    # --- output -------------------------------------------------------------------
    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if not context.has_partition_key:
            raise ValueError(f"{context.asset_key.to_user_string()} must be materialized for a run partition")
        materialization_metadata(context, self.store(context.asset_key, context.partition_key, obj))

    def store(self, asset_key: AssetKey, run_key: str, obj: Any) -> dict[str, Any]:
        """Write ``obj`` where the layout keeps ``asset_key`` for run ``run_key``; the metadata
        of what was written. `handle_output`, and a step storing its value itself
        (`insightflow_assets.common.lean_step`), both come here."""
        run_ts(run_key)  # refuse a malformed key before anything is written
        spec = artifact(asset_key.path[-1])
        keys = spec.keys(run_key)

        if len(spec.files) == 1:
            (name,) = spec.files
            files = {name: encode_value(name, obj)}
        else:
            if not isinstance(obj, ArtifactFolder):
                raise TypeError(f"{asset_key.to_user_string()} stores {len(spec.files)} files; return an ArtifactFolder")
            unknown = set(obj) - set(spec.files)
            if unknown:
                raise ValueError(f"{sorted(unknown)} are not part of the layout for {asset_key.to_user_string()}")
            files = dict(obj.files)

        for name, data in files.items():
            self.storage.write_bytes(keys[name], data)

        meta: dict[str, Any] = {"path": MetadataValue.path(self.storage.uri(spec.run_folder(run_key)))}
        if len(files) > 1:  # a single file is named by the layout; its table metadata says the rest
            meta["files"] = MetadataValue.json({n: len(b) for n, b in files.items()})
        # Dagster's standard table metadata (Columns tab, row count) for every stored frame,
        # here rather than in each asset: one source of truth for every table asset.
        # No row preview: the Columns tab and row count describe the table, the path holds it,
        # and a run's log stays small (issue 13: 300 KB a run).
        if isinstance(obj, pl.DataFrame):
            meta.update(table_metadata(obj.height, obj.schema))
        elif isinstance(obj, ArtifactFolder):
            meta.update(folder_table_metadata(files))
        meta.update(chart_metadata(files, lambda name: self.storage.uri(keys[name])))
        return meta

    # --- input --------------------------------------------------------------------
    def load_run(self, name: str, run_key: str) -> Any:
        """The value stored for asset ``name`` in run ``run_key`` (what `load_input` returns)."""
        return self._load(artifact(name), run_key)

    @contextlib.contextmanager
    def scan_run(self, name: str, run_key: str) -> Iterator[pl.LazyFrame]:
        """Asset ``name``'s table of run ``run_key``, not loaded: a scan of its stored parquet
        (downloaded to a temporary file from a bucket), valid inside the ``with``. A step that
        hands the table to another engine (Spark) never holds it; one that needs it collects."""
        spec = artifact(name)
        if len(spec.files) != 1 or not spec.files[0].endswith(".parquet"):
            raise TypeError(f"{name} is not stored as one parquet file ({spec.files}): it cannot be scanned")
        with self.storage.local_path(spec.keys(run_key)[spec.files[0]]) as path:
            yield pl.scan_parquet(path)

    def load_runs(self, name: str, run_keys: Iterable[str]) -> dict[str, Any]:
        """Asset ``name`` across runs (e.g. the evaluation trend): one value per run key; a run
        whose files are missing or unreadable gets the exception, for the asset to report."""
        out: dict[str, Any] = {}
        for run_key in run_keys:
            try:
                out[run_key] = self.load_run(name, run_key)
            except Exception as exc:  # noqa: BLE001 - reported per run downstream
                out[run_key] = exc
        return out

    def load_input(self, context: InputContext) -> Any:
        name = context.asset_key.path[-1]
        if (context.definition_metadata or {}).get(ALL_RUNS):
            return self.load_runs(name, context.asset_partition_keys)
        return self.load_run(name, context.asset_partition_key)

    def _load(self, spec: Artifact, run_key: str) -> Any:
        keys = spec.keys(run_key)
        if len(spec.files) == 1:
            (name,) = spec.files
            return decode_value(name, self.storage.read_bytes(keys[name]))
        files = {n: self.storage.read_bytes(k) for n, k in keys.items() if self.storage.exists(k)}
        if not files:
            raise FileNotFoundError(f"nothing stored at {self.storage.uri(spec.run_folder(run_key))}")
        return ArtifactFolder(files)
