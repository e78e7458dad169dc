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
    add_z_scores,
    label_centroid,
    label_centroids,
    parse_reference_date,
    rfm_definition,
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
    """Population z-scores of log1p(max(v, 0)) -- the transform of ``add_z_scores``."""
    logs = [math.log1p(max(v, 0.0)) for v in values]
    mean = sum(logs) / len(logs)
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / len(logs))
    return [sign * (v - mean) / std for v in logs]


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
    # two values only (log 4, log 2): symmetric around their mean whatever the transform
    assert rfm["f_z"].to_list() == pytest.approx([1.0, -1.0, 1.0, -1.0])
    assert rfm["m_z"].to_list() == pytest.approx(_z(M))
    # z of the logs, not of the days: log1p R = ln 11, ln 6, ln 2, ln 13
    logs = [math.log(11), math.log(6), math.log(2), math.log(13)]
    mean = sum(logs) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / 4)
    assert rfm["r_z"][0] == pytest.approx(-(math.log(11) - mean) / std)
    assert rfm["r_z"][0] != pytest.approx(-(10 - 7) / math.sqrt(18.5))  # the raw-days z of before
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


def test_instacart_form_keeps_its_definitions_and_ignores_quantities():
    """Without order_ts: R/F/M relative to the target exactly as by hand (EXPECTED), even when the
    lines carry quantity / unit_price, and a reference date has no effect."""
    lines = _lines().with_columns(quantity=pl.lit(3, pl.Int32), unit_price=pl.lit(9.99, pl.Float64))
    assert rfm_definition(_orders()) == "instacart"
    rfm = rfm_table(_orders(), lines, reference_time=parse_reference_date("2030-01-01"))
    got = {r["user_id"]: (r["recency_days"], r["frequency"], r["monetary"]) for r in rfm.iter_rows(named=True)}
    assert got == EXPECTED
    assert rfm.equals(rfm_table(_orders(), _lines()))


# --------------------------------------------------------------------------- #
# RFM, dated form (transactions input)
# --------------------------------------------------------------------------- #
def _dated_orders() -> pl.DataFrame:
    from datetime import datetime as dt

    rows = [
        # customer 1: three orders, the last on Jan 10 08:00
        (11, 1, 1, dt(2011, 1, 1, 10)), (12, 1, 2, dt(2011, 1, 5, 12)), (13, 1, 3, dt(2011, 1, 10, 8)),
        # customer 2: one order
        (21, 2, 1, dt(2011, 1, 3)),
        # customer 3: two orders, the last is the latest of the data (Jan 12 06:00)
        (31, 3, 1, dt(2011, 1, 8, 18)), (32, 3, 2, dt(2011, 1, 12, 6)),
    ]  # fmt: skip
    return pl.DataFrame(
        rows,
        schema={"order_id": pl.Int32, "user_id": pl.Int32, "order_number": pl.Int16, "order_ts": pl.Datetime("us")},
        orient="row",
    ).with_columns(eval_set=pl.lit("prior"), days_since_prior_order=pl.lit(None, pl.Float32))


def _dated_lines() -> pl.DataFrame:
    rows = [
        (11, A, 2, 1.25), (11, B, 1, 3.10), (12, A, 3, 0.50), (13, C, 1, 10.0), (13, D, None, 4.0),
        (21, E, 4, 2.5),
        (31, A, 1, 1.25), (32, B, -1, 3.10), (32, C, 2, 10.0),  # a return counts negative
    ]  # fmt: skip
    return pl.DataFrame(
        rows,
        schema={"order_id": pl.Int32, "product_id": pl.Int32, "quantity": pl.Int32, "unit_price": pl.Float64},
        orient="row",
    )


