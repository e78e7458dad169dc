"""Promotion under races and faults, forced deterministically: two promotions in both orders
(threads held at a hook), a kill -9 in the middle of the copies (a child process), an S3
connection cut mid-way (a TCP proxy in front of the moto server), an expired S3 lock, stale
temp files, file modes, the AttributeError on a dropped connection, a missing bucket."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from insightflow_assets.publish.promotion import (
    PromotionError,
    promote,
    promoted_artifacts,
    read_journal,
    read_manifest,
    repair,
    verify_manifest,
)
from insightflow_assets_tests.conftest import _free_port
from resources import LocalStorage, S3Storage
from resources.layout import ARTIFACTS, LATEST_MANIFEST, PROMOTION_LOCK
from resources.storage import WriteConflict

OLD, NEW, NEWER = "run-20260101-000000", "run-20260102-000000", "run-20260103-000000"
WAIT = 30  # seconds: a bound for events that happen in milliseconds, never a timing assumption
EXE = str(Path(sys.executable).parent / "insightflow")


def fake_run(store, run_key: str, marker: str) -> None:
    """Store every promoted artifact of a run, each file's content naming the run."""
    for name in promoted_artifacts():
        for key in ARTIFACTS[name].keys(run_key).values():
            store.write_bytes(key, f"{marker}:{key}".encode())


def latest_keys() -> list[str]:
    """Every promoted object's latest/ key, in the order a promotion copies them."""
    return [key for name in promoted_artifacts() for key in ARTIFACTS[name].latest_keys().values()]


def assert_consistent(store, run_key: str, marker: str) -> dict:
    manifest = read_manifest(store)
    assert manifest["run_key"] == run_key
    assert verify_manifest(store, manifest) == []
    assert all(store.read_bytes(o["key"]).startswith(f"{marker}:".encode()) for o in manifest["objects"])
    assert read_journal(store) is None
    return manifest


def s3_store(endpoint: str, bucket: str, **s3) -> S3Storage:
    from dagster_aws.s3 import S3Resource

    return S3Storage(s3=S3Resource(endpoint_url=endpoint, region_name="us-east-1", **s3), bucket=bucket, prefix="p")


@pytest.fixture(params=["local", "s3"])
def stores(request, tmp_path):
    """A factory of independent handles (own client / own lock fd) on one curated store."""
    if request.param == "local":
        return lambda: LocalStorage(root=str(tmp_path / "curated"))
    endpoint = request.getfixturevalue("moto_endpoint")
    _, _, bucket = request.getfixturevalue("s3_buckets")
    return lambda: s3_store(endpoint, bucket)


class Paused:
    """A hook that stops its promotion at one event until released; records every event."""

    def __init__(self, at: str | None = None, n: int | None = None):
        self.at, self.n = at, n
        self.reached, self.go, self.busy = threading.Event(), threading.Event(), threading.Event()
        self.events: list[str] = []

    def __call__(self, event: str, **info) -> None:
        self.events.append(event)
        if event == "busy":
            self.busy.set()
        if event == self.at and (self.n is None or info.get("n") == self.n):
            self.reached.set()
            assert self.go.wait(WAIT), "never released"


def run_in_thread(fn, *args, **kwargs):
    out: dict = {}

    def target():
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


# --- two promotions at once --------------------------------------------------------------


@pytest.mark.parametrize("first,second", [(NEW, OLD), (OLD, NEW)])
def test_two_promotions_newer_wins_in_both_orders(stores, first, second):
    """The first is held after its first copy; the second must wait for the lock, then
    re-read the manifest and re-decide. Both orders end with the newer run, consistent."""
    setup = stores()
    fake_run(setup, OLD, "old")
    fake_run(setup, NEW, "new")
    hold, watch = Paused(at="copied", n=1), Paused()
    t1, out1 = run_in_thread(promote, stores(), first, hook=hold)
    assert hold.reached.wait(WAIT)
    t2, out2 = run_in_thread(promote, stores(), second, hook=watch)
    assert watch.busy.wait(WAIT), "the second promotion did not wait for the first"
    assert "decided" not in watch.events  # it decides only once it holds the lock
    hold.go.set()
    t1.join(WAIT)
    t2.join(WAIT)
    assert "error" not in out1 and "error" not in out2, (out1.get("error"), out2.get("error"))
    assert out1["result"]["promoted"]
    assert out2["result"]["promoted"] == (second == NEW)
    manifest = assert_consistent(setup, NEW, "new")
    assert manifest["previous_run_key"] == (OLD if first == OLD else None)


