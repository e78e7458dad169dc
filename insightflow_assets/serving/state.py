"""The bundle being served and how it is replaced: reload beside the old one, swap in one
assignment, keep the old one when the new one fails; a watcher thread polls the manifest."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from insightflow_assets.report import one_line
from insightflow_assets.serving.bundle import Bundle, load_latest, load_run, read_latest_manifest
from insightflow_assets.serving.metrics import Metrics
from resources.storage import Storage

log = logging.getLogger("insightflow.serving")


class ServingState:
    def __init__(self, storage: Storage, metrics: Metrics, *, profile: str | None = None) -> None:
        self.storage = storage
        self.metrics = metrics
        self.default_profile = profile
        # Read once per request (`bundle = state.bundle`) and replaced by one assignment only.
        self.bundle: Bundle | None = None
        self.pinned: str | None = None  # a run loaded by /admin/reload {run_key}: the watcher leaves it
        self.manifests: dict[str, dict] = {}  # run key → its manifest as seen here (verifies a rollback)
        self.last_error: dict | None = None
        self._failed_version: str | None = None  # a manifest version that failed: not retried each poll
        self._reloading = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- reload ---------------------------------------------------------------------

    def reload(self, run_key: str | None = None, profile: str | None = None, *, watcher: bool = False) -> Bundle | None:
        """Build and verify a new bundle, then swap it in; on failure the old one stays (raises).

        ``watcher``: the watcher's reload of ``latest/``, which yields to a run pinned meanwhile
        (decided under the lock, so an /admin/reload rollback that lands first is never undone).
        """
        with self._reloading:
            if watcher and self.pinned is not None:
                return None
            old = self.bundle
            # the run's own active profile unless told: by this call, else by `serve --profile`
            profile = profile or self.default_profile
            try:
                if run_key is None:
                    new, manifest = load_latest(self.storage, profile=profile)
                    self.manifests[manifest["run_key"]] = manifest
                else:
                    new = load_run(self.storage, run_key, manifest=self.manifests.get(run_key), profile=profile)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old bundle
                self._failed(run_key, exc)
                raise
            self.bundle = new  # the swap: one reference assignment
            self.pinned = run_key
            self.last_error = None
            self.metrics.swapped(new)
            log.info(f"serving {new.run_key} (profile {new.profile}, verified {new.verified})"
                     + (f", was {old.run_key}" if old else ""))
            return new

    def _failed(self, run_key: str | None, exc: Exception) -> None:
        self.metrics.failed_reloads.inc()
        self.last_error = {"at_utc": _now(), "run_key": run_key or "latest", "error": one_line(exc)}
        kept = self.bundle.run_key if self.bundle else "nothing"
        log.error(f"reload of {run_key or 'latest'} failed, still serving {kept}: {one_line(exc)}")

    # --- watching -------------------------------------------------------------------

    def poll(self) -> None:
        """Reload when the manifest changed since the bundle served (unless a run is pinned)."""
        if self.pinned is not None:
            return
        try:
            found = read_latest_manifest(self.storage)
        except Exception as exc:  # noqa: BLE001 - storage down: keep serving, try next poll
            self.last_error = {"at_utc": _now(), "run_key": "latest", "error": f"reading the manifest: {one_line(exc)}"}
            return
        if found is None:  # nothing promoted yet (or latest/ emptied): nothing to load
            if self.bundle is None:
                self.last_error = {"at_utc": _now(), "run_key": "latest", "error": "no run promoted to latest/ yet"}
            return
        version = found[1]
        if (self.bundle is not None and version == self.bundle.version) or version == self._failed_version:
            return
        try:
            self.reload(watcher=True)
            self._failed_version = None
        except Exception:  # noqa: BLE001 - recorded by reload
            self._failed_version = version

    def start(self, watch_seconds: float) -> None:
        """Load in the background (the process answers /health/live meanwhile); poll every
        ``watch_seconds`` (0: load once, then only /admin/reload)."""

        def loop() -> None:
            self.poll()
            while watch_seconds > 0 and not self._stop.wait(watch_seconds):
                self.poll()

        self._watcher = threading.Thread(target=loop, name="insightflow-bundle-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
