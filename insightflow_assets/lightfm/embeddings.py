"""The stored form of a fitted LightFM model: embeddings, biases and id maps (no pickle).

This is the contract other stages read (the basket recommender takes ``item_vectors``); keep
it stable. Inside the ``lightfm_model`` asset's folder:

- ``item_ids.npy``     int32 (n_items,)      product id of row ``j`` of the item arrays
- ``item_vectors.npy`` float32 (n_items, d)  each product's representation: the sum of its
                                             feature embeddings (identity + aisle + department),
                                             as LightFM's ``get_item_representations`` gives
- ``item_biases.npy``  float32 (n_items,)    the matching summed feature biases, kept apart
- ``user_ids.npy``, ``user_vectors.npy``, ``user_biases.npy``: the same for customers
  (identity + segment)
- ``params.json``      the fit parameters, epochs run, best epoch, validation curve and the
                       feature maps (feature name → row of the feature embedding), so an
                       embedding can be traced back to what built it

A user's score for an item is ``user_vectors[u] @ item_vectors[i] + user_biases[u] +
item_biases[i]`` (LightFM's ``predict``). Every id array is sorted ascending.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resources.io_manager import encode_value

ARRAYS = ("item_ids", "item_vectors", "item_biases", "user_ids", "user_vectors", "user_biases")
PARAMS_FILE = "params.json"
FILES = tuple(f"{name}.npy" for name in ARRAYS) + (PARAMS_FILE,)

_DTYPES = {"item_ids": np.int32, "user_ids": np.int32}  # the rest float32


@dataclass
class LightfmEmbeddings:
    """A fitted LightFM model as plain arrays (see the module docstring for the layout)."""

    item_ids: np.ndarray
    item_vectors: np.ndarray
    item_biases: np.ndarray
    user_ids: np.ndarray
    user_vectors: np.ndarray
    user_biases: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ARRAYS:
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=_DTYPES.get(name, np.float32)))
        for side in ("item", "user"):
            ids, vectors, biases = (getattr(self, f"{side}_{part}") for part in ("ids", "vectors", "biases"))
            if vectors.ndim != 2 or ids.ndim != 1 or biases.shape != ids.shape or vectors.shape[0] != ids.size:
                raise ValueError(
                    f"{side}_vectors must be ({ids.size}, d) and {side}_biases ({ids.size},), "
                    f"got {vectors.shape} and {biases.shape}"
                )
            if ids.size > 1 and not (ids[1:] > ids[:-1]).all():
                raise ValueError(f"{side}_ids must be sorted ascending and distinct")
        if self.item_vectors.shape[1] != self.user_vectors.shape[1]:
            raise ValueError("user and item vectors have different widths")

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def to_files(self) -> dict[str, np.ndarray | dict]:
        """File name → array (``.npy``) or dict (``.json``); `encode_files` turns them into bytes."""
        return {**{f"{name}.npy": getattr(self, name) for name in ARRAYS}, PARAMS_FILE: self.params}

    @classmethod
    def from_files(cls, files: dict[str, Any]) -> "LightfmEmbeddings":
        """From `to_files`' dict or the stored bytes (an ``ArtifactFolder``'s files); a missing
        file is a one-line error naming it."""
        missing = [name for name in FILES if name not in files]
        if missing:
            raise ValueError(f"LightFM embeddings: {', '.join(missing)} missing from the stored folder")
        arrays = {name: _array(f"{name}.npy", files[f"{name}.npy"]) for name in ARRAYS}
        params = files[PARAMS_FILE]
        if isinstance(params, (bytes, bytearray)):
            params = json.loads(params)
        return cls(params=dict(params), **arrays)


def encode_files(files: dict[str, Any]) -> dict[str, bytes]:
    """Bytes of each file of `LightfmEmbeddings.to_files` and of any file stored beside them:
    arrays with ``np.save`` (no pickle), the rest as the IO manager stores it (json, parquet)."""
    out: dict[str, bytes] = {}
    for name, value in files.items():
        if isinstance(value, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            out[name] = buf.getvalue()
        else:
            out[name] = encode_value(name, value)
    return out


def _array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.load(io.BytesIO(value), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise ValueError(f"LightFM embeddings: {name} is not a readable .npy array ({exc})") from None

