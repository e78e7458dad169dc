"""Serving benchmark: a real `insightflow serve` process under an open-loop load generator.

    .venv/bin/python benchmarks/bench_serving.py [--curated DIR | --users 2000] [--rates 200 500 1000]
                                                 [--seconds 10] [--user-share 0.7]

1. The bundle: the graph is run once on generated data (``--users``, seed 42, cached under
   benchmarks/.cache) unless ``--curated`` names a store with a promoted run; the bundle is
   loaded in process first (load time and peak RSS).
2. A server on a free loopback port (one worker, manifest watcher off). For each rate, requests
   are sent on a fixed schedule (open loop: a slow answer does not slow the schedule down, and
   latency counts from the scheduled send, so queueing shows): ``--user-share`` of them
   ``GET /users/{id}/recommendations?k=10`` (known users, plus 5% unknown), the rest
   ``POST /baskets/complements`` with 1-6 popular products. p50/p95/p99 per route, achieved
   throughput, errors, the server's RSS.
3. The same at the middle rate while ``/admin/reload`` swaps the bundle every 2 s.

The load generator runs on the same 2 cores as the server (and, on a shared machine, other
work): the load average is recorded with each row. Results: benchmarks/results/DATE-serving.*
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit wants single-threaded BLAS (the graph run)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import CACHE, Stages, cached_dataset, machine, proc_mb, write_results  # noqa: E402

COLUMNS = ["scenario", "route", "target_rps", "achieved_rps", "requests", "errors", "p50_ms", "p95_ms", "p99_ms",
           "server_rss_mb", "load_s", "load_avg_1m"]  # fmt: skip
EXE = str(Path(sys.executable).parent / "insightflow")
RUN_KEY = "run-20260101-000000"


def build_store(users: int) -> Path:
    """A curated store with one promoted run of the whole graph on generated data (cached)."""
    from dagster import DagsterInstance

    from insightflow_assets.definitions import make_definitions
    from insightflow_assets.runner import run_graph
    from resources import CuratedIOManager, LocalStorage, RfmParams
    from resources.layout import LATEST_MANIFEST

    curated = CACHE / f"serving-u{users}" / "curated"
    if (curated / LATEST_MANIFEST).exists():
        return curated
    source = LocalStorage(root=str(cached_dataset(users, 42, 0.05, 0.05)))
    store = LocalStorage(root=str(curated))
    defs = make_definitions({"source": source, "curated": store, "io_manager": CuratedIOManager(storage=store), "rfm": RfmParams()})
    with DagsterInstance.ephemeral() as inst:
        outcome = run_graph(inst, run_key=RUN_KEY, defs=defs, log_level="CRITICAL")
    if not outcome.ok:
        raise SystemExit(f"the graph failed: {outcome.errors}")
    return curated


def start_server(curated: Path, admin_key: str) -> tuple[subprocess.Popen, int]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INSIGHTFLOW_STORAGE": "local", "INSIGHTFLOW_CURATED_DIR": str(curated), "INSIGHTFLOW_ADMIN_KEY": admin_key}
    proc = subprocess.Popen([EXE, "serve", "--port", str(port), "--watch-seconds", "0", "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not become ready")


def requests_plan(bundle, n: int, user_share: float, seed: int = 0) -> list[tuple[str, str, dict | None]]:
    """``n`` requests: (route label, path, JSON body or None), seeded."""
    rng = np.random.default_rng(seed)
    users = bundle.users.user_ids
    popular = bundle.popular[:500]
    plan = []
    for _ in range(n):
        if rng.random() < user_share:
            u = int(rng.choice(users)) if rng.random() > 0.05 else 10**9 + int(rng.integers(1000))
            plan.append(("users", f"/users/{u}/recommendations?k=10", None))
        else:
            basket = [int(x) for x in rng.choice(popular, size=int(rng.integers(1, 7)), replace=False)]
            plan.append(("baskets", "/baskets/complements", {"product_ids": basket, "k": 10}))
    return plan


def run_load(port: int, plan, rate: float, reload_every: float | None, admin_key: str,
             processes: int = 2, threads: int = 16) -> tuple[list[tuple[str, float, int]], float]:
    """Send ``plan`` at ``rate``/s on a fixed schedule: (route, latency s from schedule, status) of
    each request, and the seconds from the first due time to the last answer.

    ``processes`` × ``threads`` senders, each with its own keep-alive connection (http.client:
    the lightest client, so the generator takes as little of the shared CPU as it can); request
    ``i`` is due at ``start + i / rate`` whoever sends it."""
    start = time.time() + 0.5
    shares = [[(i, *plan[i]) for i in range(w, len(plan), processes)] for w in range(processes)]
    stop = threading.Event()
    reloads: list[tuple[str, float, int]] = []
    bg = threading.Thread(target=_reloader, args=(port, admin_key, reload_every, stop, reloads)) if reload_every else None
    if bg:
        bg.start()
    with ProcessPoolExecutor(processes) as pool:
        parts = list(pool.map(_send_share, [(port, share, start, rate, threads) for share in shares]))
    stop.set()
    if bg:
        bg.join()
    results = [r[:3] for part in parts for r in part] + reloads
    return results, max(r[3] for part in parts for r in part) - start


def _send_share(args) -> list[tuple[str, float, int]]:
    port, share, start, rate, threads = args
    out: list[tuple[str, float, int]] = []

    def sender(items):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i, route, path, body in items:
            due = start + i / rate
            if due > time.time():
                time.sleep(due - time.time())
            try:
                if body is None:
                    conn.request("GET", path)
                else:
                    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = -1
            now = time.time()
            out.append((route, now - due, status, now))
        conn.close()

    workers = [threading.Thread(target=sender, args=(share[t::threads],)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def _reloader(port: int, admin_key: str, every: float, stop: threading.Event, out: list) -> None:
    while not stop.wait(every):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/admin/reload", body="{}", headers={"Content-Type": "application/json", "X-Admin-Key": admin_key})
        resp = conn.getresponse()
        resp.read()
        out.append(("admin_reload", 0.0, resp.status))  # not timed: a reload is not a request served
        conn.close()


def summarize(scenario: str, rate: float, results, seconds: float, pid: int) -> list[dict]:
    rows = []
    load = round(os.getloadavg()[0], 2)
    for route in ("users", "baskets", "all"):
        got = [(lat, st) for r, lat, st in results if r != "admin_reload" and (route == "all" or r == route)]
        lat = np.array([x for x, _ in got]) * 1000
        rows.append({
            "scenario": scenario, "route": route, "target_rps": rate, "achieved_rps": round(len(got) / seconds, 1),
            "requests": len(got), "errors": sum(st != 200 for _, st in got),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
            "server_rss_mb": round(proc_mb(pid, "VmRSS"), 0), "load_avg_1m": load,
        })  # fmt: skip
    reloads = [st for r, _, st in results if r == "admin_reload"]
    if reloads:
        rows[-1]["scenario"] += f" ({sum(s == 200 for s in reloads)}/{len(reloads)} reloads ok)"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curated", type=Path, default=None, help="a store with a promoted run (default: build one)")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--rates", type=float, nargs="+", default=[200, 500, 1000])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--user-share", type=float, default=0.7)
    args = ap.parse_args()

    from insightflow_assets.serving.bundle import load_latest
    from resources import LocalStorage

    stages = Stages()
    with stages.stage("build store (graph, cached)"):
        curated = args.curated or build_store(args.users)
    with stages.stage("bundle load (in process)") as row:
        bundle, _ = load_latest(LocalStorage(root=str(curated)))
        row.update(users=int(bundle.counts["users"]), products=int(bundle.counts["products"]))
    admin_key = secrets.token_hex(16)
    proc, port = start_server(curated, admin_key)
    load_row = stages.rows[-1]
    rows = [{"scenario": "bundle load (in process; RSS of that process)", "route": "-", "load_s": load_row["seconds"],
             "server_rss_mb": load_row["peak_rss_mb"], "load_avg_1m": round(os.getloadavg()[0], 2)},
            {"scenario": "idle server", "route": "-", "server_rss_mb": round(proc_mb(proc.pid, "VmRSS"), 0),
             "load_avg_1m": round(os.getloadavg()[0], 2)}]
    try:
        run_load(port, requests_plan(bundle, 200, args.user_share, seed=99), 100, None, admin_key)  # warm-up
        middle = sorted(args.rates)[len(args.rates) // 2]
        for rate, reload_every in [*((r, None) for r in args.rates), (middle, 2.0)]:
            n = int(rate * args.seconds)
            results, seconds = run_load(port, requests_plan(bundle, n, args.user_share), rate, reload_every, admin_key)
            label = f"{rate:.0f} rps" + (" + reload every 2 s" if reload_every else "")
            rows += summarize(label, rate, results, seconds, proc.pid)
            print(f"  {label}: {rows[-1]['achieved_rps']} rps, p99 {rows[-1]['p99_ms']:.1f} ms, errors {rows[-1]['errors']}", flush=True)
        peak = round(proc_mb(proc.pid, "VmHWM"), 0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    payload = {"users": int(bundle.counts["users"]), "machine": machine(), "bundle": stages.rows, "server_peak_rss_mb": peak,
               "note": "client and server share the CPU; on a shared machine other work too (load_avg_1m)", "stages": rows}
    write_results("serving", payload, COLUMNS)


if __name__ == "__main__":
    main()
