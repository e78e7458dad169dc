"""RFM table and KMeans segmentation (pure polars / numpy / scikit-learn, no Dagster).

RFM has two definitions, chosen by the input form (:func:`rfm_definition`).

**Instacart form** (no ``order_ts`` column: no calendar dates), per user,
relative to the user's **target order** -- the same temporal split as
``ratings.build``: the ``eval_set == "train"`` order when it has lines, else
the user's last order with lines:

* **R** ``recency_days`` (Float64): the gap in days between the user's last
  order before the target and the target itself, i.e. the target order's
  ``days_since_prior_order``. Smaller is better. A user with no target (no
  order with lines; only possible with truncated data) is measured at the end
  of their history: R = the gap of their last order (highest
  ``order_number``). A null gap (only with non-imputed input) is filled with
  the median R of the other users.
* **F** ``frequency`` (Int32): number of the user's orders strictly before the
  target (``order_number < target order_number``; for a user without target:
  before their last order).
* **M** ``monetary`` (Float64): number of items (order lines) bought in those
  orders; when ``products`` carries a ``price`` column, the spend
  ``sum(price)`` over those lines instead (a line whose product has no price
  counts 0; rounded to 6 decimals).

**Dated form** (``orders`` carries ``order_ts``, the transactions input), per
customer over their whole history (the target order included):

* **R**: fractional days from the customer's last ``order_ts`` to the
  reference time (default: the latest ``order_ts`` of the data).
* **F**: the number of the customer's orders.
* **M**: ``sum(quantity * unit_price)`` over the customer's lines when
  ``order_products`` has both columns (a null counts 0; rounded to 6
  decimals), else the item count or price spend as above.

Both forms:

* z-scores ``r_z``, ``f_z``, ``m_z`` (Float64) are z-scores of the
  **log1p-transformed** R, F and M (M clipped at 0 first) over the returned
  users, with population standard deviation (ddof=0) and the **sign set so
  higher is better**: ``r_z = -(log1p R - mean) / std``. F and M are
  heavy-tailed (a few customers with hundreds of orders), and on raw values
  those customers dominate the variance and end up as singleton clusters;
  the log keeps them at the top without isolating them. A constant column
  gives z = 0. ``recency_days``, ``frequency``, ``monetary`` keep their units.
* high-value score ``hv = 0.4 * r_z + 0.3 * f_z + 0.3 * m_z``.

Only users with F >= 1 are returned -- with Instacart-shaped data (every
order before the target has lines) these are exactly the users that have
ratings. ``users`` restricts the population further (z-scores are computed
over the returned population).

Segmentation: KMeans on ``(r_z, f_z, m_z)`` with k fixed or chosen in a range
under a minimum segment share (:func:`segment_users`); clusters are renumbered
by the ``hv`` of their centroid (segment 0 = highest), and each segment is
labelled from its centroid by :func:`label_centroid` (labels are never tied
to ids).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from insightflow_assets.ratings.build import target_orders
from insightflow_assets.frames import lazy as _lazy, user_ids as _user_ids

Frame = pl.DataFrame | pl.LazyFrame

__all__ = [
    "HV_WEIGHTS",
    "LABEL_THRESHOLD",
    "RFM_COLUMNS",
    "USER_SEG_COLUMNS",
    "USER_SEG_SCHEMA",
    "add_z_scores",
    "centroids_from_user_seg",
    "hv_expr",
    "label_candidates",
    "label_centroid",
    "label_centroids",
    "parse_reference_date",
    "rfm_definition",
    "rfm_reference_time",
    "rfm_table",
    "segment_users",
    "silhouette_euclidean",
    "silhouettes",
]

HV_WEIGHTS = (0.4, 0.3, 0.3)  # r_z, f_z, m_z
LABEL_THRESHOLD = 0.5  # |centroid z| above which a dimension counts as high / low
_US_PER_DAY = 86_400 * 1_000_000

RFM_COLUMNS = ["user_id", "recency_days", "frequency", "monetary", "r_z", "f_z", "m_z"]
USER_SEG_COLUMNS = RFM_COLUMNS + ["segment", "segment_label", "hv"]
USER_SEG_SCHEMA = {
    "user_id": pl.Int32,
    "recency_days": pl.Float64,
    "frequency": pl.Int32,
    "monetary": pl.Float64,
    "r_z": pl.Float64,
    "f_z": pl.Float64,
    "m_z": pl.Float64,
    "segment": pl.Int8,
    "segment_label": pl.String,
    "hv": pl.Float64,
}


def hv_expr(r: str = "r_z", f: str = "f_z", m: str = "m_z") -> pl.Expr:
    """``0.4 * r_z + 0.3 * f_z + 0.3 * m_z`` as a Float64 expression."""
    wr, wf, wm = HV_WEIGHTS
    return (wr * pl.col(r) + wf * pl.col(f) + wm * pl.col(m)).cast(pl.Float64)


def _log_z(col: str, sign: float = 1.0) -> pl.Expr:
    # log1p: F and M are heavy-tailed (see the module doc). Clip at 0 first: log1p is undefined
    # below -1, and a net-negative spend (more returned than bought) ranks with no spend at all.
    c = pl.col(col).cast(pl.Float64).clip(lower_bound=0.0).log1p()
    std = c.std(ddof=0)
    return (
        pl.when(std > 0).then(sign * (c - c.mean()) / std).otherwise(pl.lit(0.0)).fill_null(0.0)
    )


def add_z_scores(rfm: Frame) -> Frame:
    """``r_z, f_z, m_z``: signed z-scores of log1p(R), log1p(F), log1p(max(M, 0)) (see the module doc)."""
    return rfm.with_columns(
        r_z=_log_z("recency_days", -1.0), f_z=_log_z("frequency"), m_z=_log_z("monetary")
    )


# --------------------------------------------------------------------------- #
# RFM table
# --------------------------------------------------------------------------- #
def rfm_definition(orders_imputed: Frame) -> str:
    """``"dated"`` when the orders carry ``order_ts`` (transactions input), else ``"instacart"``."""
    return "dated" if "order_ts" in _lazy(orders_imputed).collect_schema().names() else "instacart"


def parse_reference_date(value: str | None) -> datetime | None:
    """``rfm.reference_date`` (ISO date or datetime, no time zone) as a naive datetime."""
    if value is None or not str(value).strip():
        return None
    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(
            f"rfm.reference_date: {value!r} is not an ISO date or datetime (e.g. 2011-12-10 or 2011-12-10T12:00:00)"
        ) from None
    if parsed.tzinfo is not None:
        raise ValueError(f"rfm.reference_date: {value!r} has a time zone, but order_ts has none; drop the offset")
    return parsed


def rfm_reference_time(orders_imputed: Frame, reference_time: datetime | None = None) -> datetime | None:
    """The time R is measured to in the dated form: ``reference_time``, else the latest ``order_ts``.

    None in the Instacart form (no dates; ``reference_time`` is ignored there). An explicit
    reference before the latest order is refused: it would give negative recencies.
    """
    if rfm_definition(orders_imputed) != "dated":
        return None
    latest = _lazy(orders_imputed).select(pl.col("order_ts").max()).collect().item()
    if reference_time is None:
        if latest is None:
            raise ValueError("order_ts is null on every order: no default reference time for recency")
        return latest
    if latest is not None and reference_time < latest:
        raise ValueError(
            f"reference time (rfm.reference_date) {reference_time} is before the latest order_ts {latest}: recency would be negative"
        )
    return reference_time


def _line_values(order_products: Frame, products: Frame | None, *, quantity: bool) -> tuple[pl.LazyFrame, bool]:
    """``order_id, _v`` per order line -- what M sums -- and whether it is money (rounded then).

    ``quantity * unit_price`` when allowed and both exist, else the product's price when the
    catalogue has one, else 1 per line (item count). A null value counts 0.
    """
    lines = _lazy(order_products)
    names = lines.collect_schema().names()
    if quantity and {"quantity", "unit_price"} <= set(names):
        value = (pl.col("quantity").cast(pl.Float64) * pl.col("unit_price").cast(pl.Float64)).fill_null(0.0)
        return lines.select("order_id", _v=value), True
    if products is not None and "price" in _lazy(products).collect_schema().names():
        priced = lines.select("order_id", "product_id").join(
            _lazy(products).select(
                pl.col("product_id").cast(lines.collect_schema()["product_id"]),
                pl.col("price").cast(pl.Float64),
            ),
            on="product_id",
            how="left",
        )
        return priced.select("order_id", _v=pl.col("price").fill_null(0.0)), True
    return lines.select("order_id", _v=pl.lit(1.0, pl.Float64)), False


def _instacart_rfm(orders_imputed: Frame, per_order: pl.LazyFrame, order_products: Frame) -> pl.LazyFrame:
    """``user_id, recency_days, frequency, monetary`` relative to each user's target order."""
    orders = _lazy(orders_imputed).select("order_id", "user_id", "order_number", "days_since_prior_order")
    targets = target_orders(orders_imputed, order_products).lazy().select(
        "user_id", pl.col("order_number").cast(pl.Int32).alias("_t_number")
    )
    # reference order: the target, else the user's last order (end of history)
    ref = (
        orders.group_by("user_id")
        .agg(_last=pl.col("order_number").cast(pl.Int32).max())
        .join(targets, on="user_id", how="left")
        .select("user_id", _ref=pl.coalesce("_t_number", "_last"))
    )
    with_ref = orders.join(ref, on="user_id", how="inner")
    recency = with_ref.filter(pl.col("order_number").cast(pl.Int32) == pl.col("_ref")).select(
        "user_id", recency_days=pl.col("days_since_prior_order").cast(pl.Float64)
    ).unique(subset="user_id", keep="first")
    fm = (
        with_ref.filter(pl.col("order_number").cast(pl.Int32) < pl.col("_ref"))
        .select("order_id", "user_id")
        .join(per_order, on="order_id", how="left")
        .group_by("user_id")
        .agg(frequency=pl.len().cast(pl.Int32), monetary=pl.col("_m").fill_null(0.0).sum().cast(pl.Float64))
    )
    return fm.join(recency, on="user_id", how="left")


