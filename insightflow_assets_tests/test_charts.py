"""Chart stages: run ordering, series extraction, PNG output of every chart, publish sets."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib import image as mpimg

from insightflow_assets.charts import eval_trends as et
from insightflow_assets.charts import rfm
from insightflow_assets.evaluation.offline import method_label

EVAL_FILES = {
    "map_trend.png", "ndcg_trend.png", "precision_trend.png", "recall_trend.png",
    "coverage_item_trend.png", "coverage_user_trend.png", "metrics_bar.png",
}
RFM_FILES = {"cluster_profiles.png", "pca_segments.png", "seg_pop_lift.png"}


def decode(png: bytes) -> np.ndarray:
    assert isinstance(png, bytes) and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) < 250_000
    img = mpimg.imread(io.BytesIO(png), format="png")
    h, w = img.shape[:2]
    assert 300 <= h <= 2000 and 500 <= w <= 2500, img.shape
    assert img.std() > 0.01, "blank image"
    return img


# --- hand-made evaluation files ------------------------------------------------------------


def flat(base: float) -> dict:
    """Flat metrics whose values encode (metric, k): e.g. base 0.1 → map@10 = 0.1 + 0.03 + 0.001."""
    out = {"n_users": 100}
    for mi, metric in enumerate(("precision", "recall", "map", "ndcg", "hit_rate")):
        for ki, k in enumerate((5, 10, 20)):
            out[f"{metric}@{k}"] = round(base + 0.01 * mi + 0.001 * ki, 6)
    return out


def metrics(finished=None, *, als=0.1, pop=0.2, ptf=0.3, gtf=0.4) -> dict:
    m = {
        "als": flat(als),
        "baseline": flat(pop),
        "baselines": {"p_topfreq": flat(ptf), "gp_topfreq": flat(gtf)},
        "lift": {},
    }
    if finished is not None:
        m["finished_at_utc"] = finished
    return m


def run(finished=None, *, postrank=True, cov=(0.25, 0.9), pcov=(0.45, 1.0), **bases) -> dict:
    return {
        "als": metrics(finished, **bases),
        "als_coverage": {"coverage_item": cov[0], "coverage_user_eval": cov[1], "k": 10} if cov else None,
        "postrank": {"als": flat(0.5)} if postrank else None,
        "postrank_coverage": {"coverage_item": pcov[0], "coverage_user_eval": pcov[1], "k": 10} if pcov else None,
    }


def many_runs(n: int) -> dict:
    out = {}
    for i in range(n):
        key = f"run-202611{1 + i // 24:02d}-{i % 24:02d}0000"
        out[key] = run(None if i % 3 else f"2026-11-{1 + i // 24:02d}T{i % 24:02d}:30:00+00:00", als=0.1 + 0.001 * i)
    return out


# --- order_runs ------------------------------------------------------------------------------


def test_order_runs_finished_at_with_run_key_fallback():
    runs = {
        # finished long after its key's time: finished_at_utc wins
        "run-20260101-000000": run("2026-03-01T00:00:00+00:00"),
        # no finished_at_utc: the key's time
        "run-20260201-000000": run(None),
        # garbage finished_at_utc: the key's time (tagged key)
        "run-20260301-120000-retry": run("not a date"),
        # 'Z' suffix; its key's time is a year earlier, but finished_at_utc is what counts
        "run-20250101-000000": run("2026-01-15T10:00:00Z"),
        # naive stamp read as UTC
        "run-20260215-000000": run("2026-02-15T00:00:00"),
        # offset converted to UTC: 2026-03-01T01:00+02:00 = 2026-02-28T23:00Z
        "run-20260228-230000": run("2026-03-01T01:00:00+02:00"),
    }
    ordered, warnings = et.order_runs(runs)
    assert warnings == []
    assert [e["run_key"] for e in ordered] == [
        "run-20250101-000000",
        "run-20260201-000000",
        "run-20260215-000000",
        "run-20260228-230000",
        "run-20260101-000000",
        "run-20260301-120000-retry",
    ]
    by_key = {e["run_key"]: e for e in ordered}
    assert by_key["run-20260101-000000"]["source"] == "finished_at_utc"
    assert by_key["run-20260201-000000"]["source"] == "run_key"
    assert by_key["run-20260201-000000"]["finished_at_utc"] == "2026-02-01T00:00:00+00:00"
    assert by_key["run-20260301-120000-retry"]["source"] == "run_key"
    assert by_key["run-20260301-120000-retry"]["finished_at_utc"] == "2026-03-01T12:00:00+00:00"
    assert by_key["run-20250101-000000"]["finished_at_utc"] == "2026-01-15T10:00:00+00:00"
    assert by_key["run-20260215-000000"]["finished_at_utc"] == "2026-02-15T00:00:00+00:00"
    assert by_key["run-20260228-230000"]["finished_at_utc"] == "2026-02-28T23:00:00+00:00"
    json.dumps(ordered)  # index-ready


def test_order_runs_ties_broken_by_run_key():
    same = "2026-05-05T05:05:05+00:00"
    runs = {"run-20260505-000002": run(same), "run-20260505-000001": run(same), "run-20260505-000003": run(None)}
    # the third one's key time (00:00:03) is before the shared finished_at
    ordered, _ = et.order_runs(runs)
    assert [e["run_key"] for e in ordered] == ["run-20260505-000003", "run-20260505-000001", "run-20260505-000002"]


def test_order_runs_skips_unreadable_and_missing_with_warnings():
    good = run("2026-01-01T00:00:00+00:00")
    runs = {
        "run-20260101-000000": good,
        "run-20260102-000000": {"als": None, "als_coverage": None, "postrank": None, "postrank_coverage": None},
        "run-20260103-000000": {"als": ValueError("Expecting value: line 1"), "als_coverage": None},
        "run-20260104-000000": {"als": ["not", "a", "dict"]},
        "run-20260105-000000": {"als": {"baseline": flat(0.1)}},  # no "als" section
        "run-20260106-000000": OSError("folder gone"),
        "not-a-run-key": run(None),  # no time at all
        # readable ALS, unreadable post-rank: kept, with a warning
        "run-20260107-000000": {**run(None), "postrank": RuntimeError("truncated")},
    }
    ordered, warnings = et.order_runs(runs)
    assert [e["run_key"] for e in ordered] == ["run-20260101-000000", "run-20260107-000000"]
    assert ordered[1]["has_postrank"] is False and ordered[0]["has_postrank"] is True
    text = "\n".join(warnings)
    for key in ("run-20260102", "run-20260103", "run-20260104", "run-20260105", "run-20260106", "not-a-run-key"):
        assert sum(key in w for w in warnings) == 1, (key, warnings)
    assert "missing" in text and "unreadable" in text and "Expecting value" in text
    assert any("run-20260107" in w and "post-rank" in w for w in warnings)
    assert len(warnings) == 7


# --- trend_series ----------------------------------------------------------------------------


def test_trend_series_picks_values_from_the_right_places():
    runs = {
        "run-20260101-000000": run(None, postrank=False, pcov=None),
        "run-20260102-000000": run(None, cov=(0.2, float("nan")), pcov=(0.6, 0.99)),
    }
    runs["run-20260102-000000"]["als"]["baselines"].pop("p_topfreq")
    ordered, _ = et.order_runs(runs)
    s = et.trend_series(ordered, runs, "map", 10)
    # the latest run's methods in its order, then P-TopFreq which only the older run has
    assert list(s) == ["ALS", "Popularity", "GP-TopFreq", "ALS post-rank", "P-TopFreq"]
    assert s["GP-TopFreq"] == [pytest.approx(0.421)] * 2
    # map is metric index 2, k=10 is k index 1 → base + 0.021
    assert s["ALS"] == [pytest.approx(0.121), pytest.approx(0.121)]
    assert s["Popularity"] == [pytest.approx(0.221)] * 2
    assert s["P-TopFreq"] == [pytest.approx(0.321), None]
    assert s["ALS post-rank"] == [None, pytest.approx(0.521)]
    assert et.trend_series(ordered, runs, "recall", 20)["ALS"][0] == pytest.approx(0.112)
    assert et.trend_series(ordered, runs, "ndcg@5", 10)["Popularity"][0] == pytest.approx(0.23)

    ci = et.trend_series(ordered, runs, "coverage_item", 10)
    assert ci == {"ALS": [0.25, 0.2], "ALS post-rank": [None, 0.6]}
    cu = et.trend_series(ordered, runs, "coverage_user", 10)
    assert cu == {"ALS": [0.9, None], "ALS post-rank": [None, 0.99]}  # NaN → None
    # coverage files are measured at their own k: not reported as another K
    assert et.trend_series(ordered, runs, "coverage_item", 20) == {"ALS": [None, None], "ALS post-rank": [None, None]}


# --- charts ----------------------------------------------------------------------------------


def test_trend_chart_one_run_and_many_runs():
    one = {"run-20261122-020646": run("2026-11-22T02:06:46+00:00")}
    ordered, _ = et.order_runs(one)
    img1 = decode(et.trend_chart(ordered, one, "map", 10))

    many = many_runs(30)
    ordered, warnings = et.order_runs(many)
    assert len(ordered) == 30 and not warnings
    img30 = decode(et.trend_chart(ordered, many, "ndcg", 10, highlight=ordered[-1]["run_key"]))
    assert img30.shape[1] > img1.shape[1]  # wider for more runs
    decode(et.trend_chart(ordered, many, "coverage_user", 10))


def test_trend_chart_without_any_value_still_renders():
    runs = {"run-20260101-000000": run(None, cov=None, pcov=None)}
    ordered, _ = et.order_runs(runs)
    decode(et.trend_chart(ordered, runs, "coverage_item", 10))


def test_metrics_bar_with_and_without_postrank():
    decode(et.metrics_bar("run-20261122-020646", run(None), k=10))
    decode(et.metrics_bar("run-20261122-020646", run(None, postrank=False), k=5))
    with pytest.raises(ValueError, match="run-x"):
        et.metrics_bar("run-x", {"als": None})


def test_publish_eval_charts_files_and_index():
    runs = many_runs(12)
    runs["run-20261101-230000"] = {"als": ValueError("bad json"), "als_coverage": None,
                                   "postrank": None, "postrank_coverage": None}
    current = "run-20261101-050000"
    files, index = et.publish_eval_charts(runs, current, k=10)
    assert set(files) == EVAL_FILES and set(index["files"]) == EVAL_FILES
    for png in files.values():
        decode(png)
    assert set(index) == {"run_key", "k", "runs", "methods", "exported_method", "files", "skipped",
                          "generated_at_utc"}
    assert index["methods"] == ["als", "baseline", "p_topfreq", "gp_topfreq", "als_postrank"]
    assert index["exported_method"] is None  # old-format runs chose no export
    assert index["run_key"] == current and index["k"] == 10
    assert len(index["runs"]) == 12
    assert len(index["skipped"]) == 1 and "run-20261101-230000" in index["skipped"][0]
    json.dumps(index)


def test_publish_eval_charts_single_run():
    runs = {"run-20261122-020646": run(None, postrank=False, pcov=None)}
    files, index = et.publish_eval_charts(runs, "run-20261122-020646")
    assert set(files) == EVAL_FILES
    assert [e["source"] for e in index["runs"]] == ["run_key"]


def test_publish_eval_charts_current_run_unreadable_or_absent():
    runs = many_runs(3)
    runs["run-20261105-000000"] = {"als": OSError("gone"), "als_coverage": None}
    with pytest.raises(ValueError, match="run-20261105-000000"):
        et.publish_eval_charts(runs, "run-20261105-000000")
    with pytest.raises(ValueError, match="run-20261106-000000"):
        et.publish_eval_charts(runs, "run-20261106-000000")


# --- the methods map (new reports) and the exported method ------------------------------------

NEW_ORDER = ["als", "tifu_knn", "baseline", "p_topfreq", "gp_topfreq", "als_postrank"]


def new_run(finished=None, *, exported="tifu_knn", tifu=0.6) -> dict:
    """A run in the current format: als_eval's and als_postrank's reports carry ``methods``
    (the post-rank one also ``exported`` and ``exported_method``), the seed's keys beside."""
    old = run(finished)
    als_methods = {"als": flat(0.1), "tifu_knn": flat(tifu), "baseline": flat(0.2),
                   "p_topfreq": flat(0.3), "gp_topfreq": flat(0.4)}
    old["als"].update(methods=als_methods, method="als")
    old["postrank"] = {
        "als": flat(0.5), "baseline": flat(0.2), "baselines": {"p_topfreq": flat(0.3), "gp_topfreq": flat(0.4)},
        "method": "als_postrank",
        "methods": {**als_methods, "als_postrank": flat(0.5), "exported": flat(0.7)},
        "exported_method": {"method": exported, "label": exported, "why": "best map@10 on validation"},
    }
    return old


