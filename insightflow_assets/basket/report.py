"""What `basket_eval` stores beside its metrics: the chart, and the checks' pure verdicts."""

from __future__ import annotations

import numpy as np

from insightflow_assets.basket.recommender import BasketModel
from insightflow_assets.charts.eval_trends import new_figure, render_png

CHART_FILE = "basket_eval.png"


def chart(by_size: dict[str, dict[str, dict[str, float]]], metric: str = "hit@10") -> bytes:
    """``metric`` per prefix size (lines), one line per method."""
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for name, sizes in by_size.items():
        ms = sorted(sizes, key=int)
        ax.plot([int(m) for m in ms], [sizes[m][metric] for m in ms], marker="o", label=name)
    ax.set_xlabel("items already in the basket (M)")
    ax.set_ylabel(f"next item {metric}")
    ax.set_title(f"Basket completion: next-item {metric} by basket size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return render_png(fig)


def query_problems(model: BasketModel, k: int, n: int, seed: int, profile: str) -> list[str]:
    """Problems of ``n`` seeded random basket queries (sizes 1–10 drawn from the popular items,
    segment given or detected in turn): each must return ``k`` distinct products, none of the basket."""
    rng = np.random.default_rng(seed)
    pool = model.ids[model.popular[-1][:2000]]
    segments = [None, *model.seg_ids.tolist()]
    problems = []
    for q in range(n):
        size = int(rng.integers(0, 11)) if pool.size else 0
        basket = rng.choice(pool, size=min(size, pool.size), replace=False)
        got = model.recommend(basket, k, segment=segments[q % len(segments)], profile=profile).product_ids
        if len(got) != k or len(set(got)) != len(got) or set(got) & set(basket.tolist()):
            problems.append(f"basket {basket.tolist()}: {len(got)} items, {len(set(got))} distinct, "
                            f"{len(set(got) & set(basket.tolist()))} from the basket")
    return problems


# below pairs-only by less than this share is a tie, not a loss: LightFM trained on several
# threads is not bit-reproducible, and identical inputs gave 0.24459 and 0.24467
BLEND_TOLERANCE = 0.01


def blend_vs_pairs(metrics: dict, key: str = "hit@10") -> tuple[bool, dict[str, float]]:
    """Whether the headline blend is at least as good as pairs only on ``key`` (within
    `BLEND_TOLERANCE`, relative). Without any query (every target basket has one item, e.g.
    an order column that numbers lines) there is nothing to compare: it passes and says so."""
    blend = metrics["methods"].get(metrics["headline"], {}).get(key)
    pairs = metrics["methods"].get("pairs", {}).get(key)
    if blend is None or pairs is None:
        return True, {"note": f"no next-item query, so no {key} to compare"}
    meta = {f"blend_{key}": float(blend), f"pairs_{key}": float(pairs), "tolerance": BLEND_TOLERANCE}
    return blend >= pairs * (1 - BLEND_TOLERANCE), meta
