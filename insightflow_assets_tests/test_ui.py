"""The Dagster UI, for real: the webserver on a free loopback port, its GraphQL API, and a
headless Chromium (Debian's `chromium`) on the asset graph and an asset page."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from insightflow_assets.stages import collect, stage_modules
from insightflow_assets_tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
BIN = Path(sys.executable).parent
RUN = "run-20260501-000000"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ASSET_NAMES = sorted(key.path[-1] for a in collect(stage_modules())[0] for key in a.keys)


def _get(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


# als_eval evaluated again on the same run partition, on fewer users so that its metrics move:
# the second point of the metadata plots (the run partitions stay [RUN]).
REEVALUATE = {"ops": {"als_eval": {"config": {"sample_users": 150}}}}


@pytest.fixture(scope="module")
def ui_env(tmp_path_factory, small_clean_dir) -> dict[str, str]:
    """The environment of the UI: its DAGSTER_HOME and stores, with the run recorded."""
    home = tmp_path_factory.mktemp("ui_home")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "INSIGHTFLOW_STORAGE": "local",
        "INSIGHTFLOW_SOURCE_DIR": str(small_clean_dir),
        "INSIGHTFLOW_CURATED_DIR": str(tmp_path_factory.mktemp("ui_curated")),
    }
    # the same path as `make run`: a run recorded in DAGSTER_HOME, then the UI on top of it
    subprocess.run([str(BIN / "insightflow"), "run", "--run", RUN], env=env, cwd=ROOT, check=True, capture_output=True)
    config = home / "reevaluate.json"
    config.write_text(json.dumps(REEVALUATE))
    subprocess.run(
        [str(BIN / "insightflow"), "run", "--run", RUN, "--select", "als_eval", "--config", str(config)],
        env=env, cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return env


@pytest.fixture(scope="module")
def webserver(ui_env):
    env = ui_env
    home = Path(env["DAGSTER_HOME"])
    port = _free_port()
    log = open(home / "webserver.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            _get(base + "/server_info")
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                raise RuntimeError("dagster-webserver did not start:\n" + (home / "webserver.log").read_text()[-3000:])
            time.sleep(1)
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def graphql(base: str, query: str) -> dict:
    out = json.loads(_get(base + "/graphql", json.dumps({"query": query}).encode()))
    assert "errors" not in out, out["errors"]
    return out["data"]


def test_graphql_lists_the_graph_and_the_latest_materializations(webserver):
    nodes = graphql(webserver, "{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    assert sorted(n["assetKey"]["path"][-1] for n in nodes) == ASSET_NAMES
    assert {n["groupName"] for n in nodes} >= {"ingest", "imputation", "ratings", "model", "evaluation", "postrank", "segmentation", "charts", "exports", "publish"}
    for name in ("orders_imputed", "als_eval", "exports"):
        data = graphql(
            webserver,
            '{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset { assetMaterializations(limit: 1) '
            "{ partition runId metadataEntries { label } } } } }" % name,
        )
        (mat,) = data["assetOrError"]["assetMaterializations"]
        assert mat["partition"] == RUN
        assert "path" in {e["label"] for e in mat["metadataEntries"]}


def test_headless_chromium_shows_the_asset_graph_and_an_asset_page(webserver):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required (make test installs it as root)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _launch(p)
        page = _new_page(browser, height=1000)

        page.goto(webserver + "/locations/insightflow/asset-groups/imputation", wait_until="networkidle")
        page.get_by_text("orders_imputed").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))
        html = page.content()
        for name in ("orders_imputed", "mice_checks", "raw_orders"):
            assert name in html, name

        page.goto(webserver + "/assets/als_eval", wait_until="networkidle")
        page.get_by_text(RUN).first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "asset_als_eval.png"))
        html = page.content()
        assert "als_eval" in html and RUN in html
        browser.close()
    assert (ARTIFACTS / "asset_graph.png").stat().st_size > 10_000


def test_previewing_daily_retrain_in_the_ui_registers_nothing(webserver):
    """The UI's "Test sensor" on `daily_retrain` (GraphQL `sensorDryRun`): it shows the run and
    the partition the tick would add, the same key each time, and registers nothing."""
    from datetime import datetime, timedelta, timezone

    from insightflow_assets.automation import cadence

    before = cadence.latest_tick(datetime.now(timezone.utc))
    dry_run = (
        'mutation { sensorDryRun(selectorData: {repositoryLocationName: "insightflow", '
        'repositoryName: "__repository__", sensorName: "daily_retrain"}, cursor: "%s") '
        "{ __typename ... on DryRunInstigationTick { evaluationResult { runRequests { runKey } "
        "dynamicPartitionsRequests { partitionKeys partitionsDefName } cursor error { message } } } } }"
    ) % (before - timedelta(days=1)).isoformat()
    first, second = (graphql(webserver, dry_run)["sensorDryRun"]["evaluationResult"] for _ in range(2))
    after = cadence.latest_tick(datetime.now(timezone.utc))
    assert first["error"] is None, first["error"]
    (request,) = first["runRequests"]
    assert request["runKey"] in {cadence.tick_key(before), cadence.tick_key(after)}  # 03:00 may pass meanwhile
    assert first["dynamicPartitionsRequests"] == [{"partitionKeys": [request["runKey"]], "partitionsDefName": "runs"}]
    assert before != after or second == first
    partitions = graphql(webserver, '{ assetNodeOrError(assetKey: {path: ["als_eval"]}) { ... on AssetNode { partitionKeys } } }')
    assert partitions["assetNodeOrError"]["partitionKeys"] == [RUN]


# --- standard metadata in the UI (issue 13): the Columns section and the metadata plots ----------


def _launch(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
    )


def _new_page(browser, height: int):
    """A page that dismisses Dagster's one-time community prompt whenever it shows up: on a busy
    machine it can appear after the page has settled, and its backdrop then swallows clicks."""
    page = browser.new_page(viewport={"width": 1600, "height": height})
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.first.click())
    return page


def _open(page, url: str) -> None:
    page.goto(url, wait_until="networkidle")


def _columns_shown(page, last_column: str) -> list[tuple[str, str]]:
    """(name, type) of each row of the asset's Columns section, once its last row is drawn."""
    table = page.locator("table").filter(has_text="Column name").first
    table.get_by_text(last_column, exact=True).wait_for(timeout=60_000)
    table.scroll_into_view_if_needed()
    rows = [row.locator("td").all_inner_texts() for row in table.locator("tbody tr").all()]
    return [(cells[0].strip(), cells[1].strip()) for cells in rows]


