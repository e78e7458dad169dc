"""The serving bundle: everything the API answers from, read and verified from storage (pure).

`load_latest` reads ``recsys/latest/index.json`` first, then every object it lists from its
immutable run copy (``source``; the ``latest/`` key when the run copy is gone), checks each
object's SHA-256 against the manifest, and builds one immutable `Bundle`. Reading the run
copies rather than the ``latest/`` keys means a promotion copying over ``latest/`` meanwhile
cannot hand us a mix of two runs. `load_run` loads a given run (a rollback) the same way,
against the manifest promotion kept for that run (``recsys/promoted/run-TS/index.json``).

Any problem (missing object, checksum, unreadable file) is one `BundleError` line naming the
object; nothing is half-built, so the caller keeps serving what it had.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import polars as pl

from insightflow_assets.basket import profiles as prof
from insightflow_assets.basket.pairs import ANY
from insightflow_assets.basket.recommender import BasketModel
from insightflow_assets.evaluation.offline import exported_method
from insightflow_assets.frames import customer_codes
from insightflow_assets.lightfm.embeddings import LightfmEmbeddings
from insightflow_assets.report import one_line
from resources.layout import ARTIFACTS, LATEST_MANIFEST, parse_run_key, promoted_manifest_key
from resources.storage import Storage

# What the API reads: artifact → files (the rest of latest/, charts and segments, it ignores).
NEEDED = {
    "user_recos": ("user_recos.parquet",),
    "model_selection": ("selection.json",),
    "basket_pairs": ("pairs.parquet", "items.parquet", "profiles.json"),
    "lightfm_model": ("item_ids.npy", "item_vectors.npy", "item_biases.npy", "user_ids.npy", "user_vectors.npy",
                      "user_biases.npy", "params.json"),
    "products": ("products.parquet",),
}  # fmt: skip


class BundleError(RuntimeError):
    """A bundle that cannot be loaded: one line naming the object and what is wrong."""


@dataclass(frozen=True)
class UserLists:
    """Every user's stored list as a CSR: user ``user_ids[u]`` owns rows ``indptr[u]:indptr[u+1]``."""

    user_ids: np.ndarray  # sorted
    indptr: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    source_codes: np.ndarray
    source_names: tuple[str, ...]
    # the retailer's customer id → user id, where the ingest numbered them (else the ids are the codes)
    customers: Mapping[str, int] = field(default_factory=dict)

    def user_of(self, customer_code: str) -> int | None:
        """The user id of a customer as the retailer names them, None when unknown."""
        return id_of_code(self.customers, customer_code)

    def of(self, user_id: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        u = int(np.searchsorted(self.user_ids, user_id))
        if u >= self.user_ids.size or self.user_ids[u] != user_id:
            return None
        lo, hi = self.indptr[u], self.indptr[u + 1]
        return self.items[lo:hi], self.scores[lo:hi], [self.source_names[c] for c in self.source_codes[lo:hi]]


@dataclass(frozen=True)
class Bundle:
    run_key: str
    finished_at_utc: str | None
    promoted_at_utc: str | None
    exported_method: dict
    profile: str
    verified: bool  # every object's sha256 matched a manifest
    version: str | None  # the manifest's storage version (etag) it came from; None: a pinned run
    loaded_at_utc: str
    objects: tuple[dict, ...]  # key, size, sha256 of each object read
    users: UserLists
    popular: np.ndarray  # product ids, most baskets first (the fallback)
    popular_scores: np.ndarray
    basket: BasketModel
    products: Mapping[int, dict]  # product id → name, aisle, department
    product_codes: Mapping[str, int]  # the retailer's product code → id, where the ingest numbered them
    item_ids: np.ndarray  # LightFM's sorted product ids
    item_unit: np.ndarray  # their L2-normalised vectors (cosine = dot product)
    counts: Mapping[str, int] = field(default_factory=dict)

    def user_items(self, user_id: int, k: int) -> tuple[bool, list[dict]]:
        """(known user?, the first ``k`` of its stored list, topped up from popularity when ``k``
        is longer); an unknown user gets the popular items."""
        found = self.users.of(user_id)
        if found is None:
            return False, [{"product_id": p, "score": s, "source": "popular"}
                           for p, s in zip(self.popular[:k].tolist(), self.popular_scores[:k].tolist())]
        ids, scores, sources = found
        items = [{"product_id": p, "score": s, "source": src} for p, s, src in zip(ids[:k].tolist(), scores[:k].tolist(), sources[:k])]
        if len(items) < k:
            have = set(ids.tolist())
            items += [{"product_id": p, "score": 0.0, "source": "popular"} for p in self.popular.tolist() if p not in have][: k - len(items)]
        return True, items

    def similar(self, product_id: int, k: int) -> tuple[list[int], list[float]] | None:
        """The ``k`` products nearest by cosine of their LightFM vectors (itself excluded)."""
        i = int(np.searchsorted(self.item_ids, product_id))
        if i >= self.item_ids.size or self.item_ids[i] != product_id:
            return None
        cos = self.item_unit @ self.item_unit[i]
        cos[i] = -np.inf
        k = min(k, cos.size - 1)
        top = np.argpartition(-cos, k - 1)[:k] if k > 0 else np.empty(0, np.int64)
        top = top[np.lexsort((self.item_ids[top], -cos[top]))]  # ties by product id
        return self.item_ids[top].tolist(), cos[top].tolist()

    def code_of(self, product_id: int) -> str:
        """The retailer's code of a product: the snapshot's ``product_code`` where it kept one,
        else the id itself (ids kept as given), as `id_of_code` reads it back."""
        row = self.products.get(int(product_id))
        code = row.get("product_code") if row is not None else None
        return str(code) if code is not None else str(int(product_id))

    def enrich(self, product_ids) -> tuple[list[dict], list[int]]:
        found = [{"product_id": int(p), **self.products[int(p)]} for p in product_ids if int(p) in self.products]
        return found, [int(p) for p in product_ids if int(p) not in self.products]


# --- reading ------------------------------------------------------------------------------


def read_latest_manifest(storage: Storage) -> tuple[dict, str] | None:
    """The manifest and its storage version (None: nothing promoted yet)."""
    found = storage.read_versioned(LATEST_MANIFEST)
    if found is None:
        return None
    try:
        return json.loads(found[0]), found[1]
    except ValueError:
        raise BundleError(f"{storage.uri(LATEST_MANIFEST)}: not valid JSON") from None


def load_latest(storage: Storage, *, profile: str | None = None) -> tuple[Bundle, dict]:
    """The bundle of the run ``latest/`` names, and the manifest it was verified against."""
    found = read_latest_manifest(storage)
    if found is None:
        raise BundleError(f"{storage.uri(LATEST_MANIFEST)}: missing (no run promoted yet: run the graph first)")
    manifest, version = found
    return build(storage, manifest, profile=profile, version=version, verified=True), manifest


def load_run(storage: Storage, run_key: str, *, manifest: dict | None = None, profile: str | None = None) -> Bundle:
    """The bundle of a given run (a rollback), verified against that run's manifest: the one
    given when it is that run's, else the copy promotion kept (`promoted_manifest_key`). A run
    never promoted has none and is refused: `insightflow promote` checks and publishes it."""
    parse_run_key(run_key)
    if manifest is None or manifest.get("run_key") != run_key:
        key = promoted_manifest_key(run_key)
        try:
            manifest = json.loads(storage.read_bytes(key))
        except FileNotFoundError:
            raise BundleError(
                f"run {run_key} was never promoted ({storage.uri(key)} missing): "
                f"`insightflow promote {run_key}` checks and publishes it"
            ) from None
        except ValueError:
            raise BundleError(f"{storage.uri(key)}: not valid JSON") from None
        if manifest.get("run_key") != run_key:
            raise BundleError(f"{storage.uri(key)}: names run {manifest.get('run_key')!r}, not {run_key}")
    return build(storage, manifest, profile=profile, version=None, verified=True)


def build(storage: Storage, manifest: dict, *, profile: str | None, version: str | None, verified: bool) -> Bundle:
    files, read = _read_objects(storage, manifest, verified)
    run_key = manifest["run_key"]
    try:
        return _assemble(files, manifest, profile=profile, version=version, verified=verified, read=read)
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file that parses but does not fit is one line too
        raise BundleError(f"run {run_key}: cannot build the bundle ({one_line(exc)})") from exc


def _read_objects(storage: Storage, manifest: dict, verified: bool) -> tuple[dict[str, dict[str, bytes]], list[dict]]:
    """artifact → file → bytes of every object the API needs, each checked against its sha256."""
    wanted = {(a, f) for a, names in NEEDED.items() for f in names}
    files: dict[str, dict[str, bytes]] = {}
    read = []
    for obj in manifest.get("objects", []):
        name = obj["key"].rsplit("/", 1)[-1]
        if (obj.get("artifact"), name) not in wanted:
            continue
        key, data = _read_one(storage, obj)
        digest = hashlib.sha256(data).hexdigest()
        if verified and digest != obj["sha256"]:
            raise BundleError(f"{storage.uri(key)}: sha256 {digest[:12]}… differs from the manifest's {obj['sha256'][:12]}…")
        files.setdefault(obj["artifact"], {})[name] = data
        read.append({"key": key, "size": len(data), "sha256": digest})
    missing = sorted(f"{a}/{f}" for a, f in wanted if f not in files.get(a, {}))
    if missing:
        raise BundleError(f"run {manifest['run_key']}: {', '.join(missing)} not listed in its manifest (promoted by an older version?)")
    return files, read


def _read_one(storage: Storage, obj: dict) -> tuple[str, bytes]:
    """The run copy, else the ``latest/`` copy (same checksum either way)."""
    for key in dict.fromkeys((obj["source"], obj["key"])):
        try:
            return key, storage.read_bytes(key)
        except FileNotFoundError:
            continue
    raise BundleError(f"{storage.uri(obj['source'])}: missing")


# --- building -----------------------------------------------------------------------------


def _assemble(files: dict, manifest: dict, *, profile, version, verified, read) -> Bundle:
    products = _frame(files, "products", "products.parquet")
    emb = LightfmEmbeddings.from_files(files["lightfm_model"])
    raw_profiles = _json(files, "basket_pairs", "profiles.json")
    profiles = prof.validate(raw_profiles)
    profile = profile or prof.active(raw_profiles)  # the run's own choice unless told
    if profile not in profiles:
        raise BundleError(f"basket profile {profile!r} is not in this run's profiles.json ({', '.join(profiles)})")
    basket = BasketModel.build(
        _frame(files, "basket_pairs", "pairs.parquet"), _frame(files, "basket_pairs", "items.parquet"), products,
        item_ids=emb.item_ids, item_vectors=emb.item_vectors, profiles=raw_profiles,
    )
    users = user_lists(_frame(files, "user_recos", "user_recos.parquet"))
    popular = basket.popular[ANY]
    unit = emb.item_vectors / np.maximum(np.linalg.norm(emb.item_vectors, axis=1, keepdims=True), 1e-12)
    catalog = product_catalog(products)
    return Bundle(
        run_key=manifest["run_key"], finished_at_utc=manifest.get("finished_at_utc"),
        promoted_at_utc=manifest.get("promoted_at_utc"), exported_method=exported_method(_json(files, "model_selection", "selection.json")),
        profile=profile, verified=verified, version=version, loaded_at_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        objects=tuple(read), users=users, popular=basket.ids[popular], popular_scores=basket.popularity[ANY][popular],
        basket=basket, products=catalog, product_codes=code_map(products, "product_code", "product_id"), item_ids=emb.item_ids, item_unit=_frozen(np.ascontiguousarray(unit, np.float32)),
        counts=MappingProxyType({
            "users": int(users.user_ids.size), "products": len(catalog), "basket_items": int(basket.ids.size),
            "embedded_items": int(emb.item_ids.size), "segments": len([s for s in basket.popularity if s != ANY]),
        }),
    )  # fmt: skip


def user_lists(recos: pl.DataFrame) -> UserLists:
    """`user_recos` (user_id, rank, product_id, score, source, and customer_code where the
    ingest numbered the customers) as a CSR, best first."""
    recos = recos.sort("user_id", "rank")
    users, counts = np.unique(recos["user_id"].to_numpy(), return_counts=True)
    names = tuple(sorted(recos["source"].unique().to_list()))
    codes = recos["source"].replace_strict({n: i for i, n in enumerate(names)}, return_dtype=pl.Int8).to_numpy()
    return UserLists(
        user_ids=_frozen(users.astype(np.int64)), indptr=_frozen(np.concatenate(([0], np.cumsum(counts))).astype(np.int64)),
        items=_frozen(recos["product_id"].to_numpy().astype(np.int64)), scores=_frozen(recos["score"].to_numpy().astype(np.float32)),
        source_codes=_frozen(np.array(codes)), source_names=names, customers=_customer_map(recos),
    )


def _customer_map(recos: pl.DataFrame) -> Mapping[str, int]:
    codes = customer_codes(recos)
    return code_map(codes, "customer_code", "user_id") if codes is not None else MappingProxyType({})


def code_map(frame: pl.DataFrame, code: str, key: str) -> Mapping[str, int]:
    """The retailer's ``code`` → internal ``key`` of a table (empty when it has no such column)."""
    if code not in frame.columns:
        return MappingProxyType({})
    return MappingProxyType(dict(zip(frame[code].cast(pl.String).to_list(), frame[key].to_list())))


def id_of_code(codes: Mapping[str, int], code: str) -> int | None:
    """The internal id of a retailer's code: from ``codes`` where the ingest numbered the ids,
    else the code itself when it is an id (ids kept as given); None when unknown."""
    if codes:
        return codes.get(code)
    text = code.strip()
    return int(text) if text.isascii() and text.isdigit() and int(text) < 2**31 else None


def _frozen(a: np.ndarray) -> np.ndarray:
    """Read-only: a bundle is shared by every request thread and never changes."""
    a.flags.writeable = False
    return a


def product_catalog(products: pl.DataFrame) -> Mapping[int, dict]:
    """product id → the retailer's code (transactions and events forms), name, aisle and
    department (names when the snapshot has them)."""
    cols = [c for c in ("product_code", "product_name", "aisle_id", "aisle", "department_id", "department")
            if c in products.columns]
    rows = products.select("product_id", *cols).iter_rows(named=True)
    return MappingProxyType({int(r.pop("product_id")): MappingProxyType(r) for r in rows})


def _frame(files: dict, artifact: str, name: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(files[artifact][name]))
    except Exception as exc:  # noqa: BLE001
        raise BundleError(f"{artifact}/{name}: not a readable parquet file ({one_line(exc)})") from None


def _json(files: dict, artifact: str, name: str) -> Any:
    try:
        return json.loads(files[artifact][name])
    except ValueError:
        raise BundleError(f"{artifact}/{name}: not valid JSON") from None


