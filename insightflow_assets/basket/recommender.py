"""Basket → complements: "customers with these items in their basket also buy…" (pure numpy).

`BasketModel.build` turns stored artifacts (``basket_pairs``' pairs and item counts, the
products with their aisle and optional ``is_private_label`` flag, optional item embeddings of
``lightfm_model``) into per-item neighbour arrays, so one query is a few numpy slices:

1. candidates: each basket item's best followers in the segment (segment mix), a share of its
   any-segment followers, its predecessors (reverse index), the segment's and the global
   popular items; basket items removed;
2. score = W_PAIR × (segment pairs + PAIR_ANY_WEIGHT × any-segment pairs + REV_WEIGHT ×
   reverse pairs, each the npmi averaged over the basket) + W_EMB × cosine(item, basket
   centroid) + W_POPP × segment popularity + W_POPG × global popularity + W_COVER × share of
   basket items linked to the candidate + private-label bonus;
3. selection: top score, or MMR(λ) on the embeddings, a cap per aisle, and a quota of
   pair-based items.

Without a segment the mix is detected: softmax over the cosine of the basket's embedding
centroid to each segment's centroid (both taken relative to the global centroid), top-k,
temperature; the mix is reported in the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from insightflow_assets.basket import profiles as prof
from insightflow_assets.basket.pairs import ANY, FORWARD, REVERSE

# Why an item is in the list: how it entered the candidate pool, strongest first.
SOURCES = ("pair", "pair_any", "reverse_pair", "segment_popular", "global_popular")
_SOURCE_NAMES = np.array(SOURCES, dtype=object)
_POP_DEPTH = 5000  # popular items kept sorted per segment (pool and filling)


@dataclass
class BasketResult:
    product_ids: list[int]
    scores: list[float]
    sources: list[str]
    segment_mix: dict[int, float]  # segment → weight; {} for the global lists
    segment_detected: bool
    unknown_ids: list[int]  # ids of the query that the model does not know (ignored)
    size_key: str  # the profile key used ("1", "5+", "default", …)
    note: str = ""

    def rows(self) -> list[dict]:
        return [{"product_id": p, "score": s, "source": src} for p, s, src in zip(self.product_ids, self.scores, self.sources)]


@dataclass
class _Neighbours:
    """A CSR of one (segment, direction): row = item index, best neighbour first."""

    indptr: np.ndarray
    indices: np.ndarray
    scores: np.ndarray

    def of(self, item: int, top: int) -> tuple[np.ndarray, np.ndarray]:
        lo = self.indptr[item]
        hi = min(self.indptr[item + 1], lo + top)
        return self.indices[lo:hi], self.scores[lo:hi]


@dataclass
class BasketModel:
    ids: np.ndarray  # sorted product ids of the catalog; item index = position
    neighbours: dict[tuple[int, int], _Neighbours]
    popularity: dict[int, np.ndarray]  # segment (ANY too) → popularity in [0, 1] per item
    popular: dict[int, np.ndarray]  # segment → item indices by popularity, best first
    aisle: np.ndarray
    private_label: np.ndarray | None
    vectors: np.ndarray | None  # L2-normalised item embeddings (0 rows for unknown items)
    seg_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    seg_centroids: np.ndarray | None = None
    global_centroid: np.ndarray | None = None
    profiles: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    # --- building --------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        pairs: pl.DataFrame,
        items: pl.DataFrame,
        products: pl.DataFrame,
        *,
        item_ids: np.ndarray | None = None,
        item_vectors: np.ndarray | None = None,
        profiles: dict | None = None,
    ) -> "BasketModel":
        """From `pairs.build_pairs`' frames, the products (``product_id``, ``aisle_id`` or
        ``department_id``, optional ``is_private_label``) and optional embeddings."""
        ids = np.unique(np.concatenate([products["product_id"].to_numpy(), items["product_id"].to_numpy()]).astype(np.int32))
        n = ids.size
        segments = sorted(int(s) for s in items["segment"].unique())
        neighbours = {
            (s, d): _csr(pairs.filter((pl.col("segment") == s) & (pl.col("direction") == d)), ids)
            for s in segments for d in (FORWARD, REVERSE)
        }
        popularity, popular = {}, {}
        for s in segments:
            part = items.filter(pl.col("segment") == s)
            pop = np.zeros(n, np.float32)
            pop[np.searchsorted(ids, part["product_id"].to_numpy())] = part["baskets"].to_numpy()
            popularity[s] = pop / max(float(pop.max()), 1.0)
            order = np.lexsort((np.arange(n), -pop))  # ties by product id
            popular[s] = order[pop[order] > 0][:_POP_DEPTH].astype(np.int32)
        meta = products.with_columns(_i=pl.Series(np.searchsorted(ids, products["product_id"].to_numpy())))
        col = "aisle_id" if "aisle_id" in products.columns else "department_id" if "department_id" in products.columns else None
        aisle = np.full(n, -1, np.int32)
        if col:
            aisle[meta["_i"].to_numpy()] = meta[col].fill_null(-1).cast(pl.Int32).to_numpy()
        if np.unique(aisle[aisle >= 0]).size <= 1:
            aisle[:] = -1  # one category for everything (a transactions file without one): no cap
        pl_flag = None
        if "is_private_label" in products.columns:
            pl_flag = np.zeros(n, bool)
            pl_flag[meta["_i"].to_numpy()] = meta["is_private_label"].fill_null(False).cast(pl.Boolean).to_numpy()
        model = cls(ids=ids, neighbours=neighbours, popularity=popularity, popular=popular, aisle=aisle,
                    private_label=pl_flag, vectors=None, profiles=prof.validate(profiles) if profiles else prof.load())
        if item_ids is not None and item_vectors is not None:
            model._set_vectors(np.asarray(item_ids), np.asarray(item_vectors, np.float32), segments)
        return model

    def _set_vectors(self, item_ids: np.ndarray, item_vectors: np.ndarray, segments: list[int]) -> None:
        vec = np.zeros((self.ids.size, item_vectors.shape[1]), np.float32)
        pos = np.searchsorted(self.ids, item_ids)
        ok = (pos < self.ids.size) & (self.ids[np.minimum(pos, self.ids.size - 1)] == item_ids)
        norms = np.linalg.norm(item_vectors[ok], axis=1, keepdims=True)
        vec[pos[ok]] = item_vectors[ok] / np.maximum(norms, 1e-12)
        self.vectors = vec
        # segment centroids relative to the global one: what sets each segment apart
        glob = self.popularity[ANY] / max(float(self.popularity[ANY].sum()), 1e-12)
        self.global_centroid = glob @ vec
        segs = [s for s in segments if s != ANY]
        cents = [(self.popularity[s] / max(float(self.popularity[s].sum()), 1e-12)) @ vec - self.global_centroid for s in segs]
        self.seg_ids = np.array(segs, np.int8)
        self.seg_centroids = _normalise(np.array(cents, np.float32)) if cents else None

    # --- querying --------------------------------------------------------------------

    def index_of(self, product_ids) -> tuple[np.ndarray, list[int]]:
        """Item indices of the known ids (order kept, duplicates dropped), and the unknown ids."""
        q = np.asarray(list(product_ids), np.int64)
        pos = np.searchsorted(self.ids, q)
        known = (pos < self.ids.size) & (self.ids[np.minimum(pos, self.ids.size - 1)] == q)
        idx = pos[known]
        _, first = np.unique(idx, return_index=True)
        return idx[np.sort(first)].astype(np.int64), [int(x) for x in q[~known]]

    def segment_mix(self, basket: np.ndarray, topk: int, temperature: float) -> dict[int, float]:
        """Softmax over the cosine of the basket centroid to each segment centroid, top-k."""
        if self.seg_centroids is None or self.vectors is None or basket.size == 0:
            return {}
        centre = self.vectors[basket].mean(axis=0) - self.global_centroid
        norm = float(np.linalg.norm(centre))
        if norm == 0.0:
            return {}
        cos = self.seg_centroids @ (centre / norm)
        top = np.argsort(-cos, kind="stable")[: max(int(topk), 1)]
        w = np.exp((cos[top] - cos[top].max()) / max(temperature, 1e-6))
        w /= w.sum()
        return {int(self.seg_ids[t]): float(x) for t, x in zip(top, w)}

    def recommend(self, product_ids, k: int = 10, *, segment: int | None = None, profile: str | dict = "precision_pair_heavy") -> BasketResult:
        """The top-``k`` complements of a basket (ids in the order they were added)."""
        basket, unknown = self.index_of(product_ids)
        sets = self.profiles[profile] if isinstance(profile, str) else profile
        size_key, params = prof.for_size(sets, int(basket.size))
        detected = segment is None
        if segment is not None:
            mix = {int(segment): 1.0} if int(segment) in self.popularity else {}
        else:
            mix = self.segment_mix(basket, params["SEGMIX_TOPK"], params["SEGMIX_TEMP"])
        if basket.size == 0:
            return self._popular_only(k, mix, detected, unknown, size_key)
        cand, parts = self._candidates(basket, mix, params)
        score = self._score(basket, cand, parts, mix, params)
        chosen = self._select(cand, score, parts, k, params)
        if chosen.size < k:  # a tiny pool: fill from global popularity
            chosen_items = self._fill(np.concatenate([basket, cand[chosen]]), k - chosen.size)
            items = np.concatenate([cand[chosen], chosen_items])
            scores = np.concatenate([score[chosen], np.zeros(chosen_items.size)])
            srcs = parts["source"][chosen].tolist() + ["global_popular"] * chosen_items.size
        else:
            items, scores, srcs = cand[chosen], score[chosen], parts["source"][chosen].tolist()
        return BasketResult([int(x) for x in self.ids[items]], [float(s) for s in scores], srcs, mix, detected and bool(mix),
                            unknown, size_key)

    def _popular_only(self, k, mix, detected, unknown, size_key) -> BasketResult:
        seg = max(mix, key=mix.get) if mix else None
        if seg is not None and seg in self.popular:
            src, top = "segment_popular", self.popular[seg][:k]
        else:
            src, top = "global_popular", self.popular[ANY][:k]
        if top.size < k:
            top = np.concatenate([top, self._fill(top, k - top.size)])
        pop = self.popularity[seg if src == "segment_popular" else ANY]
        return BasketResult([int(x) for x in self.ids[top]], [float(pop[t]) for t in top], [src] * top.size, mix,
                            detected and bool(mix), unknown, size_key, note="empty basket: popular items")

    def _fill(self, exclude: np.ndarray, n: int) -> np.ndarray:
        pool = self.popular[ANY]
        return pool[~np.isin(pool, exclude)][:n]

    def _candidates(self, basket: np.ndarray, mix: dict[int, float], params: dict) -> tuple[np.ndarray, dict]:
        """Candidate items and, per candidate, each pair component, links and source."""
        top = int(params["TOP_PAIRS"])
        plans = [(0, s, FORWARD, top, w) for s, w in mix.items()]
        plans += [(1, ANY, FORWARD, max(int(round(top * params["TOP_PAIRS_ANY_FRAC"])), 0), 1.0),
                  (2, ANY, REVERSE, int(params["TOP_REV"]), 1.0)]
        nbs, scs, comps, poss, sizes = [], [], [], [], []  # one entry per (component, basket item) slice
        for comp, s, d, depth, w in plans:
            table = self.neighbours.get((s, d))
            if table is None or depth <= 0:
                continue
            for pos, x in enumerate(basket):
                nb, sc = table.of(int(x), depth)
                if nb.size:
                    nbs.append(nb)
                    scs.append(sc * w if w != 1.0 else sc)
                    comps.append(comp)
                    poss.append(pos)
                    sizes.append(nb.size)
        pop = [self.popular[s][: int(params["TOP_POPP"])] for s in mix if s in self.popular]
        pop_g = self.popular[ANY][: int(params["TOP_POPG"])]
        nb = np.concatenate(nbs).astype(np.int64) if nbs else np.empty(0, np.int64)
        cand = np.unique(np.concatenate([nb, *pop, pop_g]).astype(np.int64))
        cand = cand[~self._marked(basket, cand)]
        j = np.searchsorted(cand, nb)
        ok = (j < cand.size) & (cand[np.minimum(j, max(cand.size - 1, 0))] == nb) if cand.size else np.zeros(nb.size, bool)
        pair = np.zeros((3, cand.size))
        links = np.zeros(cand.size, np.int64)
        if nbs and ok.any():
            j, sc = j[ok], np.concatenate(scs)[ok]
            comp, pos = np.repeat(comps, sizes)[ok], np.repeat(poss, sizes)[ok]
            for c in range(3):
                mask = comp == c
                pair[c] = np.bincount(j[mask], weights=sc[mask], minlength=cand.size)
            # distinct basket items linking each candidate
            links = np.bincount(np.unique(j * basket.size + pos) // basket.size, minlength=cand.size)
        pair /= basket.size  # the mean over the basket: comparable across sizes
        in_segpop = self._marked(np.concatenate(pop), cand) if pop else np.zeros(cand.size, bool)
        source = np.where(pair[0] > 0, 0, np.where(pair[1] > 0, 1, np.where(pair[2] > 0, 2, np.where(in_segpop, 3, 4))))
        return cand, {"pair": pair, "links": links, "source": _SOURCE_NAMES[source], "is_pair": source <= 2}

    def _marked(self, items: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """``np.isin(cand, items)`` through a catalog-sized mask: a query's sets are small."""
        mark = np.zeros(self.ids.size, bool)
        mark[items] = True
        return mark[cand]

    def _score(self, basket, cand, parts, mix, params) -> np.ndarray:
        """The linear score. Each component is scaled to [0, 1] over this query's candidates
        first, so a weight means the same for a basket of 1 or 10 items (averaged npmi shrinks
        with the basket, popularity is tiny past the head) and the profiles are comparable."""
        pair = parts["pair"]
        score = params["W_PAIR"] * _unit(pair[0] + params["PAIR_ANY_WEIGHT"] * pair[1] + params["REV_WEIGHT"] * pair[2])
        if self.vectors is not None and params["W_EMB"] > 0:
            centre = self.vectors[basket].sum(axis=0)
            norm = float(np.linalg.norm(centre))
            if norm > 0:
                cos = self.vectors[cand] @ (centre / norm)
                score += params["W_EMB"] * _unit(cos - cos.min())
        if params["W_POPP"] > 0 and mix:
            score += params["W_POPP"] * _unit(sum(w * self.popularity[s][cand] for s, w in mix.items() if s in self.popularity))
        if params["W_POPG"] > 0:
            score += params["W_POPG"] * _unit(self.popularity[ANY][cand])
        if basket.size > 1 and params["W_COVER"] > 0:
            score += params["W_COVER"] * np.maximum(parts["links"] - 1, 0) / (basket.size - 1)
        if self.private_label is not None:
            share = float(self.private_label[basket].mean())
            score += self.private_label[cand] * (params["W_PL_BASE"] + params["W_PL_PER_BASK_PL"] * share)
        return score

    def _select(self, cand, score, parts, k: int, params) -> np.ndarray:
        """Positions in ``cand`` of the chosen items, in list order."""
        cap = int(params["CAP_PER_AISLE"])
        diversify = int(params["DIVERSIFY"]) and self.vectors is not None
        order = self._ranked(cand, score, k if not cap and not diversify else max(5 * k, 50))
        if not cap and not diversify:
            chosen = order[:k]
        else:
            chosen = self._diversified(order, cand, score, k, cap, params["MMR_LAMBDA"] if diversify else 1.0)
        quota = min(int(params["PAIR_QUOTA"]), k)
        if int(parts["is_pair"][chosen].sum()) >= quota:
            return chosen
        return self._quota(chosen, self._ranked(cand, score, cand.size), parts["is_pair"], quota, k)

    def _ranked(self, cand, score, n: int) -> np.ndarray:
        """Positions of the ``n`` best candidates, best first, ties by product id (deterministic);
        a partition first, so only those n are sorted."""
        if n < cand.size:
            kth = np.partition(-score, n - 1)[n - 1]
            head = np.flatnonzero(-score <= kth)  # the n best and any ties at the boundary
        else:
            head = np.arange(cand.size)
        return head[np.lexsort((self.ids[cand[head]], -score[head]))][:n]

    def _diversified(self, pool, cand, score, k, cap, lam) -> np.ndarray:
        """Greedy MMR over the best candidates, at most ``cap`` per aisle (0: no cap)."""
        rel = score[pool] / max(float(np.abs(score[pool]).max()), 1e-12)
        vec = self.vectors[cand[pool]] if self.vectors is not None and lam < 1.0 else None
        max_sim = np.zeros(pool.size)
        taken = np.zeros(pool.size, bool)
        per_aisle: dict[int, int] = {}
        aisles = self.aisle[cand[pool]]
        chosen = []
        while len(chosen) < k:
            value = lam * rel - (1 - lam) * max_sim
            value[taken] = -np.inf
            if cap:
                value[[i for i, a in enumerate(aisles) if a >= 0 and per_aisle.get(int(a), 0) >= cap]] = -np.inf
            best = int(np.argmax(value))
            if not np.isfinite(value[best]):
                break
            taken[best] = True
            chosen.append(best)
            per_aisle[int(aisles[best])] = per_aisle.get(int(aisles[best]), 0) + 1
            if vec is not None:
                max_sim = np.maximum(max_sim, vec @ vec[best])
        return pool[np.array(chosen, np.int64)] if chosen else np.empty(0, np.int64)

    @staticmethod
    def _quota(chosen: np.ndarray, order: np.ndarray, is_pair: np.ndarray, quota: int, k: int) -> np.ndarray:
        """Swap the lowest non-pair items for the best remaining pair items up to ``quota``."""
        missing = min(quota, k) - int(is_pair[chosen].sum())
        if missing <= 0:
            return chosen
        taken = set(chosen.tolist())
        spare = [i for i in order if is_pair[i] and i not in taken][:missing]
        if not spare:
            return chosen
        out = chosen.tolist()
        drop = [p for p in range(len(out) - 1, -1, -1) if not is_pair[out[p]]][: len(spare)]
        for p, new in zip(drop, spare):
            out[p] = new
        return np.array(out, np.int64)


def _csr(part: pl.DataFrame, ids: np.ndarray) -> _Neighbours:
    part = part.sort("product_id", "rank")
    row = np.searchsorted(ids, part["product_id"].to_numpy())
    indptr = np.concatenate(([0], np.cumsum(np.bincount(row, minlength=ids.size)))).astype(np.int64)
    return _Neighbours(indptr, np.searchsorted(ids, part["neighbour_id"].to_numpy()).astype(np.int32),
                       part["npmi"].to_numpy().astype(np.float32))


def _unit(x) -> np.ndarray:
    """``x`` divided by its maximum (unchanged when that is not positive)."""
    x = np.asarray(x, np.float64)
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else x


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