def test_methods_map_charts_every_method_and_marks_the_exported_one():
    runs = {"run-20260101-000000": run(None), "run-20260102-000000": new_run(None)}
    ordered, warnings = et.order_runs(runs)
    assert not warnings
    assert et.run_methods(runs["run-20260102-000000"]).keys() == set(NEW_ORDER)  # no "exported" line
    assert et.method_order(ordered, runs) == NEW_ORDER

    lines = et.trend_lines(ordered, runs, "map", 10, exported="tifu_knn")
    assert [line["method"] for line in lines] == NEW_ORDER
    by = {line["method"]: line for line in lines}
    tifu = by["tifu_knn"]
    assert tifu["values"] == [None, pytest.approx(0.621)]  # the old run has no TIFU-KNN
    assert tifu["exported"] and tifu["label"] == f"{method_label('tifu_knn')} {et.EXPORTED_MARK}"
    assert [m for m, line in by.items() if line["exported"]] == ["tifu_knn"]
    assert by["als"]["label"] == "ALS" and by["gp_topfreq"]["label"] == "GP-TopFreq"
    assert by["als_postrank"]["values"] == [pytest.approx(0.521)] * 2  # old and new post-rank files
    assert len({line["color"] for line in lines}) == len(lines)
    assert by["als"]["color"] == et.METHOD_COLORS["als"]
    assert set(et.trend_series(ordered, runs, "map", 10)) == {method_label(m) for m in NEW_ORDER}

    # the exported method of the published run is what gets marked; old runs mark none
    assert et.marked_method(ordered, runs) == "tifu_knn"
    assert et.marked_method(ordered, runs, highlight="run-20260101-000000") is None

    groups = et.bar_groups(runs["run-20260102-000000"], k=10)
    assert [g["method"] for g in groups] == NEW_ORDER
    assert [g["method"] for g in groups if g["exported"]] == ["tifu_knn"]
    assert groups[1]["values"]["map"] == pytest.approx(0.621)

    files, index = et.publish_eval_charts(runs, "run-20260102-000000")
    assert set(files) == EVAL_FILES
    for png in files.values():
        decode(png)
    assert index["methods"] == NEW_ORDER
    assert index["exported_method"]["method"] == "tifu_knn"
    json.dumps(index)


