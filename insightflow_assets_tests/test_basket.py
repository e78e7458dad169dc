"""Basket → complements: hand-computed pairs, the recommender's rules, profiles, the evaluation
protocol, the checks, and the assets read back from a real run."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from insightflow_assets.basket import evaluate as ev
from insightflow_assets.basket import profiles as prof
from insightflow_assets.basket.pairs import ANY, FORWARD, REVERSE, PairParams, build_pairs, expected_npmi, window_lines
from insightflow_assets.basket.recommender import BasketModel
from insightflow_assets.basket.report import blend_vs_pairs, query_problems
from resources.layout import artifact

A, B, C, D = 10, 20, 30, 40

# user 1: orders 1, 2 then the target 3; user 2: order 1 then the target 2
_ORDERS = [(1, 1, "prior", 1), (2, 1, "prior", 2), (3, 1, "train", 3), (4, 2, "prior", 1), (5, 2, "train", 2)]
# (order_id, product_id, add_to_cart_order), in a scrambled file order: the cart order decides
_LINES = [(1, B, 2), (1, A, 1), (2, D, 2), (2, C, 1), (4, C, 3), (4, A, 1), (4, B, 2), (3, A, 1), (5, D, 1)]


def _orders() -> pl.DataFrame:
    df = pl.DataFrame(_ORDERS, schema={"order_id": pl.Int32, "user_id": pl.Int32, "eval_set": pl.String, "order_number": pl.Int16},
                      orient="row")
    return df.with_columns(days_since_prior_order=pl.lit(7.0, pl.Float32), is_first_order=pl.col("order_number") == 1)


def _lines(rows=_LINES) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"order_id": pl.Int32, "product_id": pl.Int32, "add_to_cart_order": pl.Int16}, orient="row")


def _seg() -> pl.DataFrame:
    return pl.DataFrame({"user_id": [1, 2], "segment": [0, 1]}, schema={"user_id": pl.Int32, "segment": pl.Int8})


def _pairs(window=5, min_support=1, lines=None):
    return build_pairs(window_lines(_orders(), lines if lines is not None else _lines(), _seg()),
                       PairParams(window=window, min_support=min_support))


def _row(pairs, seg, direction, a, b):
    hit = pairs.filter((pl.col("segment") == seg) & (pl.col("direction") == direction) & (pl.col("product_id") == a)
                       & (pl.col("neighbour_id") == b))
    return hit.row(0, named=True) if hit.height else None


# --- pairs -----------------------------------------------------------------------------------


def test_pair_counts_and_lift_hand_computed():
    # training baskets: [A, B], [C, D] (user 1, segment 0) and [A, B, C] (user 2, segment 1)
    pairs, items, info = _pairs()
    assert info["baskets"] == {0: 2, 1: 1, ANY: 3}
    assert info["distinct_pairs"] == 4  # A→B ×2, C→D, A→C, B→C
    ab = _row(pairs, ANY, FORWARD, A, B)
    assert ab["count"] == 2 and ab["confidence"] == pytest.approx(1.0)
    assert ab["lift"] == pytest.approx(2 * 3 / (2 * 2))  # count·T / (n_A·n_B)
    assert ab["npmi"] == pytest.approx(1.0)  # A and B are never apart
    cd = _row(pairs, ANY, FORWARD, C, D)
    assert cd["lift"] == pytest.approx(1.5) and cd["npmi"] == pytest.approx(math.log(1.5) / math.log(3))
    assert cd["npmi"] == pytest.approx(expected_npmi(1, 2, 1, 3))
    # A→C and B→C: lift 0.75 < 1, less than chance: no complements
    assert _row(pairs, ANY, FORWARD, A, C) is None and _row(pairs, ANY, FORWARD, B, C) is None
    # per segment: segment 0 has [A, B] and [C, D] only
    assert _row(pairs, 0, FORWARD, A, B)["lift"] == pytest.approx(2.0)
    assert items.filter((pl.col("segment") == ANY) & (pl.col("product_id") == A))["baskets"].item() == 2


def test_direction_follows_the_cart_order_not_the_file_order():
    pairs, _, _ = _pairs()
    assert _row(pairs, ANY, FORWARD, B, A) is None  # B was never added before A
    assert _row(pairs, ANY, REVERSE, B, A)["count"] == 2  # A is B's predecessor
    assert _row(pairs, ANY, REVERSE, D, C)["count"] == 1


def test_window_caps_the_pairs_of_a_basket():
    _, _, wide = _pairs(window=5)
    _, _, narrow = _pairs(window=1)
    # [A, B, C] gives A→B, A→C, B→C; with a window of 1 the A→C pair (2 positions) is not counted
    assert (wide["pair_occurrences"], narrow["pair_occurrences"]) == (5, 4)


def test_min_support_drops_rare_pairs():
    pairs, _, _ = _pairs(min_support=2)
    assert set(pairs.filter(pl.col("segment") == ANY)["product_id"]) == {A, B}


def test_missing_cart_order_falls_back_to_the_line_order():
    rows = [(o, p, None) for o, p, _ in sorted(_LINES, key=lambda r: (r[0], r[2]))]
    pairs, _, _ = _pairs(lines=_lines(rows))
    assert _row(pairs, ANY, FORWARD, A, B)["count"] == 2 and _row(pairs, ANY, FORWARD, B, A) is None


# --- profiles --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, named",
    [({"abc": {}}, "'abc'"), ({"0": {}}, "'0'"), ({"2+x": {}}, "'2+x'"), ({"1": {"W_NOPE": 1}}, "'W_NOPE'"),
     ({"1": {"W_PAIR": -1}}, "W_PAIR"), ({"2+": {}, "5+": {}}, "more than one")],
)
def test_a_bad_profile_is_refused_naming_the_key(body, named):
    with pytest.raises(prof.ProfileError, match="basket profile 'p'") as err:
        prof.validate({"p": {"basket_params_by_size": body}})
    assert named in str(err.value) and "\n" not in str(err.value)


def test_size_keys_pick_exact_then_n_plus_then_default():
    p = prof.validate({"p": {"basket_params_by_size": {"1": {"W_PAIR": 1}, "4+": {"W_PAIR": 4}, "default": {"W_PAIR": 0.5}}}})["p"]
    assert [prof.for_size(p, n)[0] for n in (1, 2, 3, 4, 9)] == ["1", "default", "default", "4+", "4+"]
    assert prof.for_size(p, 9)[1]["W_PAIR"] == 4 and prof.for_size(p, 9)[1]["W_EMB"] == prof.DEFAULTS["W_EMB"]
    assert set(prof.load()) == {"precision_pair_heavy", "popular_heavy", "diversity_friendly"}  # the shipped file is valid


# --- the recommender ---------------------------------------------------------------------------

N_ITEMS = 40


def _model(pl_flag=False, **kw) -> BasketModel:
    """40 products in 4 aisles; segment 0 buys 1–20, segment 1 buys 21–40 (embeddings say so);
    pairs: 1→12 (segment 0 and any), 21→22 (segment 1), 3→4 (any)."""
    ids = np.arange(1, N_ITEMS + 1, dtype=np.int32)
    products = pl.DataFrame({"product_id": ids, "aisle_id": (ids - 1) % 4}).with_columns(
        **({"is_private_label": pl.col("product_id") == 15} if pl_flag else {}))
    items = pl.concat([
        pl.DataFrame({"segment": 0, "product_id": ids[:20], "baskets": 100 - ids[:20]}),
        pl.DataFrame({"segment": 1, "product_id": ids[20:], "baskets": 100 - ids[:20]}),
        pl.DataFrame({"segment": ANY, "product_id": ids, "baskets": np.r_[100 - ids[:20], 100 - ids[:20]]}),
    ]).cast({"segment": pl.Int8, "product_id": pl.Int32, "baskets": pl.Int32})
    rows = [(0, 1, 12), (ANY, 1, 12), (1, 21, 22), (ANY, 3, 4)]
    pairs = pl.DataFrame(
        [(s, d, a if d == FORWARD else b, b if d == FORWARD else a, 5, 0.5, 2.0, 0.6, 1) for s, a, b in rows for d in (FORWARD, REVERSE)],
        schema=["segment", "direction", "product_id", "neighbour_id", "count", "confidence", "lift", "npmi", "rank"], orient="row",
    )
    rng = np.random.default_rng(0)
    vec = rng.normal(0, 0.1, (N_ITEMS, 4)).astype(np.float32)
    vec[:20, 0] += 1.0
    vec[20:, 1] += 1.0
    return BasketModel.build(pairs, items, products, item_ids=ids, item_vectors=vec, **kw)


def test_pair_neighbours_lead_and_basket_items_are_removed():
    r = _model().recommend([1], 10, segment=0)
    assert r.product_ids[0] == 12 and r.sources[0] == "pair"
    assert 1 not in r.product_ids and len(set(r.product_ids)) == 10
    assert set(r.sources) <= {"pair", "pair_any", "reverse_pair", "segment_popular", "global_popular"}


def test_segment_is_detected_from_the_basket_and_reported():
    model = _model()
    r = model.recommend([25, 30, 33], 5)
    assert r.segment_detected and max(r.segment_mix, key=r.segment_mix.get) == 1
    assert r.segment_mix[1] > 0.9
    assert all(p > 20 for p in r.product_ids)  # segment 1's products (W_POPP, embeddings)
    assert max(model.recommend([2, 5], 5).segment_mix.items(), key=lambda kv: kv[1])[0] == 0


def test_unknown_ids_are_reported_not_fatal():
    r = _model().recommend([1, 999, -3], 5, segment=0)
    assert r.unknown_ids == [999, -3] and r.product_ids[0] == 12


def test_empty_basket_returns_popular_items_saying_so():
    model = _model()
    seg = model.recommend([], 5, segment=1)
    assert seg.sources == ["segment_popular"] * 5 and seg.product_ids == [21, 22, 23, 24, 25]
    glob = model.recommend([999], 5)
    assert glob.sources == ["global_popular"] * 5 and glob.unknown_ids == [999] and "empty basket" in glob.note


def test_private_label_boost_lifts_the_flagged_product():
    plain = prof.single(W_PL_BASE=0.0)
    boosted = prof.single(W_PL_BASE=1.0)
    model = _model(pl_flag=True)
    assert model.recommend([1], 10, segment=0, profile=plain).product_ids[0] == 12
    assert model.recommend([1], 10, segment=0, profile=boosted).product_ids[0] == 15


def test_cap_per_aisle_and_pair_quota():
    model = _model()
    capped = model.recommend([5], 8, segment=0, profile=prof.single(CAP_PER_AISLE=2, DIVERSIFY=1, MMR_LAMBDA=0.5))
    aisles = [(p - 1) % 4 for p in capped.product_ids]
    assert max(aisles.count(a) for a in set(aisles)) == 2
    # popularity outweighs the pair, but the quota keeps one pair-based item in the list
    heavy_pop = dict(W_PAIR=0.01, W_POPP=1.0, W_EMB=0.0, TOP_POPP=40)
    assert "pair" not in model.recommend([1], 5, segment=0, profile=prof.single(PAIR_QUOTA=0, **heavy_pop)).sources
    kept = model.recommend([1], 5, segment=0, profile=prof.single(PAIR_QUOTA=1, **heavy_pop))
    assert kept.sources.count("pair") == 1 and 12 in kept.product_ids


# --- evaluation and checks ---------------------------------------------------------------------------


def test_prefix_queries_and_metrics_by_hand():
    baskets = pl.DataFrame({"user_id": [1], "segment": [0], "products": [[5, 6, 7, 8]]},
                           schema={"user_id": pl.Int32, "segment": pl.Int8, "products": pl.List(pl.Int32)})
    qs = ev.queries(baskets, ev.EvalParams(m_min=1, m_max=10, sample_baskets=0))
    assert [(q.prefix.tolist(), q.next_item, q.rest.tolist()) for q in qs] == [([5], 6, [6, 7, 8]), ([5, 6], 7, [7, 8]), ([5, 6, 7], 8, [8])]
    lists = [np.array([9, 7, 6]), np.array([1, 2]), np.array([8])]
    got = ev.score_lists(qs, lists, ks=(10,))
    assert got[1]["hit@10"] == 1 and got[1]["mrr@10"] == pytest.approx(1 / 3) and got[1]["recall_rest@10"] == pytest.approx(2 / 3)
    assert got[2]["hit@10"] == 0 and got[2]["hit_rest@10"] == 0 and got[3]["mrr@10"] == 1
    assert ev.averaged(got)["hit@10"] == pytest.approx(2 / 3)


def test_query_check_finds_a_catalog_too_small_for_k():
    model = _model()
    assert query_problems(model, k=10, n=30, seed=0, profile="precision_pair_heavy") == []
    assert query_problems(model, k=39, n=30, seed=0, profile="precision_pair_heavy")  # 40 products, baskets of up to 10


def test_blend_vs_pairs_verdict():
    metrics = {"headline": "blend:x", "methods": {"blend:x": {"hit@10": 0.2}, "pairs": {"hit@10": 0.3}}}
    assert blend_vs_pairs(metrics) == (False, {"blend_hit@10": 0.2, "pairs_hit@10": 0.3, "tolerance": 0.01})
    metrics["methods"]["pairs"]["hit@10"] = 0.1
    assert blend_vs_pairs(metrics)[0]
    # within 1 %: a tie (the same inputs gave 0.24459 and 0.24467 on two runs), not a warning
    metrics["methods"] = {"blend:x": {"hit@10": 0.24459}, "pairs": {"hit@10": 0.24467}}
    assert blend_vs_pairs(metrics)[0]
    metrics["methods"]["blend:x"]["hit@10"] = 0.24
    assert not blend_vs_pairs(metrics)[0]


# --- the assets of a real run ---------------------------------------------------------------------


def _path(run, name: str, file: str):
    return run.curated / artifact(name).keys(run.run_key)[file]


def test_basket_pairs_read_back_match_a_rebuild(small_run):
    stored = pl.read_parquet(_path(small_run, "basket_pairs", "pairs.parquet"))
    frames = {n: pl.read_parquet(_path(small_run, n, f"{n}.parquet")) for n in ("orders_imputed", "user_seg")}
    lines = pl.read_parquet(_path(small_run, "raw_order_products", "order_products.parquet"))
    rebuilt, _, info = build_pairs(window_lines(frames["orders_imputed"], lines, frames["user_seg"]))
    assert stored.height > 0 and stored.equals(rebuilt)
    assert (stored["npmi"] > 0).all() and (stored["count"] >= PairParams().min_support).all()
    assert set(stored["segment"].unique()) == {ANY, *frames["user_seg"]["segment"].unique()}
    params = json.loads(_path(small_run, "basket_pairs", "params.json").read_text())
    assert params["distinct_pairs"] == info["distinct_pairs"]
    # the run's profile, chosen on validation: named in profiles.json, its numbers in params.json
    choice = params["profile_choice"]
    stored = json.loads(_path(small_run, "basket_pairs", "profiles.json").read_text())
    assert stored["active"] == choice["active"] == small_run.outcome.materialized["basket_pairs"]["active_profile"]
    assert set(choice["validation"]) == set(prof.validate(stored)) and choice["queries"] > 0 and choice["embeddings"]
    table = choice["validation"]
    assert max(table, key=lambda n: table[n]["hit@10"] + table[n]["mrr@10"]) == choice["active"]


def test_basket_eval_read_back(small_run):
    metrics = json.loads(_path(small_run, "basket_eval", "metrics.json").read_text())
    by_size = json.loads(_path(small_run, "basket_eval", "by_size.json").read_text())
    assert {"popularity", "pairs", "item_item", "embeddings", "blend:precision_pair_heavy"} <= set(metrics["methods"])
    for name, m in metrics["methods"].items():
        assert all(0 <= v <= 1 for k, v in m.items() if k != "queries"), name
        assert m["hit@10"] <= m["hit@20"] and m["mrr@10"] <= m["hit@10"]
        assert set(by_size[name]) <= {str(s) for s in range(1, 11)}
    assert _path(small_run, "basket_eval", "basket_eval.png").read_bytes()[:4] == b"\x89PNG"
    meta = small_run.outcome.materialized["basket_eval"]
    assert isinstance(meta["blend_precision_pair_heavy_hit@10"], float)
    # the headline is the profile basket_pairs chose on validation, reported with its numbers
    active = json.loads(_path(small_run, "basket_pairs", "profiles.json").read_text())["active"]
    assert metrics["headline"] == f"blend:{active}" and metrics["active_profile"] == meta["active_profile"] == active
    assert metrics["profile_choice"]["active"] == active
    checks = {c["check"]: c["passed"] for c in small_run.outcome.checks if c["asset"] == "basket_eval"}
    assert checks["basket_queries_return_k_new_products"] is True
    assert "basket_blend_not_worse_than_pairs" in checks


def test_query_check_fails_on_thin_stored_popularity(small_run):
    """Corrupt the stored item counts (five products left): the blocking check fails."""
    from insightflow_assets.runner import run_checks

    path = _path(small_run, "basket_pairs", "items.parquet")
    before = path.read_bytes()
    try:
        items = pl.read_parquet(path)
        items.filter(pl.col("product_id").is_in(items["product_id"].unique().sort().head(5).implode())).write_parquet(path)
        outcome = run_checks(small_run.instance, small_run.run_key, defs=small_run.defs)
        failed = [c["check"] for c in outcome.failed_error_checks]
        assert failed == ["basket_queries_return_k_new_products"]
    finally:
        path.write_bytes(before)


def test_a_basket_holding_the_whole_catalogue_gets_an_empty_list():
    # nothing left to complement it with (a tiny catalogue): an empty answer, not a crash
    r = _model().recommend(list(range(1, N_ITEMS + 1)), 10, segment=0)
    assert r.product_ids == [] and r.scores == []


def test_lines_without_cart_position_keep_the_file_order():
    """`pairs.cart_lines`: a line with no add_to_cart_order sorts after the known ones, ties in
    the file's order, every time (the join before the stable sort keeps the lines' order)."""
    from insightflow_assets.basket.pairs import cart_lines

    rng = np.random.default_rng(0)
    order_id = rng.permutation(np.repeat(np.arange(40_000), 5))
    lines = pl.DataFrame({"order_id": order_id, "product_id": np.arange(order_id.size),
                          "add_to_cart_order": pl.Series([None] * order_id.size, dtype=pl.Int16)})
    chosen = pl.DataFrame({"order_id": np.arange(40_000), "user_id": np.arange(40_000) % 997})
    want = lines.with_row_index("_file").sort("order_id", "_file")["product_id"].to_list()
    for _ in range(3):
        assert cart_lines(chosen, lines, None)["product_id"].to_list() == want


def test_blend_vs_pairs_passes_without_queries():
    """Every target basket of one item (an order column that numbers lines): no next-item
    query, so nothing to compare; the WARN check passes and says so instead of failing the step."""
    for methods in ({"blend:x": {}, "pairs": {}}, {}):
        passed, meta = blend_vs_pairs({"headline": "blend:x", "methods": methods})
        assert passed and meta == {"note": "no next-item query, so no hit@10 to compare"}
