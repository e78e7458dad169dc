"""Object storage behind one small interface: a local directory or an S3 prefix.

Keys are relative, ``/``-separated and the same on both backends (the layout module builds
them). Writes are all-or-nothing per object: local files go to a temporary name and are
renamed into place; an S3 ``put_object`` is atomic by nature. Local files get the mode any
other output of the process gets (0666 less the umask), not a temp file's 0600.

What the promotion to ``latest/`` needs besides (see ``publish/promotion.py``):
- `Storage.exclusive`: one holder at a time. On disk an OS lock (``flock``), released by the
  kernel when its holder dies; on S3 a lock object created with ``If-None-Match: *`` and
  renewed with ``If-Match`` before every step, so a holder that lost it finds out.
- `Storage.read_versioned` / `Storage.write_if`: compare-and-swap of one object (S3
  conditional writes; on disk a check under the lock above).
"""


import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from botocore.exceptions import BotoCoreError, ClientError
from dagster import ConfigurableResource, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str  # ETag on S3, mtime_ns on disk: enough to tell a changed file


class StorageError(RuntimeError):
    """A storage failure explained in one line."""


class RootNotFound(StorageError):
    """The bucket (or local root directory) does not exist."""


class WriteConflict(StorageError):
    """A conditional write lost: the object changed since it was read."""


class LockBusy(StorageError):
    """Another holder kept the lock for longer than we were willing to wait."""


class LockLost(StorageError):
    """Our lock expired and was taken over: stop before touching anything else."""


