"""Deterministic synthetic generator of Instacart-shaped tables.

Produces the six Kaggle "Instacart Market Basket Analysis" tables (same stems,
columns and column order) from a seed, so the pipeline can be developed and
tested without the real data set. Everything is vectorized numpy/polars: no
Python loop runs per user, order or line, so Instacart's full size (206,209
users, ~3.4 M orders, ~32 M lines) generates in well under two minutes.

Generative story (plausible, deliberately not tuned to favour any recommender):

* catalog: 134 aisles in 21 departments; products get a Zipf-like popularity
  (random rank, times an aisle "appeal") so a few products dominate;
* users: 4..100 orders (skewed), a preferred weekday and hour, a typical gap
  between orders (heavy users shop more often), a typical basket size, a few
  favourite aisles, and a personal pool of staples bought again and again;
* each line is either a staple (drawn from the user's pool, skewed to its head)
  or an exploration (drawn by popularity, often inside a favourite aisle);
* ``reordered`` is derived from the drawn data, never sampled: 1 iff the same
  user bought the product in an earlier order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from insightflow_assets.ingest.loading import SCHEMAS as _LOADER_SCHEMAS

__all__ = [
    "AISLES",
    "DEPARTMENTS",
    "SCHEMAS",
    "generate_instacart",
    "summarize",
    "write_instacart",
]

# Instacart's 21 departments; department_id = position + 1.
DEPARTMENTS: tuple[str, ...] = (
    "frozen", "other", "bakery", "produce", "alcohol", "international",
    "beverages", "pets", "dry goods pasta", "bulk", "personal care",
    "meat seafood", "pantry", "breakfast", "canned goods", "dairy eggs",
    "household", "babies", "snacks", "deli", "missing",
)  # fmt: skip

# Instacart's 134 aisles as (aisle, department_id); aisle_id = position + 1.
AISLES: tuple[tuple[str, int], ...] = (
    ("prepared soups salads", 20), ("specialty cheeses", 16),
    ("energy granola bars", 19), ("instant foods", 9),
    ("marinades meat preparation", 13), ("other", 2), ("packaged meat", 12),
    ("bakery desserts", 3), ("pasta sauce", 9), ("kitchen supplies", 17),
    ("cold flu allergy", 11), ("fresh pasta", 20), ("prepared meals", 20),
    ("tofu meat alternatives", 20), ("packaged seafood", 12),
    ("fresh herbs", 4), ("baking ingredients", 13),
    ("bulk dried fruits vegetables", 10), ("oils vinegars", 13),
    ("oral hygiene", 11), ("packaged cheese", 16), ("hair care", 11),
    ("popcorn jerky", 19), ("fresh fruits", 4), ("soap", 11), ("coffee", 7),
    ("beers coolers", 5), ("red wines", 5), ("honeys syrups nectars", 13),
    ("latino foods", 6), ("refrigerated", 7), ("packaged produce", 4),
    ("kosher foods", 6), ("frozen meat seafood", 1), ("poultry counter", 12),
    ("butter", 16), ("ice cream ice", 1), ("frozen meals", 1),
    ("seafood counter", 12), ("dog food care", 8), ("cat food care", 8),
    ("frozen vegan vegetarian", 1), ("buns rolls", 3), ("eye ear care", 11),
    ("candy chocolate", 19), ("mint gum", 19), ("vitamins supplements", 11),
    ("breakfast bars pastries", 14), ("packaged poultry", 12),
    ("fruit vegetable snacks", 19), ("preserved dips spreads", 13),
    ("frozen breakfast", 1), ("cream", 16), ("paper goods", 17),
    ("shave needs", 11), ("diapers wipes", 18), ("granola", 14),
    ("frozen breads doughs", 1), ("canned meals beans", 15),
    ("trash bags liners", 17), ("cookies cakes", 19), ("white wines", 5),
    ("grains rice dried goods", 9), ("energy sports drinks", 7),
    ("protein meal replacements", 11), ("asian foods", 6),
    ("fresh dips tapenades", 20), ("bulk grains rice dried goods", 10),
    ("soup broth bouillon", 15), ("digestion", 11),
    ("refrigerated pudding desserts", 16), ("condiments", 13),
    ("facial care", 11), ("dish detergents", 17), ("laundry", 17),
    ("indian foods", 6), ("soft drinks", 7), ("crackers", 19),
    ("frozen pizza", 1), ("deodorants", 11), ("canned jarred vegetables", 15),
    ("baby accessories", 18), ("fresh vegetables", 4), ("milk", 16),
    ("food storage", 17), ("eggs", 16), ("more household", 17),
    ("spreads", 13), ("salad dressing toppings", 13),
    ("cocoa drink mixes", 7), ("soy lactosefree", 16),
    ("baby food formula", 18), ("breakfast bakery", 3), ("tea", 7),
    ("canned meat seafood", 15), ("lunch meat", 20),
    ("baking supplies decor", 13), ("juice nectars", 7),
    ("canned fruit applesauce", 15), ("missing", 21),
    ("air fresheners candles", 17), ("baby bath body care", 18),
    ("ice cream toppings", 19), ("spices seasonings", 13),
    ("doughs gelatins bake mixes", 13), ("hot dogs bacon sausage", 12),
    ("chips pretzels", 19), ("other creams cheeses", 16), ("skin care", 11),
    ("pickled goods olives", 15), ("plates bowls cups flatware", 17),
    ("bread", 3), ("frozen juice", 1), ("cleaning products", 17),
    ("water seltzer sparkling water", 7), ("frozen produce", 1),
    ("nuts seeds dried fruit", 19), ("first aid", 11), ("frozen dessert", 1),
    ("yogurt", 16), ("cereal", 14), ("meat counter", 12),
    ("packaged vegetables fruits", 4), ("spirits", 5),
    ("trail mix snack mix", 19), ("feminine care", 11),
    ("body lotions soap", 11), ("tortillas flat bread", 3),
    ("frozen appetizers sides", 1), ("hot cereal pancake mixes", 14),
    ("dry pasta", 9), ("beauty", 11), ("muscles joints pain relief", 11),
    ("specialty wines champagnes", 5),
)  # fmt: skip

# Column names, order and dtypes of every table: the ingest contract, so generated files are
# exactly what the loader expects; also handy as ``schema_overrides`` when reading CSVs back.
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    stem: dict(_LOADER_SCHEMAS["order_products" if stem.startswith("order_products") else stem])
    for stem in ("orders", "order_products__prior", "order_products__train", "products", "aisles", "departments")
}

FULL_N_PRODUCTS = 49_688
_FORMATS = ("csv", "csv.gz", "parquet")

# Instacart's marginal weekday / hour-of-day order counts (shape only).
_DOW_P = np.array([600_905, 587_478, 467_260, 436_972, 426_339, 453_368, 448_761], float)
_HOUR_P = np.array(
    [22_758, 12_398, 7_539, 5_474, 5_527, 9_569, 30_529, 91_868, 178_201, 257_812,
     288_418, 284_728, 272_841, 277_999, 283_042, 283_639, 272_553, 228_795,
     182_912, 140_569, 104_292, 78_109, 61_468, 40_043],
    float,
)  # fmt: skip
_DOW_P /= _DOW_P.sum()
_HOUR_P /= _HOUR_P.sum()

# Everyday aisles get extra appeal so produce/dairy dominate as in Instacart.
_POPULAR_AISLES = (
    "fresh fruits", "fresh vegetables", "packaged vegetables fruits", "yogurt",
    "packaged cheese", "milk", "water seltzer sparkling water", "chips pretzels",
    "soy lactosefree", "bread", "eggs", "refrigerated",
)  # fmt: skip
_NAME_PREFIXES = (
    "Organic", "Classic", "Natural", "Original", "Premium", "Lite", "Family Size",
    "Gluten Free", "Homestyle", "Select", "Simply", "Fresh", "Traditional", "Zero Sugar",
)  # fmt: skip

# Calibration knobs (set so the full-size marginals land near Instacart's:
# ~16.6 orders/user, ~10.1 lines/order, ~59 % reordered, ~10 % gaps at 30).
_ORDERS_NB_R, _ORDERS_NB_MEAN = 0.7, 12.7  # extra orders beyond the minimum of 4
_BASKET_MEDIAN, _BASKET_SIGMA, _BASKET_SHAPE = 10.5, 0.45, 2.5
_ZIPF_OFFSET, _ZIPF_ALPHA = 10.0, 1.0
_N_FAV_AISLES = 3


def _catalog(rng: np.random.Generator, n_products: int):
    """Products with popularity weights, plus an aisle-sorted cumulative index.

    Returns (products_df, aisle_idx per product (0-based), sampler) where the
    sampler arrays let `draw_products` pick a product by popularity either
    globally or within one aisle with a single searchsorted.
    """
    n_aisles = len(AISLES)
    # Every aisle gets at least one product; the rest by a skewed aisle size.
    size_w = rng.lognormal(0.0, 0.7, n_aisles)
    aisle_idx = np.concatenate(
        [np.arange(n_aisles), rng.choice(n_aisles, n_products - n_aisles, p=size_w / size_w.sum())]
    )
    aisle_idx = rng.permutation(aisle_idx).astype(np.int32)

    appeal = rng.lognormal(0.0, 0.5, n_aisles)
    popular = np.isin(np.array([a for a, _ in AISLES]), _POPULAR_AISLES)
    appeal[popular] *= 4.0
    rank = rng.permutation(n_products)  # popularity rank unrelated to product_id
    weight = (rank + _ZIPF_OFFSET) ** -_ZIPF_ALPHA * appeal[aisle_idx]

    sampler = build_sampler(aisle_idx, weight, n_aisles)

    dept = np.array([d for _, d in AISLES], np.int32)
    titles = pl.Series([a.title() for a, _ in AISLES])
    prefixes = pl.Series(_NAME_PREFIXES)
    pid = np.arange(1, n_products + 1, dtype=np.int32)
    # "#<id>" keeps names unique while staying readable.
    names = (
        prefixes.gather(rng.integers(0, len(_NAME_PREFIXES), n_products))
        + " "
        + titles.gather(aisle_idx)
        + " #"
        + pl.Series(pid).cast(pl.String)
    )
    products = pl.DataFrame(
        {
            "product_id": pid,
            "product_name": names,
            "aisle_id": aisle_idx + 1,
            "department_id": dept[aisle_idx],
        },
        schema=SCHEMAS["products"],
    )
    return products, aisle_idx, sampler


def build_sampler(group: np.ndarray, weight: np.ndarray, n_groups: int):
    """The cumulative index `draw_products` draws from: by weight, globally or within a group
    (products grouped by aisle here, items by category in the events generator)."""
    order = np.argsort(group, kind="stable")  # indices grouped by group
    cum = np.cumsum(weight[order])
    last = np.cumsum(np.bincount(group, minlength=n_groups)) - 1  # each group's last position in `order`
    hi = cum[last]
    lo = np.concatenate([[0.0], hi[:-1]])
    return order.astype(np.int32), cum, lo, hi, last


def draw_products(rng, sampler, aisle: np.ndarray) -> np.ndarray:
    """Popularity-weighted product index per draw; aisle -1 means "any aisle"."""
    order, cum, lo_a, hi_a, last_a = sampler
    anywhere = aisle < 0
    a = np.where(anywhere, 0, aisle)
    lo = np.where(anywhere, 0.0, lo_a[a])
    hi = np.where(anywhere, cum[-1], hi_a[a])
    u = lo + rng.random(aisle.size) * (hi - lo)
    pos = np.searchsorted(cum, u, side="right")
    # Float round-off at an aisle's upper edge must not spill into the next aisle.
    pos = np.minimum(pos, np.where(anywhere, cum.size - 1, last_a[a]))
    return order[pos]


def _null_where(values: np.ndarray, mask: np.ndarray, dtype) -> pl.Series:
    s = pl.Series(values).cast(dtype)
    return s.set(pl.Series(mask), None) if mask.any() else s


def generate_instacart(
    n_users: int, seed: int = 42, missing_rate: float = 0.0, test_share: float = 0.0
) -> dict[str, pl.DataFrame]:
    """Generate the six Instacart tables for ``n_users`` users, deterministically.

    missing_rate: share of non-first orders whose order_dow, order_hour_of_day and
        days_since_prior_order are each (independently) set to null.
    test_share: share of users whose last order is eval_set="test" (no lines),
        as in Kaggle; the others end with a "train" order.
    """
    if n_users < 1:
        raise ValueError("n_users must be >= 1")
    if not 0.0 <= missing_rate <= 1.0 or not 0.0 <= test_share <= 1.0:
        raise ValueError("missing_rate and test_share must be within [0, 1]")
    rng = np.random.default_rng(seed)
    # Small data sets get a smaller catalog so they are not all-sparse.
    n_products = (
        FULL_N_PRODUCTS if n_users >= 100_000 else max(500, min(FULL_N_PRODUCTS, 5 * n_users))
    )
    products, aisle_of_product, sampler = _catalog(rng, n_products)

    # ---- users: latent habits -------------------------------------------------
    p_nb = _ORDERS_NB_R / (_ORDERS_NB_R + _ORDERS_NB_MEAN)
    n_orders_u = np.minimum(4 + rng.negative_binomial(_ORDERS_NB_R, p_nb, n_users), 100)
    pref_dow = rng.choice(7, n_users, p=_DOW_P)
    pref_hour = rng.choice(24, n_users, p=_HOUR_P)
    habit = rng.beta(5.0, 2.0, n_users)  # how strongly a user sticks to its slot
    # Heavy users shop more often: typical gap shrinks with the order count.
    gap_u = 40.0 * n_orders_u**-0.5 * rng.lognormal(0.0, 0.7, n_users)
    weekly_u = rng.beta(1.0, 5.0, n_users)  # tendency to shop on a weekly rhythm
    basket_u = 1.0 + _BASKET_MEDIAN * rng.lognormal(0.0, _BASKET_SIGMA, n_users)
    staple_u = rng.beta(7.5, 3.0, n_users)  # share of lines drawn from the staples pool
    fav_u = rng.beta(2.0, 2.0, n_users)  # share of explorations inside favourite aisles
    # Favourite aisles = aisles of popularity-drawn products (popular aisles win).
    fav_aisles = aisle_of_product[
        draw_products(rng, sampler, np.full(n_users * _N_FAV_AISLES, -1))
    ].reshape(n_users, _N_FAV_AISLES)
    n_staples = np.maximum(2, np.rint(basket_u * rng.uniform(1.5, 4.0, n_users))).astype(np.int64)
    staple_start = np.concatenate([[0], np.cumsum(n_staples)[:-1]])

    def taste_draw(users: np.ndarray) -> np.ndarray:
        """Products for the given users: favourite aisle with prob fav_u, else anywhere."""
        in_fav = rng.random(users.size) < fav_u[users]
        slot = rng.integers(0, _N_FAV_AISLES, users.size)
        aisle = np.where(in_fav, fav_aisles[users, slot], -1)
        return draw_products(rng, sampler, aisle)

    staples = taste_draw(np.repeat(np.arange(n_users), n_staples))

    # ---- orders ---------------------------------------------------------------
    n_orders = int(n_orders_u.sum())
    user_of = np.repeat(np.arange(n_users, dtype=np.int32), n_orders_u)
    first_of_user = np.concatenate([[0], np.cumsum(n_orders_u)[:-1]])
    order_number = np.arange(n_orders) - first_of_user[user_of] + 1
    is_first = order_number == 1
    is_last = np.zeros(n_orders, bool)
    is_last[np.cumsum(n_orders_u) - 1] = True

    test_user = np.zeros(n_users, bool)
    test_user[rng.permutation(n_users)[: int(round(test_share * n_users))]] = True
    is_test = is_last & test_user[user_of]
    eval_set = np.where(is_test, 2, np.where(is_last, 1, 0))

    # Weekday/hour: mostly the user's slot (hour with jitter), otherwise random.
    sticky = rng.random(n_orders) < habit[user_of]
    dow = np.where(sticky, pref_dow[user_of], rng.choice(7, n_orders, p=_DOW_P))
    hour_jitter = np.rint(rng.normal(0.0, 1.2, n_orders)).astype(np.int64)
    hour = np.where(
        sticky,
        np.clip(pref_hour[user_of] + hour_jitter, 0, 23),
        rng.choice(24, n_orders, p=_HOUR_P),
    )
    # Gap: user's typical gap with noise; weekly shoppers snap to whole weeks;
    # Instacart caps at 30, which creates its spike there.
    gap = gap_u[user_of] * rng.lognormal(0.0, 0.6, n_orders)
    weeks = np.rint(gap / 7.0)
    snap = (rng.random(n_orders) < weekly_u[user_of]) & (weeks >= 1)
    gap = np.minimum(np.rint(np.where(snap, weeks * 7.0, gap)), 30.0)
    gap[rng.random(n_orders) < 0.02] = 0.0  # same-day top-up orders

    # ---- lines ----------------------------------------------------------------
    # Basket size: gamma-Poisson around the user's typical size (>= 1 line).
    lam = rng.gamma(_BASKET_SHAPE, (basket_u[user_of] - 1.0) / _BASKET_SHAPE)
    size = 1 + rng.poisson(lam)
    size[is_test] = 0  # Kaggle hides the basket of test orders entirely
    order_of_line = np.repeat(np.arange(n_orders, dtype=np.int32), size)
    user_of_line = user_of[order_of_line]
    n_lines = order_of_line.size

    is_staple = rng.random(n_lines) < staple_u[user_of_line]
    product = np.empty(n_lines, np.int32)
    su = user_of_line[is_staple]
    # u**1.5 skews picks towards the head of the pool: a few true staples.
    pick = (n_staples[su] * rng.random(su.size) ** 1.5).astype(np.int64)
    product[is_staple] = staples[staple_start[su] + pick]
    product[~is_staple] = taste_draw(user_of_line[~is_staple])
    del is_staple, su, pick

    # Dedupe within order and derive `reordered` from history with ONE sort.
    # Key = (user, product, line position within user). Positions follow
    # (order_number, cart), so each (user, product) group comes out in time
    # order: a line whose predecessor in the group has the same order is a
    # duplicate, one whose predecessor is an earlier order is a reorder.
    # Packing the position into the key lets us sort plain values (far cheaper
    # than an argsort) and still map every sorted line back to its origin.
    lines_per_user = np.bincount(user_of_line, minlength=n_users)
    user_line_start = np.cumsum(lines_per_user) - lines_per_user
    b_pos = int(lines_per_user.max()).bit_length()
    b_prod = (n_products - 1).bit_length()
    if b_pos + b_prod + (n_users - 1).bit_length() > 63:
        raise ValueError("n_users too large for the packed sort key")
    key = (user_of_line.astype(np.int64) << b_prod | product) << b_pos
    key |= np.arange(n_lines) - user_line_start[user_of_line]
    del user_of_line
    key = pl.Series(key).sort().to_numpy()
    group = key >> b_pos
    origin = user_line_start[group >> b_prod] + (key & ((1 << b_pos) - 1))
    del key
    same_group = np.empty(n_lines, bool)
    same_group[0] = False
    np.equal(group[1:], group[:-1], out=same_group[1:])
    del group
    order_sorted = order_of_line[origin]
    same_order = np.empty(n_lines, bool)
    same_order[0] = False
    np.equal(order_sorted[1:], order_sorted[:-1], out=same_order[1:])
    del order_sorted
    # 0 = first purchase, 1 = reorder, 2 = duplicate within the order.
    status = np.empty(n_lines, np.int8)
    status[origin] = same_group.view(np.int8) * (1 + same_order.view(np.int8))
    del origin, same_group, same_order

    keep = status != 2
    order_of_line, product, reordered = order_of_line[keep], product[keep], status[keep]
    del status, keep
    n_lines = order_of_line.size
    line_count = np.bincount(order_of_line, minlength=n_orders)
    line_start = np.cumsum(line_count) - line_count
    cart = np.arange(n_lines) - line_start[order_of_line] + 1
    del order_of_line

    # Kaggle order_ids are a random permutation and line files are sorted by
    # (order_id, add_to_cart_order): move whole order blocks, gathering one
    # packed column instead of three.
    order_id = (rng.permutation(n_orders) + 1).astype(np.int32)
    by_id = np.argsort(order_id)
    cnt = line_count[by_id]
    packed = (product.astype(np.int64) << 32) | (cart << 1) | reordered
    del product, cart, reordered
    src = np.repeat(line_start[by_id] - (np.cumsum(cnt) - cnt), cnt)
    src += np.arange(n_lines)
    packed = packed[src]
    del src
    is_train_line = np.repeat(eval_set[by_id] == 1, cnt)
    lines = pl.DataFrame(
        {
            "order_id": np.repeat(order_id[by_id], cnt),
            "product_id": ((packed >> 32) + 1).astype(np.int32),
            "add_to_cart_order": ((packed & 0xFFFFFFFF) >> 1).astype(np.int16),
            "reordered": (packed & 1).astype(np.int8),
        },
        schema=SCHEMAS["order_products__prior"],
    )
    del packed
    prior_lines = lines.filter(~is_train_line)
    train_lines = lines.filter(is_train_line)
    del lines, is_train_line

    # Missing at random on non-first orders only; first-order gaps are
    # structurally null regardless.
    def hide() -> np.ndarray:
        return ~is_first & (rng.random(n_orders) < missing_rate)

    hide_dow, hide_hour, hide_gap = hide(), hide(), hide()
    orders = pl.DataFrame(
        {
            "order_id": order_id,
            "user_id": user_of + 1,
            "eval_set": pl.Series(["prior", "train", "test"]).gather(eval_set),
            "order_number": order_number,
            "order_dow": _null_where(dow, hide_dow, pl.Int8),
            "order_hour_of_day": _null_where(hour, hide_hour, pl.Int8),
            "days_since_prior_order": _null_where(gap, hide_gap | is_first, pl.Float32),
        },
        schema=SCHEMAS["orders"],
    )

    aisles = pl.DataFrame(
        {"aisle_id": np.arange(1, len(AISLES) + 1), "aisle": [a for a, _ in AISLES]},
        schema=SCHEMAS["aisles"],
    )
    departments = pl.DataFrame(
        {"department_id": np.arange(1, len(DEPARTMENTS) + 1), "department": list(DEPARTMENTS)},
        schema=SCHEMAS["departments"],
    )
    return {
        "orders": orders,
        "order_products__prior": prior_lines,
        "order_products__train": train_lines,
        "products": products,
        "aisles": aisles,
        "departments": departments,
    }


def write_instacart(
    tables: dict[str, pl.DataFrame], out_dir: str | Path, fmt: str = "csv"
) -> list[Path]:
    """Write each table to ``out_dir/<table>.<fmt>`` atomically; returns the paths.

    A temporary sibling is written and then ``os.replace``d, so readers never see
    a half-written file.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {_FORMATS}, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in tables.items():
        path = out / f"{name}.{fmt}"
        tmp = out / f".{name}.{fmt}.tmp-{os.getpid()}"
        try:
            if fmt == "parquet":
                df.write_parquet(tmp)
            elif fmt == "csv.gz":
                df.write_csv(tmp, compression="gzip", check_extension=False)
            else:
                df.write_csv(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def summarize(tables: dict[str, pl.DataFrame]) -> dict:
    """Headline counts of a generated (or real) Instacart data set."""
    orders = tables["orders"]
    prior = tables["order_products__prior"]
    train = tables["order_products__train"]
    n_users = orders["user_id"].n_unique()
    n_lines = prior.height + train.height
    n_line_orders = prior["order_id"].n_unique() + train["order_id"].n_unique()
    reordered = int(prior["reordered"].sum() or 0) + int(train["reordered"].sum() or 0)
    return {
        "users": n_users,
        "orders": orders.height,
        "prior_lines": prior.height,
        "train_lines": train.height,
        "products": tables["products"].height,
        "reorder_share": reordered / n_lines if n_lines else 0.0,
        "mean_orders_per_user": orders.height / n_users if n_users else 0.0,
        "mean_basket": n_lines / n_line_orders if n_line_orders else 0.0,
    }