def test_s3_lock_taken_over_after_expiry_stops_the_stale_holder(moto_endpoint, s3_buckets):
    """A holder stalled past its lock's ttl loses it: the next promotion completes the stalled
    one from its journal, promotes its own run, and the stalled holder fails without writing."""
    _, _, bucket = s3_buckets
    setup = s3_store(moto_endpoint, bucket)
    fake_run(setup, OLD, "old")
    fake_run(setup, NEW, "new")
    stalled = Paused(at="copied", n=2)
    t1, out1 = run_in_thread(promote, s3_store(moto_endpoint, bucket), OLD, hook=stalled, lock_ttl_s=0.5)
    assert stalled.reached.wait(WAIT)
    result = promote(s3_store(moto_endpoint, bucket), NEW, lock_wait_s=WAIT)
    assert result["promoted"] and result["recovered"] == f"completed the interrupted promotion of {OLD}"
    stalled.go.set()
    t1.join(WAIT)
    assert isinstance(out1.get("error"), PromotionError)
    assert str(out1["error"]).startswith(f"promotion of {OLD} stopped after 2/{len(latest_keys())} objects: ")
    assert "taken over by another promotion" in str(out1["error"])
    manifest = assert_consistent(setup, NEW, "new")
    assert manifest["previous_run_key"] == OLD


def test_conditional_writes(stores):
    """The compare-and-swap the manifest is written with: a stale version loses."""
    store = stores()
    store.write_if("k.json", b"1", None)
    with pytest.raises(WriteConflict):
        store.write_if("k.json", b"2", None)  # If-None-Match: someone created it first
    _, version = store.read_versioned("k.json")
    store.write_if("k.json", b"3", version)
    with pytest.raises(WriteConflict):
        store.write_if("k.json", b"4", version)  # If-Match on the version before "3"
    assert store.read_bytes("k.json") == b"3"


