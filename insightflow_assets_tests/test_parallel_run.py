"""The graph with its steps side by side (`executor.run_executor` with ``parallel: true``, as
`insightflow run --parallel` runs it): every step in a process of its own, forked from a server
that imported the code location once; the same stored values as a run in process."""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterEventType, DagsterInstance

from insightflow_assets.runner import run_graph
from insightflow_assets_tests.conftest import SMALL_RUN
from resources.layout import ARTIFACTS

RUN_A = "run-20260401-090000-parallel"
RUN_B = "run-20260401-090001-parallel"
SNAPSHOT = ["raw_orders", "raw_order_products", "products"]  # one multi-asset: selected together
# the steps up to the exported lists (the models included), not the charts and evaluations after
# them: each step's process costs its start-up, and the suite's time is budgeted
THROUGH_RECOS = [*SNAPSHOT, "orders_imputed", "holdout", "ratings", "user_seg", "segment_popularity",
                 "model_selection", "als_model", "nbr_model", "user_recos"]
TO_RATINGS = [*SNAPSHOT, "orders_imputed", "ratings"]
# pure functions of the input and fixed seeds: a process per step must not change them
SAME = {"ratings": "ratings.parquet", "holdout": "holdout.parquet", "user_seg": "user_seg.parquet",
        "segment_popularity": "segment_popularity.parquet", "user_recos": "user_recos.parquet"}


def _env(monkeypatch, source, curated) -> None:
    for key, value in {"INSIGHTFLOW_STORAGE": "local", "INSIGHTFLOW_SOURCE_DIR": str(source),
                       "INSIGHTFLOW_CURATED_DIR": str(curated), "INSIGHTFLOW_COMPUTE": "local"}.items():
        monkeypatch.setenv(key, value)


def _step_pids(instance, run_id: str) -> dict[str, int]:
    pids = {}
    for rec in instance.all_logs(run_id, of_type=DagsterEventType.STEP_WORKER_STARTED):
        pids[rec.dagster_event.step_key] = int(rec.dagster_event.event_specific_data.metadata["pid"].value)
    return pids


def _frame(curated, name: str, run_key: str) -> pl.DataFrame:
    frame = pl.read_parquet(curated / ARTIFACTS[name].keys(run_key)[SAME[name]])
    return frame.sort(frame.columns)


@pytest.fixture(scope="module")
def parallel_runs(tmp_path_factory, small_clean_dir):
    """Two parallel runs in one process (the steps through user_recos, then those up to
    ratings), the environment pointing at another store for the second."""
    first_store, second_store = tmp_path_factory.mktemp("par_a"), tmp_path_factory.mktemp("par_b")
    with pytest.MonkeyPatch.context() as mp, DagsterInstance.local_temp(str(tmp_path_factory.mktemp("home"))) as inst:
        _env(mp, small_clean_dir, first_store)
        first = run_graph(inst, run_key=RUN_A, parallel=True, selection=THROUGH_RECOS)
        _env(mp, small_clean_dir, second_store)
        second = run_graph(inst, run_key=RUN_B, parallel=True, selection=TO_RATINGS)
        pids = _step_pids(inst, first.run_id)
    return first, second, pids, first_store, second_store


def test_every_step_runs_in_a_process_of_its_own(parallel_runs):
    first, second, pids, *_ = parallel_runs
    assert first.ok and second.ok, (first.errors, second.errors)
    assert first.failed_error_checks == [] and first.checks  # the selection's checks ran and passed
    assert pids.keys() == {"instacart_snapshot", *THROUGH_RECOS[len(SNAPSHOT):]}
    assert len(set(pids.values())) == len(pids) and os.getpid() not in pids.values()


def test_each_parallel_run_uses_the_environment_of_its_start(parallel_runs):
    """The forkserver outlives a run with the environment it started with; the second run must
    write to the store its own environment names, not the first's."""
    _, _, _, first_store, second_store = parallel_runs
    assert (first_store / ARTIFACTS["ratings"].keys(RUN_A)["ratings.parquet"]).exists()
    assert (second_store / ARTIFACTS["ratings"].keys(RUN_B)["ratings.parquet"]).exists()
    assert not (first_store / ARTIFACTS["ratings"].keys(RUN_B)["ratings.parquet"]).exists()


def test_a_later_parallel_run_rebuilds_the_job_from_its_own_environment(parallel_runs, small_clean_dir, tmp_path, monkeypatch):
    """A variable set for the runs before (read from the environment at run time) and unset now
    must not be looked for. (Dagster's cache of the last rebuilt job, which run_graph clears,
    bit when two whole-graph runs followed each other; with these selections this test passes
    without the clearing too.)"""
    _env(monkeypatch, small_clean_dir, tmp_path / "third")
    monkeypatch.delenv("INSIGHTFLOW_COMPUTE")  # unset: the default engine, not a missing variable
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as inst:
        third = run_graph(inst, run_key="run-20260401-090002-parallel", selection=SNAPSHOT, parallel=True)
    assert third.ok, third.errors


