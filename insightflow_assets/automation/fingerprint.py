"""When does new source data start a run? Fingerprints and the sensor's decision (pure).

A complete input set is fingerprinted by its files' names, sizes and versions (ETag on S3,
mtime on disk). A run starts only once the set is complete and stable: immediately when a
``_SUCCESS`` marker is present, otherwise when the same fingerprint is seen on two consecutive
ticks, so a half-uploaded file never starts a run. The same data never starts two runs: the
fingerprint is remembered in the cursor and written into the run key's tag, so it is also
recognised after a cursor is lost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from insightflow_assets.ingest.loading import InputError, pick_source_files
from resources.layout import SOURCE_SUCCESS_MARKER
from resources.storage import ObjectInfo

TAG_PREFIX = "src-"


@dataclass(frozen=True)
class SourceState:
    complete: bool
    fingerprint: str | None  # 12 hex digits of the file set, None when incomplete
    marker: bool
    reason: str  # why the set is incomplete, for the tick's log
    files: tuple[tuple[str, int, str], ...] = ()


def source_state(listing: list[ObjectInfo], where: str) -> SourceState:
    """Fingerprint the Instacart files found at the clean location (top level only)."""
    by_key = {o.key: o for o in listing}
    marker = SOURCE_SUCCESS_MARKER in by_key
    try:
        chosen = pick_source_files(list(by_key), where)
    except InputError as exc:
        return SourceState(False, None, marker, str(exc))
    files = tuple(sorted((k, by_key[k].size, by_key[k].version) for k in chosen.values()))
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:12]
    return SourceState(True, digest, marker, "", files)


def run_tag(fingerprint: str) -> str:
    return TAG_PREFIX + fingerprint


@dataclass(frozen=True)
class Decision:
    fire: bool
    cursor: dict
    reason: str


def decide(state: SourceState, cursor: dict | None, registered_keys: list[str]) -> Decision:
    """Fire a run for ``state``? Returns the decision and the cursor to persist."""
    cursor = dict(cursor or {})
    if not state.complete:
        cursor.pop("pending", None)
        return Decision(False, cursor, f"input set incomplete: {state.reason}")
    fp = state.fingerprint
    if cursor.get("last_fired") == fp:
        return Decision(False, cursor, f"no change since the run for {fp}")
    if any(k.endswith("-" + run_tag(fp)) for k in registered_keys):
        cursor["last_fired"] = fp
        cursor.pop("pending", None)
        return Decision(False, cursor, f"a run for {fp} is already registered")
    if not state.marker and cursor.get("pending") != fp:
        cursor["pending"] = fp
        return Decision(False, cursor, f"new input set {fp}: waiting one tick for it to be stable")
    cursor["last_fired"] = fp
    cursor.pop("pending", None)
    return Decision(True, cursor, f"new input set {fp}" + (" (_SUCCESS marker)" if state.marker else " (stable)"))