def test_exported_als_marks_als_and_method_only_in_old_runs_follows():
    runs = {"run-20260101-000000": new_run(None, exported="als"), "run-20260102-000000": run(None)}
    runs["run-20260102-000000"]["postrank"] = None
    ordered, _ = et.order_runs(runs)
    # latest run first (no tifu_knn, no post-rank), then what only the older run has
    assert et.method_order(ordered, runs) == ["als", "baseline", "p_topfreq", "gp_topfreq", "tifu_knn", "als_postrank"]
    lines = et.trend_lines(ordered, runs, "recall", 10, exported=et.marked_method(ordered, runs, "run-20260101-000000"))
    assert [line["method"] for line in lines if line["exported"]] == ["als"]
    decode(et.trend_chart(ordered, runs, "recall", 10, highlight="run-20260101-000000"))


def test_old_format_run_charts_as_before():
    runs = {"run-20261122-020646": run(None)}
    ordered, _ = et.order_runs(runs)
    lines = et.trend_lines(ordered, runs, "ndcg", 10, exported=et.marked_method(ordered, runs))
    assert [(line["label"], line["exported"]) for line in lines] == [
        ("ALS", False), ("Popularity", False), ("P-TopFreq", False), ("GP-TopFreq", False), ("ALS post-rank", False),
    ]
    assert lines[-1]["values"] == [pytest.approx(0.531)]  # post-rank from the post-rank file's "als"
    assert et.METHOD_COLORS["als_postrank"] == lines[-1]["color"]
    groups = et.bar_groups(runs["run-20261122-020646"])
    assert [g["label"] for g in groups] == [line["label"] for line in lines]
    files, index = et.publish_eval_charts(runs, "run-20261122-020646")
    assert set(files) == EVAL_FILES and index["exported_method"] is None
    decode(files["metrics_bar.png"])


