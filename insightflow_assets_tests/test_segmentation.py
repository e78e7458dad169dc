"""RFM table, KMeans segmentation, centroid labels and segment popularity."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from insightflow_assets.data.generate import generate_instacart
from insightflow_assets.imputation.mice import order_features
from insightflow_assets.segmentation.popularity import SEGMENT_POPULARITY_SCHEMA, segment_popularity
from insightflow_assets.segmentation.rfm import (
    RFM_COLUMNS,
    USER_SEG_COLUMNS,
    label_centroid,
    label_centroids,
    rfm_table,
    segment_users,
    silhouette_euclidean,
)

A, B, C, D, E, F = 101, 102, 103, 104, 105, 106

# (order_id, user_id, eval_set, order_number, days_since_prior_order)
_ORDERS = [
    # user 1: three priors + train -> target 14: R = 10, F = 3, M = 2 + 1 + 2 = 5
    (11, 1, "prior", 1, None),
    (12, 1, "prior", 2, 7.0),
    (13, 1, "prior", 3, 3.0),
    (14, 1, "train", 4, 10.0),
    # user 2: two priors + test (no lines) -> target 22: R = 5, F = 1, M = 2
    (21, 2, "prior", 1, None),
    (22, 2, "prior", 2, 5.0),
    (23, 2, "test", 3, 8.0),
    # user 3: target is the first order -> no order before it -> excluded
    (31, 3, "prior", 1, None),
    (32, 3, "test", 2, 4.0),
    # user 4: target 44: R = 1, F = 3, M = 2 + 3 + 1 = 6
    (41, 4, "prior", 1, None),
    (42, 4, "prior", 2, 2.0),
    (43, 4, "prior", 3, 20.0),
    (44, 4, "train", 4, 1.0),
    # user 5: no order has lines (truncated data) -> no target; measured at the
    # end of history: R = gap of the last order = 12, F = 1, M = 0
    (51, 5, "prior", 1, None),
    (52, 5, "prior", 2, 12.0),
]
_LINES = [
    (11, A), (11, B), (12, A), (13, A), (13, C), (14, A), (14, D),
    (21, A), (21, E), (22, E),
    (31, F), (31, A),
    (41, B), (41, C), (42, B), (42, C), (42, D), (43, B), (44, B),
]  # fmt: skip

EXPECTED = {1: (10.0, 3, 5.0), 2: (5.0, 1, 2.0), 4: (1.0, 3, 6.0), 5: (12.0, 1, 0.0)}


def _orders() -> pl.DataFrame:
    df = pl.DataFrame(
        _ORDERS,
        schema={
            "order_id": pl.Int32,
            "user_id": pl.Int32,
            "eval_set": pl.String,
            "order_number": pl.Int16,
            "days_since_prior_order": pl.Float32,
        },
        orient="row",
    )
    return df.with_columns(is_first_order=pl.col("order_number") == 1)


def _lines() -> pl.DataFrame:
    return pl.DataFrame(
        _LINES, schema={"order_id": pl.Int32, "product_id": pl.Int32}, orient="row"
    ).with_columns(add_to_cart_order=pl.lit(1, pl.Int16), reordered=pl.lit(0, pl.Int8))


def _z(values: list[float], sign: float = 1.0) -> list[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [sign * (v - mean) / std for v in values]


# --------------------------------------------------------------------------- #
# RFM
# --------------------------------------------------------------------------- #
def test_rfm_values_and_signed_z_scores():
    rfm = rfm_table(_orders(), _lines())
    assert rfm.columns == RFM_COLUMNS
    assert rfm["user_id"].to_list() == [1, 2, 4, 5]  # user 3 has no order before its target
    got = {r["user_id"]: (r["recency_days"], r["frequency"], r["monetary"]) for r in rfm.iter_rows(named=True)}
    assert got == EXPECTED

    R = [EXPECTED[u][0] for u in (1, 2, 4, 5)]
    Fq = [EXPECTED[u][1] for u in (1, 2, 4, 5)]
    M = [EXPECTED[u][2] for u in (1, 2, 4, 5)]
    assert rfm["r_z"].to_list() == pytest.approx(_z(R, -1.0))
    assert rfm["f_z"].to_list() == pytest.approx([1.0, -1.0, 1.0, -1.0])  # mean 2, std 1
    assert rfm["m_z"].to_list() == pytest.approx(_z(M))
    assert rfm["r_z"][0] == pytest.approx(-(10 - 7) / math.sqrt(18.5))
    # higher is better: the most recent buyer (R = 1 day) has the highest r_z
    assert rfm.sort("r_z", descending=True)["user_id"][0] == 4
    assert rfm.sort("r_z")["user_id"][0] == 5
    assert rfm.sort("m_z", descending=True)["user_id"][0] == 4
    assert rfm.schema["frequency"] == pl.Int32 and rfm.schema["monetary"] == pl.Float64
    for col in ("r_z", "f_z", "m_z"):
        assert rfm[col].mean() == pytest.approx(0.0, abs=1e-12)
        assert rfm[col].std(ddof=0) == pytest.approx(1.0)


def test_rfm_users_filter_price_and_row_order():
    # users filter: z-scores are computed over the selected users only
    rfm = rfm_table(_orders(), _lines(), users=pl.DataFrame({"user_id": [1, 2, 4, 99]}))
    assert rfm["user_id"].to_list() == [1, 2, 4]
    assert rfm["r_z"].to_list() == pytest.approx(_z([10.0, 5.0, 1.0], -1.0))
    assert rfm_table(_orders(), _lines(), users=[4, 1, 2]).equals(rfm)

    # spend when products carry a price; a product without price counts 0
    products = pl.DataFrame(
        {"product_id": [A, B, C, D, E, F], "price": [2.0, 1.5, None, 4.0, 3.0, 9.0]},
        schema={"product_id": pl.Int32, "price": pl.Float64},
    )
    spend = rfm_table(_orders(), _lines(), products)
    assert dict(zip(spend["user_id"], spend["monetary"])) == pytest.approx(
        {1: 2 + 1.5 + 2 + 2 + 0, 2: 2 + 3, 4: 1.5 + 0 + 1.5 + 0 + 4 + 1.5, 5: 0.0}
    )
    # a catalogue without price -> item counts
    assert rfm_table(_orders(), _lines(), products.drop("price")).equals(rfm_table(_orders(), _lines()))

    # row order of the inputs does not matter
    shuffled = rfm_table(_orders().sample(fraction=1.0, shuffle=True, seed=3), _lines().sample(fraction=1.0, shuffle=True, seed=4))
    assert shuffled.equals(rfm_table(_orders(), _lines()))


# --------------------------------------------------------------------------- #
# labels from centroids
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "z, label",
    [
        ((1.0, 2.0, 2.0), "champions"),
        ((0.1, 1.5, 0.2), "loyal"),
        ((0.0, 0.2, 1.8), "big spenders"),
        ((1.2, -0.6, -0.5), "recent"),
        ((0.9, 0.3, 0.2), "potential loyalists"),
        ((-1.3, 1.2, 0.9), "at risk"),
        ((-1.4, -0.6, -0.5), "hibernating"),
        ((-1.0, 0.1, 0.0), "about to sleep"),
        ((0.0, -0.8, 0.1), "occasional"),
        ((-0.3, -0.4, -0.3), "needs attention"),
        ((0.1, 0.2, -0.1), "average"),
    ],
)
def test_label_centroid_rules(z, label):
    assert label_centroid(*z) == label


def test_label_centroids_are_unique_and_follow_segment_order():
    cents = np.array(
        [
            [1.0, 3.0, 2.0],  # champions
            [0.8, 1.5, 1.4],  # all high again -> next candidate: loyal (F >= M)
            [0.9, 1.2, 1.3],  # all high, M > F -> big spenders
            [0.7, 0.9, 0.6],  # all candidates taken -> suffixed
            [-1.4, -0.6, -0.5],  # hibernating
            [-1.8, -0.7, -0.6],  # hibernating taken -> lost
        ]
    )
    labels = label_centroids(cents)
    assert labels == ["champions", "loyal", "big spenders", "champions (2)", "hibernating", "lost"]
    assert len(set(labels)) == len(labels)
    frame = pl.DataFrame({"r_z": cents[:, 0], "f_z": cents[:, 1], "m_z": cents[:, 2]})
    assert label_centroids(frame) == labels


# --------------------------------------------------------------------------- #
# KMeans on realistic data
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def gen_rfm() -> pl.DataFrame:
    t = generate_instacart(300, seed=1)
    lines = pl.concat([t["order_products__prior"], t["order_products__train"]])
    orders = order_features(t["orders"], lines)
    return rfm_table(orders, lines)


def test_segment_users_outputs(gen_rfm):
    user_seg, cents, info = segment_users(gen_rfm, k=5, seed=42)
    assert user_seg.columns == USER_SEG_COLUMNS
    assert user_seg.height == gen_rfm.height == 300
    assert user_seg.schema["segment"] == pl.Int8 and user_seg.schema["hv"] == pl.Float64
    assert user_seg["hv"].to_numpy() == pytest.approx(
        (0.4 * user_seg["r_z"] + 0.3 * user_seg["f_z"] + 0.3 * user_seg["m_z"]).to_numpy()
    )
    # segment ids are meaningful: 0 = highest centroid hv, strictly decreasing
    assert cents["segment"].to_list() == [0, 1, 2, 3, 4]
    hv = cents["hv"].to_list()
    assert hv == sorted(hv, reverse=True) and len(set(hv)) == 5
    assert cents["hv"].to_numpy() == pytest.approx(
        (0.4 * cents["r_z"] + 0.3 * cents["f_z"] + 0.3 * cents["m_z"]).to_numpy()
    )
    # centroid = members' mean z; counts and shares add up
    means = user_seg.group_by("segment").agg(pl.col("r_z", "f_z", "m_z", "hv").mean()).sort("segment")
    for col in ("r_z", "f_z", "m_z", "hv"):
        assert means[col].to_numpy() == pytest.approx(cents[col].to_numpy())
    assert cents["users"].sum() == 300 and cents["share"].sum() == pytest.approx(1.0)
    # labels are derived from the centroids, unique, and consistent per user
    assert cents["segment_label"].to_list() == label_centroids(cents)
    assert cents["segment_label"].n_unique() == 5
    assert cents["segment_label"][0] == "champions"  # the top cluster is high on R, F and M
    pairs = user_seg.select("segment", "segment_label").unique().sort("segment")
    assert pairs.equals(cents.select("segment", "segment_label"))
    # info
    assert info["users"] == 300 and info["fit_users"] == 300
    assert info["inertia"] > 0 and -1.0 <= info["silhouette"] <= 1.0
    X = user_seg.select("r_z", "f_z", "m_z").to_numpy()
    cz = cents.select("r_z", "f_z", "m_z").to_numpy()[user_seg["segment"].to_numpy()]
    assert info["inertia"] == pytest.approx(float(((X - cz) ** 2).sum()))


def test_segment_users_deterministic_and_order_independent(gen_rfm):
    a, ca, ia = segment_users(gen_rfm, k=5, seed=42)
    b, cb, ib = segment_users(gen_rfm, k=5, seed=42)
    assert a.equals(b) and ca.equals(cb)
    assert ia["inertia"] == ib["inertia"] and ia["silhouette"] == ib["silhouette"]
    shuffled = gen_rfm.sample(fraction=1.0, shuffle=True, seed=11)
    assert not shuffled["user_id"].equals(gen_rfm["user_id"])
    c, cc, _ = segment_users(shuffled, k=5, seed=42)
    assert c.equals(a) and cc.equals(ca)
    # fitting on a sample is deterministic too and still assigns every user
    s1, _, i1 = segment_users(gen_rfm, k=4, seed=7, sample_for_fit=150)
    s2, _, _ = segment_users(shuffled, k=4, seed=7, sample_for_fit=150)
    assert s1.equals(s2) and s1.height == 300 and i1["fit_users"] == 150
    with pytest.raises(ValueError):
        segment_users(gen_rfm.head(3), k=5)


def test_silhouette_matches_sklearn():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3))
    X[:10] = X[0]  # duplicates
    labels = rng.integers(0, 4, 600)
    labels[-1] = 9  # a singleton cluster scores 0
    assert silhouette_euclidean(X, labels, block=128) == pytest.approx(silhouette_score(X, labels), abs=1e-9)


# --------------------------------------------------------------------------- #
# segment popularity
# --------------------------------------------------------------------------- #
def test_segment_popularity_lift_by_hand():
    user_seg = pl.DataFrame(
        {"user_id": [1, 2, 3], "segment": [0, 0, 1]}, schema={"user_id": pl.Int32, "segment": pl.Int8}
    )
    ratings = pl.DataFrame(
        {
            "user_id": [1, 1, 2, 2, 3, 3, 9],  # user 9 is not segmented: ignored
            "product_id": [A, B, A, C, A, C, A],
            "purchases": [3, 2, 1, 2, 2, 6, 100],
        },
        schema={"user_id": pl.Int32, "product_id": pl.Int32, "purchases": pl.Int32},
    )
    # totals: segment 0 = 8, segment 1 = 8, all = 16; A = 6, B = 2, C = 8
    # overall_share: A 6/16 = .375, B 2/16 = .125, C 8/16 = .5
    sp = segment_popularity(user_seg, ratings)
    assert dict(sp.schema) == SEGMENT_POPULARITY_SCHEMA
    expected = [
        # segment, product, buyers, purchases, share, overall_share, lift, rank
        (0, A, 2, 4, 0.5, 0.375, 4 / 3, 1),
        (0, B, 1, 2, 0.25, 0.125, 2.0, 2),  # ties with C on purchases: lower id first
        (0, C, 1, 2, 0.25, 0.5, 0.5, 3),
        (1, C, 1, 6, 0.75, 0.5, 1.5, 1),
        (1, A, 1, 2, 0.25, 0.375, 2 / 3, 2),
    ]
    rows = sp.rows()
    assert [r[:4] + (r[7],) for r in rows] == [e[:4] + (e[7],) for e in expected]
    for got, exp in zip(rows, expected):
        assert got[4:7] == pytest.approx(exp[4:7])

    top2 = segment_popularity(user_seg, ratings, top_n=2)
    assert top2.select("segment", "product_id").rows() == [(0, A), (0, B), (1, C), (1, A)]
    top1 = segment_popularity(user_seg, ratings.sample(fraction=1.0, shuffle=True, seed=5), top_n=1)
    assert top1["product_id"].to_list() == [A, C] and top1["lift"].to_list() == pytest.approx([4 / 3, 1.5])


def test_centroids_from_user_seg_match_the_fit():
    import numpy as np

    from insightflow_assets.segmentation.rfm import centroids_from_user_seg, segment_users

    rng = np.random.default_rng(3)
    rfm = pl.DataFrame(
        {
            "user_id": np.arange(1, 401, dtype=np.int32),
            "recency_days": rng.integers(0, 31, 400).astype(float),
            "frequency": rng.integers(1, 60, 400).astype(np.int32),
            "monetary": rng.integers(1, 600, 400).astype(float),
        }
    )
    for col, sign in (("recency_days", -1), ("frequency", 1), ("monetary", 1)):
        z = (rfm[col] - rfm[col].mean()) / rfm[col].std(ddof=0)
        rfm = rfm.with_columns((sign * z).alias({"recency_days": "r_z", "frequency": "f_z", "monetary": "m_z"}[col]))
    user_seg, centroids, _ = segment_users(rfm, k=4, seed=1)
    derived = centroids_from_user_seg(user_seg)
    assert derived["segment"].to_list() == centroids["segment"].to_list()
    assert derived["segment_label"].to_list() == centroids["segment_label"].to_list()
    for col in ("users", "share", "r_z", "f_z", "m_z", "recency_days", "frequency", "monetary", "hv"):
        assert np.allclose(derived[col].to_numpy(), centroids[col].to_numpy()), col