def _plotted_materializations(base: str, asset: str) -> list[dict[str, float]]:
    """The float metadata of each materialization of ``asset``: the points of its plots."""
    data = graphql(
        base,
        '{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset { assetMaterializations(limit: 10) '
        "{ partition metadataEntries { label ... on FloatMetadataEntry { floatValue } } } } } }" % asset,
    )
    return [
        {e["label"]: e["floatValue"] for e in m["metadataEntries"] if e.get("floatValue") is not None}
        for m in data["assetOrError"]["assetMaterializations"]
    ]


def test_asset_pages_show_the_columns_and_a_metrics_plot(webserver, ui_env):
    """orders_imputed's Columns section lists the stored file's columns with their types, and
    als_eval's metadata plots draw every method's headline metrics over its materializations."""
    import polars as pl
    from playwright.sync_api import sync_playwright

    from resources.layout import artifact
    from resources.table_metadata import column_type

    stored = Path(ui_env["INSIGHTFLOW_CURATED_DIR"]) / artifact("orders_imputed").keys(RUN)["orders_imputed.parquet"]
    columns = [(name, column_type(dtype)) for name, dtype in pl.read_parquet_schema(stored).items()]
    points = _plotted_materializations(webserver, "als_eval")
    headline = sorted(label for label in points[0] if label.endswith("@10"))
    assert len(points) >= 2 and len(headline) >= 15  # map/recall/ndcg of at least five methods
    assert points[0]["tifu_knn map@10"] != points[1]["tifu_knn map@10"]  # the line moves

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _launch(p)
        page = _new_page(browser, height=1100)

        _open(page, webserver + "/assets/orders_imputed")
        shown = _columns_shown(page, columns[-1][0])
        page.get_by_text("Columns", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "asset_columns_orders_imputed.png"))
        assert shown == columns

        _open(page, webserver + "/assets/als_eval")
        # buttons, not the page's tabs of the same names (their accessible names carry the icon's)
        page.get_by_role("button", name="Plots").first.click()
        page.get_by_role("button", name="Events").first.click()  # x-axis: each materialization
        title = page.get_by_text("tifu_knn map@10", exact=True).first
        title.wait_for(timeout=60_000)
        title.scroll_into_view_if_needed()
        page.wait_for_selector("canvas", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "asset_plots_als_eval.png"))
        missing = [label for label in headline if page.get_by_text(label, exact=True).count() == 0]
        canvases = page.locator("canvas").count()
        browser.close()
    assert missing == []
    assert canvases >= len(headline)  # one chart per plotted metric
    for name in ("asset_columns_orders_imputed.png", "asset_plots_als_eval.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000, name