def _dated_rfm(orders_imputed: Frame, per_order: pl.LazyFrame, reference: datetime) -> pl.LazyFrame:
    """``user_id, recency_days, frequency, monetary`` over each customer's whole dated history."""
    last = pl.col("order_ts").max()
    return (
        _lazy(orders_imputed)
        .select("order_id", "user_id", "order_ts")
        .join(per_order, on="order_id", how="left")
        .group_by("user_id")
        .agg(
            recency_days=(pl.lit(reference).cast(pl.Datetime("us")) - last.cast(pl.Datetime("us")))
            .dt.total_microseconds()
            .cast(pl.Float64)
            / _US_PER_DAY,
            frequency=pl.len().cast(pl.Int32),
            monetary=pl.col("_m").fill_null(0.0).sum().cast(pl.Float64),
        )
    )


def rfm_table(
    orders_imputed: Frame,
    order_products: Frame,
    products: Frame | None = None,
    *,
    users: Any | None = None,
    reference_time: datetime | None = None,
) -> pl.DataFrame:
    """Per-user R, F, M and their signed z-scores (see the module docstring).

    Returns ``user_id Int32, recency_days Float64, frequency Int32, monetary
    Float64, r_z, f_z, m_z Float64`` sorted by ``user_id``; users with
    ``frequency >= 1`` only, optionally restricted to ``users`` (ids as a
    DataFrame/LazyFrame with ``user_id``, a Series, an array or an iterable --
    e.g. the ``ratings`` frame). ``reference_time`` (naive datetime) is where
    R is measured to in the dated form (default: the latest ``order_ts``);
    the Instacart form ignores it.

    Lazy polars: per-order values are one ``group_by(order_id)`` over the
    lines, joined to each user's counted orders; no Python loop over users. A
    spend is rounded to 6 decimals so that the float summation order (which
    polars may vary between runs) cannot change the result.
    """
    dated = rfm_definition(orders_imputed) == "dated"
    values, money = _line_values(order_products, products, quantity=dated)
    per_order = values.group_by("order_id").agg(_m=pl.col("_v").sum())
    if dated:
        rfm = _dated_rfm(orders_imputed, per_order, rfm_reference_time(orders_imputed, reference_time))
    else:
        rfm = _instacart_rfm(orders_imputed, per_order, order_products)
    if users is not None:
        rfm = rfm.join(_user_ids(users).lazy(), on="user_id", how="semi")
    if money:
        rfm = rfm.with_columns(pl.col("monetary").round(6))
    out = (
        rfm.filter(pl.col("frequency") >= 1)
        .with_columns(pl.col("recency_days").fill_null(pl.col("recency_days").median()).fill_null(0.0))
        .sort("user_id")
        .pipe(add_z_scores)
        .select(pl.col("user_id").cast(pl.Int32), *RFM_COLUMNS[1:])
    )
    return out.collect()


