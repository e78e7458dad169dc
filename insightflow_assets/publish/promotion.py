"""Promotion of a run to ``latest/``: copy its objects first, write the manifest last.

A reader that reads ``recsys/latest/index.json`` first and then the objects it lists gets one
consistent run: every entry names the immutable run copy (``source``) besides the stable
``latest/`` key, with size and SHA-256. A failed promotion leaves the previous manifest in
place; re-running it completes the promotion. An older run never replaces a newer one unless
asked to (``force``, i.e. a rollback).

Pure logic over the `Storage` interface (local disk or S3): no Dagster here.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from resources.layout import ARTIFACTS, LATEST_MANIFEST, parse_run_key
from resources.storage import Storage


class PromotionError(RuntimeError):
    """The run cannot be promoted (missing objects) or storage failed mid-way."""


def promoted_artifacts() -> list[str]:
    """The artifacts that have a stable ``latest/`` entry in the layout."""
    return [name for name, spec in ARTIFACTS.items() if spec.latest is not None]


def read_manifest(storage: Storage) -> dict | None:
    if not storage.exists(LATEST_MANIFEST):
        return None
    return json.loads(storage.read_bytes(LATEST_MANIFEST))


def _order_key(run_key: str) -> tuple[str, str]:
    ts, tag = parse_run_key(run_key)
    return ts, tag or ""


def is_newer(candidate: str, current: str) -> bool:
    return _order_key(candidate) > _order_key(current)


def promote(storage: Storage, run_key: str, *, finished_at_utc: str | None = None, force: bool = False) -> dict:
    """Promote ``run_key`` to ``latest/`` and return the manifest written (or kept).

    Returns ``{"promoted": bool, "reason": str, "manifest": {...}}``.
    """
    current = read_manifest(storage)
    if current and not force and current["run_key"] != run_key and not is_newer(run_key, current["run_key"]):
        return {
            "promoted": False,
            "reason": f"{current['run_key']} is newer and stays latest",
            "manifest": current,
        }

    plan: list[tuple[str, str, str]] = []  # (artifact, source key, latest key)
    missing: list[str] = []
    for name in promoted_artifacts():
        spec = ARTIFACTS[name]
        src = spec.keys(run_key)
        dst = spec.latest_keys()
        for file in spec.files:
            if storage.exists(src[file]):
                plan.append((name, src[file], dst[file]))
            else:
                missing.append(src[file])
    if missing:
        raise PromotionError(f"cannot promote {run_key}: missing {', '.join(missing)}")

    objects = []
    try:
        for name, src, dst in plan:
            data = storage.read_bytes(src)
            storage.copy(src, dst)
            objects.append(
                {"artifact": name, "key": dst, "source": src, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )
        manifest = {
            "run_key": run_key,
            "finished_at_utc": finished_at_utc,
            "promoted_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "previous_run_key": current["run_key"] if current else None,
            "objects": objects,
        }
        # The manifest goes last: until it lands, readers keep seeing the previous run.
        storage.write_bytes(LATEST_MANIFEST, json.dumps(manifest, indent=2).encode())
    except PromotionError:
        raise
    except Exception as exc:
        raise PromotionError(
            f"promotion of {run_key} failed after {len(objects)}/{len(plan)} objects "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"latest/ still names {current['run_key'] if current else 'no run'}; re-run the promotion"
        ) from exc
    return {"promoted": True, "reason": "promoted" if not force else "forced (rollback)", "manifest": manifest}


def verify_manifest(storage: Storage, manifest: dict) -> list[str]:
    """Problems found when reading the manifest's objects back (empty list: consistent)."""
    problems = []
    for obj in manifest["objects"]:
        for key in (obj["source"], obj["key"]):
            try:
                data = storage.read_bytes(key)
            except FileNotFoundError:
                problems.append(f"{key}: missing")
                continue
            if hashlib.sha256(data).hexdigest() != obj["sha256"]:
                problems.append(f"{key}: checksum differs from the manifest")
    return problems
