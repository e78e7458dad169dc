"""The storage layout: how storage paths are built, and the registry of every asset's entry.

Every key is relative to a root that is either ``s3://<bucket>[/<prefix>]`` or a local
directory; the relative keys are identical in both. This is the seed's tree, plus the
per-run input snapshot and holdout that make a run reproducible. Each asset declares its own
entry (folder and files) where it is defined; this module owns what an entry means, the
``latest/`` manifest and lock, and the lookup (`artifact`).

Run keys (``run-YYYYMMDD-HHMMSS[-tag]``) are parsed here too, because the key names the run's
folders: the ``TS`` of every ``run-TS`` / ``als-TS`` folder below is the key without ``run-``
(``YYYYMMDD-HHMMSS[-tag]``), so two partitions never share a folder and an untagged key keeps
the seed's folder names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

# --- run keys --------------------------------------------------------------------------

# \Z, not $: `$` also matches before a final newline, and a key is a folder name.
RUN_KEY_RE = re.compile(r"^run-(?P<ts>\d{8}-\d{6})(?:-(?P<tag>[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?))?\Z")


class RunKeyError(ValueError):
    """A run key that does not follow ``run-YYYYMMDD-HHMMSS[-tag]``."""


def parse_run_key(key: str) -> tuple[str, str | None]:
    """Return ``(ts, tag)`` of a valid run key, or raise `RunKeyError` with a one-line reason."""
    m = RUN_KEY_RE.fullmatch(key or "") if isinstance(key, str) else None
    if not m:
        raise RunKeyError(
            f"invalid run key {key!r}: expected run-YYYYMMDD-HHMMSS (UTC) with an optional "
            "-tag of lowercase letters, digits and dashes"
        )
    ts = m.group("ts")
    try:
        datetime.strptime(ts, "%Y%m%d-%H%M%S")
    except ValueError:
        raise RunKeyError(f"invalid run key {key!r}: {ts} is not a real UTC date and time") from None
    return ts, m.group("tag")


def run_ts(key: str) -> str:
    """The timestamp of a run key (validated first): what orders runs in time."""
    return parse_run_key(key)[0]


def run_stamp(key: str) -> str:
    """The layout's ``TS`` for a run key (validated first): the key without ``run-``.

    The whole key, not only its timestamp, so that keys sharing a second get folders of
    their own; an untagged key gives exactly the timestamp, as before.
    """
    parse_run_key(key)
    return key.removeprefix("run-")


# --- the source ("clean") location ---------------------------------------------------

# Instacart's Kaggle file stems; each may be .csv, .csv.gz or .parquet.
SOURCE_TABLES = (
    "orders",
    "order_products__prior",
    "order_products__train",
    "products",
    "aisles",
    "departments",
)
OPTIONAL_SOURCE_TABLES = ("order_products__train",)
# The other input form: one table of order lines (see insightflow_assets.ingest.transactions).
TRANSACTIONS_TABLE = "transactions"
SOURCE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
SOURCE_SUCCESS_MARKER = "_SUCCESS"


# --- the curated location --------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """Where one asset's output lives: a folder per run and the file names inside it.

    A one-file artifact is stored and loaded as that file (parquet ↔ polars frame,
    json ↔ dict); a several-file artifact travels as an `ArtifactFolder`.
    """

    folder: str  # template with {ts}: the run key without "run-" (see run_stamp)
    files: tuple[str, ...]
    latest: str | None = None  # the stable ``latest/`` folder, for artifacts that have one

    def run_folder(self, run_key: str) -> str:
        return self.folder.format(ts=run_stamp(run_key))

    def keys(self, run_key: str) -> dict[str, str]:
        folder = self.run_folder(run_key)
        return {name: f"{folder}/{name}" for name in self.files}

    def latest_keys(self) -> dict[str, str]:
        if self.latest is None:
            raise KeyError("this artifact has no latest/ entry")
        return {name: f"{self.latest}/{name}" for name in self.files}


class Declared(Mapping[str, Artifact]):
    """The storage entries, by name: each is declared beside the asset that writes it
    (``run_asset(storage=...)`` in ``insightflow_assets.common``), so adding an asset touches
    its stage package only.

    Reading it imports every stage package first: a reader outside a code-location load (the
    CLI's promotion, the migration one-liner below) must never see a partial table, which
    would, say, promote nothing. Names iterate sorted, whatever order the stages load in.
    """

    def __init__(self) -> None:
        self.entries: dict[str, Artifact] = {}
        self.writers: dict[str, str] = {}  # entry -> the asset that writes it
        self.declared: set[str] = set()  # assets that declared their storage (maybe none)
        self._loaded = False

    def declare(self, asset: str, entries: Mapping[str, Artifact]) -> None:
        for name, spec in entries.items():
            if self.entries.get(name, spec) != spec:
                raise ValueError(f"storage entry {name!r} declared twice, differently (by {self.writers[name]!r} and {asset!r})")
            self.entries[name] = spec
            self.writers[name] = asset
        self.declared.add(asset)

    def _complete(self) -> dict[str, Artifact]:
        if not self._loaded:
            from insightflow_assets.stages import stage_modules  # lazy: the stages import this module

            stage_modules()
            self._loaded = True
        return self.entries

    def __getitem__(self, name: str) -> Artifact:
        return self._complete()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._complete()))

    def __len__(self) -> int:
        return len(self._complete())


ARTIFACTS = Declared()

# The manifest of the run currently promoted to latest/ (written last, read first).
LATEST_MANIFEST = "recsys/latest/index.json"
# Beside it, outside every artifact's keys: the lock that serializes promotions, and the
# journal of the promotion in progress (present only until its manifest is written).
PROMOTION_LOCK = "recsys/latest/promotion.lock"
PROMOTION_JOURNAL = "recsys/latest/promotion-journal.json"
# Every manifest ever promoted, kept per run (immutable, like the run copies it lists): what a
# rollback verifies a run's objects against after the latest manifest has moved on.
PROMOTED_MANIFEST = "recsys/promoted/run-{ts}/index.json"


# Spark's intermediate outputs (a task's counts, an R/F/M table) while its step reads them back:
# in the curated storage itself, so a cluster's driver and the step share it; deleted after.
SPARK_SCRATCH = "scratch/spark-{ts}-{token}"


def spark_scratch(run_key: str, token: str) -> str:
    """The folder of one Spark application's outputs for run ``run_key`` (``token``: unique)."""
    return SPARK_SCRATCH.format(ts=run_stamp(run_key), token=token)


def promoted_manifest_key(run_key: str) -> str:
    """Where the manifest of ``run_key`` is kept once the run has been promoted."""
    return PROMOTED_MANIFEST.format(ts=run_stamp(run_key))


def artifact(name: str) -> Artifact:
    try:
        return ARTIFACTS[name]
    except KeyError:
        raise KeyError(f"no storage layout entry for asset {name!r}") from None


def tagged_run_moves(keys: list[str]) -> list[tuple[str, str]]:
    """Renames that bring stored runs of tagged keys to today's layout: ``(old, new)`` top run
    folders, relative to the curated root.

    Before a run's folders carried its whole key they carried its timestamp only, so a tagged
    run sits in its untagged folders. Untagged keys need no rename and malformed keys are
    skipped. A key whose second another registered key shares is left out: its old folders
    may hold either run's files (re-run it instead).
    """
    valid = {}
    for key in keys:
        try:
            valid[key] = parse_run_key(key)
        except RunKeyError:
            continue
    seconds = [ts for ts, _ in valid.values()]
    tops = {spec.folder[: spec.folder.index("{ts}") + len("{ts}")] for spec in ARTIFACTS.values()}
    return sorted(
        (top.format(ts=ts), top.format(ts=run_stamp(key)))
        for key, (ts, tag) in valid.items()
        if tag is not None and seconds.count(ts) == 1
        for top in tops
    )
