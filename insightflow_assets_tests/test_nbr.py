"""Hand-computed tests for insightflow_assets.nbr (TIFU-KNN next-basket recommendations)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from insightflow_assets.data.generate import generate_instacart
from insightflow_assets.nbr.tifu import (
    SOURCE,
    TifuParams,
    neighbour_lists,
    score_users,
    tifu_knn_recommend,
    tifu_knn_recommend_many,
)
from insightflow_assets.nbr.vectors import (
    basket_weights,
    previous_basket_cutoffs,
    target_cutoffs,
    tifu_user_vectors,
)
from insightflow_assets.ratings.build import build_ratings

A, B, C, D, E = 10, 20, 30, 40, 50

# (order_id, user_id, eval_set, order_number)
_ORDERS = [
    # user 1: four baskets before the train order 15
    (11, 1, "prior", 1), (12, 1, "prior", 2), (13, 1, "prior", 3), (14, 1, "prior", 4),
    (15, 1, "train", 5),
    # user 2: three baskets before the train order 24
    (21, 2, "prior", 1), (22, 2, "prior", 2), (23, 2, "prior", 3), (24, 2, "train", 4),
    # user 3: a test order (no lines) -> target = order 32, one basket before it
    (31, 3, "prior", 1), (32, 3, "prior", 2), (33, 3, "test", 3),
    # user 4: the target is the first order -> no history
    (41, 4, "train", 1),
]
# (order_id, product_id); orders interleaved and order 14 split in two runs on purpose
_LINES = [
    (11, A),
    (21, A), (21, B),
    (12, A), (12, B),
    (13, B),
    (22, C),
    (14, A),
    (23, B), (23, E),
    (14, C),
    (15, A), (15, E),
    (24, B),
    (31, D),
    (32, D), (32, E),
    (41, A),
]
# group_size 2, within 0.5, group 0.25: distinct decays catch a swapped exponent
PARAMS = {"group_size": 2, "within_decay": 0.5, "group_decay": 0.25}


def _orders() -> pl.DataFrame:
    return pl.DataFrame(
        _ORDERS,
        schema={"order_id": pl.Int32, "user_id": pl.Int32, "eval_set": pl.String, "order_number": pl.Int16},
        orient="row",
    )


def _lines() -> pl.DataFrame:
    return pl.DataFrame(_LINES, schema={"order_id": pl.Int32, "product_id": pl.Int32}, orient="row")


def _vectors(**params):
    orders, lines = _orders(), _lines()
    return tifu_user_vectors(orders, lines, target_cutoffs(orders, lines), **(params or PARAMS))


def _dense(x, users, items) -> dict[int, dict[int, float]]:
    m = x.toarray()
    return {int(u): {int(i): float(m[r, c]) for c, i in enumerate(items) if m[r, c]} for r, u in enumerate(users)}


# --------------------------------------------------------------------------- #
# vectors
# --------------------------------------------------------------------------- #
def test_target_cutoffs_follow_the_project_rule():
    cut = target_cutoffs(_orders(), _lines())
    # train order if any, else the last order with lines (user 3: order 32, not the test order 33)
    assert cut.rows() == [(1, 5), (2, 4), (3, 2), (4, 1)]


def test_basket_weights_group_from_the_most_recent_basket():
    w = basket_weights(_orders(), _lines(), target_cutoffs(_orders(), _lines()), **PARAMS)
    got = {r[0]: (r[1], r[2], r[3]) for r in w.select("order_id", "back", "group", "weight").rows()}
    # weight = 0.5 ** (back % 2) / size(group) * 0.25 ** group / n_groups
    assert got == {
        # user 1, 4 baskets -> groups {13, 14} and {11, 12}, both of size 2, 2 groups
        14: (0, 0, 1.0 / 2 * 1.0 / 2),  # 0.25
        13: (1, 0, 0.5 / 2 * 1.0 / 2),  # 0.125
        12: (2, 1, 1.0 / 2 * 0.25 / 2),  # 0.0625
        11: (3, 1, 0.5 / 2 * 0.25 / 2),  # 0.03125
        # user 2, 3 baskets -> groups {22, 23} and the partial oldest group {21} (size 1)
        23: (0, 0, 1.0 / 2 * 1.0 / 2),  # 0.25
        22: (1, 0, 0.5 / 2 * 1.0 / 2),  # 0.125
        21: (2, 1, 1.0 / 1 * 0.25 / 2),  # 0.125 (grouping from the first basket would give 0.25 * 0.5 / 2)
        # user 3, 1 basket (order 31; 32 is the target) -> weight 1
        31: (0, 0, 1.0),
    }


def test_tifu_vectors_hand_computed():
    x, users, items = _vectors()
    assert isinstance(x, sp.csr_matrix) and x.dtype == np.float32
    assert users.tolist() == [1, 2, 3]  # user 4 has no basket before its target
    assert items.tolist() == [A, B, C, D, E]  # only products of the baskets used
    assert _dense(x, users, items) == {
        # user 1: A in 14, 12, 11 = 0.25 + 0.0625 + 0.03125; B in 13, 12; C in 14
        1: {A: 0.34375, B: 0.1875, C: 0.25},
        # user 2: A in 21; B in 21 and 23 = 0.125 + 0.25; C in 22; E in 23
        2: {A: 0.125, B: 0.375, C: 0.125, E: 0.25},
        3: {D: 1.0},
    }


def test_paper_decays_on_one_group():
    # group_size >= history: one group, mean of 0.9 ** (baskets from the last one)
    x, users, items = _vectors(group_size=10, within_decay=0.9, group_decay=0.7)
    got = _dense(x, users, items)[1]
    # user 1: 11 {A}: 0.9^3, 12 {A, B}: 0.9^2, 13 {B}: 0.9, 14 {A, C}: 1, mean over 4 baskets
    assert got[A] == pytest.approx((0.729 + 0.81 + 1.0) / 4)
    assert got[B] == pytest.approx((0.81 + 0.9) / 4)
    assert got[C] == pytest.approx(1.0 / 4)


def test_catalogue_fixes_the_columns():
    orders, lines = _orders(), _lines()
    x, _, items = tifu_user_vectors(orders, lines, target_cutoffs(orders, lines), item_ids=[A, C, 99], **PARAMS)
    assert items.tolist() == [A, C, 99]
    np.testing.assert_array_equal(x.toarray(), [[0.34375, 0.25, 0], [0.125, 0.125, 0], [0, 0, 0]])


def test_validation_cutoff_is_the_basket_before_the_target():
    orders, lines = _orders(), _lines()
    prev = previous_basket_cutoffs(orders, lines, target_cutoffs(orders, lines))
    assert prev.rows() == [(1, 4, 14), (2, 3, 23), (3, 1, 31)]
    x, users, items = tifu_user_vectors(orders, lines, prev.select("user_id", "cutoff"), **PARAMS)
    assert users.tolist() == [1, 2]  # user 3 has no basket before order 31
    # user 2 before order 23: baskets 21, 22 -> one group of 2: 21 weighs 0.5 / 2, 22 weighs 1 / 2
    assert _dense(x, users, items)[2] == {A: 0.25, B: 0.25, C: 0.5}


def test_support_matches_the_ratings(small_tables):
    orders = small_tables["orders"]
    lines = pl.concat([small_tables["order_products__prior"], small_tables["order_products__train"]])
    x, users, items = tifu_user_vectors(orders, lines, target_cutoffs(orders, lines))
    coo = x.tocoo()
    pairs = sorted(zip(users[coo.row].tolist(), items[coo.col].tolist()))
    ratings = build_ratings(orders.with_columns(is_first_order=pl.col("order_number") == 1), lines)
    assert pairs == ratings.select("user_id", "product_id").rows()
    assert (x.data > 0).all()


# --------------------------------------------------------------------------- #
# recommendations
# --------------------------------------------------------------------------- #
# squared euclidean distances of the hand-computed vectors:
#   |u1 - u2|^2 = 0.21875^2 + 0.1875^2 + 0.125^2 + 0.25^2 = 0.1611328125
#   |u1 - u3|^2 = |u1|^2 + 1 = 1.2158203125,  |u2 - u3|^2 = |u2|^2 + 1 = 1.234375
# so with k = 1: NN(1) = 2, NN(2) = 1, NN(3) = 1.
EXACT = {"neighbor_space": "exact", "cluster_size": 1}


def _lists(recs: pl.DataFrame) -> dict[int, list[tuple[int, float, str]]]:
    assert recs.schema == pl.Schema(
        {"user_id": pl.Int32, "rank": pl.Int32, "product_id": pl.Int32, "score": pl.Float32, "source": SOURCE}
    )
    assert recs.equals(recs.sort("user_id", "rank"))
    out: dict[int, list] = {}
    for u, r, p, s, src in recs.rows():
        out.setdefault(u, []).append((p, pytest.approx(s, abs=1e-6), src))
        assert r == len(out[u])
    return out


def test_neighbour_brings_the_explore_item():
    x, users, items = _vectors()
    recs = tifu_knn_recommend(x, users, items, [1, 2, 3, 4], 10, k_neighbors=1, alpha=0.9, **EXACT)
    got = _lists(recs)
    # user 1: p = 0.9 u1 + 0.1 u2
    #   A 0.9 * 0.34375 + 0.1 * 0.125 = 0.321875, C 0.225 + 0.0125 = 0.2375,
    #   B 0.16875 + 0.0375 = 0.20625, E (never bought, from user 2) 0.1 * 0.25 = 0.025;
    #   D (user 3's, not a neighbour) is not recommended. User 1's target basket is {A, E}.
    assert got[1] == [
        (A, 0.321875, "repeat"), (C, 0.2375, "repeat"), (B, 0.20625, "repeat"), (E, 0.025, "neighbors"),
    ]
    # user 2: p = 0.9 u2 + 0.1 u1; every item of u1 is already user 2's
    assert got[2] == [
        (B, 0.9 * 0.375 + 0.1 * 0.1875, "repeat"),  # 0.35625
        (E, 0.9 * 0.25, "repeat"),  # 0.225
        (A, 0.9 * 0.125 + 0.1 * 0.34375, "repeat"),  # 0.146875
        (C, 0.9 * 0.125 + 0.1 * 0.25, "repeat"),  # 0.1375
    ]
    # user 3: p = 0.9 u3 + 0.1 u1 -> D, then user 1's items
    assert got[3] == [(D, 0.9, "repeat"), (A, 0.034375, "neighbors"), (C, 0.025, "neighbors"), (B, 0.01875, "neighbors")]
    assert 4 not in got  # no history: nothing, the caller tops up


def test_top_n_cut_and_ties():
    x, users, items = _vectors()
    recs = tifu_knn_recommend(x, users, items, [3], 2, k_neighbors=2, alpha=0.5, **EXACT)
    # user 3 with both others: p = 0.5 D + 0.5 * (u1 + u2) / 2
    #   D 0.5; B (0.1875 + 0.375) / 4 = 0.140625; A (0.34375 + 0.125) / 4 = 0.1171875
    assert _lists(recs) == {3: [(D, 0.5, "repeat"), (B, 0.140625, "neighbors")]}
    # k larger than the population: every other user, never the user itself
    recs = tifu_knn_recommend(x, users, items, [1], 10, k_neighbors=50, alpha=0.0, **EXACT)
    # alpha 0: only the neighbours' mean (u2 + u3) / 2; A and C tie at 0.0625 -> lower id first
    assert _lists(recs)[1] == [
        (D, 0.5, "neighbors"), (B, 0.1875, "repeat"), (E, 0.125, "neighbors"), (A, 0.0625, "repeat"), (C, 0.0625, "repeat"),
    ]


def test_alpha_one_is_the_users_own_vector():
    x, users, items = _vectors()
    recs = tifu_knn_recommend(x, users, items, None, 10, k_neighbors=1, alpha=1.0, **EXACT)
    assert recs.get_column("source").unique().to_list() == ["repeat"]
    assert _lists(recs)[1] == [(A, 0.34375, "repeat"), (C, 0.25, "repeat"), (B, 0.1875, "repeat")]


def _brute_force(x: np.ndarray, users_lists: dict[int, np.ndarray], alpha: float, n: int):
    """Dense reference: p = alpha u + (1 - alpha) mean(u_nn); top-n of p > 0,
    score desc then item asc; source repeat when u > 0."""
    out = {}
    for r, nn in users_lists.items():
        p = alpha * x[r] + (1 - alpha) * x[nn].mean(axis=0)
        cand = np.flatnonzero(p > 0)
        order = cand[np.lexsort((cand, -p[cand]))][:n]
        out[r] = [(int(i), pytest.approx(float(p[i]), rel=1e-5), "repeat" if x[r, i] > 0 else "neighbors") for i in order]
    return out


@pytest.mark.parametrize(
    "space, cluster_size", [("exact", 1), ("exact", 4), ("svd", 1), ("svd", 5), ("factors", 3)]
)
def test_matches_a_dense_brute_force(space, cluster_size):
    rng = np.random.default_rng(3)
    dense = rng.random((60, 40)) * (rng.random((60, 40)) < 0.15)
    dense[7] = 0.0  # a user without history in a pre-built matrix still scores (neighbours only)
    x = sp.csr_matrix(dense.astype(np.float32))
    users, items = np.arange(100, 160), np.arange(1000, 1040)
    kw = {"k_neighbors": 6, "neighbor_space": space, "cluster_size": cluster_size, "dim": 8, "seed": 5}
    factors = rng.random((60, 4)).astype(np.float32) if space == "factors" else None
    hoods = neighbour_lists(x, None, factors=factors, **kw)
    recs = score_users(x, users, items, np.arange(60), hoods, 7, alpha=0.7)
    # each user's neighbours: its cluster's list without itself, first k
    want = {}
    for r in range(60):
        lst = hoods.lists[np.searchsorted(hoods.clusters, hoods.labels[r])]
        want[r] = lst[lst != r][: hoods.k]
        assert want[r].size == 6 and r not in want[r]
    got = {u - 100: [(p - 1000, s, src) for p, s, src in v] for u, v in _lists(recs).items()}
    assert got == _brute_force(x.toarray().astype(np.float64), want, 0.7, 7)


def test_exact_space_finds_the_exact_neighbours():
    rng = np.random.default_rng(4)
    x = sp.csr_matrix((rng.random((30, 25)) * (rng.random((30, 25)) < 0.3)).astype(np.float32))
    hoods = neighbour_lists(x, None, k_neighbors=5, neighbor_space="exact", cluster_size=1)
    d = x.toarray().astype(np.float64)
    for r in range(30):
        dist = ((d - d[r]) ** 2).sum(axis=1)
        want = np.lexsort((np.arange(30), dist))[:6]
        assert np.sort(hoods.lists[r]).tolist() == np.sort(want).tolist()


@pytest.fixture(scope="module")
def generated():
    tables = generate_instacart(400, seed=11, test_share=0.1)
    orders = tables["orders"]
    lines = pl.concat([tables["order_products__prior"], tables["order_products__train"]])
    return tifu_user_vectors(orders, lines, target_cutoffs(orders, lines))


def test_deterministic_for_a_seed(generated):
    x, users, items = generated
    kw = TifuParams(k_neighbors=50, cluster_size=8).knn_kwargs()
    first = tifu_knn_recommend(x, users, items, None, 20, **kw)
    again = tifu_knn_recommend(x.copy(), users.copy(), items.copy(), None, 20, **kw)
    assert first.height == 20 * users.size
    assert first.equals(again)
    # a subset of users gets exactly their rows of the full run
    some = users[::7]
    sub = tifu_knn_recommend(x, users, items, pl.Series(some), 20, **kw)
    assert sub.equals(first.filter(pl.col("user_id").is_in(some.tolist())))


def test_a_grid_shares_work_not_results(generated):
    """Model selection scores a grid of k and alpha on one set of vectors in one call."""
    x, users, items = generated
    grid = [
        {"k_neighbors": 30, "alpha": 0.7, "cluster_size": 8},
        {"k_neighbors": 60, "alpha": 0.7, "cluster_size": 8},
        {"k_neighbors": 60, "alpha": 0.9, "cluster_size": 8},
        {"k_neighbors": 60, "alpha": 0.9, "cluster_size": 1},
        {"k_neighbors": 10, "alpha": 0.5, "neighbor_space": "exact", "cluster_size": 4},
    ]
    some = users[::3]
    together = tifu_knn_recommend_many(x, users, items, some, 10, grid)
    for config, got in zip(grid, together):
        assert got.equals(tifu_knn_recommend(x, users, items, some, 10, **config))


def test_vectors_do_not_depend_on_the_order_of_the_lines(small_tables):
    orders = small_tables["orders"]
    lines = pl.concat([small_tables["order_products__prior"], small_tables["order_products__train"]])
    cut = target_cutoffs(orders, lines)
    x, users, items = tifu_user_vectors(orders, lines, cut)
    y, users2, items2 = tifu_user_vectors(orders, lines.sample(fraction=1.0, shuffle=True, seed=1), cut)
    # float32 sums added oldest basket first whatever the line order: equal to the last bit
    assert (x != y).nnz == 0
    assert users.tolist() == users2.tolist() and items.tolist() == items2.tolist()


def test_repeat_items_are_the_users_own(generated):
    x, users, items = generated
    recs = tifu_knn_recommend(x, users, items, None, 20, k_neighbors=30, cluster_size=8)
    own = x.tocoo()
    bought = pl.DataFrame({"user_id": users[own.row], "product_id": items[own.col], "_own": True})
    flagged = recs.join(bought, on=["user_id", "product_id"], how="left")
    assert (flagged["_own"].fill_null(False) == (flagged["source"] == "repeat")).all()
    # scores never increase down a list
    assert (recs.with_columns(d=pl.col("score").diff().over("user_id")).get_column("d").drop_nulls() <= 0).all()


def test_without_decay_the_own_vector_is_p_topfreq():
    """No decay, one group, alpha 1: u = purchases / baskets, so the lists are
    P-TopFreq's exactly (same ties: product_id asc)."""
    from insightflow_assets.evaluation.baselines import p_topfreq

    tables = generate_instacart(300, seed=2, test_share=0.2)
    orders = tables["orders"].with_columns(is_first_order=pl.col("order_number") == 1)
    lines = pl.concat([tables["order_products__prior"], tables["order_products__train"]])
    x, users, items = tifu_user_vectors(
        orders, lines, target_cutoffs(orders, lines), group_size=1000, within_decay=1.0, group_decay=1.0
    )
    recs = tifu_knn_recommend(x, users, items, None, 20, k_neighbors=10, alpha=1.0)
    want = p_topfreq(build_ratings(orders, lines), users, 20)
    assert recs.select("user_id", "rank", "product_id").equals(want.select("user_id", "rank", "product_id"))