# --------------------------------------------------------------------------- #
# labels
# --------------------------------------------------------------------------- #
def label_candidates(
    r_z: float, f_z: float, m_z: float, *, threshold: float = LABEL_THRESHOLD
) -> list[str]:
    """Labels for one centroid, most fitting first (see :func:`label_centroid`).

    A dimension is *high* when its centroid z > ``threshold``, *low* when
    < ``-threshold``, else *mid* (z are signed so that higher is better);
    "above / below average" means z >= 0 / z < 0. First matching rule:

    1. R, F, M all high -> champions; then loyal / big spenders (the larger of
       F, M first)
    2. R low, F or M high -> at risk; then about to sleep
    3. F high -> loyal; then big spenders (if M high), potential loyalists
    4. M high -> big spenders; then potential loyalists
    5. R high, F and M above average -> potential loyalists; then recent
    6. R high -> recent; then new customers
    7. R low, F and M below average -> hibernating; then lost
    8. R low -> about to sleep; then hibernating
    9. F or M low -> occasional; then needs attention
    10. R, F, M all below average -> needs attention; then occasional
    11. otherwise -> average; then steady
    """
    t = float(threshold)
    r, f, m = float(r_z), float(f_z), float(m_z)
    z = {"r": r, "f": f, "m": m}
    hi = {k for k, v in z.items() if v > t}
    lo = {k for k, v in z.items() if v < -t}
    if hi == {"r", "f", "m"}:
        return ["champions"] + (["loyal", "big spenders"] if f >= m else ["big spenders", "loyal"])
    if "r" in lo and hi & {"f", "m"}:
        return ["at risk", "about to sleep"]
    if "f" in hi:
        return ["loyal"] + (["big spenders"] if "m" in hi else []) + ["potential loyalists"]
    if "m" in hi:
        return ["big spenders", "potential loyalists"]
    if "r" in hi:
        return ["potential loyalists", "recent"] if f >= 0 and m >= 0 else ["recent", "new customers"]
    if "r" in lo:
        return ["hibernating", "lost"] if f < 0 and m < 0 else ["about to sleep", "hibernating"]
    if lo:
        return ["occasional", "needs attention"]
    if r < 0 and f < 0 and m < 0:
        return ["needs attention", "occasional"]
    return ["average", "steady"]


