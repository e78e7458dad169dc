"""Every method on the held-out baskets, and what the run exported, on generated and real data.

    .venv/bin/python benchmarks/bench_recommenders.py [--users 2000] [--skip-uci]

Runs the whole graph through Dagster (local store, temporary folders) on generated data and
on the shared UCI Online Retail file (transactions form), then prints and writes per data set:
validation map@10 of each method's best configuration (what chose the export), holdout
map@10 / recall@10 / ndcg@10 of every method, and the exported method's lead over
GP-TopFreq. Nothing here is tuned on the holdout: the graph's model selection reads only the
validation basket.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine, markdown, update_readme  # noqa: E402

UCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail" / "online_retail.parquet"
RUN = "run-20260101-000000-bench"


def run_on(clean: Path, root: Path) -> dict:
    from dagster import DagsterInstance

    from insightflow_assets.definitions import make_definitions
    from resources import CuratedIOManager, LocalStorage, RfmParams

    curated = LocalStorage(root=str(root / "curated"))
    defs = make_definitions({"source": LocalStorage(root=str(clean)), "curated": curated,
                             "io_manager": CuratedIOManager(storage=curated), "rfm": RfmParams()})
    from insightflow_assets.runner import run_graph

    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(instance, run_key=RUN, defs=defs, log_level="WARNING")
    if not outcome.ok:
        raise SystemExit(f"run failed: {outcome.errors} {outcome.failed_error_checks}")
    from resources.layout import artifact

    post = json.loads((root / "curated" / artifact("als_postrank").keys(RUN)["metrics.json"]).read_text())
    return post


def rows_for(dataset: str, post: dict) -> list[dict]:
    from insightflow_assets.evaluation.offline import method_label

    best = post["selection"]["best_per_method"]
    exported = post["exported_method"]["method"]
    rows = []
    for name, m in post["methods"].items():
        if name == "exported":
            continue
        rows.append({
            "data": dataset,
            "method": method_label(name) + (" (exported)" if name == exported else ""),
            "validation map@10 (best config)": f"{best[name]['map@10']:.4f}" if name in best else "",
            "map@10": f"{m['map@10']:.4f}",
            "recall@10": f"{m['recall@10']:.4f}",
            "ndcg@10": f"{m['ndcg@10']:.4f}",
        })
    gp, ex = post["methods"]["gp_topfreq"], post["methods"]["exported"]
    rows.append({
        "data": dataset, "method": "exported vs GP-TopFreq",
        "map@10": f"{(ex['map@10'] - gp['map@10']) / gp['map@10']:+.1%}",
        "recall@10": f"{(ex['recall@10'] - gp['recall@10']) / gp['recall@10']:+.1%}",
        "ndcg@10": f"{(ex['ndcg@10'] - gp['ndcg@10']) / gp['ndcg@10']:+.1%}",
    })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--skip-uci", action="store_true")
    args = ap.parse_args()
    from insightflow_assets.data.generate import generate_instacart, write_instacart

    # rows are kept per data set, so a 206k run adds its rows instead of replacing the others
    saved = RESULTS / "recommenders.json"
    by_data: dict[str, list[dict]] = json.loads(saved.read_text()).get("by_data", {}) if saved.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp) / "gen"
        write_instacart(generate_instacart(args.users, seed=42, missing_rate=0.05, test_share=0.05), gen / "clean", fmt="csv")
        name = f"generated, {args.users:,} users"
        by_data[name] = rows_for(name, run_on(gen / "clean", gen))
        if not args.skip_uci and UCI.exists():
            uci = Path(tmp) / "uci"
            (uci / "clean").mkdir(parents=True)
            (uci / "clean" / "transactions.parquet").symlink_to(UCI)
            by_data["UCI Online Retail"] = rows_for("UCI Online Retail", run_on(uci / "clean", uci))
    rows = [row for name in sorted(by_data, key=_data_order) for row in by_data[name]]
    cols = ["data", "method", "validation map@10 (best config)", "map@10", "recall@10", "ndcg@10"]
    table = markdown(rows, cols)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"by_data": by_data, "machine": machine()}, indent=2))
    (RESULTS / "recommenders.md").write_text(table + "\n")
    print(table)
    update_readme("recommenders", table)


def _data_order(name: str) -> tuple:
    """Generated sizes ascending, then real data."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return (0, int(digits)) if name.startswith("generated") and digits else (1, 0)


if __name__ == "__main__":
    main()