def test_partial_old_report_still_charts_what_it_has():
    runs = {"run-20260101-000000": run(None, postrank=False)}
    del runs["run-20260101-000000"]["als"]["baseline"]  # methods_of needs it: read what is there
    runs["run-20260101-000000"]["als"]["baselines"]["gp_topfreq"] = "garbage"
    ordered, warnings = et.order_runs(runs)
    assert not warnings
    assert et.method_order(ordered, runs) == ["als", "p_topfreq"]
    decode(et.metrics_bar("run-20260101-000000", runs["run-20260101-000000"]))


def test_method_colors_are_fixed_per_key():
    assert et.method_color("some_new_model") == et.method_color("some_new_model")
    assert et.method_color("some_new_model") in et.EXTRA_COLORS
    assert et.method_color("tifu_knn") == et.METHOD_COLORS["tifu_knn"]


# --- RFM -------------------------------------------------------------------------------------

LABELS = ["champions", "loyal", "at risk", "hibernating"]


@pytest.fixture(scope="module")
def rfm_tables():
    rng = np.random.default_rng(3)
    n = 3_000
    seg = rng.integers(0, 4, n)
    centres = np.array([[1.0, 1.5, 1.4], [0.5, 0.6, 0.5], [-1.0, 0.2, 0.1], [-1.2, -0.8, -0.9]])
    z = centres[seg] + rng.normal(0, 0.4, (n, 3))
    user_seg = pl.DataFrame({
        "user_id": np.arange(1, n + 1),
        "recency_days": rng.integers(0, 31, n),
        "frequency": rng.integers(1, 40, n),
        "monetary": rng.uniform(1, 300, n),
        "r_z": z[:, 0], "f_z": z[:, 1], "m_z": z[:, 2],
        "segment": seg,
        "segment_label": [LABELS[s] for s in seg],
        "hv": z @ np.array([0.4, 0.3, 0.3]),
    }).with_columns(pl.col("segment").cast(pl.Int8))
    centroids = (
        user_seg.group_by("segment", "segment_label")
        .agg(pl.len().alias("users"), pl.col("r_z", "f_z", "m_z").mean())
        .with_columns((pl.col("users") / n).alias("share"))
        .sort("segment")
    )
    products = pl.DataFrame({
        "product_id": np.arange(1, 41),
        "product_name": [f"Organic Extra Virgin Olive Oil Cold Pressed Bottle {i}" if i % 5 == 0 else f"Item {i}"
                         for i in range(1, 41)],
        "aisle": "oils", "department": "pantry",
    })
    rows = []
    for s in range(4):
        for p in range(1, 31):
            buyers = int(rng.integers(1, 300))
            rows.append((s, p, buyers, 2 * buyers, 0.01, 0.01, float(rng.uniform(0.2, 3.0)), p))
        rows.append((s, 39, 2, 2, 0.01, 0.001, 50.0, 31))  # huge lift, tiny support: must not show
        rows.append((s, 999, 500, 600, 0.01, 0.001, 9.0, 32))  # unknown product: shown as "product 999"
    seg_pop = pl.DataFrame(rows, orient="row",
                           schema=["segment", "product_id", "buyers", "purchases", "share", "overall_share", "lift", "rank"])
    return user_seg, centroids, seg_pop, products


