"""The run's basket profile, chosen on the validation split: never from the holdout, and the
profile the data's structure calls for; the pairs before the validation baskets; item-item
lists equal to a full implicit fit."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from insightflow_assets.basket import evaluate as ev
from insightflow_assets.basket import profiles as prof
from insightflow_assets.basket.choose import ChoiceParams, pairs_and_profile
from insightflow_assets.basket.pairs import PairParams, build_pairs, window_lines
from insightflow_assets.basket.recommender import BasketModel
from insightflow_assets.ratings.build import build_ratings, target_orders

# two opposite profiles: which one wins says what the data rewards
TWO = {
    "pair_leaning": {"basket_params_by_size": {"default": {"W_PAIR": 1.0, "W_POPP": 0.0, "W_POPG": 0.1, "W_EMB": 0.0}}},
    "popularity_leaning": {"basket_params_by_size": {"default": {"W_PAIR": 0.1, "W_POPP": 0.0, "W_POPG": 1.0, "W_EMB": 0.0}}},
}


def _generated(users: int = 300):
    from insightflow_assets.data.generate import generate_instacart

    t = generate_instacart(users, seed=7, missing_rate=0.0, test_share=0.0)
    orders = t["orders"].with_columns(is_first_order=pl.col("order_number") == 1)
    return orders, pl.concat([t["order_products__prior"], t["order_products__train"]]), t["products"]


def _complements(users: int = 300, orders_per_user: int = 6, seed: int = 0):
    """Baskets of complement pairs: product 2g+1 is always followed by 2g+2, the groups g drawn
    by a steep popularity: the item after a pair's first product is its partner, which
    popularity cannot guess unless the group is a best-seller."""
    rng = np.random.default_rng(seed)
    weight = 1.0 / np.arange(1, 101)
    orders, lines, oid = [], [], 0
    for u in range(1, users + 1):
        for n in range(1, orders_per_user + 1):
            oid += 1
            orders.append((oid, u, "train" if n == orders_per_user else "prior", n, None if n == 1 else 7.0))
            groups = rng.choice(100, 3, replace=False, p=weight / weight.sum())
            lines += [(oid, int(2 * g + 1 + i), 2 * k + i + 1) for k, g in enumerate(groups) for i in (0, 1)]
    frame = pl.DataFrame(orders, schema={"order_id": pl.Int32, "user_id": pl.Int32, "eval_set": pl.String,
                                         "order_number": pl.Int16, "days_since_prior_order": pl.Float32}, orient="row")
    frame = frame.with_columns(is_first_order=pl.col("order_number") == 1)
    lines = pl.DataFrame(lines, schema={"order_id": pl.Int32, "product_id": pl.Int32, "add_to_cart_order": pl.Int16}, orient="row")
    return frame, lines, pl.DataFrame({"product_id": np.arange(1, 201, dtype=np.int32)})


def _choose(orders, lines, products, profiles=None, baskets=200):
    seg = orders.select(pl.col("user_id").unique()).with_columns(segment=(pl.col("user_id") % 2).cast(pl.Int8))
    window = window_lines(orders, lines, seg)
    return pairs_and_profile(window, orders, products, profiles=profiles, choice=ChoiceParams(baskets=baskets))


def test_generated_data_chooses_the_popularity_leaning_profile():
    # the generator's baskets are each customer's staples drawn by popularity: no "goes with"
    _, _, info = _choose(*_generated(), profiles=TWO)
    choice = info["profile_choice"]
    assert choice["active"] == "popularity_leaning" and choice["queries"] > 500
    assert info["profiles"]["active"] == "popularity_leaning"
    # the shipped profiles: popular_heavy, the one that leans on popularity
    _, _, shipped = _choose(*_generated())
    assert shipped["profile_choice"]["active"] == "popular_heavy"
    assert set(shipped["profile_choice"]["validation"]) == set(prof.load())


def test_strong_complements_choose_the_pair_leaning_profile():
    _, _, info = _choose(*_complements(), profiles=TWO)
    table = info["profile_choice"]["validation"]
    assert info["profile_choice"]["active"] == "pair_leaning"
    assert table["pair_leaning"]["hit@10"] > table["popularity_leaning"]["hit@10"] + 0.05


def _scrambled_holdout(orders: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
    """Every target (holdout) basket replaced: other products, reversed cart order."""
    target = target_orders(orders, lines)["order_id"].implode()
    hold = pl.col("order_id").is_in(target)
    return lines.with_columns(
        product_id=pl.when(hold).then(pl.col("product_id") % 7 + 1).otherwise(pl.col("product_id")),
        add_to_cart_order=pl.when(hold).then(-pl.col("add_to_cart_order")).otherwise(pl.col("add_to_cart_order")),
    ).unique(subset=["order_id", "product_id"], keep="first", maintain_order=True)


def test_the_choice_never_reads_the_holdout():
    orders, lines, products = _generated()
    changed = _scrambled_holdout(orders, lines)
    # the change is real: the holdout queries differ
    before = ev.target_baskets(orders, lines, None)["products"].to_list()
    after = ev.target_baskets(orders, changed, None)["products"].to_list()
    assert before != after
    pairs, items, info = _choose(orders, lines, products)
    pairs2, items2, info2 = _choose(orders, changed, products)
    assert info2["profile_choice"] == info["profile_choice"]  # same choice, same validation numbers
    assert pairs2.equals(pairs) and items2.equals(items)


def test_pairs_before_the_validation_baskets_equal_a_count_without_them():
    """The choice's model (window counts minus the validation baskets') has the neighbours of a
    build over the baskets before the validation ones, for the queried items."""
    from insightflow_assets.basket.pairs import build_pairs_split

    orders, lines, _ = _generated(200)
    window = window_lines(orders, lines, None)
    held = window["order_id"].is_in(target_orders(orders, lines, back=1)["order_id"].implode()).to_numpy()
    focus = np.array(sorted(set(window["product_id"].head(400).to_list())), np.int64)
    params = PairParams(min_support=2)
    (whole, _, _), (before, before_items) = build_pairs_split(window, held, focus, params)
    direct, direct_items, _ = build_pairs(window_lines(orders, lines, None, back=1), params)
    assert whole.equals(build_pairs(window, params)[0])
    keep = pl.col("product_id").is_in(pl.Series(focus.astype(np.int32)).implode())
    cols = ["segment", "direction", "product_id", "neighbour_id", "count", "rank"]
    got = before.filter(keep).sort(cols[:4]).select(cols)
    want = direct.filter(keep).sort(cols[:4]).select(cols)
    assert got.height > 100 and got.equals(want)
    assert np.allclose(before.filter(keep).sort(cols[:4])["npmi"].to_numpy(), direct.filter(keep).sort(cols[:4])["npmi"].to_numpy())
    assert before_items.sort("segment", "product_id").equals(direct_items.sort("segment", "product_id"))


def test_the_active_profile_is_the_default_and_validated(tmp_path):
    raw = {**TWO, "active": "popularity_leaning"}
    assert prof.active(raw) == "popularity_leaning" and set(prof.validate(raw)) == set(TWO)
    assert prof.active(TWO) == "pair_leaning"  # no "active", no precision_pair_heavy: the first
    with pytest.raises(prof.ProfileError, match='key "active" names \'nope\''):
        prof.validate({**TWO, "active": "nope"})
    orders, lines, products = _complements(60)
    pairs, items, _ = build_pairs(window_lines(orders, lines, None))
    model = BasketModel.build(pairs, items, products, profiles=raw)
    assert model.active == "popularity_leaning"
    by_default = model.recommend([1], 10).product_ids
    assert by_default == model.recommend([1], 10, profile="popularity_leaning").product_ids
    assert by_default != model.recommend([1], 10, profile="pair_leaning").product_ids


def test_item_item_lists_equal_a_full_implicit_fit():
    """Only the similarity rows of the queried items are computed: the lists are those of
    implicit's BM25Recommender fitted on every product."""
    from implicit.nearest_neighbours import BM25Recommender
    import scipy.sparse as sp

    orders, lines, _ = _generated(400)
    ratings = build_ratings(orders, lines)
    qs = ev.queries(ev.target_baskets(orders, lines, None), ev.EvalParams(sample_baskets=150))
    fallback = np.arange(1, 400)
    got = ev.item_item_lists(ratings, qs, 20, fallback, neighbours=30)
    matrix, ids = ev.user_item_matrix(ratings)
    full = BM25Recommender(K=30, num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit's note that BM25 weighting hands it a COO matrix
        full.fit(matrix, show_progress=False)
    rows = [(r, c) for r, q in enumerate(qs) for c in np.flatnonzero(np.isin(ids, q.prefix))]
    user = sp.csr_matrix((np.ones(len(rows), np.float32), tuple(np.array(rows).T)), shape=(len(qs), ids.size))
    want_ids, want_scores = full.recommend(np.arange(len(qs)), user, N=20, filter_already_liked_items=True)
    for q, mine, row, sc in zip(qs, got, want_ids, want_scores):
        want = ids[row[(row >= 0) & (sc > 0)]]
        assert mine[: want.size].tolist() == want.tolist()
        assert not np.isin(mine, q.prefix).any() and len(set(mine.tolist())) == mine.size == 20


def test_validation_baskets_are_each_customers_second_to_last():
    from insightflow_assets.basket.choose import validation_queries

    orders, lines, _ = _generated(200)
    window = window_lines(orders, lines, None)
    held, qs = validation_queries(window, orders, ChoiceParams(baskets=0, m_max=100))
    want = ev.target_baskets(orders, lines, None, back=1)
    assert held.sum() == want["products"].list.len().sum()
    got = {q.user_id: q.prefix.tolist() + q.rest.tolist() for q in qs if q.prefix.size == 1}
    assert got == {u: p for u, p in zip(want["user_id"], want["products"].to_list()) if len(p) > 1}


def test_one_pool_for_several_profiles_gives_each_profiles_list():
    orders, lines, products = _generated(200)
    pairs, items, _ = build_pairs(window_lines(orders, lines, None))
    model = BasketModel.build(pairs, items, products)
    names = list(model.profiles)
    pool = model.ids[model.popular[-1][:300]]
    rng = np.random.default_rng(0)
    for size in (0, 1, 4, 9):
        basket = rng.choice(pool, size, replace=False).tolist() + [987654]
        for segment in (None, -1):
            together = model.recommend_profiles(basket, 10, segment=segment, profiles=names)
            assert [r.product_ids for r in together] == [model.recommend(basket, 10, segment=segment, profile=n).product_ids
                                                       for n in names]
            assert together[0].unknown_ids == [987654]