def label_centroid(r_z: float, f_z: float, m_z: float, *, threshold: float = LABEL_THRESHOLD) -> str:
    """The label of one centroid: the first of :func:`label_candidates`.

    E.g. all z high -> ``"champions"``; only F high -> ``"loyal"``; only M
    high -> ``"big spenders"``; only R high -> ``"recent"``; R low but F or M
    high -> ``"at risk"``; everything below average with R low ->
    ``"hibernating"``.
    """
    return label_candidates(r_z, f_z, m_z, threshold=threshold)[0]


def label_centroids(
    centroids: np.ndarray | pl.DataFrame, *, threshold: float = LABEL_THRESHOLD
) -> list[str]:
    """Unique labels of centroids given in segment order (rows ``r_z, f_z, m_z``).

    Centroids are served in the given order (segment 0 = highest hv first);
    each takes its first candidate label (:func:`label_candidates`) not
    already taken, so e.g. a second all-high cluster becomes ``"loyal"`` and
    a second "hibernating" one ``"lost"``. When every candidate is taken the
    first candidate gets a suffix `` (2)``, `` (3)``, ...
    """
    if isinstance(centroids, pl.DataFrame):
        arr = centroids.select("r_z", "f_z", "m_z").to_numpy()
    else:
        arr = np.asarray(centroids, dtype=float).reshape(-1, 3)
    taken: set[str] = set()
    out: list[str] = []
    for r, f, m in arr:
        cands = label_candidates(float(r), float(f), float(m), threshold=threshold)
        label = next((c for c in cands if c not in taken), None)
        if label is None:
            i = 2
            while f"{cands[0]} ({i})" in taken:
                i += 1
            label = f"{cands[0]} ({i})"
        taken.add(label)
        out.append(label)
    return out


# --------------------------------------------------------------------------- #
# KMeans
# --------------------------------------------------------------------------- #
def silhouette_euclidean(X: np.ndarray, labels: np.ndarray, *, block: int = 1024) -> float:
    """Mean silhouette coefficient (euclidean), equal to
    ``sklearn.metrics.silhouette_score(X, labels)`` but computed in row blocks
    with ``scipy.spatial.distance.cdist`` and one matrix product per block
    for the per-cluster distance sums (~10x faster on 10,000 x 3 points).

    ``a(i)`` = mean distance to the other members of i's cluster, ``b(i)`` =
    smallest mean distance to another cluster, ``s(i) = (b - a) / max(a, b)``
    (0 for a point alone in its cluster). Needs 2 <= clusters <= n - 1.
    """
    n, k = np.asarray(labels).size, np.unique(np.asarray(labels)).size
    if not 2 <= k <= n - 1:
        raise ValueError(f"silhouette needs 2 <= clusters <= n - 1, got {k} clusters for {n} points")
    return float(_silhouette_means(X, [labels], block)[0])


def silhouettes(X: np.ndarray, labelings: list[np.ndarray], *, block: int = 1024) -> list[float | None]:
    """:func:`silhouette_euclidean` of several labelings of the same points, None where undefined.

    The pairwise distances -- most of the cost -- are computed once per block for all
    labelings, so scoring the k candidates costs little more than scoring one.
    """
    n = np.asarray(X).shape[0]
    ok = [2 <= np.unique(np.asarray(lab)).size <= n - 1 for lab in labelings]
    means = _silhouette_means(X, [lab for lab, good in zip(labelings, ok) if good], block)
    it = iter(means)
    return [float(next(it)) if good else None for good in ok]


