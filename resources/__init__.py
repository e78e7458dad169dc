"""Dagster resources and IO managers of InsightFlow, chosen by environment variables.

| variable | meaning | default |
|---|---|---|
| ``INSIGHTFLOW_STORAGE`` | ``local`` or ``s3`` (both the clean source and the curated store) | ``local`` |
| ``INSIGHTFLOW_SOURCE_DIR`` | local clean location (Instacart files) | ``data/clean`` |
| ``INSIGHTFLOW_CURATED_DIR`` | local curated root | ``data/curated`` |
| ``INSIGHTFLOW_SOURCE_BUCKET`` / ``INSIGHTFLOW_SOURCE_PREFIX`` | S3 clean location | — / ``""`` |
| ``INSIGHTFLOW_CURATED_BUCKET`` / ``INSIGHTFLOW_CURATED_PREFIX`` | S3 curated root | — / ``""`` |
| ``INSIGHTFLOW_S3_ENDPOINT_URL`` | MinIO, moto or another S3-compatible endpoint | AWS |
| ``AWS_REGION`` | region of the buckets | boto3's default |
| ``INSIGHTFLOW_COMPUTE`` | ``local`` or ``spark``: the engine of the heavy per-line stages (`Compute`) | ``local`` |

Credentials come from the usual AWS chain (env vars, profile, instance role).
"""

from __future__ import annotations

import os

from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from resources.compute import Compute, check_engine
from resources.io_manager import ArtifactFolder, CuratedIOManager
from resources.params import RfmParams
from resources.storage import LocalStorage, ObjectInfo, S3Storage, Storage

__all__ = [
    "ArtifactFolder",
    "Compute",
    "CuratedIOManager",
    "LocalStorage",
    "ObjectInfo",
    "RfmParams",
    "S3Storage",
    "Storage",
    "build_resources",
    "compute_resource",
    "storages",
    "storage_kind",
]


def storage_kind() -> str:
    kind = os.getenv("INSIGHTFLOW_STORAGE", "local").strip().lower()
    if kind not in ("local", "s3"):
        raise ValueError(f"INSIGHTFLOW_STORAGE must be 'local' or 's3', not {kind!r}")
    return kind


def _env(name: str, default: str | None, resolve: bool):
    """`EnvVar` when set (resolved at run time, shown as such in the UI), else the default.

    ``resolve=True`` reads the value now, for code outside a Dagster run (the CLI).
    """
    if os.getenv(name):
        return os.environ[name] if resolve else EnvVar(name)
    if default is None:
        raise ValueError(f"{name} must be set when INSIGHTFLOW_STORAGE=s3")
    return default


def _s3_resource(resolve: bool) -> S3Resource:
    kwargs = {}
    if os.getenv("INSIGHTFLOW_S3_ENDPOINT_URL"):
        kwargs["endpoint_url"] = _env("INSIGHTFLOW_S3_ENDPOINT_URL", None, resolve)
    if os.getenv("AWS_REGION"):
        kwargs["region_name"] = _env("AWS_REGION", None, resolve)
    return S3Resource(**kwargs)


def storages(resolve: bool = False) -> tuple[Storage, Storage]:
    """``(source, curated)`` for the configured environment."""
    if storage_kind() == "s3":
        s3 = _s3_resource(resolve)
        source: Storage = S3Storage(
            s3=s3,
            bucket=_env("INSIGHTFLOW_SOURCE_BUCKET", None, resolve),
            prefix=_env("INSIGHTFLOW_SOURCE_PREFIX", "", resolve),
        )
        curated: Storage = S3Storage(
            s3=s3,
            bucket=_env("INSIGHTFLOW_CURATED_BUCKET", None, resolve),
            prefix=_env("INSIGHTFLOW_CURATED_PREFIX", "", resolve),
        )
    else:
        source = LocalStorage(root=_env("INSIGHTFLOW_SOURCE_DIR", "data/clean", resolve))
        curated = LocalStorage(root=_env("INSIGHTFLOW_CURATED_DIR", "data/curated", resolve))
    return source, curated


def compute_resource() -> Compute:
    """`Compute` with the engine of ``INSIGHTFLOW_COMPUTE`` (checked now, resolved at run time)."""
    check_engine(os.getenv("INSIGHTFLOW_COMPUTE") or "local", "INSIGHTFLOW_COMPUTE")
    return Compute(engine=_env("INSIGHTFLOW_COMPUTE", "local", resolve=False))


def build_resources() -> dict:
    """The resources of the code location for the configured environment."""
    source, curated = storages()
    return {
        "source": source,
        "curated": curated,
        "io_manager": CuratedIOManager(storage=curated),
        "rfm": RfmParams(),
        "compute": compute_resource(),
    }
