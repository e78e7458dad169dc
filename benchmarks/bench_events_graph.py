"""Events form (issue 16): the whole graph on a generated event log of RetailRocket's size.

    .venv/bin/python benchmarks/bench_events_graph.py                     # 1,407,580 visitors
    .venv/bin/python benchmarks/bench_events_graph.py --visitors 200000

The log is generated once per size and seed (`benchmarks/.cache/events-v<N>-s<S>/`), then the
graph runs in a child process (`_events_graph_child`) on the local storage, so peak RSS is the
run's own (from `wait4`). Rows: one per step (seconds from its start to its success), then the
run (wall, CPU, peak RSS, the 1-minute load average when it started) and the evaluation's
headline per method on the visitors with a target after the cut-off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import HERE, machine, write_results  # noqa: E402

COLUMNS = ["stage", "seconds", "cpu_s", "peak_rss_mb", "load_1m", "map@10", "recall@20", "coverage@5", "diversity@5"]
TARGET_SECONDS, TARGET_MB = 300, 6 * 1024


def dataset(visitors: int, seed: int) -> Path:
    from insightflow_assets.data.events import generate_events

    folder = HERE / ".cache" / f"events-v{visitors}-s{seed}"
    if not (folder / "events.csv").exists():
        folder.mkdir(parents=True, exist_ok=True)
        generate_events(folder, visitors=visitors, seed=seed)
    return folder


def run(visitors: int, seed: int) -> dict:
    source = dataset(visitors, seed)
    with tempfile.TemporaryDirectory(prefix="bench-events-graph-") as tmp:
        out = Path(tmp) / "result.json"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        child = [sys.executable, str(Path(__file__).with_name("_events_graph_child.py")), str(source), tmp, str(out)]
        proc = subprocess.Popen(child)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0 or not out.exists():
            raise SystemExit(f"the run failed (exit status {status})")
        result = json.loads(out.read_text())
    steps = [{"stage": f"step: {k}", "seconds": round(s, 1)} for k, s in sorted(result["steps"].items(), key=lambda kv: -kv[1])]
    whole = {
        "stage": "whole run (process)", "seconds": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024), "load_1m": round(load, 2),
    }  # fmt: skip
    methods = [{"stage": f"method: {m}", **v} for m, v in result["methods"].items()]
    return {
        "visitors": visitors, "seed": seed, "ok": result["ok"], "snapshot": result["snapshot"],
        "targets": {"seconds": TARGET_SECONDS, "peak_mb": TARGET_MB},
        "met": result["ok"] and wall <= TARGET_SECONDS and whole["peak_rss_mb"] <= TARGET_MB,
        "stages": [whole, *steps, *methods], "machine": machine(),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--visitors", type=int, default=1_407_580)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    payload = run(args.visitors, args.seed)
    print(f"whole graph ok={payload['ok']}; within {TARGET_SECONDS} s and {TARGET_MB} MB: {payload['met']}")
    write_results(f"events_graph-v{args.visitors}", payload, COLUMNS)


if __name__ == "__main__":
    main()
