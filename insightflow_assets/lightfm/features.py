"""The LightFM inputs (pure polars / numpy / scipy): interactions, product and customer features.

Features follow LightFM's hybrid model: an entity's representation is the sum of the
embeddings of its features, here with every row normalised to sum 1 (what LightFM's
``Dataset`` does by default), so a product with identity + aisle + department features
weighs each 1/3.

- Products: identity (only for products with interactions in the window: an identity
  embedding with no interaction is never trained, only random noise) + ``aisle:<id>`` +
  ``department:<id>``. The transactions form carries its category as both aisle and department
  (see ingest.transactions): there the category is one feature, not two copies.
- Customers: identity + ``segment:<n>`` from ``user_seg`` when the customer has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from insightflow_assets.model.als import user_item_matrix


@dataclass(frozen=True)
class FeatureMatrix:
    """Rows = entities (ids sorted ascending), columns = features named in ``names``."""

    ids: np.ndarray  # int32 (n,)
    matrix: sp.csr_matrix  # float32 (n, n_features), rows sum to 1
    names: list[str]  # column j's feature name ("id:42", "aisle:3", ...)

    def index(self) -> dict[str, int]:
        return {name: j for j, name in enumerate(self.names)}


def interactions(ratings: pl.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> sp.coo_matrix:
    """users × items, 1 for every (user, product) of the window (LightFM's WARP reads any
    stored value as a positive), rows and columns in the order of the id arrays."""
    mat, _, _ = user_item_matrix(ratings, user_ids, item_ids)
    # a new data array: the matrix may share (read-only) memory with the frame's column
    ones = np.ones(mat.nnz, dtype=np.float32)
    return sp.csr_matrix((ones, mat.indices, mat.indptr), shape=mat.shape).tocoo()


def item_features(products: pl.DataFrame, item_ids: np.ndarray, rated: np.ndarray) -> FeatureMatrix:
    """Identity (``rated`` products only) + aisle + department (category once in the
    transactions form) of every product of ``item_ids``; unknown products get identity only."""
    for col in ("product_id", "aisle_id", "department_id"):
        if col not in products.columns:
            raise ValueError(f"products: column {col} missing (needed for the LightFM item features)")
    frame = pl.DataFrame({"product_id": pl.Series(item_ids, dtype=pl.Int32)}).join(
        products.select(pl.col("product_id").cast(pl.Int32), "aisle_id", "department_id"), on="product_id", how="left"
    )
    aisle, dept = frame["aisle_id"], frame["department_id"]
    # the transactions form: department is the aisle (its category), once is enough
    groups = {"aisle": aisle} if aisle.equals(dept, null_equal=True) else {"aisle": aisle, "department": dept}
    identity = np.isin(item_ids, rated)
    return _features(item_ids, identity, {name: col.to_numpy() for name, col in groups.items()})


def user_features(user_seg: pl.DataFrame | None, user_ids: np.ndarray) -> FeatureMatrix:
    """Identity + segment (when ``user_seg`` gives the customer one) of every user of ``user_ids``."""
    groups: dict[str, np.ndarray] = {}
    if user_seg is not None:
        for col in ("user_id", "segment"):
            if col not in user_seg.columns:
                raise ValueError(f"user_seg: column {col} missing (needed for the LightFM user features)")
        seg = pl.DataFrame({"user_id": pl.Series(user_ids, dtype=pl.Int32)}).join(
            user_seg.select(pl.col("user_id").cast(pl.Int32), "segment").unique("user_id", keep="first"),
            on="user_id", how="left",
        )
        groups["segment"] = seg["segment"].to_numpy()
    return _features(user_ids, np.ones(user_ids.size, dtype=bool), groups)


def _features(ids: np.ndarray, identity: np.ndarray, groups: dict[str, np.ndarray]) -> FeatureMatrix:
    """One column per identity kept, then one per distinct value of each group (nulls and NaN
    give no feature), rows normalised to sum 1."""
    ids = np.asarray(ids, dtype=np.int32)
    rows = [np.flatnonzero(identity)]
    cols = [np.arange(rows[0].size)]
    names = [f"id:{i}" for i in ids[identity]]
    for group, values in groups.items():
        present = ~pl.Series(values).is_null().to_numpy() & ~_nan(values)
        levels, codes = np.unique(values[present], return_inverse=True)
        rows.append(np.flatnonzero(present))
        cols.append(len(names) + codes)
        names += [f"{group}:{_label(v)}" for v in levels]
    r, c = np.concatenate(rows), np.concatenate(cols)
    mat = sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=(ids.size, len(names)))
    per_row = np.asarray(mat.sum(axis=1)).ravel()
    if (per_row == 0).any():
        raise ValueError(f"LightFM features: {int((per_row == 0).sum())} entities have no feature at all")
    mat = sp.diags((1.0 / per_row).astype(np.float32)) @ mat
    return FeatureMatrix(ids, mat.tocsr().astype(np.float32), names)


def _nan(values: np.ndarray) -> np.ndarray:
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, dtype=bool)


def _label(v) -> str:
    return str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)
