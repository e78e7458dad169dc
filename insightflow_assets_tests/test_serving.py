"""Serving: the HTTP API over latest/, through a real uvicorn process (``insightflow serve``).

Two real runs of the graph on different data (so their answers differ): run A is promoted and
served, then run B is promoted while the server runs and its watcher picks it up. Every
answer is compared with the stored files of the run it names.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance

from insightflow_assets.basket import profiles as prof
from insightflow_assets.data.generate import generate_instacart, write_instacart
from insightflow_assets.runner import run_graph
from insightflow_assets.serving.app import create_app
from insightflow_assets.serving.bundle import BundleError, code_map, id_of_code, load_latest, load_run
from insightflow_assets.serving.bundle import product_catalog
from insightflow_assets.serving.bundle import user_lists as bundle_user_lists
from insightflow_assets_tests.conftest import _free_port, local_defs
from resources import LocalStorage, S3Storage
from resources.layout import ARTIFACTS

RUN_A, RUN_B = "run-20260501-000000", "run-20260502-000000"
ADMIN_KEY = "test-admin-key-4f1c9e"  # a value that can only appear where it leaked
WAIT = 120  # seconds: a bound for things that happen in well under that, never a timing assertion
EXE = str(Path(sys.executable).parent / "insightflow")


def wait_for(predicate, what: str, bound: float = WAIT):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def stored(curated: Path, name: str, run_key: str, file: str) -> bytes:
    return (curated / ARTIFACTS[name].keys(run_key)[file]).read_bytes()


def user_lists(curated: Path, run_key: str) -> dict[int, list[int]]:
    df = pl.read_parquet(io.BytesIO(stored(curated, "user_recos", run_key, "user_recos.parquet"))).sort("user_id", "rank")
    return {u: g["product_id"].to_list() for (u,), g in df.group_by("user_id", maintain_order=True)}


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_clean_dir):
    """Run A promoted and served; then run B (other data) promoted while the server watches."""
    root = tmp_path_factory.mktemp("serving")
    curated, clean_b = root / "curated", root / "clean_b"
    write_instacart(generate_instacart(240, seed=11, missing_rate=0.05, test_share=0.05), clean_b, fmt="csv")
    log_path = root / "server.log"
    with DagsterInstance.ephemeral() as inst:
        outcome = run_graph(inst, run_key=RUN_A, defs=local_defs(small_clean_dir, curated))
        assert outcome.ok, outcome.errors
        port = _free_port()
        env = {**os.environ, "INSIGHTFLOW_STORAGE": "local", "INSIGHTFLOW_CURATED_DIR": str(curated),
               "INSIGHTFLOW_ADMIN_KEY": ADMIN_KEY}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([EXE, "serve", "--port", str(port), "--watch-seconds", "0.5"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            wait_for(lambda: client.get("/health/live").status_code == 200, "/health/live")
            first = wait_for(lambda: client.get("/health/ready").json().get("run_key"), "the first bundle")
            outcome = run_graph(inst, run_key=RUN_B, defs=local_defs(clean_b, curated))
            assert outcome.ok, outcome.errors
            wait_for(lambda: client.get("/version").json().get("run_key") == RUN_B, "the watcher to load run B")
            yield SimpleNamespace(client=client, curated=curated, port=port, first=first, log=log_path,
                                  lists={RUN_A: user_lists(curated, RUN_A), RUN_B: user_lists(curated, RUN_B)})
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout=30)


def admin(served, body: dict | None = None, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"X-Admin-Key": key} if key is not None else {}
    return served.client.post("/admin/reload", json=body or {}, headers=headers)


def metric(served, name: str, **labels) -> float:
    """The value of one series of /metrics (0 when absent)."""
    text = served.client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- health, version, the watcher ---------------------------------------------------------


def test_watcher_served_a_then_picked_up_b(served):
    assert served.first == RUN_A
    assert metric(served, "insightflow_reloads_total") >= 2
    assert metric(served, "insightflow_bundle_info", run_key=RUN_B) == 1.0
    assert metric(served, "insightflow_bundle_info", run_key=RUN_A) == 0.0  # one series: the bundle serving


def test_health_and_version(served):
    c = served.client
    assert c.get("/health/live").json() == {"live": True}
    ready = c.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["verified"]
    v = c.get("/version").json()
    manifest = json.loads((served.curated / "recsys/latest/index.json").read_text())
    selection = json.loads(stored(served.curated, "model_selection", RUN_B, "selection.json"))
    assert v["run_key"] == RUN_B == manifest["run_key"]
    assert v["finished_at_utc"] == manifest["finished_at_utc"]
    assert v["exported_method"]["method"] == selection["winner"]["method"]
    assert v["counts"]["users"] == len(served.lists[RUN_B])
    profiles = json.loads(stored(served.curated, "basket_pairs", RUN_B, "profiles.json"))
    assert v["profile"] == prof.active(profiles) and v["verified"] and not v["pinned"]
    assert c.get("/docs").status_code == 200 and "/baskets/complements" in c.get("/openapi.json").json()["paths"]


# --- queries ------------------------------------------------------------------------------


def test_user_recommendations_are_the_stored_lists(served):
    c, lists = served.client, served.lists[RUN_B]
    user = sorted(lists)[3]
    body = c.get(f"/users/{user}/recommendations", params={"k": 5}).json()
    assert body["run_key"] == RUN_B and body["source"] == "model"
    assert [i["product_id"] for i in body["items"]] == lists[user][:5]
    # past the stored length: topped up from popularity, still distinct
    long = c.get(f"/users/{user}/recommendations", params={"k": 30}).json()["items"]
    ids = [i["product_id"] for i in long]
    assert len(ids) == 30 == len(set(ids)) and ids[: len(lists[user])] == lists[user]


def test_unknown_user_gets_popular_items_as_fallback(served):
    before = metric(served, "insightflow_fallbacks_total", endpoint="users")
    body = served.client.get("/users/999999/recommendations", params={"k": 4}).json()
    items = pl.read_parquet(io.BytesIO(stored(served.curated, "basket_pairs", RUN_B, "items.parquet")))
    top = items.filter(pl.col("segment") == -1).sort(["baskets", "product_id"], descending=[True, False])["product_id"][:4]
    assert body["source"] == "fallback" and [i["product_id"] for i in body["items"]] == top.to_list()
    assert metric(served, "insightflow_fallbacks_total", endpoint="users") == before + 1


def test_customer_route_answers_like_the_user_route(served):
    """Ids kept as given (these Instacart files): the customer code is the user id."""
    c, lists = served.client, served.lists[RUN_B]
    user = sorted(lists)[5]
    by_code = c.get(f"/customers/{user}/recommendations", params={"k": 7}).json()
    by_id = c.get(f"/users/{user}/recommendations", params={"k": 7}).json()
    assert by_code["user_id"] == user and by_code["customer_code"] == str(user) and by_code["source"] == "model"
    assert by_code["items"] == by_id["items"] and [i["product_id"] for i in by_code["items"]] == lists[user][:7]
    before = metric(served, "insightflow_fallbacks_total", endpoint="customers")
    unknown = c.get("/customers/UK-nobody/recommendations", params={"k": 3}).json()
    assert unknown["source"] == "fallback" and unknown["user_id"] is None and len(unknown["items"]) == 3
    assert metric(served, "insightflow_fallbacks_total", endpoint="customers") == before + 1


def test_numbered_customers_are_found_by_their_code():
    """Where the ingest numbered the customers, user_recos carries customer_code and the
    bundle maps it back; a number is then not a code."""
    recos = pl.DataFrame({"user_id": [1, 1, 2], "rank": [1, 2, 1], "product_id": [10, 11, 12], "score": [0.9, 0.5, 0.7],
                          "source": ["repeat", "repeat", "neighbors"], "customer_code": ["ann", "ann", "bob"]})
    lists = bundle_user_lists(recos)
    assert lists.user_of("bob") == 2 and lists.user_of("ann") == 1 and lists.user_of("2") is None
    assert lists.of(lists.user_of("bob"))[0].tolist() == [12]
    plain = bundle_user_lists(recos.drop("customer_code"))
    assert plain.user_of("2") == 2 and plain.user_of("bob") is None and plain.user_of(str(2**31)) is None
    # products: /products/enrich says the retailer's code where the snapshot kept one
    catalog = product_catalog(pl.DataFrame({"product_id": [10], "product_code": ["85123A"], "product_name": ["mug"]}))
    assert dict(catalog[10]) == {"product_code": "85123A", "product_name": "mug"}


def test_basket_complements(served):
    c = served.client
    products = pl.read_parquet(io.BytesIO(stored(served.curated, "products", RUN_B, "products.parquet")))
    basket = served.lists[RUN_B][sorted(served.lists[RUN_B])[0]][:3]
    before = metric(served, "insightflow_unknown_ids_total", endpoint="baskets")
    body = c.post("/baskets/complements", json={"product_ids": [*basket, 987654], "k": 8, "expand": True}).json()
    ids = [i["product_id"] for i in body["items"]]
    assert body["run_key"] == RUN_B and body["source"] == "basket" and body["unknown_ids"] == [987654]
    assert len(ids) == 8 == len(set(ids)) and not set(ids) & set(basket)
    assert body["segment_detected"] and abs(sum(body["segment_mix"].values()) - 1) < 1e-6
    names = dict(zip(products["product_id"].to_list(), products["product_name"].to_list()))
    assert all(i["product_name"] == names[i["product_id"]] and "aisle" in i and "department" in i for i in body["items"])
    assert metric(served, "insightflow_unknown_ids_total", endpoint="baskets") == before + 1
    # the same answer as the basket recommender over the stored files
    bundle, _ = load_latest(LocalStorage(root=str(served.curated)))
    assert ids == bundle.basket.recommend([*basket, 987654], 8, profile=body["profile"]).product_ids
    seg = c.post("/baskets/complements", json={"product_ids": basket, "k": 5, "segment": 0, "profile": "popular_heavy"}).json()
    assert seg["segment_mix"] == {"0": 1.0} and not seg["segment_detected"] and seg["profile"] == "popular_heavy"


def test_basket_by_product_codes(served):
    """The basket by the retailer's codes: these Instacart files keep their ids, so the codes
    are the ids as text; an unknown code is reported, not fatal."""
    c = served.client
    basket = served.lists[RUN_B][sorted(served.lists[RUN_B])[0]][:3]
    by_id = c.post("/baskets/complements", json={"product_ids": basket, "k": 6}).json()
    before = metric(served, "insightflow_unknown_ids_total", endpoint="baskets")
    by_code = c.post("/baskets/complements", json={"product_codes": [*map(str, basket), "SKU-X", "987654"], "k": 6}).json()
    assert by_code["items"] == by_id["items"] and by_code["unknown_codes"] == ["SKU-X", "987654"]
    assert by_code["unknown_ids"] == [] and metric(served, "insightflow_unknown_ids_total", endpoint="baskets") == before + 2
    both = c.post("/baskets/complements", json={"product_ids": basket, "product_codes": ["1"]})
    assert both.status_code == 422 and "product_ids or as product_codes" in both.json()["error"]


def test_product_codes_map_to_ids_where_the_ingest_numbered_them():
    codes = {"85123A": 1, "71053": 2}
    assert id_of_code(codes, "85123A") == 1 and id_of_code(codes, "1") is None  # a number is not a code then
    assert id_of_code({}, "71053") == 71053 and id_of_code({}, "85123A") is None and id_of_code({}, str(2**31)) is None
    # what the bundle builds from products.parquet (transactions form: product_code beside the id)
    products = pl.DataFrame({"product_id": [1, 2], "product_code": ["85123A", "71053"], "product_name": ["a", "b"]})
    assert dict(code_map(products, "product_code", "product_id")) == codes
    assert dict(code_map(products.drop("product_code"), "product_code", "product_id")) == {}


def test_empty_basket_gets_popular_items(served):
    body = served.client.post("/baskets/complements", json={"product_ids": [], "k": 5}).json()
    assert body["source"] == "fallback" and "empty basket" in body["note"] and len(body["items"]) == 5


def test_similar_products_by_cosine_of_lightfm_vectors(served):
    vecs = np.load(io.BytesIO(stored(served.curated, "lightfm_model", RUN_B, "item_vectors.npy")))
    ids = np.load(io.BytesIO(stored(served.curated, "lightfm_model", RUN_B, "item_ids.npy")))
    pid = int(ids[7])
    body = served.client.get(f"/products/{pid}/similar", params={"k": 6}).json()
    got = [i["product_id"] for i in body["items"]]
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    cos = unit @ unit[7]
    assert pid not in got and len(got) == 6
    assert np.allclose([i["cosine"] for i in body["items"]], cos[np.searchsorted(ids, got)], atol=1e-5)
    assert min(i["cosine"] for i in body["items"]) >= np.sort(np.delete(cos, 7))[-6] - 1e-5  # the 6 nearest
    missing = served.client.get("/products/987654/similar")
    assert missing.status_code == 404 and "987654" in missing.json()["detail"]
    # by the retailer's code: these Instacart files keep their ids, so the code is the id as text
    by_code = served.client.get(f"/products/by-code/{pid}/similar", params={"k": 6}).json()
    assert by_code["items"] == body["items"] and by_code["product_code"] == str(pid)
    assert [i["product_code"] for i in body["items"]] == [str(p) for p in got]
    unknown = served.client.get("/products/by-code/SKU-X/similar")
    assert unknown.status_code == 404 and "SKU-X" in unknown.json()["detail"]


def test_enrich(served):
    products = pl.read_parquet(io.BytesIO(stored(served.curated, "products", RUN_B, "products.parquet")))
    row = products.row(5, named=True)
    body = served.client.post("/products/enrich", json={"product_ids": [row["product_id"], 987654]}).json()
    assert body["unknown_ids"] == [987654]
    assert body["products"] == [{k: row[k] for k in ("product_id", "product_name", "aisle_id", "aisle", "department_id", "department")}]
    before = metric(served, "insightflow_unknown_ids_total", endpoint="enrich")
    by_code = served.client.post("/products/enrich", json={"product_codes": [str(row["product_id"]), "SKU-X", "987654"]}).json()
    # a number no product has is an unknown code too, as it was asked
    assert by_code["products"] == body["products"] and by_code["unknown_codes"] == ["SKU-X", "987654"]
    assert by_code["unknown_ids"] == [] and metric(served, "insightflow_unknown_ids_total", endpoint="enrich") == before + 2


@pytest.mark.parametrize(
    "method, path, payload, field",
    [
        ("get", "/users/1/recommendations?k=0", None, "query k"),
        ("get", "/users/1/recommendations?k=101", None, "query k"),
        ("get", "/users/abc/recommendations", None, "path user_id"),
        ("get", "/users/-4/recommendations", None, "path user_id"),
        ("get", "/products/0/similar", None, "path product_id"),
        ("post", "/baskets/complements", {"k": 5}, "product_ids or as product_codes"),
        ("post", "/baskets/complements", {"product_ids": ["x"]}, "body product_ids 0"),
        ("post", "/baskets/complements", {"product_ids": [1], "k": 500}, "body k"),
        ("post", "/baskets/complements", {"product_ids": [1], "kk": 5}, "body kk"),
        ("post", "/baskets/complements", {"product_ids": [1], "segment": 99}, "segment 99 is unknown"),
        ("post", "/baskets/complements", {"product_ids": [1], "profile": "nope"}, "profile 'nope' is unknown"),
        ("post", "/products/enrich", {"product_ids": []}, "body product_ids"),
        ("post", "/products/enrich", {}, "product_ids or as product_codes"),
        ("post", "/products/enrich", {"product_ids": [1], "product_codes": ["1"]}, "product_ids or as product_codes"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(served, method, path, payload, field):
    r = getattr(served.client, method)(path, **({"json": payload} if payload is not None else {}))
    assert r.status_code == 422
    body = r.json()
    assert field in (body.get("error") or body.get("detail"))


# --- admin: reload, rollback, refusals ------------------------------------------------------


def test_admin_reload_refused_without_the_key(served):
    assert admin(served, key=None).status_code == 401
    assert admin(served, key="wrong").status_code == 401
    assert served.client.get("/version").json()["run_key"] == RUN_B


def test_admin_disabled_when_no_key_is_configured(served):
    import asyncio

    app = create_app(LocalStorage(root=str(served.curated)), watch_seconds=0, admin_key="")  # "": disabled

    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serving") as ac:
            return await ac.post("/admin/reload", json={}, headers={"X-Admin-Key": ""})

    r = asyncio.run(ask())
    assert r.status_code == 403 and "INSIGHTFLOW_ADMIN_KEY" in r.json()["detail"]


def test_rollback_to_the_older_run_and_back(served):
    c = served.client
    r = admin(served, {"run_key": RUN_A})
    assert r.status_code == 200 and r.json()["run_key"] == RUN_A and r.json()["previous_run_key"] == RUN_B
    v = c.get("/version").json()
    assert v["run_key"] == RUN_A and v["pinned"] and v["verified"]  # A's manifest was seen when it was latest
    user = sorted(served.lists[RUN_A])[-1]
    body = c.get(f"/users/{user}/recommendations", params={"k": 10}).json()
    assert body["run_key"] == RUN_A and [i["product_id"] for i in body["items"]] == served.lists[RUN_A][user][:10]
    time.sleep(1.5)  # three watcher polls: a pinned run stays (not a timing assertion: it must not move at all)
    assert c.get("/version").json()["run_key"] == RUN_A
    r = admin(served, {})
    assert r.status_code == 200 and r.json()["run_key"] == RUN_B and not r.json()["pinned"]
    assert admin(served, {"run_key": "run-2026"}).status_code == 422


def test_reload_failing_its_checksum_keeps_the_old_bundle(served):
    c = served.client
    path = served.curated / ARTIFACTS["user_recos"].keys(RUN_B)["user_recos.parquet"]
    original = path.read_bytes()
    failed_before = metric(served, "insightflow_failed_reloads_total")
    try:
        path.write_bytes(original[:-10] + b"corrupted!")
        r = admin(served, {})
        assert r.status_code == 500 and not r.json()["reloaded"] and r.json()["run_key"] == RUN_B
        assert "user_recos.parquet" in r.json()["error"] and "sha256" in r.json()["error"]
        ready = c.get("/health/ready").json()
        assert ready["ready"] and ready["run_key"] == RUN_B
        assert "user_recos.parquet" in ready["last_reload_error"]["error"]
        assert metric(served, "insightflow_failed_reloads_total") == failed_before + 1
        user = sorted(served.lists[RUN_B])[0]  # still answering from the old bundle
        body = c.get(f"/users/{user}/recommendations", params={"k": 3}).json()
        assert [i["product_id"] for i in body["items"]] == served.lists[RUN_B][user][:3]
    finally:
        path.write_bytes(original)
    assert admin(served, {}).status_code == 200
    assert c.get("/health/ready").json()["last_reload_error"] is None


def test_burst_during_reloads_has_no_error_and_no_mixed_answer(served):
    """8 threads ask for users present in both runs while A and B are swapped in turn; every
    answer must be exactly its named run's stored list."""
    users = sorted(set(served.lists[RUN_A]) & set(served.lists[RUN_B]))[:40]
    assert any(served.lists[RUN_A][u] != served.lists[RUN_B][u] for u in users)  # the runs differ
    stop, results = threading.Event(), []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=60) as cl:
            for _ in range(400):  # bounded, whatever the machine
                if stop.is_set():
                    break
                u = int(rng.choice(users))
                r = cl.get(f"/users/{u}/recommendations", params={"k": 20})
                results.append((u, r.status_code, r.json()))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(worker, s) for s in range(8)]
        for run in (RUN_A, RUN_B, RUN_A, None):
            assert admin(served, {"run_key": run} if run else {}).json()["reloaded"]
        stop.set()
        for f in futures:
            f.result()
    assert results and all(status == 200 for _, status, _ in results)
    for u, _, body in results:
        assert [i["product_id"] for i in body["items"]] == served.lists[body["run_key"]][u]
    assert served.client.get("/version").json()["run_key"] == RUN_B


