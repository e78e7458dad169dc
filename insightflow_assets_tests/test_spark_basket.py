"""`basket_pairs` under `compute: spark`: the counts come from elsewhere (the Spark job), polars
finishes. The seam itself needs no Spark: counts made with polars in the job's form (product
ids, min support applied, the validation baskets counted alone) must give exactly what the
direct path gives, profile choice included. The Spark run of the asset is in
test_spark_compute.py (its module-scoped graph runs)."""

from __future__ import annotations

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

from insightflow_assets.basket.choose import ChoiceParams, pairs_and_profile, pairs_and_profile_counted, validation_queries
from insightflow_assets.basket.pairs import ANY, PairParams, count_baskets, dense_items, validation_lines, window_lines
from insightflow_assets.segmentation.rfm import rfm_table, segment_users

PARAMS = PairParams(window=3, min_support=2, max_neighbours=20)


def _job_counts(lines: pl.DataFrame, window: int, min_support: int) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """What the Spark job's basket_pair_counts / basket_item_counts write (product ids, the job's
    own sort: ANY first), and the stats it reports, computed with polars."""
    ids, item = dense_items(lines["product_id"].to_numpy())
    c = count_baskets(lines["order_id"].to_numpy(), item, lines["segment"].to_numpy().astype(np.int8), len(ids), window, 1)
    to_id = pl.Series(ids)
    pairs = c.pairs.select("segment", to_id.gather(c.pairs["a"]).alias("product_id"),
                           to_id.gather(c.pairs["b"]).alias("neighbour_id"), "count")  # fmt: skip
    overall = pairs.filter(pl.col("segment") == ANY)
    stats = {"distinct_pairs": overall.height, "pair_occurrences": int(overall["count"].sum())}
    items = c.items.select("segment", to_id.gather(c.items["a"]).alias("product_id"), "baskets").with_columns(
        segment_baskets=pl.col("segment").replace_strict(c.totals, return_dtype=pl.Int32)
    )
    pairs = pairs.filter(pl.col("count") >= min_support)
    return pairs.sort("segment", "product_id", "neighbour_id"), items.sort("segment", "product_id"), stats


def test_counted_path_equals_direct_path(small_tables):
    orders = small_tables["orders"].with_columns(is_first_order=pl.col("order_number") == 1)
    lines = pl.concat([small_tables["order_products__prior"], small_tables["order_products__train"]])
    seg = segment_users(rfm_table(orders, lines), k=3, seed=1)[0]
    products, choice = small_tables["products"], ChoiceParams(baskets=100, seed=3)
    window = window_lines(orders, lines, seg)
    want_pairs, want_items, want_info = pairs_and_profile(window, orders, products, pair_params=PARAMS, choice=choice)

    validation = validation_lines(orders, lines, seg)
    held, _ = validation_queries(window, orders, choice)
    assert_frame_equal(validation, window.filter(pl.Series(held)))  # the same baskets, in the same order
    pairs, items, stats = _job_counts(window, PARAMS.window, PARAMS.min_support)
    held_pairs, held_items, _ = _job_counts(validation, PARAMS.window, 1)
    counts = {"pairs": pairs, "items": items, "held_pairs": held_pairs, "held_items": held_items}
    got_pairs, got_items, got_info = pairs_and_profile_counted(counts, stats, validation, orders, products,
                                                               pair_params=PARAMS, choice=choice)  # fmt: skip
    assert want_pairs.height > 0 and want_pairs["segment"].n_unique() == 4
    assert_frame_equal(got_pairs, want_pairs, check_exact=True)  # row order too (npmi ties rank by it)
    assert_frame_equal(got_items, want_items, check_exact=True)
    assert got_info == want_info  # counts, stats and the profile choice (its validation scores) alike
    assert want_info["profile_choice"]["queries"] > 0
