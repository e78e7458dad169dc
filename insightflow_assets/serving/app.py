"""The HTTP API over ``latest/`` (FastAPI): recommendations, basket complements, similar
products and product details from one verified `Bundle`, with health, version, admin reload
and Prometheus metrics. OpenAPI docs at ``/docs``.

Every handler reads ``state.bundle`` once and answers from that reference only, so a reload
swapping the bundle meanwhile never mixes two runs in one answer; every answer names its run.
"""

from __future__ import annotations

import hmac
import os
from contextlib import asynccontextmanager
from typing import Annotated, ClassVar

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from insightflow_assets.basket.pairs import ANY
from insightflow_assets.report import one_line
from insightflow_assets.serving.bundle import Bundle, id_of_code
from insightflow_assets.serving.metrics import Metrics, MetricsMiddleware
from insightflow_assets.serving.state import ServingState
from resources.layout import RunKeyError, parse_run_key
from resources.storage import Storage

ADMIN_KEY_ENV = "INSIGHTFLOW_ADMIN_KEY"
ADMIN_HEADER = "X-Admin-Key"
ProductId = Annotated[int, Field(ge=1, le=2**31 - 1)]
K = Annotated[int, Query(ge=1, le=100, description="list length, 1..100")]
Code = Annotated[str, Field(min_length=1, max_length=200)]  # a retailer's id, as text


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not silently ignored


class ProductsByIdOrCode(Strict):
    """Products given by internal id or by the retailer's code: exactly one of the two lists."""

    _what: ClassVar[str] = "products"  # what the error names
    product_ids: list[ProductId] | None
    product_codes: list[Code] | None

    @model_validator(mode="after")
    def _one_of_ids_or_codes(self):
        if (self.product_ids is None) == (self.product_codes is None):
            raise ValueError(f"give the {self._what} as product_ids or as product_codes (one of them)")
        return self

    def ids(self, b: Bundle) -> tuple[list[int], list[str]]:
        """The product ids asked for, and the codes no product of the run has (reported, not fatal)."""
        if self.product_codes is None:
            return list(self.product_ids or []), []
        return _ids_of_codes(b, self.product_codes)


class ComplementsRequest(ProductsByIdOrCode):
    _what: ClassVar[str] = "basket"
    product_ids: list[ProductId] | None = Field(None, max_length=200, description="the basket, in the order items were added")
    product_codes: list[Code] | None = Field(
        None, max_length=200, description="or the basket by the retailer's product codes (product_code)")
    k: int = Field(10, ge=1, le=100)
    segment: int | None = Field(None, ge=ANY, le=127, description="user_seg segment; omitted: detected from the basket")
    profile: str | None = Field(None, max_length=64, description="basket profile; omitted: the bundle's active one")
    expand: bool = Field(False, description="add name, aisle and department to each product")


class EnrichRequest(ProductsByIdOrCode):
    _what: ClassVar[str] = "products"
    product_ids: list[ProductId] | None = Field(None, min_length=1, max_length=1000)
    product_codes: list[Code] | None = Field(None, min_length=1, max_length=1000,
                                             description="or the retailer's product codes (product_code)")


class ReloadRequest(Strict):
    run_key: str | None = Field(None, max_length=80, description="a stored run (rollback); omitted: what latest/ names")
    profile: str | None = Field(None, max_length=64)