def test_rfm_dated_form_by_hand():
    from datetime import datetime as dt

    orders, lines = _dated_orders(), _dated_lines()
    assert rfm_definition(orders) == "dated"
    rfm = rfm_table(orders, lines)
    assert rfm.columns == RFM_COLUMNS and rfm["user_id"].to_list() == [1, 2, 3]
    # reference = the latest order_ts (Jan 12 06:00): 1 day 22 h, 9 days 6 h, 0
    assert rfm["recency_days"].to_list() == pytest.approx([1 + 22 / 24, 9.25, 0.0])
    # F = every order of the whole history
    assert rfm["frequency"].to_list() == [3, 1, 2]
    # M = sum quantity x unit_price (a null quantity counts 0)
    assert rfm["monetary"].to_list() == pytest.approx([2 * 1.25 + 3.10 + 3 * 0.50 + 10.0, 10.0, 1.25 - 3.10 + 20.0])
    assert rfm["r_z"].to_list() == pytest.approx(_z([1 + 22 / 24, 9.25, 0.0], -1.0))
    assert rfm["m_z"].to_list() == pytest.approx(_z(rfm["monetary"].to_list()))

    explicit = rfm_table(orders, lines, reference_time=dt(2011, 1, 15))
    assert explicit["recency_days"].to_list() == pytest.approx([4 + 16 / 24, 12.0, 2.75])
    assert explicit["frequency"].equals(rfm["frequency"]) and explicit["monetary"].equals(rfm["monetary"])
    assert rfm_table(orders, lines, reference_time=parse_reference_date("2011-01-15T00:00:00")).equals(explicit)

    # without quantities: item count (or catalogue price) over the whole history, not per target
    counts = rfm_table(orders, lines.drop("quantity", "unit_price"))
    assert counts["monetary"].to_list() == [5.0, 1.0, 3.0]
    priced = pl.DataFrame({"product_id": [A, B, C, D, E], "price": [1.0, 2.0, 3.0, 4.0, 5.0]},
                          schema={"product_id": pl.Int32, "price": pl.Float64})  # fmt: skip
    assert rfm_table(orders, lines.drop("quantity"), priced)["monetary"].to_list() == pytest.approx([1 + 2 + 1 + 3 + 4, 5.0, 1 + 2 + 3])
    # the population is the given users; their raw values do not move
    two = rfm_table(orders, lines, users=[3, 1])
    assert two["user_id"].to_list() == [1, 3] and two["recency_days"].to_list() == pytest.approx([1 + 22 / 24, 0.0])
    # a reference before the latest order would make recency negative
    with pytest.raises(ValueError, match="before the latest order_ts"):
        rfm_table(orders, lines, reference_time=dt(2011, 1, 11))


def test_parse_reference_date():
    from datetime import datetime as dt

    assert parse_reference_date(None) is None and parse_reference_date(" ") is None
    assert parse_reference_date("2011-12-10") == dt(2011, 12, 10)
    assert parse_reference_date("2011-12-10T12:30") == dt(2011, 12, 10, 12, 30)
    for bad in ("10/12/2011", "yesterday", "2011-13-01"):
        with pytest.raises(ValueError, match=r"^rfm\.reference_date: .* is not an ISO date") as err:
            parse_reference_date(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="time zone"):
        parse_reference_date("2011-12-10T00:00:00+02:00")


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
    with pytest.raises(ValueError, match="need at least k=5 users"):
        segment_users(gen_rfm.head(3), k=5)
    # the default chooses k; every segment keeps >= 2 % of the users
    auto, cauto, iauto = segment_users(gen_rfm)
    assert 3 <= iauto["k"] <= 8 and cauto["share"].min() >= 0.02 and auto.height == 300


# --------------------------------------------------------------------------- #
# heavy tails, k selection, minimum segment share
# --------------------------------------------------------------------------- #
def _heavy_tailed(n: int = 3_000, seed: int = 5) -> pl.DataFrame:
    """Lognormal F and M (spend ~ orders x basket) plus six wholesale-like buyers with ~1,000
    orders: the shape of real transaction data (UCI), where raw z-scores isolate a few users."""
    rng = np.random.default_rng(seed)
    f = np.maximum(1, np.round(rng.lognormal(np.log(8), 0.9, n))).astype(np.int32)
    m = np.round(f * rng.lognormal(np.log(25), 0.6, n), 2)
    f[:6] = rng.integers(900, 1500, 6)
    m[:6] = f[:6] * 400.0
    return pl.DataFrame(
        {"user_id": np.arange(1, n + 1, dtype=np.int32), "recency_days": rng.integers(0, 60, n).astype(float),
         "frequency": f, "monetary": m}
    )  # fmt: skip