# --- the loader alone, and what never leaks -------------------------------------------------


def test_loader_names_the_object_whose_checksum_differs(served, tmp_path):
    import shutil

    copy = tmp_path / "curated"
    shutil.copytree(served.curated, copy)
    key = ARTIFACTS["basket_pairs"].keys(RUN_B)["pairs.parquet"]
    (copy / key).write_bytes(b"not the promoted bytes")
    with pytest.raises(BundleError, match=re.escape(key) + ".*sha256"):
        load_latest(LocalStorage(root=str(copy)))
    # A rollback with no manifest at hand (a restarted server) verifies against the copy that
    # promotion kept for the run; a corrupted run copy is refused the same way.
    bundle = load_run(LocalStorage(root=str(served.curated)), RUN_A)
    assert bundle.run_key == RUN_A and bundle.verified
    old_key = ARTIFACTS["user_recos"].keys(RUN_A)["user_recos.parquet"]
    (copy / old_key).write_bytes(b"tampered")
    with pytest.raises(BundleError, match=re.escape(old_key) + ".*sha256"):
        load_run(LocalStorage(root=str(copy)), RUN_A)
    with pytest.raises(BundleError, match="run-20200101-000000 was never promoted.*insightflow promote"):
        load_run(LocalStorage(root=str(served.curated)), "run-20200101-000000")


def test_loader_reads_s3_through_the_same_storage_code(served, s3_buckets):
    """The promoted objects copied as they are to an S3 bucket (moto): the same bundle."""
    s3, _, bucket = s3_buckets
    store = S3Storage(s3=s3, bucket=bucket, prefix="insightflow")
    manifest = json.loads((served.curated / "recsys/latest/index.json").read_text())
    for key in ["recsys/latest/index.json", *(o["source"] for o in manifest["objects"])]:
        store.write_bytes(key, (served.curated / key).read_bytes())
    bundle, _ = load_latest(store)
    local, _ = load_latest(LocalStorage(root=str(served.curated)))
    assert bundle.run_key == RUN_B and bundle.verified and dict(bundle.counts) == dict(local.counts)
    user = int(local.users.user_ids[0])
    assert bundle.user_items(user, 10) == local.user_items(user, 10)


def test_admin_key_never_logged_or_answered(served):
    admin(served, key="wrong-guess")
    r = admin(served, {})
    assert ADMIN_KEY not in r.text and ADMIN_KEY not in served.client.get("/metrics").text
    assert ADMIN_KEY not in served.log.read_text()
