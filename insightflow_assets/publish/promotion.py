"""Promotion of a run to ``latest/``: serialized, journaled, copied first, manifest last.

A reader that reads ``recsys/latest/index.json`` first and then the objects it lists gets one
consistent run: every entry names the immutable run copy (``source``) besides the stable
``latest/`` key, with size and SHA-256. An older run never replaces a newer one unless asked
to (``force``, i.e. a rollback).

The stable ``latest/`` keys are overwritten in place (the seed's layout, which downstream
readers use), so a promotion cannot change them all at once. Instead, every promotion:

1. takes the promotion lock (`PROMOTION_LOCK`): an ``flock`` on disk, a lock object created
   with ``If-None-Match: *`` on S3. Two promotions never interleave their copies;
2. finishes what an interrupted promotion left (its journal, below): completes it when its
   run copies are intact, else rolls ``latest/`` back to the manifest; removes temp files
   older than the lock that a killed writer left in the ``latest/`` folders;
3. re-reads the manifest *under the lock* and decides, so a newer run promoted meanwhile
   wins whatever order the two started in;
4. writes the journal (`PROMOTION_JOURNAL`): the run and every object with its checksum;
5. copies each object to its ``latest/`` key, renewing the lock before each copy (on S3 a
   lock can expire; a holder that lost it stops here);
6. writes the manifest conditionally on the version read in 3 (S3 ``If-Match``), then
   deletes the journal.

So ``latest/`` objects differ from the manifest only while a journal exists, and the journal
says which run they are heading to; `repair` (``insightflow latest --repair``) or the next
promotion resolves it. Pure logic over the `Storage` interface: no Dagster here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone

from resources.layout import (
    ARTIFACTS,
    LATEST_MANIFEST,
    PROMOTION_JOURNAL,
    PROMOTION_LOCK,
    parse_run_key,
    promoted_manifest_key,
)
from resources.storage import Lease, LockLost, Storage, StorageError

# Called at each step with the event name and its details; tests use it to force interleavings.
Hook = Callable[..., None]

REPAIR_HINT = "`insightflow latest --repair` (or the next promotion) completes or rolls it back"


class PromotionError(RuntimeError):
    """The run cannot be promoted (missing objects) or storage failed mid-way."""


def promoted_artifacts() -> list[str]:
    """The artifacts that have a stable ``latest/`` entry in the layout."""
    return [name for name, spec in ARTIFACTS.items() if spec.latest is not None]


def read_manifest(storage: Storage) -> dict | None:
    found = storage.read_versioned(LATEST_MANIFEST)
    return json.loads(found[0]) if found else None


def read_journal(storage: Storage) -> dict | None:
    """The journal of a promotion in progress or interrupted (None: there is none)."""
    found = storage.read_versioned(PROMOTION_JOURNAL)
    if found is None:
        return None
    try:
        journal = json.loads(found[0])
    except ValueError:
        return {"run_key": "?", "objects": None}  # unreadable: can only be rolled back
    return journal if isinstance(journal, dict) else {"run_key": "?", "objects": None}


def _order_key(run_key: str) -> tuple[str, str]:
    ts, tag = parse_run_key(run_key)
    return ts, tag or ""


def is_newer(candidate: str, current: str) -> bool:
    return _order_key(candidate) > _order_key(current)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _noop(event: str, **info) -> None:
    pass


# --- promote ---------------------------------------------------------------------------


def promote(
    storage: Storage,
    run_key: str,
    *,
    finished_at_utc: str | None = None,
    force: bool = False,
    hook: Hook | None = None,
    lock_ttl_s: float = 60.0,
    lock_wait_s: float = 180.0,
) -> dict:
    """Promote ``run_key`` to ``latest/`` and return the manifest written (or kept).

    Returns ``{"promoted": bool, "reason": str, "manifest": {...}, "recovered": str | None}``;
    ``recovered`` says what was done about an interrupted promotion found first.
    """
    parse_run_key(run_key)
    hook = hook or _noop
    state = {"phase": "lock", "copied": 0, "planned": None, "current": None}
    try:
        with _locked(storage, hook, lock_ttl_s, lock_wait_s) as lease:
            return _promote_locked(storage, lease, run_key, finished_at_utc, force, hook, state)
    except PromotionError:
        raise
    except Exception as exc:
        raise PromotionError(_failure_message(run_key, exc, state)) from exc


def _promote_locked(storage, lease, run_key, finished_at_utc, force, hook, state) -> dict:
    state["phase"] = "recover"
    recovered = _recover(storage, lease, hook)
    _clean_temp(storage, lease)
    state["phase"] = "plan"
    found = storage.read_versioned(LATEST_MANIFEST)
    current, version = (json.loads(found[0]), found[1]) if found else (None, None)
    state["current"] = current["run_key"] if current else None
    if recovered and recovered.startswith("completed") and current and current["run_key"] == run_key and not force:
        # what was interrupted was this very promotion: finishing it was the whole job
        return {"promoted": True, "reason": recovered, "manifest": current, "recovered": recovered}
    if current and not force and current["run_key"] != run_key and not is_newer(run_key, current["run_key"]):
        reason = f"{current['run_key']} is newer and stays latest"
        return {"promoted": False, "reason": reason, "manifest": current, "recovered": recovered}

    objects = _plan(storage, run_key)
    state["planned"] = len(objects)
    hook("decided", run_key=run_key, current=state["current"])
    journal = {
        "run_key": run_key,
        "finished_at_utc": finished_at_utc,
        "previous_run_key": state["current"],
        "started_at_utc": _now(),
        "objects": objects,
    }
    lease.check()
    state["phase"] = "copy"  # from here on a failure leaves the journal for the next one
    storage.write_bytes(PROMOTION_JOURNAL, json.dumps(journal, indent=2).encode())
    _copy_all(storage, lease, objects, hook, state)
    manifest = _finish(storage, lease, journal, version, hook)
    reason = "promoted" if not force else "forced (rollback)"
    return {"promoted": True, "reason": reason, "manifest": manifest, "recovered": recovered}


def _plan(storage: Storage, run_key: str) -> list[dict]:
    """Every object to copy, with the checksum of its run copy (read now, under the lock)."""
    objects, missing = [], []
    for name in promoted_artifacts():
        spec = ARTIFACTS[name]
        src, dst = spec.keys(run_key), spec.latest_keys()
        for file in spec.files:
            found = storage.read_versioned(src[file])
            if found is None:
                missing.append(src[file])
                continue
            data = found[0]
            objects.append({"artifact": name, "key": dst[file], "source": src[file], "size": len(data), "sha256": _sha(data)})
    if missing:
        raise PromotionError(f"cannot promote {run_key}: missing {', '.join(missing)}")
    return objects


def _copy_all(storage: Storage, lease: Lease, objects: list[dict], hook: Hook, state: dict | None = None) -> None:
    for i, obj in enumerate(objects, 1):
        lease.check()  # S3: renew, or stop if another promotion took the lock over
        storage.copy(obj["source"], obj["key"])
        if state is not None:
            state["copied"] = i
        hook("copied", n=i, of=len(objects), key=obj["key"])


def _finish(storage: Storage, lease: Lease, journal: dict, version: str | None, hook: Hook) -> dict:
    """Write the manifest named by the journal (compare-and-swap), then drop the journal."""
    manifest = {
        "run_key": journal["run_key"],
        "finished_at_utc": journal.get("finished_at_utc"),
        "promoted_at_utc": _now(),
        "previous_run_key": journal.get("previous_run_key"),
        "objects": journal["objects"],
    }
    lease.check()
    text = json.dumps(manifest, indent=2).encode()
    # Kept per run first, so a run named by the latest manifest always has its own copy.
    storage.write_bytes(promoted_manifest_key(manifest["run_key"]), text)
    # The manifest goes last: until it lands, readers of the manifest keep the previous run.
    storage.write_if(LATEST_MANIFEST, text, version)
    hook("manifest", run_key=manifest["run_key"])
    lease.check()
    storage.delete(PROMOTION_JOURNAL)
    return manifest


def _failure_message(run_key: str, exc: Exception, state: dict) -> str:
    """One line: what failed, where latest/ stands, what to do."""
    cause = f"{type(exc).__name__}: {_first_line(exc)}"
    names = state["current"] or "no run"
    if state["phase"] == "lock":
        detail = str(exc) if isinstance(exc, StorageError) else cause
        return f"cannot promote {run_key}: {detail}; latest/ not changed"
    if state["phase"] == "recover":
        return (
            f"promotion of {run_key} stopped while resolving an interrupted promotion ({cause}); "
            f"its journal is kept: re-run the promotion, or {REPAIR_HINT}"
        )
    if isinstance(exc, LockLost):
        return (
            f"promotion of {run_key} stopped after {state['copied']}/{state['planned']} objects: {exc}, "
            "which completes or supersedes it; nothing more was written"
        )
    if state["phase"] == "plan":
        return f"promotion of {run_key} failed before changing latest/ ({cause}); latest/ still names {names}; re-run the promotion"
    return (
        f"promotion of {run_key} failed after {state['copied']}/{state['planned']} objects ({cause}); "
        f"latest/ still names {names} in its manifest, and the interrupted promotion is journaled: "
        f"re-run the promotion, or {REPAIR_HINT}"
    )


# --- lock, recovery, repair --------------------------------------------------------------


def _locked(storage: Storage, hook: Hook, ttl_s: float, wait_s: float):
    return storage.exclusive(
        PROMOTION_LOCK, ttl_s=ttl_s, wait_s=wait_s, on_busy=lambda holder: hook("busy", holder=holder)
    )


def _recover(storage: Storage, lease: Lease, hook: Hook) -> str | None:
    """Complete or roll back the promotion a journal says was interrupted; what was done."""
    journal = read_journal(storage)
    if journal is None:
        return None
    found = storage.read_versioned(LATEST_MANIFEST)
    current, version = (json.loads(found[0]), found[1]) if found else (None, None)
    run = journal.get("run_key", "?")
    if _can_complete(storage, journal, current):
        _copy_all(storage, lease, journal["objects"], hook)
        _finish(storage, lease, journal, version, hook)
        outcome = f"completed the interrupted promotion of {run}"
    else:
        _roll_back(storage, lease, current, journal, hook)
        outcome = f"rolled back the interrupted promotion of {run} to {current['run_key'] if current else 'no run'}"
    hook("recovered", outcome=outcome)
    return outcome


def _can_complete(storage: Storage, journal: dict, current: dict | None) -> bool:
    """Its run copies are all there and unchanged, and the manifest is the one it replaced
    (or already its own: killed between the manifest and the journal's removal)."""
    if not isinstance(journal.get("objects"), list):
        return False
    names = current["run_key"] if current else None
    if names not in (journal.get("previous_run_key"), journal.get("run_key")):
        return False
    for obj in journal["objects"]:
        found = storage.read_versioned(obj["source"])
        if found is None or _sha(found[0]) != obj["sha256"]:
            return False
    return True


def _roll_back(storage: Storage, lease: Lease, current: dict | None, journal: dict, hook: Hook) -> None:
    """Make the latest/ objects the manifest's again; drop those it does not list."""
    kept = current["objects"] if current else []
    for obj in kept:
        if not storage.exists(obj["source"]):
            raise PromotionError(
                f"cannot roll back to {current['run_key']}: {obj['source']} is missing; "
                "promote a stored run with `insightflow promote RUN_KEY`"
            )
    _copy_all(storage, lease, kept, hook)
    listed = {o["key"] for o in kept}
    for obj in journal.get("objects") or []:
        if obj.get("key") not in listed:
            lease.check()
            storage.delete(obj["key"])
    lease.check()
    storage.delete(PROMOTION_JOURNAL)


def _clean_temp(storage: Storage, lease: Lease) -> list[str]:
    """Temp files older than our lock in the latest/ folders: a killed writer's, nobody's now."""
    folders = sorted({ARTIFACTS[n].latest for n in promoted_artifacts()} | {LATEST_MANIFEST.rsplit("/", 1)[0]})
    return [k for folder in folders for k in storage.clean_temp_files(folder, older_than=lease.acquired_at)]


def repair(storage: Storage, *, hook: Hook | None = None, lock_ttl_s: float = 60.0, lock_wait_s: float = 180.0) -> list[str]:
    """Bring latest/ back in line with its manifest; one line per thing done (empty: nothing to do).

    Resolves an interrupted promotion, re-copies any latest/ object whose checksum differs
    from the manifest (from its run copy), and removes stale temp files.
    """
    hook = hook or _noop
    try:
        with _locked(storage, hook, lock_ttl_s, lock_wait_s) as lease:
            done = [r for r in [_recover(storage, lease, hook)] if r]
            done += [f"re-copied {k} from its run copy" for k in _recopy_differing(storage, lease, hook)]
            done += [f"removed stale temp file {k}" for k in _clean_temp(storage, lease)]
            return done
    except PromotionError:
        raise
    except Exception as exc:
        raise PromotionError(f"repair of latest/ failed ({type(exc).__name__}: {_first_line(exc)}); run it again") from exc


def _recopy_differing(storage: Storage, lease: Lease, hook: Hook) -> list[str]:
    manifest = read_manifest(storage)
    if manifest is None:
        return []
    stale = []
    for obj in manifest["objects"]:
        found = storage.read_versioned(obj["key"])
        if found is None or _sha(found[0]) != obj["sha256"]:
            src = storage.read_versioned(obj["source"])
            if src is None or _sha(src[0]) != obj["sha256"]:
                raise PromotionError(
                    f"cannot repair {obj['key']}: its run copy {obj['source']} is missing or changed; "
                    "promote a stored run with `insightflow promote RUN_KEY`"
                )
            stale.append(obj)
    _copy_all(storage, lease, stale, hook)
    return [o["key"] for o in stale]


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


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
            if _sha(data) != obj["sha256"]:
                problems.append(f"{key}: checksum differs from the manifest")
    return problems


def describe_journal(journal: dict) -> str:
    """One line for readers: a promotion is in progress or was interrupted."""
    return (
        f"a promotion of {journal.get('run_key', '?')} started {journal.get('started_at_utc', '?')} "
        f"is in progress or was interrupted, so latest/ objects may not match the manifest; {REPAIR_HINT}"
    )

