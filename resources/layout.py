"""The storage layout: the one module that spells storage paths.

Every key is relative to a root that is either ``s3://<bucket>[/<prefix>]`` or a local
directory; the relative keys are identical in both. This is the seed's tree, plus the
per-run input snapshot and holdout that make a run reproducible.

Run keys (``run-YYYYMMDD-HHMMSS[-tag]``) are parsed here too, because the key names the run's
folders: the ``TS`` of every ``run-TS`` / ``als-TS`` folder below is the key without ``run-``
(``YYYYMMDD-HHMMSS[-tag]``), so two partitions never share a folder and an untagged key keeps
the seed's folder names.
"""

from __future__ import annotations

import re
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


_AFTER_MICE = "after-MICE/run-{ts}"
_RAW = "recsys/raw/run-{ts}"
_EVAL_CHARTS = "recsys/eval_charts"

ARTIFACTS: dict[str, Artifact] = {
    # ingest: the run's input snapshot
    "raw_orders": Artifact(_RAW, ("orders.parquet",)),
    "raw_order_products": Artifact(_RAW, ("order_products.parquet",)),
    "products": Artifact(_RAW, ("products.parquet",)),
    # imputation
    "orders_imputed": Artifact(_AFTER_MICE, ("orders_imputed.parquet",)),
    "mice_checks": Artifact(_AFTER_MICE, ("mice_checks.json", "mice_day30.png")),
    # recommendation core
    "ratings": Artifact("recsys/ratings/run-{ts}", ("ratings.parquet",)),
    "holdout": Artifact("recsys/holdout/run-{ts}", ("holdout.parquet",)),
    "als_model": Artifact("recsys/models/als-{ts}", ("factors.npz", "params.json")),
    "als_eval": Artifact("recsys/eval/als-{ts}", ("metrics.json", "coverage.json")),
    "als_postrank": Artifact("recsys/eval/als-postrank-{ts}", ("metrics.json", "coverage.json")),
    "model_selection": Artifact("recsys/eval/selection-{ts}", ("selection.json",)),
    "nbr_model": Artifact("recsys/models/nbr-{ts}", ("recs.parquet", "params.json")),
    "user_recos": Artifact("recsys/recos/run-{ts}", ("user_recos.parquet",)),
    # publishing
    "eval_charts": Artifact(
        f"{_EVAL_CHARTS}/publish-{{ts}}",
        tuple(
            f"{m}_trend.png"
            for m in ("map", "ndcg", "precision", "recall", "coverage_item", "coverage_user")
        )
        + ("metrics_bar.png", "index.json"),
        latest=f"{_EVAL_CHARTS}/latest",
    ),
    # segmentation
    "user_seg": Artifact("recsys/user_seg/run-{ts}", ("user_seg.parquet",), latest="recsys/user_seg/latest"),
    "segment_popularity": Artifact(
        "recsys/segment_popularity/run-{ts}",
        ("segment_popularity.parquet",),
        latest="recsys/segment_popularity/latest",
    ),
    "rfm_charts": Artifact(
        f"{_EVAL_CHARTS}/rfm_analysis-{{ts}}",
        ("cluster_profiles.png", "pca_segments.png", "seg_pop_lift.png", "index.json"),
    ),
    "exports": Artifact(
        "recsys/exports/run-{ts}/data",
        (
            "overview.csv",
            "centroids.parquet",
            "segment_topn.parquet",
            "users_high_value.parquet",
            "users_random.parquet",
            "user_recos.csv",
            "user_recos.parquet",
            "bedrock_inputs.jsonl",
        ),
    ),
    "user_seg_diagnostics": Artifact(
        "recsys/debug/user-seg-{ts}/diag", ("driver_log.txt", "metrics.json", "orders_schema.json")
    ),
}

# The manifest of the run currently promoted to latest/ (written last, read first).
LATEST_MANIFEST = "recsys/latest/index.json"
# Beside it, outside every artifact's keys: the lock that serializes promotions, and the
# journal of the promotion in progress (present only until its manifest is written).
PROMOTION_LOCK = "recsys/latest/promotion.lock"
PROMOTION_JOURNAL = "recsys/latest/promotion-journal.json"


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
