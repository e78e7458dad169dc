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

import threading
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from insightflow_assets.basket import profiles as prof
from insightflow_assets.basket.pairs import ANY, FORWARD, REVERSE

# Why an item is in the list: how it entered the candidate pool, strongest first.
SOURCES = ("pair", "pair_any", "reverse_pair", "segment_popular", "global_popular")
_SOURCE_NAMES = np.array(SOURCES, dtype=object)
_POP_DEPTH = 5000  # popular items kept sorted per segment (pool and filling)
_POOL_PARAMS = ("TOP_PAIRS", "TOP_PAIRS_ANY_FRAC", "TOP_REV", "TOP_POPP", "TOP_POPG")  # what the pool depends on
_EMPTY_I, _EMPTY_F = np.empty(0, np.int32), np.empty(0, np.float32)
_SCRATCH = threading.local()  # per-thread scratch arrays of the query path (serving answers from threads)


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

    def gather(self, items: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best ``top`` neighbours of each of ``items``, concatenated: (neighbours, scores,
        position in ``items`` of the item each belongs to)."""
        lo = self.indptr[items]
        n = np.minimum(self.indptr[items + 1] - lo, top)
        ends = np.cumsum(n)
        at = np.arange(int(ends[-1]) if n.size else 0) + np.repeat(lo - (ends - n), n)
        return self.indices[at], self.scores[at], np.repeat(np.arange(items.size, dtype=np.int32), n)


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
    active: str = "precision_pair_heavy"  # the profile a query uses unless told (the run's choice)
    _index: dict[int, int] = field(default_factory=dict, repr=False)  # product id → item index

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
        active: str | None = None,
    ) -> "BasketModel":
        """From `pairs.build_pairs`' frames, the products (``product_id``, ``aisle_id`` or
        ``department_id``, optional ``is_private_label``) and optional embeddings; ``profiles``
        as in profiles.json (the package's file by default); ``active`` overrides its default."""
        ids = np.unique(np.concatenate([products["product_id"].to_numpy(), items["product_id"].to_numpy()]).astype(np.int32))
        n = ids.size
        # ANY always: a window without a basket still gives a model (that knows no product)
        segments = sorted({int(s) for s in items["segment"].unique()} | {ANY})
        # one pass over the pairs (stored by product, then rank: each part is already in CSR order)
        parts = pairs.partition_by("segment", "direction", as_dict=True, maintain_order=True)
        empty = pairs.clear()
        neighbours = {(s, d): _csr(parts.get((s, d), empty), ids) for s in segments for d in (FORWARD, REVERSE)}
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
        raw = profiles or prof.raw()
        sets = prof.validate(raw)
        active = active or prof.active(raw)
        if active not in sets:
            raise prof.ProfileError(f"basket profiles: the active profile {active!r} is not one of {sorted(sets)}")
        model = cls(ids=ids, neighbours=neighbours, popularity=popularity, popular=popular, aisle=aisle,
                    private_label=pl_flag, vectors=None, profiles=sets, active=active)
        model._index = dict(zip(ids.tolist(), range(n)))  # built here, not on a first query
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
        if len(self._index) != self.ids.size:
            self._index = dict(zip(self.ids.tolist(), range(self.ids.size)))
        # a dict: a basket is a few ids, and numpy's per-call cost would dominate
        q = [int(x) for x in product_ids]
        idx = [self._index.get(x) for x in q]
        known = list(dict.fromkeys(i for i in idx if i is not None))
        return np.array(known, np.int64), [x for x, i in zip(q, idx) if i is None]

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

    def recommend(self, product_ids, k: int = 10, *, segment: int | None = None, profile: str | dict | None = None) -> BasketResult:
        """The top-``k`` complements of a basket (ids in the order they were added), with the
        named profile (or a `profiles.single` one; the model's active profile by default)."""
        return self.recommend_profiles(product_ids, k, segment=segment, profiles=[profile])[0]

    def recommend_profiles(self, product_ids, k: int = 10, *, segment: int | None = None, profiles=(None,)) -> list[BasketResult]:
        """`recommend` of one basket under each of ``profiles``: profiles with the same pool
        parameters share one candidate pool (what choosing a profile asks of every query)."""
        basket, unknown = self.index_of(product_ids)
        pools: dict[tuple, tuple] = {}
        out = []
        for profile in profiles:
            sets = self.profiles[profile or self.active] if not isinstance(profile, dict) else profile
            size_key, params = prof.for_size(sets, int(basket.size))
            if segment is not None:
                mix = {int(segment): 1.0} if int(segment) in self.popularity else {}
            else:
                mix = self.segment_mix(basket, params["SEGMIX_TOPK"], params["SEGMIX_TEMP"])
            detected = segment is None and bool(mix)
            if basket.size == 0:
                out.append(self._popular_only(k, mix, detected, unknown, size_key))
                continue
            key = (tuple(mix.items()), *(params[p] for p in _POOL_PARAMS))
            if key not in pools:
                pools[key] = self._candidates(basket, mix, params)
            cand, parts = pools[key]
            items, scores, sources = self._top(basket, cand, parts, mix, params, k)
            out.append(BasketResult(self.ids[items].tolist(), scores.tolist(), sources, mix, detected, unknown, size_key))
        return out

    def _top(self, basket, cand, parts, mix, params, k: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Items, scores and sources of the list: scored, selected, topped up from global
        popularity when the pool is tiny."""
        score = self._score(basket, cand, parts, mix, params)
        chosen = self._select(cand, score, parts, k, params)
        items, scores, sources = cand[chosen], score[chosen], _SOURCE_NAMES[parts["source"][chosen]].tolist()
        if chosen.size < k:
            extra = self._fill(np.concatenate([basket, items]), k - chosen.size)
            items, scores = np.concatenate([items, extra]), np.concatenate([scores, np.zeros(extra.size)])
            sources += ["global_popular"] * extra.size
        return items, np.asarray(scores, np.float64), sources

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
        """Candidate items and, per candidate, each pair component, links and source code
        (index into `SOURCES`). Vectorised over the basket: a few numpy calls per neighbour
        table, whatever the basket size."""
        top = int(params["TOP_PAIRS"])
        plans = [(0, s, FORWARD, top, w) for s, w in mix.items()]
        plans += [(1, ANY, FORWARD, max(int(round(top * params["TOP_PAIRS_ANY_FRAC"])), 0), 1.0),
                  (2, ANY, REVERSE, int(params["TOP_REV"]), 1.0)]
        nbs, scs, poss, comps = [_EMPTY_I], [_EMPTY_F], [_EMPTY_I], [_EMPTY_I]
        for comp, s, d, depth, w in plans:
            table = self.neighbours.get((s, d))
            if table is not None and depth > 0:
                nb, sc, pos = table.gather(basket, depth)
                nbs.append(nb)
                scs.append(sc * w if w != 1.0 else sc)
                poss.append(pos)
                comps.append(np.full(nb.size, comp, np.int32))
        pops = [self.popular[s][: int(params["TOP_POPP"])] for s in mix if s in self.popular]
        nb = np.concatenate(nbs)
        n_pop = sum(p.size for p in pops)
        cand, inv = self._unique_inverse(np.concatenate([nb, *pops, self.popular[ANY][: int(params["TOP_POPG"])]]))
        j, n = inv[: nb.size], cand.size
        # the three pair components summed per candidate in one bincount, in pooling order
        pair = np.bincount(np.concatenate(comps) * n + j, weights=np.concatenate(scs), minlength=3 * n).reshape(3, n)
        # distinct basket items linking each candidate
        links = (np.bincount(j * basket.size + np.concatenate(poss), minlength=n * basket.size) > 0).reshape(n, basket.size).sum(axis=1)
        in_segpop = np.zeros(n, bool)
        in_segpop[inv[nb.size: nb.size + n_pop]] = True
        keep = ~(cand[:, None] == basket).any(axis=1)  # basket items out (a basket is small)
        # pair scores: the mean over the basket, comparable across sizes
        cand, pair, links, in_segpop = cand[keep], pair[:, keep] / basket.size, links[keep], in_segpop[keep]
        source = np.where(pair[0] > 0, 0, np.where(pair[1] > 0, 1, np.where(pair[2] > 0, 2, np.where(in_segpop, 3, 4))))
        return cand, {"pair": pair, "links": links, "source": source, "is_pair": source <= 2}

    def _unique_inverse(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``np.unique(x, return_inverse=True)`` for item indices, through a catalog-sized
        scratch array of this thread (cleared after use): no sort of the ~2,000 pooled ids."""
        slot = getattr(_SCRATCH, "slot", None)
        if slot is None or slot.size != self.ids.size:
            slot = _SCRATCH.slot = np.full(self.ids.size, -1, np.int64)
        slot[x] = 0
        cand = np.flatnonzero(slot == 0)
        slot[cand] = np.arange(cand.size)
        inv = slot[x]
        slot[cand] = -1
        return cand, inv

    def _score(self, basket, cand, parts, mix, params) -> np.ndarray:
        """The linear score. Each component is scaled to [0, 1] over this query's candidates
        first, so a weight means the same for a basket of 1 or 10 items (averaged npmi shrinks
        with the basket, popularity is tiny past the head) and the profiles are comparable."""
        pair = parts["pair"]
        score = params["W_PAIR"] * _unit(pair[0] + params["PAIR_ANY_WEIGHT"] * pair[1] + params["REV_WEIGHT"] * pair[2])
        if self.vectors is not None and params["W_EMB"] > 0:
            centre = self.vectors[basket].sum(axis=0)
            norm = float(np.linalg.norm(centre))
            if norm > 0 and cand.size:  # no candidate left (a tiny catalogue): nothing to scale
                cos = np.take(self.vectors, cand, axis=0) @ (centre / norm)  # take: about half the cost of v[cand]
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
        blocked = np.zeros(pool.size, bool)  # taken, or of an aisle at its cap
        per_aisle: dict[int, int] = {}
        aisles = self.aisle[cand[pool]]
        chosen = []
        while len(chosen) < k:
            value = lam * rel - (1 - lam) * max_sim if vec is not None else rel.copy()
            value[blocked] = -np.inf
            best = int(np.argmax(value))
            if not np.isfinite(value[best]):
                break
            blocked[best] = True
            chosen.append(best)
            a = int(aisles[best])
            per_aisle[a] = per_aisle.get(a, 0) + 1
            if cap and a >= 0 and per_aisle[a] >= cap:
                blocked |= aisles == a
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
    key = part["product_id"].cast(pl.Int64) * (1 << 16) + part["rank"].cast(pl.Int64)
    if not key.is_sorted():  # stored pairs are in this order already; a sort only for other frames
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