def test_no_dense_users_by_items_matrix():
    """20,000 users x a 50,000-item catalogue: a dense float32 matrix would be
    4 GB; the whole fit + top-20 stays far below that."""
    tables = generate_instacart(20_000, seed=5)
    orders = tables["orders"]
    lines = pl.concat([tables["order_products__prior"], tables["order_products__train"]])
    tracemalloc.start()
    try:
        x, users, items = tifu_user_vectors(orders, lines, target_cutoffs(orders, lines), item_ids=np.arange(1, 50_001))
        recs = tifu_knn_recommend(x, users, items, None, 20, k_neighbors=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.shape == (20_000, 50_000)
    assert recs.height == 20 * 20_000
    assert peak < 600 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_a_single_user_has_no_neighbour_and_still_gets_their_own_items():
    # one user to learn from (a tiny event log after the interaction filters): k = 0 neighbours
    x, users, items = _vectors()
    keep = [0]
    recs = tifu_knn_recommend(x[keep], users[keep], items, None, 10, k_neighbors=5, alpha=0.9, **EXACT)
    got = _lists(recs)
    assert list(got) == [users[0]] and {s for _, _, s in got[users[0]]} == {"repeat"}
    assert [i for i, _, _ in got[users[0]]] == [A, C, B]


@pytest.mark.parametrize("cores", [1, 3])
def test_same_lists_on_one_core_and_several(generated, monkeypatch, cores):
    """Blocks of clusters are scored in threads (`parallel.map_blocks`): the lists never depend
    on how many run at once."""
    import insightflow_assets.parallel as parallel

    x, users, items = generated
    kw = {k: v for k, v in TifuParams(k_neighbors=50, cluster_size=8).knn_kwargs().items() if k != "alpha"}
    hoods = neighbour_lists(x, None, **kw)
    rows = np.arange(users.size)
    monkeypatch.setattr(parallel, "usable_cores", lambda: 1)
    serial = score_users(x, users, items, rows, hoods, 20, alpha=0.8, cluster_block=64)
    monkeypatch.setattr(parallel, "usable_cores", lambda: cores)
    blocked = score_users(x, users, items, rows, hoods, 20, alpha=0.8, cluster_block=3)
    assert serial.height == 20 * users.size
    assert blocked.equals(serial)
