"""The storage layout and both storage backends (local disk; S3 through a moto server)."""

from __future__ import annotations

import os

import polars as pl
import pytest

from resources import LocalStorage, S3Storage
from resources.io_manager import ArtifactFolder, decode_value, encode_value
from resources.layout import ARTIFACTS, RunKeyError, artifact, parse_run_key, run_ts


def test_run_keys():
    assert parse_run_key("run-20261122-013000") == ("20261122-013000", None)
    assert parse_run_key("run-20261122-013000-nightly-2") == ("20261122-013000", "nightly-2")
    for bad in ["run-20261122-013000-", "run-20261322-013000", "run-20261122-013000-UP", "run-20261122-013000-a/b", "x"]:
        with pytest.raises(RunKeyError):
            run_ts(bad)


def test_layout_is_the_seed_tree():
    # an untagged key: the seed's folder names exactly (a tagged one: see test_run_keys.py)
    run = "run-20261122-013000"
    keys = {name: sorted(spec.keys(run).values()) for name, spec in ARTIFACTS.items()}
    assert keys["orders_imputed"] == ["after-MICE/run-20261122-013000/orders_imputed.parquet"]
    assert keys["mice_checks"] == [
        "after-MICE/run-20261122-013000/mice_checks.json",
        "after-MICE/run-20261122-013000/mice_day30.png",
    ]
    assert keys["raw_orders"] == ["recsys/raw/run-20261122-013000/orders.parquet"]
    assert keys["als_model"] == [
        "recsys/models/als-20261122-013000/factors.npz",
        "recsys/models/als-20261122-013000/params.json",
    ]
    assert keys["als_postrank"][0] == "recsys/eval/als-postrank-20261122-013000/coverage.json"
    assert artifact("user_seg").latest_keys() == {"user_seg.parquet": "recsys/user_seg/latest/user_seg.parquet"}
    assert "recsys/exports/run-20261122-013000/data/bedrock_inputs.jsonl" in keys["exports"]
    # no two artifacts claim the same file
    flat = [k for ks in keys.values() for k in ks]
    assert len(flat) == len(set(flat))


def test_values_round_trip():
    df = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert decode_value("t.parquet", encode_value("t.parquet", df)).equals(df)
    assert decode_value("t.json", encode_value("t.json", {"k": [1, 2]})) == {"k": [1, 2]}
    folder = ArtifactFolder.of({"m.json": {"x": 1}, "p.png": b"\x89PNG", "t.parquet": df})
    assert folder.json("m.json") == {"x": 1}
    assert folder["p.png"] == b"\x89PNG"
    assert folder.frame("t.parquet").equals(df)
    with pytest.raises(TypeError):
        encode_value("t.parquet", {"not": "a frame"})


def test_json_files_hold_no_nan():
    """NaN and infinities are stored as null: a bare NaN token is not JSON (mice_checks.json
    of dates-only data had "rmse": NaN)."""
    import json

    import numpy as np

    value = {"rmse": float("nan"), "n": [1.0, float("inf"), np.float64("nan"), np.float32(0.5)], "a": np.array([np.nan, 2.0])}
    text = encode_value("m.json", value).decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "rmse": None, "n": [1.0, None, None, 0.5], "a": [None, 2.0]}
    lines = encode_value("b.jsonl", [{"x": float("nan")}]).decode()
    assert json.loads(lines) == {"x": None} and "NaN" not in lines


def _exercise(store):
    store.write_bytes("a/b/one.txt", b"1")
    store.write_bytes("a/b/two.txt", b"22")
    store.write_bytes("a/c/three.txt", b"333")
    assert store.read_bytes("a/b/two.txt") == b"22"
    assert [o.key for o in store.list("a/b")] == ["a/b/one.txt", "a/b/two.txt"]
    assert [o.size for o in store.list("a")] == [1, 2, 3]
    assert store.exists("a/c/three.txt") and not store.exists("a/c/none.txt")
    store.copy("a/b/two.txt", "latest/two.txt")
    assert store.read_bytes("latest/two.txt") == b"22"
    assert store.stat("latest/two.txt").size == 2
    before = store.stat("a/b/one.txt").version
    store.write_bytes("a/b/one.txt", b"changed")
    assert store.stat("a/b/one.txt").version != before
    store.delete("latest/two.txt")
    assert not store.exists("latest/two.txt")
    with store.local_path("a/c/three.txt") as p:
        assert p.read_bytes() == b"333"
    with pytest.raises(FileNotFoundError):
        store.read_bytes("a/zzz.txt")
    with pytest.raises(ValueError):
        store.write_bytes("../escape.txt", b"x")


def test_local_storage(tmp_path):
    _exercise(LocalStorage(root=str(tmp_path)))


def test_local_write_interrupted_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    store = LocalStorage(root=str(tmp_path))
    store.write_bytes("latest/index.json", b"old")

    def broken_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.write_bytes("latest/index.json", b"new and longer")
    monkeypatch.undo()
    assert store.read_bytes("latest/index.json") == b"old"
    assert [p.name for p in (tmp_path / "latest").iterdir()] == ["index.json"]


def test_s3_storage_over_http(s3_buckets):
    s3, _, curated = s3_buckets
    store = S3Storage(s3=s3, bucket=curated, prefix="some/prefix")
    _exercise(store)
    assert store.uri("a/b/one.txt") == f"s3://{curated}/some/prefix/a/b/one.txt"
    raw_keys = [o["Key"] for o in s3.get_client().list_objects_v2(Bucket=curated)["Contents"]]
    assert "some/prefix/a/b/one.txt" in raw_keys


RUN = "run-20260501-000000"


def _scanned(store) -> None:
    """`CuratedIOManager.scan_run`: the stored table, read only when collected, valid inside the
    ``with``; a folder asset (not one parquet file) is refused in one line."""
    from dagster import AssetKey

    from resources.io_manager import CuratedIOManager

    manager = CuratedIOManager(storage=store)
    ratings = pl.DataFrame({"user_id": [1, 1, 2], "product_id": [10, 11, 10], "rating": [1.0, 2.0, 3.0]})
    manager.store(AssetKey("ratings"), RUN, ratings)
    with manager.scan_run("ratings", RUN) as scan:
        assert isinstance(scan, pl.LazyFrame)
        assert scan.collect().equals(manager.load_run("ratings", RUN))
        assert scan.filter(pl.col("user_id") == 2).select("product_id").collect()["product_id"].to_list() == [10]
    with pytest.raises(TypeError, match="als_model is not stored as one parquet file"):
        with manager.scan_run("als_model", RUN):
            pass
    with pytest.raises(FileNotFoundError):
        with manager.scan_run("holdout", RUN):
            pass


def test_scan_run_local(tmp_path):
    _scanned(LocalStorage(root=str(tmp_path)))


def test_scan_run_s3_over_http(s3_buckets):
    s3, _, curated = s3_buckets
    _scanned(S3Storage(s3=s3, bucket=curated, prefix="scan"))