def create_app(storage: Storage, *, watch_seconds: float = 30.0, profile: str | None = None,
               admin_key: str | None = None) -> FastAPI:
    """The app over ``storage``'s ``latest/``; the admin key defaults to $INSIGHTFLOW_ADMIN_KEY."""
    metrics = Metrics()
    state = ServingState(storage, metrics, profile=profile)
    # an empty key (argument or environment) disables the admin endpoints, never accepts an empty header
    admin_key = (admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV)) or None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start(watch_seconds)
        yield
        state.stop()

    app = FastAPI(title="InsightFlow serving", lifespan=lifespan,
                  description="Recommendations and basket complements from the run promoted to latest/.")
    app.state.serving = state
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _health_routes(app, state, metrics)
    _user_routes(app, state, metrics)
    _basket_routes(app, state, metrics)
    _product_routes(app, state, metrics)
    _admin_routes(app, state, _admin_guard(admin_key))
    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with a one-line summary first (``query k: Input should be less than or equal to 100``)."""
    errors = exc.errors()
    lines = [f"{' '.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
    return JSONResponse(status_code=422, content=jsonable_encoder({"error": "; ".join(lines), "detail": detail}))


def _current(state: ServingState) -> Bundle:
    bundle = state.bundle  # the one read of the reference for this request
    if bundle is None:
        detail = state.last_error["error"] if state.last_error else "loading the bundle"
        raise HTTPException(503, f"no bundle loaded yet: {detail}")
    return bundle


def _health_routes(app: FastAPI, state: ServingState, metrics: Metrics) -> None:
    @app.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        bundle = state.bundle
        body = {"ready": bundle is not None, "run_key": bundle.run_key if bundle else None,
                "verified": bundle.verified if bundle else None, "pinned": state.pinned,
                "last_reload_error": state.last_error}
        return JSONResponse(body, status_code=200 if bundle is not None else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/version")
    async def version() -> dict:
        b = _current(state)
        return {"run_key": b.run_key, "finished_at_utc": b.finished_at_utc, "promoted_at_utc": b.promoted_at_utc,
                "exported_method": b.exported_method, "counts": dict(b.counts), "profile": b.profile,
                "profiles": sorted(b.basket.profiles), "loaded_at_utc": b.loaded_at_utc, "verified": b.verified,
                "pinned": state.pinned is not None, "objects": len(b.objects)}


def _user_routes(app: FastAPI, state: ServingState, metrics: Metrics) -> None:
    # async: a few microseconds of numpy each, cheaper on the event loop than a thread hop
    @app.get("/users/{user_id}/recommendations")
    async def user_recommendations(user_id: Annotated[int, Path(ge=0, le=2**31 - 1)], k: K = 10) -> JSONResponse:
        b = _current(state)
        known, items = b.user_items(user_id, k)
        if not known:
            metrics.fallbacks.labels("users").inc()
        return JSONResponse({"run_key": b.run_key, "user_id": user_id, "source": "model" if known else "fallback",
                             "method": b.exported_method.get("method") if known else "popularity", "items": items})

    @app.get("/customers/{customer_code}/recommendations")
    async def customer_recommendations(customer_code: Annotated[str, Path(min_length=1, max_length=200)],
                                       k: K = 10) -> JSONResponse:
        """The same list by the retailer's customer id (``customer_code`` in the exports)."""
        b = _current(state)
        user_id = b.users.user_of(customer_code)
        known, items = b.user_items(user_id if user_id is not None else -1, k)
        if not known:
            metrics.fallbacks.labels("customers").inc()
        return JSONResponse({"run_key": b.run_key, "customer_code": customer_code, "user_id": user_id,
                             "source": "model" if known else "fallback",
                             "method": b.exported_method.get("method") if known else "popularity", "items": items})


def _basket_routes(app: FastAPI, state: ServingState, metrics: Metrics) -> None:
    @app.post("/baskets/complements")
    async def complements(req: ComplementsRequest) -> JSONResponse:
        b = _current(state)
        profile = req.profile or b.profile
        if profile not in b.basket.profiles:
            raise HTTPException(422, f"profile {profile!r} is unknown (known: {', '.join(sorted(b.basket.profiles))})")
        if req.segment is not None and req.segment not in b.basket.popularity:
            raise HTTPException(422, f"segment {req.segment} is unknown (known: {', '.join(map(str, sorted(b.basket.popularity)))})")
        ids, unknown_codes = req.ids(b)
        res = b.basket.recommend(ids, req.k, segment=req.segment, profile=profile)
        if unknown_codes:
            metrics.unknown_ids.labels("baskets").inc(len(unknown_codes))
        if res.unknown_ids:
            metrics.unknown_ids.labels("baskets").inc(len(res.unknown_ids))
        if res.note:
            metrics.fallbacks.labels("baskets").inc()
        items = res.rows()
        if req.expand:
            items = [{**row, **b.products.get(row["product_id"], {})} for row in items]
        return JSONResponse({
            "run_key": b.run_key, "source": "fallback" if res.note else "basket", "note": res.note or None,
            "profile": profile, "size_key": res.size_key, "segment_mix": {str(s): w for s, w in res.segment_mix.items()},
            "segment_detected": res.segment_detected, "unknown_ids": res.unknown_ids,
            **({"unknown_codes": unknown_codes} if req.product_codes is not None else {}), "items": items,
        })  # fmt: skip