def _silhouette_means(X: np.ndarray, labelings: list[np.ndarray], block: int) -> np.ndarray:
    from scipy.spatial.distance import cdist

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    # one-hot columns of every labeling side by side: a single product per block reads the
    # (block, n) distances once for all labelings (reading them is the cost, not the flops)
    codes = [np.unique(np.asarray(labels), return_inverse=True)[1].ravel() for labels in labelings]
    widths = [int(c.max()) + 1 for c in codes]
    offsets = np.concatenate([[0], np.cumsum(widths)])
    onehot = np.zeros((n, int(offsets[-1])))
    for c, off in zip(codes, offsets):
        onehot[np.arange(n), off + c] = 1.0
    sizes = onehot.sum(axis=0)
    s = np.empty((len(codes), n))
    for start in range(0, n, block):
        stop = min(start + block, n)
        sums = cdist(X[start:stop], X) @ onehot  # (block, clusters of all labelings) distance sums
        for j, c in enumerate(codes):
            cols = slice(offsets[j], offsets[j + 1])
            s[j, start:stop] = _block_silhouette(sums[:, cols], c[start:stop], sizes[cols])
    return s.mean(axis=1)


def _block_silhouette(sums: np.ndarray, own: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    rows = np.arange(own.size)
    own_size = sizes[own]
    a = np.divide(sums[rows, own], own_size - 1, out=np.zeros(own.size), where=own_size > 1)
    other = sums / sizes  # a new array: the caller's sums stay intact
    other[rows, own] = np.inf
    b = other.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        si = (b - a) / np.maximum(a, b)
    return np.where(own_size > 1, np.nan_to_num(si), 0.0)


def _rfm_matrix(rfm: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """The RFM rows sorted by user_id (so the input order never matters) and their z matrix."""
    missing = [c for c in RFM_COLUMNS if c not in rfm.columns]
    if missing:
        raise ValueError(f"rfm is missing columns {missing}")
    data = rfm.select(RFM_COLUMNS).sort("user_id")
    X = np.ascontiguousarray(data.select("r_z", "f_z", "m_z").to_numpy().astype(np.float64))
    if not np.isfinite(X).all():
        raise ValueError("r_z, f_z, m_z must be finite")
    return data, X


def _check_k(k: int, k_min: int, k_max: int, min_segment_share: float, n: int) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 1, or 0 to choose it in [k_min, k_max]; got {k}")
    if k == 0 and not 2 <= k_min <= k_max:
        raise ValueError(f"need 2 <= k_min <= k_max to choose k by silhouette, got k_min={k_min} k_max={k_max}")
    if not 0.0 <= min_segment_share < 1.0:
        raise ValueError(f"min_segment_share must be in [0, 1), got {min_segment_share}")
    if n < max(k, 1):
        raise ValueError(f"need at least k={max(k, 1)} users to segment, got {n}")


def _kmeans(X: np.ndarray, fit_idx: np.ndarray | None, k: int, *, seed: int, n_init: int, max_iter: int) -> tuple[np.ndarray, int]:
    """KMeans fitted on the ``fit_idx`` rows (all when None); every user to its nearest centre.

    Returns (labels, n_iter).
    """
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed)
    if fit_idx is None:
        return km.fit(X).labels_.astype(np.int64), int(km.n_iter_)
    km.fit(X[fit_idx])
    return km.predict(X).astype(np.int64), int(km.n_iter_)


def _candidate(k: int, labels: np.ndarray, silhouette: float | None, min_share: float) -> dict[str, Any]:
    """One fitted k as recorded in ``k_selection``: its smallest segment share, silhouette, admissibility."""
    share = float(np.bincount(labels, minlength=k).min() / labels.size)
    return {
        "k": int(k),
        "min_share": round(share, 6),
        "silhouette": None if silhouette is None else round(silhouette, 6),
        "admissible": bool(share >= min_share),
    }


def _select_k(
    X: np.ndarray, fit_idx: np.ndarray | None, sil_idx: np.ndarray, *, k_min: int, k_max: int,
    min_share: float, seed: int, n_init: int, max_iter: int,
) -> tuple[int, list[dict[str, Any]], np.ndarray, float | None]:
    """Fit every k of [k_min, k_max] (capped by the users); keep the admissible ones -- smallest
    segment >= min_share of all users -- and take the best silhouette on the seeded sample, ties
    to the smaller k. With no admissible k: k_min (its small segments get merged afterwards).

    Returns (chosen k, candidates, the chosen fit's sample labels, its silhouette).
    """
    n = X.shape[0]
    ks = list(range(min(k_min, n), min(k_max, n) + 1))
    samples = [_kmeans(X, fit_idx, kk, seed=seed, n_init=n_init, max_iter=max_iter)[0] for kk in ks]
    sils = silhouettes(X[sil_idx], [lab[sil_idx] for lab in samples])
    candidates = [_candidate(kk, lab, sil, min_share) for kk, lab, sil in zip(ks, samples, sils)]
    # on the recorded (rounded) silhouettes, so that the record alone explains the choice
    admissible = [i for i, c in enumerate(candidates) if c["admissible"]]
    score = [-np.inf if c["silhouette"] is None else c["silhouette"] for c in candidates]
    best = max(admissible, key=lambda i: (score[i], -i)) if admissible else 0  # -i: ties -> smaller k
    return ks[best], candidates, samples[best][sil_idx], sils[best]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings group the points identically (ids may differ)."""
    pairs = np.unique(np.stack([a, b]), axis=1).shape[1]
    return pairs == np.unique(a).size == np.unique(b).size


def _choose_and_fit(
    X: np.ndarray, fit_idx: np.ndarray | None, sil_idx: np.ndarray, *, k: int, k_min: int, k_max: int,
    min_share: float, seed: int, n_init: int, n_init_candidates: int, max_iter: int,
) -> dict[str, Any]:
    """The fitted labels of every user for a fixed k, or for the k chosen by :func:`_select_k`.

    Candidates use ``n_init_candidates`` initialisations (there are up to six of them, and
    3-feature KMeans rarely needs more); only the chosen k is refitted with ``n_init``. When that refit groups the silhouette sample like the
    candidate did, the candidate's silhouette is kept (``known_silhouette``) instead of a
    second pass over the sample.
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = {"chosen": k, "candidates": [], "known_silhouette": None}
    if k == 0:
        out["chosen"], out["candidates"], sample, sil = _select_k(
            X, fit_idx, sil_idx, k_min=k_min, k_max=k_max, min_share=min_share, seed=seed,
            n_init=n_init_candidates, max_iter=max_iter,
        )  # fmt: skip
    t1 = time.perf_counter()
    out["labels"], out["n_iter"] = _kmeans(X, fit_idx, out["chosen"], seed=seed, n_init=n_init, max_iter=max_iter)
    if k == 0 and _same_partition(out["labels"][sil_idx], sample):
        out["known_silhouette"] = sil
    out["seconds_select_k"], out["seconds_fit"] = round(t1 - t0, 4), round(time.perf_counter() - t1, 4)
    return out


def _centroid_means(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, mean z per cluster) for labels in 0..k-1 -- at convergence the KMeans centres."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, labels, X)
    return counts, sums / np.maximum(counts, 1.0)[:, None]


def _merge_small(X: np.ndarray, labels: np.ndarray, min_share: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Fold segments below ``min_share`` of the users into their nearest larger centroid.

    The smallest segment goes first (ties: lowest id), into the nearest centroid (mean z)
    of the others, which are all at least as large; repeat until every segment reaches the
    share or one segment is left. Returns labels compacted to 0..S-1 and one record per merge
    (``into`` = the receiving cluster's final compact id).
    """
    labels = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    n, merges, parent = labels.size, [], {}
    while True:
        ids = np.unique(labels)
        counts, cents = _centroid_means(X, labels, int(labels.max()) + 1)
        counts, cents = counts[ids], cents[ids]
        if ids.size <= 1 or counts.min() / n >= min_share:
            break
        i = int(np.lexsort((ids, counts))[0])
        others = np.flatnonzero(np.arange(ids.size) != i)
        j = int(others[np.argmin(((cents[others] - cents[i]) ** 2).sum(axis=1))])
        merges.append({"users": int(counts[i]), "share": round(float(counts[i] / n), 6),
                       "centroid": [round(float(v), 4) for v in cents[i]], "into": int(ids[j])})
        parent[int(ids[i])] = int(ids[j])
        labels[labels == ids[i]] = ids[j]
    compact_ids, labels = np.unique(labels, return_inverse=True)
    new_id = {int(old): new for new, old in enumerate(compact_ids)}
    for m in merges:
        while m["into"] in parent:  # the receiver may itself have been merged later
            m["into"] = parent[m["into"]]
        m["into"] = new_id[m["into"]]
    return labels.astype(np.int64), merges


def _renumber(X: np.ndarray, raw: np.ndarray, *, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Segment ids by centroid hv (0 = highest; ties by r_z, f_z, m_z) and labels from the centroids.

    Returns (seg per user, remap raw -> segment, centroids in segment order, labels).
    """
    k = int(raw.max()) + 1
    _, cz = _centroid_means(X, raw, k)
    hv_c = cz @ np.asarray(HV_WEIGHTS)
    order = np.lexsort((-cz[:, 2], -cz[:, 1], -cz[:, 0], -np.round(hv_c, 12)))  # last key is primary
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return remap[raw].astype(np.int8), remap, cz[order], label_centroids(cz[order], threshold=threshold)


def _frames(data: pl.DataFrame, seg: np.ndarray, cz: np.ndarray, labels: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``user_seg`` and the centroid frame (see :func:`segment_users`)."""
    k, n = len(labels), data.height
    label_of = pl.DataFrame(
        {"segment": np.arange(k, dtype=np.int8), "segment_label": labels},
        schema={"segment": pl.Int8, "segment_label": pl.String},
    )
    user_seg = (
        data.with_columns(segment=pl.Series("segment", seg, dtype=pl.Int8))
        .join(label_of, on="segment", how="left")
        .with_columns(hv=hv_expr())
        .select(USER_SEG_COLUMNS)
        .sort("user_id")
    )
    stats = user_seg.group_by("segment").agg(
        users=pl.len().cast(pl.Int64),
        recency_days=pl.col("recency_days").mean(),
        frequency=pl.col("frequency").cast(pl.Float64).mean(),
        monetary=pl.col("monetary").mean(),
    )
    centroids = (
        label_of.with_columns(
            r_z=pl.Series(cz[:, 0], dtype=pl.Float64),
            f_z=pl.Series(cz[:, 1], dtype=pl.Float64),
            m_z=pl.Series(cz[:, 2], dtype=pl.Float64),
        )
        .join(stats, on="segment", how="left")
        .with_columns(share=pl.col("users").cast(pl.Float64) / n, hv=hv_expr())
        .select("segment", "segment_label", "users", "share", "r_z", "f_z", "m_z",
                "recency_days", "frequency", "monetary", "hv")
        .sort("segment")
    )  # fmt: skip
    return user_seg, centroids


def _score(
    X: np.ndarray, sil_idx: np.ndarray, fit: dict[str, Any], seg: np.ndarray, *, merged: bool, k: int, min_share: float
) -> float | None:
    """Silhouette of the final segments on the seeded sample, reusing the candidate's when the
    partition is the one it scored. A fixed k is recorded as its one candidate: its fit before
    merging is scored in the same pass."""
    scored = [fit["labels"][sil_idx]] if k > 0 and merged else []
    if merged or fit["known_silhouette"] is None:
        scored.append(seg[sil_idx])
    sils = silhouettes(X[sil_idx], scored) if scored else [fit["known_silhouette"]]
    if k > 0:
        fit["candidates"] = [_candidate(k, fit["labels"], sils[0], min_share)]
    return sils[-1]


def _k_selection(
    fit: dict[str, Any], merged: list[dict[str, Any]], *, k: int, k_min: int, k_max: int, min_share: float, n_sil: int
) -> dict[str, Any]:
    """How k was chosen, as recorded in metrics.json and the asset metadata."""
    merge = f"segments below {min_share:.1%} of users merged into their nearest larger centroid"
    if k > 0:
        criterion = f"fixed k={k}; {merge}"
    elif not any(c["admissible"] for c in fit["candidates"]):
        criterion = f"no k in [{k_min}, {k_max}] keeps every segment >= {min_share:.1%} of users: k_min={k_min}, {merge}"
    else:
        criterion = (
            f"highest silhouette (seeded sample of {n_sil} users) among k in [{k_min}, {k_max}] whose smallest "
            f"segment has >= {min_share:.1%} of users; ties -> smaller k"
        )
    return {"criterion": criterion, "candidates": fit["candidates"], "chosen_k": int(fit["chosen"]), "merged": merged}


def _draw_samples(
    n: int, seed: int, sample_for_fit: int | None, silhouette_sample: int, *, at_least: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """Seeded row indices: the fit sample (None = every user) and the silhouette sample."""
    rng = np.random.default_rng(seed)
    fit_idx = None
    if sample_for_fit is not None and sample_for_fit < n:
        fit_idx = np.sort(rng.choice(n, size=min(n, max(int(sample_for_fit), at_least)), replace=False))
    n_sil = min(int(silhouette_sample), n)
    return fit_idx, (rng.choice(n, size=n_sil, replace=False) if n_sil < n else np.arange(n))


def segment_users(
    rfm: pl.DataFrame,
    *,
    k: int = 0,
    k_min: int = 3,
    k_max: int = 8,
    min_segment_share: float = 0.02,
    seed: int = 42,
    sample_for_fit: int | None = 50_000,
    n_init: int = 10,
    n_init_candidates: int = 3,
    max_iter: int = 300,
    silhouette_sample: int = 10_000,
    label_threshold: float = LABEL_THRESHOLD,
    n_threads: int | None = 1,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """KMeans segmentation of the RFM z-scores, with no segment below ``min_segment_share``.

    ``sklearn.cluster.KMeans(n_clusters, n_init, random_state=seed)`` on ``(r_z, f_z, m_z)``
    with the rows sorted by ``user_id`` first, so the result depends on the set of users,
    never on the input row order. With ``sample_for_fit`` (< number of users) every fit uses
    that many users drawn with ``numpy.random.default_rng(seed)`` and every user is then
    assigned to its nearest centre (KMeans on 3 features needs no more to place its centres).

    **k**: ``k >= 1`` is used as given. ``k = 0`` chooses it: each k in ``[k_min, k_max]``
    (capped by the users) is fitted with ``n_init_candidates`` initialisations; a k is
    admissible when its smallest segment holds >= ``min_segment_share`` of all users; the
    admissible k with the highest silhouette on the seeded sample wins, ties to the smaller
    k; with none admissible, k_min. The chosen k is then refitted with ``n_init``. In every
    case, segments still below the share are merged into their nearest larger centroid
    (:func:`_merge_small`), so the result may have fewer segments than the fitted k.

    ``n_threads`` caps scikit-learn's OpenMP threads (``threadpoolctl``; None = library
    default). The default 1 keeps results bit-identical across runs -- multi-threaded Lloyd
    sums per-thread partial centres in scheduling order -- and is also the faster choice for
    3 features on a small shared machine. Segment ids are renumbered by the hv of the centroid
    (mean z of the members; 0 = highest, ties by r_z, f_z, m_z) and labelled from the centroid.

    Returns ``(user_seg, centroids, info)``:

    * ``user_seg``: ``user_id, recency_days, frequency, monetary, r_z, f_z,
      m_z, segment Int8, segment_label String, hv Float64`` sorted by user_id;
    * ``centroids``: one row per segment -- ``segment Int8, segment_label,
      users Int64, share Float64, r_z, f_z, m_z`` (centroid = mean z of the
      members), mean ``recency_days, frequency, monetary`` and ``hv`` (of the
      centroid = mean hv of the members);
    * ``info``: k (segments in the result), k_selection (criterion, candidates with their
      k / min_share / silhouette / admissible, chosen_k, merged), min_segment_share, seed,
      n_init, users, fit_users, inertia (sum of squared distances of every user to its
      centroid), silhouette (euclidean, on a seeded sample of <= ``silhouette_sample``
      users; None when undefined), silhouette_sample, n_iter, segment_users, seconds_*.
    """
    # sklearn (and its OpenMP runtime) must be loaded before threadpool_limits, which only caps
    # libraries already loaded
    import sklearn.cluster  # noqa: F401
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    data, X = _rfm_matrix(rfm)
    n = data.height
    _check_k(k, k_min, k_max, min_segment_share, n)
    fit_idx, sil_idx = _draw_samples(n, seed, sample_for_fit, silhouette_sample, at_least=max(k, k_max))
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        fit = _choose_and_fit(X, fit_idx, sil_idx, k=k, k_min=k_min, k_max=k_max, min_share=min_segment_share, seed=seed,
                              n_init=n_init, n_init_candidates=n_init_candidates, max_iter=max_iter)  # fmt: skip
    raw, merged = _merge_small(X, fit["labels"], min_segment_share)
    seg, remap, cz, labels = _renumber(X, raw, threshold=label_threshold)
    for m in merged:
        m["into_segment"] = int(remap[m.pop("into")])
        m["into_label"] = labels[m["into_segment"]]
    t_sil = time.perf_counter()
    silhouette = _score(X, sil_idx, fit, seg, merged=bool(merged), k=k, min_share=min_segment_share)
    seconds_sil = time.perf_counter() - t_sil

    user_seg, centroids = _frames(data, seg, cz, labels)
    info = {
        "k": len(labels),
        "k_selection": _k_selection(fit, merged, k=k, k_min=k_min, k_max=k_max, min_share=min_segment_share, n_sil=sil_idx.size),
        "min_segment_share": float(min_segment_share),
        "seed": int(seed),
        "n_init": int(n_init),
        "n_init_candidates": int(n_init_candidates) if k == 0 else None,
        "n_threads": n_threads,
        "users": int(n),
        "fit_users": int(n if fit_idx is None else fit_idx.size),
        "inertia": float(((X - cz[seg]) ** 2).sum()),
        "silhouette": silhouette,
        "silhouette_sample": int(sil_idx.size),
        "n_iter": fit["n_iter"],
        "segment_users": dict(zip(labels, centroids["users"].to_list())),
        "seconds_select_k": fit["seconds_select_k"],
        "seconds_fit": fit["seconds_fit"],
        "seconds_silhouette": round(seconds_sil, 4),
        "seconds_total": round(time.perf_counter() - t0, 4),
    }
    return user_seg, centroids, info


def centroids_from_user_seg(user_seg: pl.DataFrame) -> pl.DataFrame:
    """The segment profiles (the ``centroids`` of `segment_users`) recomputed from ``user_seg``.

    KMeans centroids are the mean z-scores of their members, so downstream assets can derive
    them from the stored segmentation instead of a second artifact. Empty segments (which the
    checks forbid) do not appear.
    """
    n = max(user_seg.height, 1)
    return (
        user_seg.group_by("segment", "segment_label")
        .agg(
            users=pl.len().cast(pl.Int64),
            r_z=pl.col("r_z").mean(),
            f_z=pl.col("f_z").mean(),
            m_z=pl.col("m_z").mean(),
            recency_days=pl.col("recency_days").mean(),
            frequency=pl.col("frequency").cast(pl.Float64).mean(),
            monetary=pl.col("monetary").mean(),
        )
        .with_columns(share=pl.col("users").cast(pl.Float64) / n, hv=hv_expr())
        .select("segment", "segment_label", "users", "share", "r_z", "f_z", "m_z", "recency_days", "frequency", "monetary", "hv")
        .sort("segment")
    )