def test_heavy_tails_give_no_micro_segment():
    from sklearn.cluster import KMeans

    raw = _heavy_tailed()
    # the former model: KMeans k=5 on z-scores of the raw values -> a segment of 6 users (0.2 %)
    X = raw.select("recency_days", "frequency", "monetary").to_numpy().astype(float)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    old = np.bincount(KMeans(n_clusters=5, n_init=10, random_state=42).fit(Z).labels_) / raw.height
    assert old.min() < 0.02

    rfm = add_z_scores(raw)
    # the log transform alone already avoids it at k = 5, without any merge
    _, cents5, info5 = segment_users(rfm, k=5, seed=42)
    assert cents5.height == 5 and cents5["share"].min() >= 0.02 and info5["k_selection"]["merged"] == []
    # and the default (k chosen in [3, 8]) keeps every segment >= 2 %
    user_seg, cents, info = segment_users(rfm, seed=42)
    assert cents["share"].min() >= 0.02 and info["k_selection"]["merged"] == []
    assert user_seg["segment"].n_unique() == info["k"] == cents.height
    # raw units are kept: the wholesale buyers are still there with their ~1,000 orders
    assert user_seg.filter(pl.col("user_id") <= 6)["frequency"].min() >= 900
    assert user_seg.filter(pl.col("user_id") <= 6)["segment"].n_unique() <= 2


def test_auto_k_selection_recorded_and_deterministic():
    rfm = add_z_scores(_heavy_tailed())
    user_seg, cents, info = segment_users(rfm, seed=42)
    sel = info["k_selection"]
    cands = sel["candidates"]
    assert [c["k"] for c in cands] == [3, 4, 5, 6, 7, 8]
    assert all(set(c) == {"k", "min_share", "silhouette", "admissible"} for c in cands)
    assert all(c["admissible"] == (c["min_share"] >= 0.02) for c in cands)
    assert not all(c["admissible"] for c in cands)  # k = 8 splits off the wholesale buyers
    best = max((c for c in cands if c["admissible"]), key=lambda c: (c["silhouette"], -c["k"]))
    assert sel["chosen_k"] == best["k"] == info["k"] and "silhouette" in sel["criterion"]
    assert info["min_segment_share"] == 0.02 and info["n_init_candidates"] == 3
    # same set of users, any row order -> the same segmentation and the same record
    again = segment_users(rfm.sample(fraction=1.0, shuffle=True, seed=2), seed=42)
    assert again[0].equals(user_seg) and again[1].equals(cents) and again[2]["k_selection"] == sel
    # fitting on a sample of users is deterministic too
    a = segment_users(rfm, seed=7, sample_for_fit=1_000)
    b = segment_users(rfm.reverse(), seed=7, sample_for_fit=1_000)
    assert a[0].equals(b[0]) and a[2]["fit_users"] == 1_000 and a[2]["k_selection"] == b[2]["k_selection"]
    # a fixed k is recorded as its one candidate
    fixed = segment_users(rfm, k=4, seed=42)[2]["k_selection"]
    assert fixed["chosen_k"] == 4 and [c["k"] for c in fixed["candidates"]] == [4] and "fixed k=4" in fixed["criterion"]


def test_k_selection_ties_go_to_the_smaller_k(monkeypatch):
    from insightflow_assets.segmentation import rfm as rfm_module

    # every candidate scores the same: the smallest admissible k wins
    monkeypatch.setattr(rfm_module, "silhouettes", lambda X, labelings, **kw: [0.25] * len(labelings))
    info = segment_users(add_z_scores(_heavy_tailed()), seed=42)[2]
    sel = info["k_selection"]
    assert [c["silhouette"] for c in sel["candidates"]] == [0.25] * 6
    assert sel["chosen_k"] == min(c["k"] for c in sel["candidates"] if c["admissible"]) == 3


