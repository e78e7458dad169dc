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

from insightflow_assets.definitions import ASSETS
from insightflow_assets_tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
BIN = Path(sys.executable).parent
RUN = "run-20260501-000000"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ASSET_NAMES = sorted(key.path[-1] for a in ASSETS for key in a.keys)


def _get(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


@pytest.fixture(scope="module")
def webserver(tmp_path_factory, small_clean_dir):
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
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        page.goto(webserver + "/locations/insightflow/asset-groups/imputation", wait_until="networkidle")
        skip = page.get_by_role("button", name="Skip")  # Dagster's one-time community prompt
        if skip.count():
            skip.first.click()
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
