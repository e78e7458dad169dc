"""Shared fixtures: generated data, a Dagster instance, local and S3 (moto server) stores."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# implicit wants single-threaded BLAS; set before numpy loads anywhere in the test session.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from dagster import DagsterInstance  # noqa: E402

from insightflow_assets.data.generate import generate_instacart, write_instacart  # noqa: E402
from insightflow_assets.definitions import make_definitions  # noqa: E402
from resources import Compute, CuratedIOManager, LocalStorage, RfmParams, S3Storage  # noqa: E402

SMALL_USERS = 300


@pytest.fixture(scope="session")
def small_tables():
    """A small generated Instacart dataset (tables in memory), with values missing at random."""
    return generate_instacart(SMALL_USERS, seed=7, missing_rate=0.08, test_share=0.05)


@pytest.fixture(scope="session")
def small_clean_dir(tmp_path_factory, small_tables) -> Path:
    out = tmp_path_factory.mktemp("clean")
    write_instacart(small_tables, out, fmt="csv")
    return out


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as inst:
        yield inst


def defs_for(source, curated, compute: Compute | None = None, **rfm):
    """The code location wired to the given stores (what build_resources does from env vars)."""
    return make_definitions(
        {"source": source, "curated": curated, "io_manager": CuratedIOManager(storage=curated), "rfm": RfmParams(**rfm),
         "compute": compute or Compute()}  # fmt: skip
    )


def local_defs(source_dir: Path, curated_dir: Path, **rfm):
    return defs_for(LocalStorage(root=str(source_dir)), LocalStorage(root=str(curated_dir)), **rfm)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3-protocol server over HTTP on 127.0.0.1 (moto's ThreadedMotoServer)."""
    from moto.server import ThreadedMotoServer

    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ[k] = v
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_buckets(moto_endpoint, request):
    """Fresh clean and curated buckets for one test; returns (S3Resource, clean, curated)."""
    import boto3
    from dagster_aws.s3 import S3Resource

    suffix = str(abs(hash(request.node.nodeid)) % 10**8)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    clean, curated = f"clean-{suffix}", f"curated-{suffix}"
    for b in (clean, curated):
        client.create_bucket(Bucket=b)
    return S3Resource(endpoint_url=moto_endpoint, region_name="us-east-1"), clean, curated


def s3_defs(s3, clean_bucket: str, curated_bucket: str, prefix: str = "insightflow", **rfm):
    return defs_for(
        S3Storage(s3=s3, bucket=clean_bucket, prefix="instacart"), S3Storage(s3=s3, bucket=curated_bucket, prefix=prefix), **rfm
    )


SMALL_RUN = "run-20260401-000000"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, small_clean_dir):
    """The whole graph but ``latest_manifest``, run once on the small fixture, kept with its
    instance: what the metadata and blocking-check tests read. Nothing is promoted yet, so a
    test can show that a run is (or is not) promoted. A test that alters a stored file must
    put it back (test_blocking_checks restores every file after each test)."""
    from types import SimpleNamespace

    from insightflow_assets.runner import run_graph

    curated = tmp_path_factory.mktemp("small_run_curated")
    defs = local_defs(small_clean_dir, curated)
    assets = [k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()]
    with DagsterInstance.ephemeral() as inst:
        outcome = run_graph(inst, run_key=SMALL_RUN, defs=defs, selection=[a for a in assets if a != "latest_manifest"])
        assert outcome.ok, outcome.errors
        yield SimpleNamespace(instance=inst, defs=defs, curated=curated, run_key=SMALL_RUN, outcome=outcome)