def test_cluster_profiles_png(rfm_tables):
    _, centroids, _, _ = rfm_tables
    decode(rfm.cluster_profiles(centroids))
    decode(rfm.cluster_profiles(centroids.drop("share").to_pandas()))  # share from users, pandas input


def test_pca_segments_sampled_and_seeded(rfm_tables):
    user_seg = rfm_tables[0]
    a = rfm.pca_segments(user_seg, sample=1_000, seed=42)
    decode(a)
    assert rfm.pca_segments(user_seg, sample=1_000, seed=42) == a  # seeded: same bytes
    decode(rfm.pca_segments(user_seg.head(2)))  # too few users: a readable placeholder


def test_top_lift_products_support_rule(rfm_tables):
    _, centroids, seg_pop, products = rfm_tables
    users = dict(centroids.select("segment", "users").iter_rows())
    best, need = rfm.top_lift_products(seg_pop, products, top=5, segment_users=users)
    assert need == {s: max(3, math.ceil(0.01 * u)) for s, u in users.items()}
    assert best.group_by("segment").len()["len"].to_list() == [5, 5, 5, 5]
    assert 39 not in best["product_id"].to_list()  # below the support threshold
    first = best.filter(pl.col("position") == 1)
    assert first["product_id"].to_list() == [999] * 4 and first["product_name"].null_count() == 4
    assert (best["buyers"] >= best["segment"].replace_strict(need, return_dtype=pl.Int64)).all()
    # lift is non-increasing inside each segment
    for s in range(4):
        lifts = best.filter(pl.col("segment") == s)["lift"].to_list()
        assert lifts == sorted(lifts, reverse=True)
    relaxed, need1 = rfm.top_lift_products(seg_pop, products, top=3, min_buyers=1)
    assert set(need1.values()) == {1} and 39 in relaxed["product_id"].to_list()


