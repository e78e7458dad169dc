"""Threads over independent blocks of pure work (numpy, scipy's sparse products, polars and
scikit-learn's linear algebra release the GIL), with BLAS at one thread per worker: a block's
result never depends on the core count (a multi-threaded BLAS may split sums differently), and
every core works. ``implicit`` wants single-threaded BLAS too."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")


def usable_cores() -> int:
    """Cores this process may run on (its affinity), at least one."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def map_blocks(fn: Callable[..., T], starts: Iterable, workers: int | None = None) -> list[T]:
    """``[fn(s) for s in starts]`` in that order, ``workers`` threads (None: every usable core)."""
    starts = list(starts)
    workers = usable_cores() if workers is None else max(int(workers), 1)
    with threadpool_limits(1, "blas"):
        if workers == 1 or len(starts) <= 1:
            return [fn(s) for s in starts]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [fut.result() for fut in [pool.submit(fn, s) for s in starts]]