@pytest.mark.parametrize("name", sorted(SAME))
def test_parallel_run_stores_what_a_run_in_process_stores(parallel_runs, small_run, name):
    _, _, _, first_store, _ = parallel_runs
    assert _frame(first_store, name, RUN_A).equals(_frame(small_run.curated, name, SMALL_RUN))


def test_cli_run_is_in_process_unless_parallel(tmp_path, monkeypatch, small_clean_dir):
    """`insightflow run` keeps one process (the code location it was given); `--parallel` starts
    a process per step, built from the environment."""
    import insightflow_assets.definitions as definitions
    from insightflow_assets.cli import main
    from insightflow_assets_tests.conftest import local_defs

    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(definitions, "defs", local_defs(small_clean_dir, tmp_path / "given"))
    _env(monkeypatch, small_clean_dir, tmp_path / "env")
    one, side_by_side = "run-20260401-090003-one", "run-20260401-090004-side"
    assert main(["run", "--run", one, "--select", *SNAPSHOT]) == 0
    assert main(["run", "--run", side_by_side, "--parallel", "--select", *SNAPSHOT]) == 0
    with DagsterInstance.get() as inst:
        runs = {r.tags["dagster/partition"]: r.run_id for r in inst.get_runs()}
        assert _step_pids(inst, runs[one]) == {}  # no step process was started
        assert set(_step_pids(inst, runs[side_by_side])) == {"instacart_snapshot"}
    orders = ARTIFACTS["raw_orders"].keys
    assert (tmp_path / "given" / orders(one)["orders.parquet"]).exists()
    assert (tmp_path / "env" / orders(side_by_side)["orders.parquet"]).exists()


def test_a_forked_step_process_is_another_lock_holder():
    """Step processes fork from one server: each must hold S3 leases under an id of its own, or
    one would take a sibling's live lease for its own dead one (`storage._ours_but_dead`)."""
    import multiprocessing

    from resources import storage

    storage._LIVE_LEASES.add("parent-lease")
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            child_id, child_leases = pool.apply(_holder_state)
    finally:
        storage._LIVE_LEASES.discard("parent-lease")
    assert child_id != storage._PROCESS and child_leases == []


def _holder_state() -> tuple[str, list[str]]:
    from resources import storage

    return storage._PROCESS, sorted(storage._LIVE_LEASES)


def test_the_preloaded_modules_start_no_polars_worker_threads():
    """The forkserver imports `PRELOAD`, then forks every step's process, and a fork copies only
    the forking thread: a polars pool started at import would be a dead pool in every step."""
    import subprocess
    import sys

    probe = (
        "import importlib, os\n"
        "from insightflow_assets.executor import PRELOAD\n"
        "for m in PRELOAD: importlib.import_module(m)\n"
        "print(' '.join(open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')))\n"
    )
    names = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1]).stdout.split()
    pools = [n for n in names if re.fullmatch(r"polars-\d+|tokio-rt-worker", n)]
    assert names and not pools, names


def test_parallel_config_is_the_multiprocess_executor_and_a_negative_count_is_refused():
    from dagster import validate_run_config

    from insightflow_assets.definitions import insightflow_run_job
    from insightflow_assets.executor import PARALLEL, PRELOAD, _executor_config
    from insightflow_assets.parallel import usable_cores

    assert _executor_config({"parallel": False, "max_concurrent": 3}) == {"in_process": {}}
    side = _executor_config({"parallel": True, "max_concurrent": 0})["multiprocess"]
    assert side["max_concurrent"] == usable_cores()
    assert side["start_method"]["forkserver"]["preload_modules"] == list(PRELOAD)
    job = insightflow_run_job()
    validate_run_config(job, PARALLEL)  # the run config run_graph(parallel=True) adds is valid
    bad = {"execution": {"config": {"parallel": True, "max_concurrent": -1}}}
    with pytest.raises(Exception) as raised:  # Dagster's wrapper, our ValueError inside
        validate_run_config(job, bad)
    assert "max_concurrent must be 0 (one per usable core) or more, not -1" in str(raised.value.user_exception)


def test_cli_refuses_a_negative_step_count_in_one_line(tmp_path, monkeypatch, capsys, small_clean_dir):
    import json

    from insightflow_assets.cli import main

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # Dagster's first-run notice
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    _env(monkeypatch, small_clean_dir, tmp_path / "curated")
    config = tmp_path / "run_config.json"
    config.write_text(json.dumps({"execution": {"config": {"max_concurrent": -1}}}))
    code = main(["run", "--parallel", "--config", str(config), "--select", *SNAPSHOT])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "insightflow: run config: execution config max_concurrent must be 0 (one per usable core) or more, not -1", err
    assert not (tmp_path / "curated").exists() or not any((tmp_path / "curated").rglob("*.parquet"))
