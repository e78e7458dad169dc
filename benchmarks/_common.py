"""Shared benchmark helpers: cached generated data, per-stage wall time and peak RSS, output."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so each stage reports its own peak.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def proc_mb(pid: int | str, field: str, file: str = "status", missing: float = float("nan")) -> float:
    """``field`` (a kB line such as VmRSS, VmHWM; Pss in ``smaps_rollup``) of ``/proc/<pid>/<file>``
    in MB; ``missing`` when the process or the line is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return missing


def _rss_mb(field: str) -> float:
    return proc_mb("self", field)


def children_map() -> dict[int, list[int]]:
    """``ppid -> pids`` of every process now (from ``/proc/*/stat``: the ``children`` files
    need a kernel option some machines lack)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    return children


def descendants(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every live descendant of ``root`` (children, theirs, …)."""
    children = children_map() if children is None else children
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class Stages:
    """Times stages and records the process's peak RSS during each."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    @contextmanager
    def stage(self, name: str, **info):
        _reset_peak()
        t0 = time.perf_counter()
        row = {"stage": name, **info}
        yield row
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["peak_rss_mb"] = round(_rss_mb("VmHWM"), 0)
        self.rows.append(row)
        print(f"  {name:<28} {row['seconds']:>8.2f} s  {row['peak_rss_mb']:>8.0f} MB", flush=True)


def cached_dataset(users: int, seed: int, missing_rate: float, test_share: float) -> Path:
    """Generate (once) and return a folder of Instacart-shaped CSVs."""
    from insightflow_assets.data.generate import generate_instacart, write_instacart

    folder = CACHE / f"instacart-u{users}-s{seed}-m{missing_rate}-t{test_share}"
    if not (folder / "orders.csv").exists():
        tables = generate_instacart(users, seed=seed, missing_rate=missing_rate, test_share=test_share)
        write_instacart(tables, folder, fmt="csv")
    return folder


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_results(name: str, payload: dict, columns: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    path = RESULTS / f"{date}-{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    table = markdown(payload["stages"], columns)
    (RESULTS / f"{date}-{name}.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nwrote {path}")
    update_readme(name, f"{date}, {payload.get('users', '')} users:\n\n{table}")
    return path


def update_readme(name: str, text: str) -> None:
    """Replace the README block between <!-- bench:NAME --> markers with the latest table."""
    readme = HERE.parent / "README.md"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    content = readme.read_text()
    if start in content and end in content:
        head, rest = content.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def markdown(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    body = "\n".join("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows)
    return head + "\n" + body


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