# --- a kill -9 in the middle of the copies ------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import resources.storage as storage
    from insightflow_assets.publish.promotion import promote
    from resources import LocalStorage

    real, calls = storage.shutil.copyfileobj, {"n": 0}

    def dying(src, dst, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # three objects copied, the fourth half written: kill -9
            dst.write(src.read(3))
            dst.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)

    storage.shutil.copyfileobj = dying
    promote(LocalStorage(root=sys.argv[1]), sys.argv[2])
    """
)


def killed_promotion(root: Path) -> LocalStorage:
    store = LocalStorage(root=str(root))
    fake_run(store, OLD, "old")
    fake_run(store, NEW, "new")
    promote(store, OLD)
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), NEW], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    # what the probe saw: the manifest names OLD, three latest/ objects are NEW's, a temp file
    assert read_manifest(store)["run_key"] == OLD
    assert sum("checksum differs" in p for p in verify_manifest(store, read_manifest(store))) == 3
    assert read_journal(store)["run_key"] == NEW
    assert len(list(root.rglob("*.tmp"))) == 1
    return store


def test_kill_between_copies_then_repair_completes(tmp_path):
    store = killed_promotion(tmp_path)
    done = repair(store)
    assert done[0] == f"completed the interrupted promotion of {NEW}"
    folder, name = latest_keys()[3].rsplit("/", 1)  # the fourth object copied, half written when killed
    assert any(d.startswith(f"removed stale temp file {folder}/.{name}.") for d in done)
    manifest = assert_consistent(store, NEW, "new")
    assert manifest["previous_run_key"] == OLD
    assert list(tmp_path.rglob("*.tmp")) == []
    assert repair(store) == []  # nothing left to do


def test_kill_between_copies_then_next_promotion_resolves_it(tmp_path):
    store = killed_promotion(tmp_path)
    fake_run(store, NEWER, "newer")
    result = promote(store, NEWER)
    assert result["promoted"] and result["recovered"] == f"completed the interrupted promotion of {NEW}"
    assert assert_consistent(store, NEWER, "newer")["previous_run_key"] == NEW
    assert list(tmp_path.rglob("*.tmp")) == []


def test_kill_between_copies_then_repair_rolls_back_when_the_run_copy_is_gone(tmp_path):
    store = killed_promotion(tmp_path)
    store.delete(ARTIFACTS["user_seg"].keys(NEW)["user_seg.parquet"])
    assert repair(store)[0] == f"rolled back the interrupted promotion of {NEW} to {OLD}"
    assert_consistent(store, OLD, "old")


def test_cli_latest_reports_an_interrupted_promotion_and_repairs_it(tmp_path):
    killed_promotion(tmp_path)
    env = {**os.environ, "INSIGHTFLOW_STORAGE": "local", "INSIGHTFLOW_CURATED_DIR": str(tmp_path)}
    shown = subprocess.run([EXE, "latest"], env=env, capture_output=True, text=True)
    assert shown.returncode == 1
    assert f"PROBLEM a promotion of {NEW} started" in shown.stdout and "--repair" in shown.stdout
    fixed = subprocess.run([EXE, "latest", "--repair"], env=env, capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"repair: completed the interrupted promotion of {NEW}" in fixed.stdout
    assert f"run key:        {NEW}" in fixed.stdout and "PROBLEM" not in fixed.stdout
    assert_consistent(LocalStorage(root=str(tmp_path)), NEW, "new")


# --- an S3 connection cut in the middle ----------------------------------------------------


class Proxy:
    """A TCP proxy in front of the moto server; `cut` drops the listener and every connection."""

    def __init__(self, target: str):
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener: socket.socket | None = None

    def start(self) -> "Proxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_s3_connection_cut_mid_promotion_then_rerun_completes(moto_endpoint, s3_buckets):
    _, _, bucket = s3_buckets
    proxy = Proxy(moto_endpoint).start()
    try:
        store = s3_store(proxy.endpoint, bucket, max_attempts=1)
        fake_run(store, OLD, "old")
        fake_run(store, NEW, "new")
        promote(store, OLD)
        cut_after_3 = lambda event, **info: proxy.cut() if event == "copied" and info["n"] == 3 else None  # noqa: E731
        with pytest.raises(PromotionError) as failed:
            promote(store, NEW, hook=cut_after_3)
        message = str(failed.value)
        assert message.startswith(f"promotion of {NEW} failed after 3/")
        assert f"latest/ still names {OLD}" in message and "insightflow latest --repair" in message
        assert "\n" not in message

        proxy.start()  # the network comes back (moto kept its state)
        assert read_manifest(store)["run_key"] == OLD  # readers of the manifest still see OLD
        result = promote(store, NEW)
        assert result["promoted"] and result["recovered"] == f"completed the interrupted promotion of {NEW}"
        assert assert_consistent(store, NEW, "new")["previous_run_key"] == OLD
    finally:
        if proxy.listener:
            proxy.cut()


def test_promotion_failure_reaches_the_run_summary_with_its_guidance(moto_endpoint, s3_buckets, instance, monkeypatch):
    """Through Dagster: the step's error line is the promotion's, not the innermost exception."""
    from dagster import materialize

    import insightflow_assets.publish.assets as publish_assets
    from insightflow_assets.runner import _step_errors

    _, _, bucket = s3_buckets
    proxy = Proxy(moto_endpoint).start()
    try:
        store = s3_store(proxy.endpoint, bucket, max_attempts=1)
        fake_run(store, NEW, "new")
        real_copy, calls = S3Storage.copy, {"n": 0}

        def copy_then_cut(self, src, dst):
            calls["n"] += 1
            if calls["n"] == 4:
                proxy.cut()
            return real_copy(self, src, dst)

        monkeypatch.setattr(S3Storage, "copy", copy_then_cut)
        monkeypatch.setattr(publish_assets, "_require_checks_passed", lambda context, run: [])  # the gate has its own tests
        instance.add_dynamic_partitions("runs", [NEW])
        result = materialize(
            [publish_assets.latest_manifest], partition_key=NEW, instance=instance, resources={"curated": store}, raise_on_error=False
        )
        assert not result.success
        errors = _step_errors(result)
        assert len(errors) == 1 and errors[0].startswith(f"promotion of {NEW} failed after 3/"), errors
        assert "insightflow latest --repair" in errors[0]
    finally:
        if proxy.listener:
            proxy.cut()


# --- temp files, modes, errors ---------------------------------------------------------------


def test_stale_temp_files_are_cleaned_but_not_newer_ones(tmp_path):
    store = LocalStorage(root=str(tmp_path))
    fake_run(store, NEW, "new")
    folder = tmp_path / "recsys/eval_charts/latest"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".map_trend.png.dead1234.tmp", folder / ".ndcg_trend.png.live5678.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 3600,) * 2)
    os.utime(fresh, (time.time() + 3600,) * 2)  # newer than the lock holder: not ours to judge
    promote(store, NEW)
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_curated_files_get_the_umask_mode_not_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        store = LocalStorage(root=str(tmp_path))
        fake_run(store, NEW, "new")
        promote(store, NEW)
    finally:
        os.umask(old)
    written = [ARTIFACTS["user_seg"].keys(NEW)["user_seg.parquet"], "recsys/user_seg/latest/user_seg.parquet", LATEST_MANIFEST]
    for key in written:
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == mode, key
    assert stat.S_IMODE((tmp_path / PROMOTION_LOCK).stat().st_mode) == mode


def test_dropped_connection_is_not_an_attribute_error(moto_endpoint):
    """A connection closed before any response: botocore's error has ``response=None``."""
    from botocore.exceptions import ConnectionClosedError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def hang_up():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        store = s3_store(f"http://127.0.0.1:{listener.getsockname()[1]}", "b", max_attempts=1)
        with pytest.raises(ConnectionClosedError):
            store.stat("recsys/latest/index.json")
        with pytest.raises(ConnectionClosedError):
            with store.local_path("recsys/latest/index.json"):
                pass
    finally:
        listener.close()


def test_missing_curated_bucket_is_named(moto_endpoint, tmp_path):
    env = {
        **os.environ,
        "INSIGHTFLOW_STORAGE": "s3",
        "INSIGHTFLOW_S3_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "INSIGHTFLOW_SOURCE_BUCKET": "no-such-clean",
        "INSIGHTFLOW_CURATED_BUCKET": "no-such-curated",
    }
    shown = subprocess.run([EXE, "latest"], env=env, capture_output=True, text=True)
    assert shown.returncode != 0
    assert shown.stdout == ""
    assert shown.stderr.strip().splitlines() == ["insightflow: curated bucket 'no-such-curated' does not exist (s3://no-such-curated)"]
    with pytest.raises(PromotionError, match=f"cannot promote {NEW}: bucket 'no-such-curated' does not exist"):
        promote(S3Storage(s3=s3_store(moto_endpoint, "x").s3, bucket="no-such-curated"), NEW)