class Lease:
    """A held lock. `check` proves it is still ours (and renews it where it can expire)."""

    acquired_at: float = 0.0  # wall clock, for "older than the holder"

    def check(self) -> None:
        pass


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

    # --- what promotion needs (see the module docstring) ---------------------------------

    def require_root(self) -> None:
        """Raise `RootNotFound` unless the bucket / root directory exists."""
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """``(data, version)`` of an object, or None if there is none; the version feeds `write_if`."""
        raise NotImplementedError

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        """Write only if the object is still at ``version`` (None: only if absent), else `WriteConflict`."""
        raise NotImplementedError

    def exclusive(
        self, key: str, *, ttl_s: float = 60.0, wait_s: float = 120.0, on_busy: Callable[[str], None] | None = None
    ) -> "contextlib.AbstractContextManager[Lease]":
        """Hold the lock named ``key`` for the ``with`` block (`LockBusy` after ``wait_s``).

        ``ttl_s`` bounds how long a dead holder can keep it where the backend cannot tell
        (S3); ``on_busy`` is called once with the holder's description when we have to wait.
        """
        raise NotImplementedError

    def clean_temp_files(self, folder: str, older_than: float) -> "list[str]":
        """Remove temp files a killed writer left in ``folder``; return their names."""
        return []


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
        fd, tmp = _new_temp(path)
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
        src_path, dst_path = self._path(src), self._path(dst)
        with open(src_path, "rb") as source:  # before the temp file: a missing source leaves nothing
            fd, tmp = _new_temp(dst_path)
            try:
                with os.fdopen(fd, "wb") as target:
                    shutil.copyfileobj(source, target)
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

    def require_root(self) -> None:
        if not Path(self.root).is_dir():
            raise RootNotFound(f"directory {self.uri()} does not exist")

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(key), "rb") as fh:
                # fstat of the open file: the version of exactly the bytes read
                return fh.read(), _file_version(os.fstat(fh.fileno()))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        # Check-then-write is not atomic on its own: on disk the callers hold `exclusive`.
        try:
            current = _file_version(self._path(key).stat())
        except FileNotFoundError:
            current = None
        if current != version:
            raise WriteConflict(f"{self.uri(key)} changed since it was read")
        self.write_bytes(key, data)

    @contextlib.contextmanager
    def exclusive(self, key, *, ttl_s=60.0, wait_s=120.0, on_busy=None) -> Iterator[Lease]:
        # flock: the kernel drops it when the holder dies (kill -9 included), so no expiry.
        # The lock file itself is never deleted: unlinking a flock file lets two holders in.
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock_within(fd, wait_s, lambda: on_busy and on_busy(_read_fd(fd)), self.uri(key))
            lease = Lease()
            lease.acquired_at = time.time()
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder()).encode(), 0)  # who holds it, for the busy message
            try:
                yield lease
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def clean_temp_files(self, folder: str, older_than: float) -> "list[str]":
        base = self._path(folder)
        removed = []
        for p in base.glob(".*.tmp") if base.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < older_than:
                    p.unlink()
                    removed.append(f"{folder}/{p.name}")
        return sorted(removed)


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
        except ClientError as exc:  # only a ClientError carries a response: not a dropped connection
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
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
            except ClientError as exc:
                if _code(exc) in ("404", "NoSuchKey"):
                    raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
                raise
            yield path

    @contextlib.contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        """botocore errors of the promotion's calls as one-line `StorageError`s."""
        try:
            yield
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                raise RootNotFound(f"bucket {self.bucket!r} does not exist ({self.uri()})") from exc
            raise StorageError(f"{self.uri(key)}: {_code(exc)}: {_first_line(exc)}") from exc
        except BotoCoreError as exc:  # no connection, timeouts, credentials
            raise StorageError(f"{self.uri(key)}: {type(exc).__name__}: {_first_line(exc)}") from exc

    def require_root(self) -> None:
        try:
            self._c().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise RootNotFound(f"bucket {self.bucket!r} does not exist ({self.uri()})") from None
            raise StorageError(f"{self.uri()}: {_code(exc)}: {_first_line(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{self.uri()}: {type(exc).__name__}: {_first_line(exc)}") from exc

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        with self._errors(key):
            try:
                obj = self._c().get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            return obj["Body"].read(), obj["ETag"].strip('"')

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        self._put_if(key, data, version)

    def _put_if(self, key: str, data: bytes, version: str | None) -> str:
        """Conditional put; the new ETag. S3 decides atomically, so two writers cannot both win."""
        cond = {"IfMatch": f'"{version}"'} if version is not None else {"IfNoneMatch": "*"}
        with self._errors(key):
            try:
                out = self._c().put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, ContentMD5=_content_md5(data), **cond
                )
            except ClientError as exc:
                # 412: not at that version; 409: a concurrent conditional write; 404: gone (If-Match)
                if _code(exc) in _CONFLICT_CODES:
                    raise WriteConflict(f"{self.uri(key)} changed since it was read") from None
                raise
        return out["ETag"].strip('"')

    def _delete_if(self, key: str, version: str) -> None:
        """Delete only our version of an object (a lock we held, a lock we saw expire)."""
        with self._errors(key):
            try:
                self._c().delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=f'"{version}"')
            except ClientError as exc:
                if _code(exc) not in _CONFLICT_CODES:
                    raise

    @contextlib.contextmanager
    def exclusive(self, key, *, ttl_s=60.0, wait_s=120.0, on_busy=None) -> Iterator[Lease]:
        lease = _S3Lease(self, key, ttl_s)
        lease.acquire(wait_s, on_busy)
        try:
            yield lease
        finally:
            lease.release()


_CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404")