def _blobs(sizes: list[int], centres: list[tuple[float, float, float]], seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    z = np.vstack([np.asarray(c) + rng.normal(0, 0.05, (s, 3)) for s, c in zip(sizes, centres)])
    n = z.shape[0]
    return pl.DataFrame(
        {"user_id": np.arange(1, n + 1, dtype=np.int32), "recency_days": np.ones(n), "frequency": np.ones(n, np.int32),
         "monetary": np.ones(n), "r_z": z[:, 0], "f_z": z[:, 1], "m_z": z[:, 2]}
    )  # fmt: skip


def test_small_segments_are_merged_into_the_nearest_larger_centroid():
    # 3 clear groups: 150 at the origin, 150 at (5, 5, 5), 4 users (1.3 %) at (4, 4, 4)
    rfm = _blobs([150, 150, 4], [(0, 0, 0), (5, 5, 5), (4, 4, 4)])
    user_seg, cents, info = segment_users(rfm, k_min=3, k_max=3, seed=42)
    sel = info["k_selection"]
    (cand,) = sel["candidates"]
    assert cand["k"] == 3 and cand["min_share"] == round(4 / 304, 6) and cand["admissible"] is False
    assert sel["chosen_k"] == 3 and "no k in [3, 3]" in sel["criterion"]
    assert info["k"] == 2 and cents["users"].to_list() == [154, 150] and cents["share"].min() >= 0.02
    (merge,) = sel["merged"]
    assert merge["users"] == 4 and merge["share"] == round(4 / 304, 6)
    assert merge["centroid"] == pytest.approx([4, 4, 4], abs=0.1)
    # into the (5, 5, 5) group, not the origin; labels and centroids follow the merged members
    seg = user_seg.sort("user_id")["segment"].to_list()
    assert merge["into_segment"] == seg[150] == seg[-1] != seg[0] == seg[149]
    assert merge["into_label"] == cents["segment_label"][merge["into_segment"]]
    means = user_seg.group_by("segment").agg(pl.col("r_z").mean()).sort("segment")["r_z"]
    assert means.to_numpy() == pytest.approx(cents["r_z"].to_numpy())
    # a fixed k is merged the same way
    fixed = segment_users(rfm, k=3, seed=42)
    assert fixed[2]["k"] == 2 and fixed[0].equals(user_seg) and "fixed k=3" in fixed[2]["k_selection"]["criterion"]
    # ... down to one segment when no two segments can both reach the share
    one = segment_users(_blobs([100, 100], [(0, 0, 0), (3, 3, 3)]), k=2, min_segment_share=0.6, seed=1)
    assert one[2]["k"] == 1 and one[1]["users"].to_list() == [200] and one[2]["silhouette"] is None
    assert segment_users(rfm, k=3, min_segment_share=0.0, seed=42)[2]["k"] == 3  # share 0: no merge
    with pytest.raises(ValueError, match="k_min"):
        segment_users(rfm, k_min=5, k_max=4)


def test_segment_checks():
    from insightflow_assets.segmentation.assets import no_empty_segment, no_segment_below_min_share
    from resources.params import RfmParams

    user_seg, _, _ = segment_users(_blobs([150, 150, 4], [(0, 0, 0), (5, 5, 5), (4, 4, 4)]), seed=42)
    assert no_empty_segment(user_seg=user_seg).passed
    assert no_segment_below_min_share(user_seg=user_seg, rfm=RfmParams()).passed
    tiny = user_seg.with_columns(
        segment=pl.when(pl.col("user_id") <= 3).then(pl.lit(2, pl.Int8)).otherwise("segment"),
        segment_label=pl.when(pl.col("user_id") <= 3).then(pl.lit("tiny")).otherwise("segment_label"),
    )
    result = no_segment_below_min_share(user_seg=tiny, rfm=RfmParams())
    assert not result.passed and result.metadata["smallest_share"].value == pytest.approx(3 / 304)
    assert no_segment_below_min_share(user_seg=tiny, rfm=RfmParams(min_segment_share=0.0)).passed
    assert no_empty_segment(user_seg=tiny).passed
    gap = user_seg.with_columns(pl.col("segment").replace(1, 5))  # ids 0 and 5: segments 1..4 are empty
    assert not no_empty_segment(user_seg=gap).passed
    one = user_seg.with_columns(segment=pl.lit(0, pl.Int8), segment_label=pl.lit("all"))
    assert no_empty_segment(user_seg=one).passed
    assert no_segment_below_min_share(user_seg=one, rfm=RfmParams(min_segment_share=0.9)).passed


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