def _ids_of_codes(b: Bundle, codes: list[str]) -> tuple[list[int], list[str]]:
    """Product ids of the retailer's codes (in order), and the codes no product of the run has
    (a number that is no product id, where the ids were kept as given, included)."""
    found = [(c, id_of_code(b.product_codes, c)) for c in codes]
    known = [(c, i) for c, i in found if i is not None and i in b.products]
    return [i for _, i in known], [c for c, i in found if (c, i) not in known]


def _product_routes(app: FastAPI, state: ServingState, metrics: Metrics) -> None:
    @app.get("/products/{product_id}/similar")
    async def similar(product_id: Annotated[int, Path(ge=1, le=2**31 - 1)], k: K = 10) -> JSONResponse:
        return _similar(_current(state), metrics, product_id, k)

    @app.get("/products/by-code/{product_code}/similar")
    async def similar_by_code(product_code: Annotated[str, Path(min_length=1, max_length=200)], k: K = 10) -> JSONResponse:
        """The same list by the retailer's product code (``product_code`` in the exports)."""
        b = _current(state)
        product_id = id_of_code(b.product_codes, product_code)
        if product_id is None:
            metrics.unknown_ids.labels("similar").inc()
            raise HTTPException(404, f"no product has the code {product_code!r} in run {b.run_key}")
        return _similar(b, metrics, product_id, k)

    @app.post("/products/enrich")
    async def enrich(req: EnrichRequest) -> JSONResponse:
        b = _current(state)
        ids, unknown_codes = req.ids(b)
        found, unknown = b.enrich(ids)
        if unknown or unknown_codes:
            metrics.unknown_ids.labels("enrich").inc(len(unknown) + len(unknown_codes))
        return JSONResponse({"run_key": b.run_key, "products": found, "unknown_ids": unknown,
                             **({"unknown_codes": unknown_codes} if req.product_codes is not None else {})})


def _similar(b: Bundle, metrics: Metrics, product_id: int, k: int) -> JSONResponse:
    """The ``k`` products nearest by LightFM vector, each with the retailer's code."""
    found = b.similar(product_id, k)
    if found is None:
        metrics.unknown_ids.labels("similar").inc()
        raise HTTPException(404, f"product {product_id} has no embedding in run {b.run_key}")
    ids, cos = found
    return JSONResponse({"run_key": b.run_key, "product_id": product_id, "product_code": b.code_of(product_id),
                         "items": [{"product_id": p, "product_code": b.code_of(p), "cosine": c} for p, c in zip(ids, cos)]})


def _admin_guard(admin_key: str | None):
    def guard(x_admin_key: Annotated[str | None, Header(alias=ADMIN_HEADER)] = None) -> None:
        if admin_key is None:
            raise HTTPException(403, f"admin endpoints are disabled: set {ADMIN_KEY_ENV} in the server's environment")
        # compare_digest: the time taken does not tell how much of a guess was right
        if x_admin_key is None or not hmac.compare_digest(x_admin_key.encode(), admin_key.encode()):
            raise HTTPException(401, f"missing or wrong {ADMIN_HEADER} header")

    return guard


def _admin_routes(app: FastAPI, state: ServingState, guard) -> None:
    @app.post("/admin/reload", dependencies=[Depends(guard)])
    def reload(req: Annotated[ReloadRequest, Body()] = ReloadRequest()) -> dict:
        previous = state.bundle
        try:
            if req.run_key is not None:
                parse_run_key(req.run_key)
        except RunKeyError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            new = state.reload(req.run_key, req.profile)
        except Exception as exc:  # noqa: BLE001 - reported; the old bundle keeps serving
            kept = previous.run_key if previous else None
            return JSONResponse({"reloaded": False, "error": one_line(exc), "run_key": kept}, status_code=500)
        return {"reloaded": True, "run_key": new.run_key, "previous_run_key": previous.run_key if previous else None,
                "profile": new.profile, "verified": new.verified, "pinned": req.run_key is not None}