class _S3Lease(Lease):
    """A lock object: created with If-None-Match, renewed and released with If-Match.

    S3 cannot tell that a holder died, so a lock expires: a waiter takes it over once it has
    seen the same lock version, unrenewed, for the holder's ``ttl_s`` on its *own* clock (no
    trust in clock agreement between hosts). The holder renews before every step (`check`),
    which fails with `LockLost` if the lock was taken over, so it stops before writing more.
    A lock left by this very process (a promotion whose release could not reach S3) is
    taken over at once.
    """

    def __init__(self, storage: "S3Storage", key: str, ttl_s: float):
        self.storage, self.key, self.ttl_s = storage, key, ttl_s
        self.token = uuid.uuid4().hex
        self.version: str | None = None

    def _body(self) -> bytes:
        return json.dumps({**_holder(), "lease": self.token, "ttl_s": self.ttl_s}).encode()

    def acquire(self, wait_s: float, on_busy) -> None:
        deadline = time.monotonic() + wait_s
        seen: tuple[str, float] | None = None  # (version of the holder's lock, first seen at)
        told = False
        while True:
            try:
                self.version = self.storage._put_if(self.key, self._body(), None)
                break
            except WriteConflict:
                pass
            held = self.storage.read_versioned(self.key)
            if held is None:
                continue  # released in between: try again now
            data, version = held
            holder = _parse_holder(data)
            if seen is None or seen[0] != version:
                seen = (version, time.monotonic())
            if _ours_but_dead(holder) or time.monotonic() - seen[1] >= float(holder.get("ttl_s", self.ttl_s)):
                self.storage._delete_if(self.key, version)  # only that version: never a fresh holder's
                continue
            if time.monotonic() >= deadline:
                raise LockBusy(f"{self.storage.uri(self.key)} is held by {_describe(holder)}; retry later")
            if not told and on_busy:
                on_busy(_describe(holder))
                told = True
            time.sleep(min(0.2, max(self.ttl_s / 10, 0.01)))
        self.acquired_at = time.time()
        with _LIVE_LOCK:
            _LIVE_LEASES.add(self.token)

    def check(self) -> None:
        try:
            self.version = self.storage._put_if(self.key, self._body(), self.version)
        except WriteConflict:
            raise LockLost(f"{self.storage.uri(self.key)} expired and was taken over by another promotion") from None

    def release(self) -> None:
        with _LIVE_LOCK:
            _LIVE_LEASES.discard(self.token)
        # Best effort: if S3 is unreachable now, the lock expires (or this process takes it over).
        with contextlib.suppress(StorageError):
            self.storage._delete_if(self.key, self.version)


# This process, and the S3 leases it holds right now (to recognise its own dead locks).
_PROCESS = uuid.uuid4().hex
_LIVE_LEASES: set[str] = set()
_LIVE_LOCK = threading.Lock()


def _forked() -> None:
    """A forked process (a step's, from the forkserver) is another holder, with no lease yet."""
    global _PROCESS, _LIVE_LOCK
    _PROCESS = uuid.uuid4().hex
    _LIVE_LOCK = threading.Lock()  # another thread may have held it at the fork
    _LIVE_LEASES.clear()


os.register_at_fork(after_in_child=_forked)


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "process": _PROCESS, "since": time.time()}


def _parse_holder(data: bytes) -> dict:
    try:
        holder = json.loads(data)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _ours_but_dead(holder: dict) -> bool:
    with _LIVE_LOCK:
        return holder.get("process") == _PROCESS and holder.get("lease") not in _LIVE_LEASES


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {when}"


def _read_fd(fd: int) -> str:
    try:
        return _describe(_parse_holder(os.pread(fd, 4096, 0)))
    except OSError:
        return "another process"


def _flock_within(fd: int, wait_s: float, on_busy: Callable[[], None], where: str) -> None:
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            raise LockBusy(f"{where} is held by {_read_fd(fd)}; retry later")
        if not told:
            on_busy()
            told = True
        time.sleep(0.02)


def _new_temp(path: Path) -> tuple[int, str]:
    """A fresh temp file beside ``path``, created 0666 so the umask decides its mode.

    ``tempfile.mkstemp`` would make it 0600, and ``os.replace`` keeps that mode: the curated
    files would then be unreadable to a reader under another account.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _file_version(st: os.stat_result) -> str:
    # a rename-into-place changes the inode even within one mtime tick
    return f"{st.st_mtime_ns}-{st.st_ino}"


def _code(exc: "ClientError") -> str:
    return str((exc.response or {}).get("Error", {}).get("Code", ""))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _content_md5(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()