def test_seg_pop_lift_png(rfm_tables):
    _, centroids, seg_pop, products = rfm_tables
    decode(rfm.seg_pop_lift(seg_pop, products, top=5, segment_labels=dict(enumerate(LABELS))))
    decode(rfm.seg_pop_lift(seg_pop.to_pandas(), products.to_pandas(), top=3, min_buyers=10_000))  # nothing eligible


def test_publish_rfm_charts(rfm_tables):
    user_seg, centroids, seg_pop, products = rfm_tables
    files, index = rfm.publish_rfm_charts(
        user_seg, centroids, seg_pop, products,
        run_key="run-20261122-020646", params={"k": 5, "n_clusters": 4}, pca_sample=500, seed=7,
    )
    assert set(files) == RFM_FILES and set(index["files"]) == RFM_FILES
    for png in files.values():
        decode(png)
    assert set(index) == {"run_key", "files", "params", "generated_at_utc"}
    assert index["params"] == {"k": 5, "n_clusters": 4, "pca_sample": 500, "seed": 7}
    json.dumps(index)


def test_charts_do_not_import_dagster_or_pyplot():
    import subprocess
    import sys

    code = (
        "import sys, insightflow_assets.charts.eval_trends, insightflow_assets.charts.rfm;"
        "bad = [m for m in ('dagster', 'matplotlib.pyplot') if m in sys.modules];"
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pandas_user_seg_accepted(rfm_tables):
    decode(rfm.pca_segments(rfm_tables[0].to_pandas(), sample=300))


# --- chart metadata: paths and one small preview, not the charts --------------------------

PREVIEW_CAP = 3_000  # resources.previews.MAX_PREVIEW_BYTES: a test of the promise, not a copy of the code
LOG_TARGET = 300_000  # bytes of event log per whole run (issue 13)


def inline_png(md: str) -> bytes:
    import base64
    import re

    (data,) = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", md)
    return base64.b64decode(data)


def test_chart_metadata_names_every_chart_by_path_and_previews_the_first(rfm_tables):
    from PIL import Image

    from resources.previews import chart_metadata

    user_seg, centroids, seg_pop, products = rfm_tables
    files, _ = rfm.publish_rfm_charts(user_seg, centroids, seg_pop, products, run_key="run-20261122-020646", params={})
    files = {**files, "index.json": b"{}"}
    meta = chart_metadata(files, lambda name: f"/curated/rfm/{name}")
    assert {k: v.value for k, v in meta.items() if k != "preview"} == {
        "cluster_profiles": "/curated/rfm/cluster_profiles.png",
        "pca_segments": "/curated/rfm/pca_segments.png",
        "seg_pop_lift": "/curated/rfm/seg_pop_lift.png",
    }
    md = meta["preview"].value
    thumb = inline_png(md)
    assert len(thumb) <= PREVIEW_CAP < len(files["cluster_profiles.png"])
    with Image.open(io.BytesIO(thumb)) as img:
        assert max(img.size) <= 200 and img.getcolors(256)  # a palette image, downscaled
    assert "the `cluster_profiles` path" in md  # the full size: its path entry, not the path again


def test_chart_without_a_small_enough_preview_gets_its_path_only():
    from PIL import Image

    from resources.previews import chart_metadata

    noise = np.random.default_rng(0).integers(0, 255, (1200, 2000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    meta = chart_metadata({"noise.png": buf.getvalue()}, lambda name: f"/x/{name}")
    assert set(meta) == {"noise"} and meta["noise"].value == "/x/noise.png"


@pytest.fixture(scope="module")
def run_log(tmp_path_factory, small_clean_dir):
    """A whole run on the small dataset: its event records and the curated folder."""
    from dagster import DagsterInstance

    from insightflow_assets.runner import run_graph
    from insightflow_assets_tests.conftest import local_defs

    curated = tmp_path_factory.mktemp("curated")
    with DagsterInstance.ephemeral() as instance:
        assert run_graph(instance, run_key="run-20260601-000000", defs=local_defs(small_clean_dir, curated)).ok
        yield instance.all_logs(instance.get_runs(limit=1)[0].run_id), curated, small_clean_dir


def log_bytes(records, folders: dict[str, Path] | None = None) -> list[int]:
    """Each record's size as the instance stores it; with ``folders``, each folder's path
    counted as its short name, so the size does not depend on the machine's temp dir."""
    from dagster._serdes import serialize_value

    texts = [serialize_value(r) for r in records]
    for name, folder in (folders or {}).items():
        texts = [t.replace(str(folder), name) for t in texts]
    return [len(t) for t in texts]


def materializations(records) -> dict:
    return {
        r.dagster_event.asset_key.to_user_string(): r.dagster_event.event_specific_data.materialization.metadata
        for r in records
        if r.dagster_event is not None and r.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
    }


def test_run_event_log_holds_chart_paths_and_small_previews_not_charts(run_log):
    records, curated, _ = run_log
    charted = {"mice_checks": {"mice_day30"}, "eval_charts": {Path(f).stem for f in EVAL_FILES},
               "rfm_charts": {Path(f).stem for f in RFM_FILES}}
    mats = materializations(records)
    for asset, charts in charted.items():
        meta = mats[asset]
        for chart in charts:  # every chart is a stored file, named by its path
            assert Path(meta[chart].value).is_file() and str(curated) in meta[chart].value
        assert len(inline_png(meta["preview"].value)) <= PREVIEW_CAP
    # no record carries a whole chart: the largest PNG here is tens of KB, its preview a few
    assert max(log_bytes(records)) < 40_000
    images = sum(len(m["preview"].value) for a, m in mats.items() if a in charted)
    assert images <= 3 * PREVIEW_CAP * 4 / 3 + 1_000  # three base64 previews, each under the cap


# The steps of the graph the target was set for (issue 13: 19 assets, 18 checks). Packages
# added since log their own share on top (see README, Event log).
ISSUE_13_STEPS = {
    "instacart_snapshot", "orders_imputed", "mice_checks", "ratings", "holdout", "als_model", "model_selection",
    "nbr_model", "als_eval", "user_recos", "als_postrank", "eval_charts", "user_seg", "segment_popularity",
    "rfm_charts", "exports", "latest_manifest",
}  # fmt: skip


def test_run_event_log_within_target(run_log):
    records, curated, clean = run_log
    # The bytes of a run's log do not grow with users (previews are capped, tables described by
    # their schema), so the 2,000-user target applies to the small dataset as it is. The stores'
    # folders are counted by a short name: a longer temp dir is the machine's, not the log's.
    assert {r.step_key for r in records if r.dagster_event and r.dagster_event.is_step_success} >= ISSUE_13_STEPS
    # the whole run, with the assets added since the issue (benchmarks/bench_event_log.py: ~283 KB)
    assert sum(log_bytes(records, {"/curated": curated, "/clean": clean})) <= LOG_TARGET


def test_each_value_is_logged_once(run_log):
    """What keeps the log small, each a guard: no Dagster input loads, metadata on the
    materialization alone, checks evaluated in their asset's step."""
    records, _, _ = run_log
    events = [r.dagster_event for r in records if r.dagster_event is not None]
    kinds = Counter(e.event_type_value for e in events)
    assert kinds["STEP_INPUT"] == kinds["LOADED_INPUT"] == 0  # upstream values read through the IO manager
    assert kinds["HANDLED_OUTPUT"] == 0  # values stored through it in the step (common._store_in_step)
    outputs = [e for e in events if e.event_type_value in ("STEP_OUTPUT", "HANDLED_OUTPUT")]
    assert outputs and all(not e.event_specific_data.metadata for e in outputs)
    asset_steps = {e.step_key for e in events if e.event_type_value == "ASSET_MATERIALIZATION"}
    evaluated = {e.step_key for e in events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert kinds["ASSET_CHECK_EVALUATION"] >= 15 and evaluated <= asset_steps  # no step of their own
    assert kinds["STEP_START"] == len(asset_steps | {"latest_manifest"})
    # ... and nothing lost: the materializations carry the IO manager's and the asset's metadata
    mats = materializations(records)
    assert mats["ratings"]["dagster/row_count"].value > 0 and mats["ratings"]["users"].value > 0
    assert {c.name for c in mats["ratings"]["dagster/column_schema"].value.columns} >= {"user_id", "product_id", "rating"}
    assert mats["raw_orders"]["source"].value and mats["raw_orders"]["input_form"].value == "instacart"
