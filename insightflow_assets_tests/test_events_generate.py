"""The events-form generator from the CLI and make (issue 16): `insightflow generate --form
events`, its refusals, `make generate-events` / `run-events`, and the availability realism
(carts and purchases only on items available at their time), read back with the reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from insightflow_assets.cli import main
from insightflow_assets.data.events import generate_events_tables
from insightflow_assets.ingest.events import read_events_form

REPO = Path(__file__).resolve().parents[1]
FILES = ["category_tree.csv", "events.csv", "item_properties_part1.csv", "item_properties_part2.csv"]
VISITORS = 6_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A log written through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("cli") / "events"
    assert main(["generate", "--form", "events", "--users", str(VISITORS), "--seed", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def snapshot(generated):
    return read_events_form(generated)


def test_cli_writes_the_four_files_of_the_generator(generated):
    assert sorted(p.name for p in generated.iterdir()) == FILES  # no temp files left
    events = pl.read_csv(generated / "events.csv", infer_schema_length=None)
    assert events["visitorid"].n_unique() == VISITORS  # --users means visitors here
    # The same table as the generator's, for the same seed.
    assert_frame_equal(events, generate_events_tables(VISITORS, seed=3)["events"], check_dtypes=False)


def test_cli_prints_the_counts(tmp_path, capsys):
    assert main(["generate", "--form", "events", "--users", "500", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "generated 500 visitors (events)" in out
    events = pl.read_csv(tmp_path / "e" / "events.csv")
    carts = int((events["event"] == "addtocart").sum())
    assert any(line.split() == ["addtocarts:", f"{carts:,}"] for line in out.splitlines()), out


def test_carts_and_purchases_only_on_items_available_at_their_time(snapshot):
    ev = snapshot.events
    for kind in ("addtocart", "transaction"):
        got = ev.filter(pl.col("event") == kind)["available"]
        assert got.len() > 30, kind
        # null would mean "never stated": not available either
        assert got.null_count() == 0 and (got == 1).all(), kind
    # Views still hit unavailable items, so the check above is not true by construction.
    views = ev.filter(pl.col("event") == "view")["available"]
    assert (views == 0).sum() > 0.05 * views.len()


@pytest.mark.parametrize("seed", [1, 2])
def test_views_dwarf_carts_which_dwarf_purchases(seed):
    ev = generate_events_tables(VISITORS, seed=seed)["events"]
    n = dict(ev.group_by("event").len().iter_rows())
    assert n["view"] > 20 * n["addtocart"] > 20 * 1.5 * n["transaction"] > 0
    # Availability leaves the shares at RetailRocket's (96.7 / 2.5 / 0.8 %).
    assert n["addtocart"] / ev.height == pytest.approx(0.025, abs=0.007)
    assert n["transaction"] / ev.height == pytest.approx(0.008, abs=0.004)


def test_tree_depth_and_time_varying_properties(snapshot):
    assert 1 <= snapshot.categories["depth"].max() <= 6
    avail = snapshot.availability_history.group_by("item_id").agg(pl.col("available").n_unique().alias("n"))
    assert avail.filter(pl.col("n") > 1).height > 0  # availability toggles
    moved = snapshot.category_history.group_by("item_id").agg(pl.col("category_id").n_unique().alias("n"))
    assert moved.filter(pl.col("n") > 1).height > 0  # some items move category


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--form", "events", "--missing-rate", "0.1"], "--missing-rate"),
        (["--form", "events", "--test-share", "0.1"], "--test-share"),
        (["--form", "events", "--format", "parquet"], "--format parquet"),
        (["--opaque-properties", "3"], "--opaque-properties"),  # instacart, the default form
    ],
)
def test_options_of_the_other_form_are_refused_in_one_line(tmp_path, capsys, extra, named):
    out = tmp_path / "out"
    assert main(["generate", "--users", "200", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("insightflow: generate --form ") and named in err[0], err
    assert not out.exists()  # refused before anything is written


def test_instacart_stays_the_default_form(tmp_path):
    out = tmp_path / "ic"
    assert main(["generate", "--users", "200", "--missing-rate", "0.1", "--test-share", "0.1", "--out", str(out)]) == 0
    assert (out / "orders.csv").is_file() and not (out / "events.csv").exists()
    orders = pl.read_csv(out / "orders.csv")
    assert orders["user_id"].n_unique() == 200 and (orders["eval_set"] == "test").sum() > 0


def test_events_form_options(tmp_path):
    out = tmp_path / "gz"
    assert main(["generate", "--form", "events", "--users", "300", "--format", "csv.gz", "--opaque-properties", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f + ".gz" for f in FILES]
    snap = read_events_form(out)  # the reader takes .csv.gz too
    assert snap.events["visitor_id"].n_unique() == 300
    props = pl.concat([pl.read_csv(p) for p in out.glob("item_properties*")])
    assert set(props["property"]) == {"categoryid", "available"}


# ---- make ----------------------------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str) -> subprocess.CompletedProcess:
    # -o: never (re)install the venv from a test; the targets' own recipes are what is tested.
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@needs_make
def test_make_generate_events_writes_a_readable_log(tmp_path):
    out = tmp_path / "clean-events"
    done = _make("generate-events", f"EVENTS_DIR={out}", "VISITORS=400")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert read_events_form(out).events["visitor_id"].n_unique() == 400


@needs_make
def test_make_run_events_generates_only_if_absent_then_runs_on_that_location(tmp_path):
    # A stand-in `insightflow` (BIN=) logs each call and its source location; `generate` is real.
    real = REPO / ".venv" / "bin" / "insightflow"
    log, out = tmp_path / "calls.log", tmp_path / "clean-events"
    stub = tmp_path / "bin" / "insightflow"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$1 $INSIGHTFLOW_SOURCE_DIR" >> {log}\n[ "$1" = generate ] && exec {real} "$@"\nexit 0\n')
    stub.chmod(0o755)
    for _ in range(2):  # the second time the log is there: only the run
        done = _make("run-events", f"BIN={stub.parent}", f"EVENTS_DIR={out}", "VISITORS=400")
        assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == ["generate ", f"run {out}", f"run {out}"]
    assert sorted(p.name for p in out.iterdir()) == FILES
