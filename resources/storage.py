"""Object storage behind one small interface: a local directory or an S3 prefix.

Keys are relative, ``/``-separated and the same on both backends (the layout module builds
them). Writes are all-or-nothing per object: local files go to a temporary name and are
renamed into place; an S3 ``put_object`` is atomic by nature.
"""


import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dagster import ConfigurableResource, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str  # ETag on S3, mtime_ns on disk: enough to tell a changed file


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(ConfigurableResource):
    """A place to read and write objects by relative key."""

    def uri(self, key: str = "") -> str:
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects under ``prefix`` (recursively), sorted by key."""
        raise NotImplementedError

    def copy(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file holding the object, for readers that want a path (polars, pyarrow)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def stat(self, key: str) -> ObjectInfo | None:
        for info in self.list(key):
            if info.key == key:
                return info
        return None


class LocalStorage(Storage):
    """Objects as files under a local directory (the embedded default)."""

    root: str = "data/curated"

    def _path(self, key: str) -> Path:
        return Path(self.root) / _check_key(key)

    def uri(self, key: str = "") -> str:
        root = Path(self.root).resolve()
        return str(root / key) if key else str(root)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        return path.read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        root = Path(self.root)
        base = root / prefix if prefix else root
        if base.is_file():
            candidates = [base]
        elif base.is_dir():
            candidates = [p for p in base.rglob("*") if p.is_file()]
        else:
            # a prefix that is not a folder: match by name prefix in its parent
            parent = base.parent
            candidates = [p for p in parent.rglob("*") if p.is_file()] if parent.is_dir() else []
        out = []
        for p in candidates:
            key = p.relative_to(root).as_posix()
            if not key.startswith(prefix) or p.name.startswith(".") and p.name.endswith(".tmp"):
                continue
            st = p.stat()
            out.append(ObjectInfo(key, st.st_size, str(st.st_mtime_ns)))
        return sorted(out, key=lambda o: o.key)

    def copy(self, src: str, dst: str) -> None:
        # Through a temporary name so a reader never sees half a file at dst.
        dst_path = self._path(dst)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst_path.name}.", suffix=".tmp", dir=dst_path.parent)
        os.close(fd)
        try:
            shutil.copyfile(self._path(src), tmp)
            os.replace(tmp, dst_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)} does not exist")
        yield path


class S3Storage(Storage):
    """Objects in an S3 bucket under an optional key prefix, through dagster-aws `S3Resource`.

    The same code talks to AWS S3, MinIO or a moto server: only `S3Resource`'s configuration
    (``endpoint_url``, region, credentials) differs.
    """

    s3: ResourceDependency[S3Resource]
    bucket: str
    prefix: str = ""

    _client = PrivateAttr(default=None)

    def _c(self):
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    def _key(self, key: str) -> str:
        _check_key(key)
        p = self.prefix.strip("/")
        return f"{p}/{key}" if p else key

    def _rel(self, full: str) -> str:
        p = self.prefix.strip("/")
        return full[len(p) + 1 :] if p else full

    def uri(self, key: str = "") -> str:
        p = self.prefix.strip("/")
        base = f"s3://{self.bucket}" + (f"/{p}" if p else "")
        return f"{base}/{key}" if key else base

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._c().get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self._c().exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self._c().put_object(
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ContentMD5=_content_md5(data),  # the server rejects a body damaged in transit
        )

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._c().head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:  # botocore ClientError 404
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(key, int(head["ContentLength"]), head["ETag"].strip('"'))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full_prefix = self._key(prefix) if prefix else (self.prefix.strip("/") + "/" if self.prefix.strip("/") else "")
        out = []
        paginator = self._c().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for obj in page.get("Contents", []):
                out.append(ObjectInfo(self._rel(obj["Key"]), int(obj["Size"]), obj["ETag"].strip('"')))
        return sorted(out, key=lambda o: o.key)

    def copy(self, src: str, dst: str) -> None:
        # Server-side copy: the bytes never leave S3.
        self._c().copy_object(
            Bucket=self.bucket,
            Key=self._key(dst),
            CopySource={"Bucket": self.bucket, "Key": self._key(src)},
        )

    def delete(self, key: str) -> None:
        self._c().delete_object(Bucket=self.bucket, Key=self._key(key))

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        name = key.rsplit("/", 1)[-1]
        with tempfile.TemporaryDirectory(prefix="insightflow-") as tmp:
            path = Path(tmp) / name
            try:
                self._c().download_file(self.bucket, self._key(key), str(path))
            except Exception as exc:
                if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
                raise
            yield path


def _content_md5(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()
