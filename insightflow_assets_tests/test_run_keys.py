"""Run keys from every door: folders of their own, atomic registration, a malformed key refused
before any step, and a fresh DAGSTER_HOME initialised once.

Races are forced, not hoped for: the code has two seams (`partitions._before_add`, between
choosing a key and adding it, and `instance._waiting`, called when a lock is taken by someone
else), and each race test starts the second party at the first one's seam, then waits until the
second party is either done (no lock: the race happened) or blocked on the lock.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import DagsterInstance

from insightflow_assets import instance as instance_mod
from insightflow_assets import partitions
from insightflow_assets.executor import RunKeyGuard, check_run_partitions
from insightflow_assets.partitions import register_run
from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import _free_port, local_defs
from resources.layout import ARTIFACTS, RunKeyError, artifact, parse_run_key, tagged_run_moves

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
T0 = datetime(2026, 11, 22, 5, 47, 59, tzinfo=timezone.utc)


# --- the key grammar and the folders ------------------------------------------------------


def test_a_trailing_newline_is_not_a_key(tmp_path, monkeypatch, capsys):
    with pytest.raises(RunKeyError, match="invalid run key"):
        parse_run_key("run-20261122-054759-ok\n")
    with pytest.raises(RunKeyError):
        parse_run_key("run-20261122-054759\n")
    # the CLI door: `insightflow new-run --tag $'ok\n'` is refused in one line, nothing registered
    from insightflow_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["new-run", "--tag", "ok\n"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid run key" in err, err
    assert DagsterInstance.get().get_dynamic_partitions("runs") == []


def test_select_takes_assets_and_steps_and_refuses_the_rest_in_one_line(tmp_path, monkeypatch, capsys):
    """`--select` names assets, or a step that makes several (the ingest's `instacart_snapshot`,
    the name its run config uses); an unknown name stops in one line before a run partition is
    registered (it used to print Dagster's subset traceback and leave an empty partition)."""
    from insightflow_assets.cli import main
    from insightflow_assets.definitions import defs
    from insightflow_assets.runner import selected_keys

    graph = defs.resolve_job_def("insightflow_run").asset_layer.asset_graph
    keys = [k.to_user_string() for k in selected_keys(graph, ["instacart_snapshot", "ratings", "raw_orders"])]
    assert keys == ["products", "raw_order_products", "raw_orders", "ratings"]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("INSIGHTFLOW_SOURCE_DIR", str(tmp_path / "clean"))
    monkeypatch.setenv("INSIGHTFLOW_CURATED_DIR", str(tmp_path / "curated"))
    assert main(["run", "--select", "ratings", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("insightflow: --select: no asset or step named 'nope'; assets: ") and "ratings" in err, err
    assert DagsterInstance.get().get_dynamic_partitions("runs") == []


def test_the_folder_is_the_whole_key_and_untagged_keys_keep_their_folders():
    assert artifact("raw_orders").run_folder("run-20261122-054759-ui") == "recsys/raw/run-20261122-054759-ui"
    assert artifact("als_eval").run_folder("run-20261122-054759-ui") == "recsys/eval/als-20261122-054759-ui"
    assert artifact("exports").run_folder("run-20261122-054759-ui") == "recsys/exports/run-20261122-054759-ui/data"
    # an untagged key: exactly the seed's names, so stored runs need no migration
    assert artifact("raw_orders").run_folder("run-20261122-054759") == "recsys/raw/run-20261122-054759"
    assert artifact("als_model").run_folder("run-20261122-054759") == "recsys/models/als-20261122-054759"
    # keys of one second never share a file, whatever the artifact
    keys = ["run-20261122-054759", "run-20261122-054759-a", "run-20261122-054759-b", "run-20261122-054759-a-b"]
    files = [k for key in keys for spec in ARTIFACTS.values() for k in spec.keys(key).values()]
    assert len(files) == len(set(files))


def test_stored_tagged_runs_move_to_their_own_folders(tmp_path):
    """The README's migration: every file of a tagged run stored under its timestamp only is
    where today's layout reads it after the listed renames."""
    import shutil

    key, untagged = "run-20261122-030000-daily", "run-20261123-030000"
    for spec in ARTIFACTS.values():  # the old layout: folders of the timestamp only
        for name in spec.files:
            old = tmp_path / spec.folder.format(ts="20261122-030000") / name
            old.parent.mkdir(parents=True, exist_ok=True)
            old.write_text(name)
    moves = tagged_run_moves([key, untagged, "test", "run-20261124-030000", "run-20261124-030000-x"])
    # only the tagged key with a second of its own moves; untagged and malformed keys need nothing
    prefixes = ("run", "als", "nbr", "als-postrank", "selection", "publish", "rfm_analysis", "user-seg",
                "lightfm", "pairs", "basket")  # fmt: skip
    assert {new.split("/")[-1] for _, new in moves} == {f"{p}-20261122-030000-daily" for p in prefixes}
    for old, new in moves:
        if (tmp_path / old).exists():
            (tmp_path / new).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(tmp_path / old, tmp_path / new)
    for spec in ARTIFACTS.values():
        for name, rel in spec.keys(key).items():
            assert (tmp_path / rel).read_text() == name, rel


# --- registration ------------------------------------------------------------------------


class FakeClock:
    """UTC time that moves only when the code sleeps: the keys chosen are deterministic."""

    def __init__(self, start: datetime):
        self.t = start
        self.lock = threading.Lock()

    def now(self) -> datetime:
        with self.lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.t += timedelta(seconds=seconds)


def _race(monkeypatch, first, second) -> dict:
    """Run ``first()``; at its seam (`partitions._before_add`) start ``second()`` in a thread and
    wait until it has finished or is blocked on the registration lock."""
    out: dict = {}
    released = threading.Event()
    monkeypatch.setattr(instance_mod, "_waiting", lambda path: released.set())

    def run_second():
        try:
            out["second"] = second()
        except Exception as exc:  # noqa: BLE001 - asserted by the caller
            out["second"] = exc
        released.set()

    threads: list[threading.Thread] = []

    def before_add(key):
        if threads:  # only the first registration stops here
            return
        threads.append(threading.Thread(target=run_second))
        threads[0].start()
        assert released.wait(60), "the second registration neither finished nor waited for the lock"

    monkeypatch.setattr(partitions, "_before_add", before_add)
    out["first"] = first()
    threads[0].join(60)
    return out


@pytest.fixture
def persistent_instance(tmp_path):
    with DagsterInstance.local_temp(str(tmp_path)) as inst:
        yield inst


def test_two_registrations_in_one_second_get_two_keys(monkeypatch, persistent_instance):
    clock = FakeClock(T0)
    monkeypatch.setattr(partitions, "_now", clock.now)
    monkeypatch.setattr(partitions, "_sleep", clock.sleep)
    out = _race(monkeypatch, lambda: register_run(persistent_instance), lambda: register_run(persistent_instance))
    # the second waited for the first, saw its key taken and took the next second's
    assert out == {"first": "run-20261122-054759", "second": "run-20261122-054800"}
    assert sorted(persistent_instance.get_dynamic_partitions("runs")) == [out["first"], out["second"]]


def test_the_forced_interleaving_is_the_race_without_the_lock(monkeypatch, persistent_instance):
    """Control: with the lock taken out, the same interleaving hands one key to both (issue 12,
    item 1), so the test above does exercise the race."""
    monkeypatch.setattr(partitions, "registration_lock", lambda instance: nullcontext())
    clock = FakeClock(T0)
    monkeypatch.setattr(partitions, "_now", clock.now)
    out = _race(monkeypatch, lambda: register_run(persistent_instance), lambda: register_run(persistent_instance))
    assert out["first"] == out["second"] == "run-20261122-054759"


def test_one_given_key_registered_twice_at_once_is_refused_once(monkeypatch, persistent_instance):
    key = "run-20261122-054759-ui"
    register = lambda: register_run(persistent_instance, key=key)  # noqa: E731
    out = _race(monkeypatch, register, register)
    assert out["first"] == key
    assert isinstance(out["second"], RunKeyError) and str(out["second"]) == f"run key {key!r} is already registered"


def test_keys_of_one_second_with_different_tags_are_both_registered(instance):
    for key in ("run-20261122-054759", "run-20261122-054759-ui", "run-20261122-054759-b"):
        assert register_run(instance, key=key) == key
    assert register_run(instance, key="run-20261122-054759-ui", exist_ok=True) == "run-20261122-054759-ui"
    with pytest.raises(RunKeyError, match="already registered"):
        register_run(instance, key="run-20261122-054759-ui")


def test_a_collision_in_the_database_is_a_one_line_error(instance, monkeypatch):
    """Dagster's add is check-then-insert: doors that do not take our lock (the UI, a second
    machine on a shared database) can still meet at the insert; the unique index refuses one."""
    from sqlalchemy.exc import IntegrityError

    def insert_collides(name, keys):
        raise IntegrityError("INSERT INTO dynamic_partitions", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))

    monkeypatch.setattr(instance, "add_dynamic_partitions", insert_collides)
    with pytest.raises(RunKeyError) as err:
        register_run(instance, key="run-20261122-054759")
    assert "\n" not in str(err.value) and "registered by another process" in str(err.value)


# --- a malformed key never reaches a step --------------------------------------------------


class _Recorder:
    """An executor that records whether it was asked to run anything."""

    retries = None
    started = False

    def execute(self, plan_context, execution_plan):
        self.started = True
        yield "step event"


class _Run:
    def __init__(self, tags, instance):
        self.dagster_run = type("R", (), {"tags": tags})()
        self.instance = instance


def test_the_executor_guard_refuses_a_malformed_key_before_the_first_event(instance):
    inner = _Recorder()
    with pytest.raises(RunKeyError, match="invalid run key 'test'"):
        next(RunKeyGuard(inner).execute(_Run({"dagster/partition": "test"}, instance), None))
    assert not inner.started
    good = _Run({"dagster/partition": "run-20261122-054759-ui"}, instance)
    assert list(RunKeyGuard(inner).execute(good, None)) == ["step event"]
    # a range (single-run backfill) is checked key by key
    instance.add_dynamic_partitions("runs", ["run-20261122-054759", "bad key", "run-20261122-054800"])
    with pytest.raises(RunKeyError, match="'bad key'"):
        check_run_partitions(
            {
                "dagster/asset_partition_range_start": "run-20261122-054759",
                "dagster/asset_partition_range_end": "run-20261122-054800",
            },
            instance,
        )


def test_every_job_of_the_code_location_has_the_guard():
    from insightflow_assets.definitions import defs

    jobs = [defs.resolve_job_def(name) for name in ("insightflow_run", "insightflow_checks")]
    jobs.append(defs.resolve_implicit_global_asset_job_def())  # what the UI's Materialize launches
    for job in jobs:
        assert "refusing malformed run keys" in (job.executor_def.description or ""), job.name


def test_the_cli_path_refuses_a_malformed_key_registered_behind_its_back(tmp_path, instance, small_clean_dir):
    instance.add_dynamic_partitions("runs", ["test"])  # e.g. "Add partition" in the UI
    with pytest.raises(RunKeyError, match="invalid run key 'test'"):
        run_graph(instance, run_key="test", defs=local_defs(small_clean_dir, tmp_path / "curated"))
    assert instance.get_runs() == []  # no run, so no step, and nothing written
    assert not (tmp_path / "curated").exists()


# --- a fresh DAGSTER_HOME is initialised once ------------------------------------------------


def _alembic_rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("select version_num from alembic_version")]


def _race_init(monkeypatch, home: Path, open_instance) -> dict:
    """Two threads open one fresh home. The first pauses right after Dagster read the run
    storage's alembic revision (none yet: it is about to create and stamp the storage) until
    the second has finished or is blocked on our lock. ``overlap`` records whether the second
    read the revision meanwhile, i.e. whether both set up the storage at once.

    (Dagster's own alembic thread lock hides the stamp race between threads; between processes
    it stamps two revisions, "more than one head present". The invariant tested here is the
    cause: nobody reads the storage while another is setting it up.)"""
    from dagster._core.storage.runs.sqlite import sqlite_run_storage

    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    released, paused = threading.Event(), threading.Event()
    monkeypatch.setattr(instance_mod, "_waiting", lambda path: released.set())
    out: dict = {"overlap": False}
    threads: list[threading.Thread] = []
    read_revision = sqlite_run_storage.check_alembic_revision

    def run_second():
        try:
            out["second"] = open_instance()
        except Exception as exc:  # noqa: BLE001 - asserted by the caller
            out["second"] = exc
        released.set()

    def paused_read(config, conn):
        revision = read_revision(config, conn)
        if paused.is_set():
            out["overlap"] = True
        elif not threads:
            threads.append(threading.Thread(target=run_second))
            paused.set()
            threads[0].start()
            assert released.wait(120), "the second opener neither finished nor waited for the lock"
            paused.clear()
        return revision

    monkeypatch.setattr(sqlite_run_storage, "check_alembic_revision", paused_read)
    out["first"] = open_instance()
    threads[0].join(120)
    monkeypatch.setattr(sqlite_run_storage, "check_alembic_revision", read_revision)
    return out


def test_two_commands_on_a_fresh_home_initialise_it_once(tmp_path, monkeypatch):
    home = tmp_path / "fresh_home"
    out = _race_init(monkeypatch, home, instance_mod.get_instance)
    assert out["overlap"] is False  # the second waited on the lock until the first was done
    assert isinstance(out["first"], DagsterInstance) and isinstance(out["second"], DagsterInstance), out
    assert len(_alembic_rows(home / "history" / "runs.db")) == 1
    assert DagsterInstance.get().get_dynamic_partitions("runs") == []  # opens without our lock too
    with instance_mod.get_instance() as inst:
        key = register_run(inst, tag="after-init")
        assert inst.get_dynamic_partitions("runs") == [key]


def test_the_forced_interleaving_overlaps_without_the_lock(tmp_path, monkeypatch):
    """Control: with `DagsterInstance.get()` alone the second opener sets up the storage while
    the first is half-way (issue 12, item 5), so the test above does exercise the race."""
    out = _race_init(monkeypatch, tmp_path / "fresh_home", DagsterInstance.get)
    assert out["overlap"] is True


# --- the doors of the UI: a real webserver and its GraphQL API -----------------------------

SECOND = "run-20260601-120000"
KEY_A, KEY_B, BAD = f"{SECOND}-a", f"{SECOND}-b", "test"
SELECTION = ["raw_orders", "raw_order_products", "products", "orders_imputed"]
REPO = {"repositoryLocationName": "insightflow", "repositoryName": "__repository__"}


def gql(base: str, query: str, variables: dict | None = None) -> dict:
    import urllib.request

    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(base + "/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out["errors"]
    return out["data"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory, small_clean_dir):
    """dagster-webserver on a fresh home that launches runs at once (no daemon needed)."""
    home = tmp_path_factory.mktemp("keys_home")
    curated = tmp_path_factory.mktemp("keys_curated")
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n"
        "  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "INSIGHTFLOW_STORAGE": "local",
        "INSIGHTFLOW_SOURCE_DIR": str(small_clean_dir),
        "INSIGHTFLOW_CURATED_DIR": str(curated),
    }
    subprocess.run([str(BIN / "insightflow"), "init"], env=env, cwd=ROOT, check=True, capture_output=True)  # as `make ui`
    port = _free_port()
    log = open(home / "webserver.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            gql(base, "{ version }")
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                raise RuntimeError("dagster-webserver did not start:\n" + (home / "webserver.log").read_text()[-3000:])
            time.sleep(1)
    yield base, curated
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def add_partition(base: str, key: str) -> None:
    data = gql(
        base,
        "mutation($repo: RepositorySelector!, $key: String!) { addDynamicPartition(repositorySelector: $repo, "
        'partitionsDefName: "runs", partitionKey: $key) { __typename ... on PythonError { message } } }',
        {"repo": REPO, "key": key},
    )
    assert data["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", data


def materialize(base: str, key: str, job: str = "__ASSET_JOB", run_config: dict | None = None) -> dict:
    """Launch the selection for one partition, as the UI's Materialize button does (or with the
    given job and run config, as its Launchpad does); wait for it."""
    params = {
        "selector": {**REPO, "jobName": job, "assetSelection": [{"path": [n]} for n in SELECTION]},
        "mode": "default",
        "runConfigData": run_config or {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
    }
    data = gql(
        base,
        "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename "
        "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }",
        {"p": params},
    )["launchRun"]
    assert data["__typename"] == "LaunchRunSuccess", data
    run_id = data["run"]["runId"]
    deadline = time.time() + 240
    while True:
        run = gql(
            base,
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status eventConnection { events { __typename "
            "... on MessageEvent { message level } ... on ErrorEvent { error { message } } } } } } }",
            {"id": run_id},
        )["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        assert time.time() < deadline, f"run {run_id} for {key} still {run['status']}"
        time.sleep(1)


def _files(curated: Path, key: str) -> dict[str, tuple[int, int]]:
    """Every stored file of one run: relative path → (inode, mtime_ns); a rewrite changes both."""
    stamp = key.removeprefix("run-")
    out = {}
    for p in curated.rglob("*"):
        if p.is_file() and any(part.endswith("-" + stamp) for part in p.relative_to(curated).parts):
            st = p.stat()
            out[str(p.relative_to(curated))] = (st.st_ino, st.st_mtime_ns)
    return out


def test_graphql_keys_of_one_second_write_their_own_folders_and_a_bad_key_fails_before_any_step(ui):
    base, curated = ui
    for key in (KEY_A, KEY_B, BAD):
        add_partition(base, key)  # Dagster takes any string; the runs are what must refuse it

    run_a = materialize(base, KEY_A)
    assert run_a["status"] == "SUCCESS", run_a
    files_a = _files(curated, KEY_A)
    run_b = materialize(base, KEY_B)
    assert run_b["status"] == "SUCCESS", run_b

    # each key wrote its own folders, and b left a's files exactly as they were
    assert (curated / f"recsys/raw/{KEY_A}/orders.parquet").is_file()
    assert (curated / f"after-MICE/{KEY_B}/orders_imputed.parquet").is_file()
    assert not (curated / f"recsys/raw/{SECOND}").exists()
    assert files_a and _files(curated, KEY_A) == files_a
    assert {p.replace(KEY_A, "K") for p in files_a} == {p.replace(KEY_B, "K") for p in _files(curated, KEY_B)}
    paths = gql(
        base,
        '{ assetOrError(assetKey: {path: ["orders_imputed"]}) { ... on Asset { assetMaterializations { partition '
        "metadataEntries { label ... on PathMetadataEntry { path } } } } } }",
    )["assetOrError"]["assetMaterializations"]
    by_key = {m["partition"]: [e["path"] for e in m["metadataEntries"] if e["label"] == "path"][0] for m in paths}
    assert by_key[KEY_A].endswith(f"after-MICE/{KEY_A}") and by_key[KEY_B].endswith(f"after-MICE/{KEY_B}")

    # the malformed key: the run fails as a whole, with one one-line message, and no step starts
    bad = materialize(base, BAD)
    assert bad["status"] == "FAILURE"
    events = bad["eventConnection"]["events"]
    kinds = [e["__typename"] for e in events]
    assert not [k for k in kinds if k.startswith("ExecutionStep")], kinds
    errors = [e for e in events if e.get("level") == "ERROR"]
    assert [e["__typename"] for e in errors] == ["RunFailureEvent"], errors
    message = errors[0]["error"]["message"].strip()
    assert "\n" not in message and "invalid run key 'test'" in message, message
    assert _files(curated, KEY_A) == files_a and not list(curated.rglob("*test*"))


def test_graphql_launch_of_insightflow_run_steps_in_processes_and_guards_the_key(ui):
    """insightflow_run with `parallel: true` (steps side by side, each in its own process) from
    the UI's Launchpad: the run succeeds, and a malformed key still fails before any step."""
    from insightflow_assets.executor import PARALLEL

    base, curated = ui
    key = f"{SECOND}-c"
    add_partition(base, key)
    run = materialize(base, key, job="insightflow_run", run_config=PARALLEL)
    assert run["status"] == "SUCCESS", run
    messages = [e.get("message") or "" for e in run["eventConnection"]["events"]]
    assert any("in subprocess" in m for m in messages), messages  # multiprocess executor's step workers
    assert (curated / f"after-MICE/{key}/orders_imputed.parquet").is_file()

    bad = materialize(base, BAD, job="insightflow_run", run_config=PARALLEL)
    assert bad["status"] == "FAILURE"
    kinds = [e["__typename"] for e in bad["eventConnection"]["events"]]
    assert not [k for k in kinds if k.startswith("ExecutionStep")], kinds
