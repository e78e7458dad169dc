"""The API's Prometheus metrics, in a registry of the app's own (counters are per process:
run one worker per process and let Prometheus sum the processes)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Up to 2.5 s: a basket query takes milliseconds, a request waiting behind a reload longer.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("insightflow_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("insightflow_request_seconds", "HTTP request latency", ["route", "method", "status"],
                                 buckets=BUCKETS, registry=r)
        self.fallbacks = Counter("insightflow_fallbacks", "Answers from popular items (unknown user, empty basket)",
                                 ["endpoint"], registry=r)
        self.unknown_ids = Counter("insightflow_unknown_ids", "Ids in requests that the bundle does not know", ["endpoint"],
                                   registry=r)
        self.reloads = Counter("insightflow_reloads", "Bundles loaded and swapped in", registry=r)
        self.failed_reloads = Counter("insightflow_failed_reloads", "Reloads that failed (the previous bundle kept serving)",
                                      registry=r)
        self.bundle = Gauge("insightflow_bundle_info", "The loaded bundle (value 1)", ["run_key", "profile", "method", "verified"],
                            registry=r)
        self.loaded_at = Gauge("insightflow_bundle_loaded_timestamp_seconds", "When the loaded bundle was swapped in", registry=r)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method, str(status)).observe(seconds)

    def swapped(self, bundle) -> None:
        self.reloads.inc()
        self.bundle.clear()  # one series: the bundle now serving
        self.bundle.labels(bundle.run_key, bundle.profile, str(bundle.exported_method.get("method")),
                           str(bundle.verified).lower()).set(1)
        self.loaded_at.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: counts and times every HTTP request by its route template (``/users/{user_id}/
    recommendations``, not one series per user) and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "unmatched"), scope["method"], status["code"], time.perf_counter() - t0)
