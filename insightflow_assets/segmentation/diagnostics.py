"""Minimal diagnostics of the segmentation step, kept even when the step fails (the seed's
``recsys/debug/user-seg-TS/diag/``), so a failed run can be understood from storage alone."""

from __future__ import annotations

import json
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable

import polars as pl


class StepDiagnostics:
    """Collects log lines, timings and counts; `files()` renders the three diagnostic files."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self._echo = echo
        self._t0 = time.perf_counter()
        self.lines: list[str] = []
        self.metrics: dict[str, Any] = {"status": "running"}
        self.schema: dict[str, str] = {}

    def log(self, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.lines.append(f"{stamp} {message}")
        if self._echo:
            self._echo(message)

    def record_schema(self, frame: pl.DataFrame | pl.LazyFrame) -> None:
        self.schema = {name: str(dtype) for name, dtype in frame.collect_schema().items()}

    def failed(self, exc: BaseException) -> None:
        self.metrics["status"] = "failed"
        self.metrics["error"] = f"{type(exc).__name__}: {exc}"
        self.log("FAILED " + "".join(traceback.format_exception_only(type(exc), exc)).strip())

    def files(self) -> dict[str, bytes]:
        if self.metrics.get("status") == "running":
            self.metrics["status"] = "succeeded"
        self.metrics["seconds_total"] = round(time.perf_counter() - self._t0, 3)
        return {
            "driver_log.txt": ("\n".join(self.lines) + "\n").encode(),
            "metrics.json": json.dumps(self.metrics, indent=2, default=str).encode(),
            "orders_schema.json": json.dumps(self.schema, indent=2).encode(),
        }
