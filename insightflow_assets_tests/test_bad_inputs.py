"""Bad inputs and failed runs end in one line per failure, never a traceback (issue 12, items 6–10).

* 6: files the reader cannot parse (a truncated .csv.gz, a damaged parquet, bytes that are not
  UTF-8, a row with one field too many) fail with one line naming the file and the line or
  column, and nothing is written;
* 7: a product twice in one order is reported under the file that holds it;
* 8: strings are kept as written (only the CSV quoting is undone);
* 9: undefined metrics (no repeat item in any target basket; one user) are null with a reason,
  pass the range checks and do not block promotion;
* 10: `insightflow run` after an S3 failure prints one line per failure and where the log is,
  and its summary never raises on a partial run.
"""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance

from insightflow_assets.runner import RunOutcome, run_graph
from insightflow_assets_tests.conftest import local_defs
from insightflow_assets_tests.test_ingest import INGEST, RUN, TINY, ingest, stored_files, write_tiny


def _fails_with_one_line(outcome, curated: Path, *parts: str) -> str:
    assert not outcome.success
    assert len(outcome.errors) == 1, outcome.errors
    message = outcome.errors[0]
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    assert stored_files(curated) == []  # validation comes before any write
    return message


# --- 6: files the reader cannot parse -----------------------------------------------------


def test_truncated_csv_gz_names_the_file_and_line(tmp_path, instance):
    clean = write_tiny(tmp_path / "clean", orders__dot__csv=None)
    orders = TINY["orders.csv"] + "".join(f"{i},3,prior,{i},1,10,7.0\n" for i in range(10, 400))
    data = gzip.compress(orders.encode())
    (clean / "orders.csv.gz").write_bytes(data[: len(data) // 2])
    outcome, curated = ingest(tmp_path, instance, clean)
    _fails_with_one_line(outcome, curated, "orders.csv.gz:", "truncated or damaged after line")


def _damaged_parquet(path: Path) -> None:
    """A zstd parquet file whose product_id pages are overwritten in the middle."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 200_000
    pl.DataFrame(
        {
            "order_id": rng.integers(0, 10**6, n),
            "product_id": rng.integers(0, 5 * 10**4, n),
            "add_to_cart_order": rng.integers(1, 30, n),
            "reordered": rng.integers(0, 2, n),
        }
    ).write_parquet(path, compression="zstd")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def test_damaged_parquet_names_the_file_and_column(tmp_path, instance):
    clean = write_tiny(tmp_path / "clean", order_products__prior__dot__csv=None)
    _damaged_parquet(clean / "order_products__prior.parquet")
    outcome, curated = ingest(tmp_path, instance, clean)
    _fails_with_one_line(outcome, curated, "order_products__prior.parquet: column product_id: the data is damaged")


LATIN1_PRODUCTS = "product_id,product_name,aisle_id,department_id\n1,Banana,1,1\n2,Café crème,2,2\n".encode("latin-1")


def test_latin1_bytes_are_refused_with_file_line_and_column(tmp_path, instance):
    clean = write_tiny(tmp_path / "clean", products__dot__csv=None)
    (clean / "products.csv").write_bytes(LATIN1_PRODUCTS)
    outcome, curated = ingest(tmp_path, instance, clean)
    message = _fails_with_one_line(
        outcome, curated, "products.csv: line 3: column product_name: bytes that are not valid utf-8", "encoding"
    )
    assert r"Caf\xe9" in message  # the offending bytes, shown


def test_latin1_file_is_read_exactly_with_the_encoding_option(tmp_path, instance):
    clean = write_tiny(tmp_path / "clean", products__dot__csv=None)
    (clean / "products.csv").write_bytes(LATIN1_PRODUCTS)
    curated = tmp_path / "curated"
    config = {"ops": {"instacart_snapshot": {"config": {"encoding": "latin-1"}}}}
    outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated), selection=INGEST, run_config=config)
    assert outcome.ok, outcome.errors
    names = pl.read_parquet(curated / f"recsys/raw/{RUN}/products.parquet").sort("product_id")["product_name"]
    assert names.to_list() == ["Banana", "Café crème"]


def test_a_row_with_one_field_too_many_names_the_line(tmp_path, instance):
    clean = write_tiny(tmp_path / "clean", aisles__dot__csv="aisle_id,aisle\n1,fresh fruits\n2,milk,extra\n")
    outcome, curated = ingest(tmp_path, instance, clean)
    _fails_with_one_line(outcome, curated, "aisles.csv: line 3: 3 fields, the header has 2")


def test_latin1_transactions_file_names_the_line_and_column(tmp_path, instance):
    from insightflow_assets_tests.test_transactions import TINY as TRANSACTIONS

    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "transactions.csv").write_bytes(TRANSACTIONS.replace("Green bowl", "Bol vert clair é").encode("latin-1"))
    outcome, curated = ingest(tmp_path, instance, clean)
    _fails_with_one_line(outcome, curated, "transactions.csv: line 8: column Description: bytes that are not valid utf-8")


def test_latin1_semicolon_file_names_the_right_column(tmp_path, instance):
    """In a `;` file the bad byte's column is found at semicolons (it was reported against the
    first column: the line was split at commas)."""
    from insightflow_assets_tests.test_transactions import TINY as TRANSACTIONS

    clean = tmp_path / "clean"
    clean.mkdir()
    text = TRANSACTIONS.replace("Green bowl", "Bol vert clair é").replace(",", ";")
    (clean / "transactions.csv").write_bytes(text.encode("latin-1"))
    outcome, curated = ingest(tmp_path, instance, clean)
    _fails_with_one_line(outcome, curated, "transactions.csv: line 8: column Description: bytes that are not valid utf-8")


def test_a_transactions_row_with_extra_fields_names_the_line(tmp_path, instance):
    """Country is not mapped: the reader skips unmapped columns, and with them the field count."""
    from insightflow_assets_tests.test_transactions import HEADER, LINES

    lines = list(LINES)
    lines[4] += ",extra"  # line 6 of the file
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "transactions.csv").write_text(HEADER + "\n".join(lines) + "\n")
    outcome, curated = ingest(tmp_path, instance, clean)
    _fails_with_one_line(
        outcome, curated, "transactions.csv: line 6: 9 fields, the header has 8 (the row has 1 extra field)"
    )


# --- 7: a product twice in one order -------------------------------------------------------


def test_product_twice_in_a_train_order_names_the_train_file(tmp_path, instance):
    train = TINY["order_products__train.csv"] + "3,1,2,1\n"
    outcome, curated = ingest(tmp_path, instance, write_tiny(tmp_path / "clean", order_products__train__dot__csv=train))
    message = _fails_with_one_line(
        outcome, curated, "order_products__train.csv: column product_id: product 1 appears twice in order 3"
    )
    assert "prior" not in message


# --- 8: strings as written -----------------------------------------------------------------


def test_strings_are_kept_as_written(tmp_path, instance):
    products = (
        "product_id,product_name,aisle_id,department_id\n"
        '1,"Pizza 12""",1,1\n'  # quoted, with an escaped quote
        '2,Pizza 14",1,1\n'  # a bare quote inside an unquoted field
        "3, Milk ,2,2\n"  # leading and trailing spaces
        "4,NA,2,2\n"
        "5,None,2,2\n"
        "6,null,2,2\n"
    )
    lines = "order_id,product_id,add_to_cart_order,reordered\n1,1,1,0\n1,2,2,0\n2,3,1,0\n2,4,2,0\n4,5,1,0\n4,6,2,0\n"
    clean = write_tiny(tmp_path / "clean", products__dot__csv=products, order_products__prior__dot__csv=lines)
    outcome, curated = ingest(tmp_path, instance, clean)
    assert outcome.ok, outcome.errors
    names = pl.read_parquet(curated / f"recsys/raw/{RUN}/products.parquet").sort("product_id")["product_name"]
    assert names.to_list() == ['Pizza 12"', 'Pizza 14"', " Milk ", "NA", "None", "null"]


def test_only_an_empty_name_is_missing(tmp_path, instance):
    products = 'product_id,product_name,aisle_id,department_id\n1,"",1,1\n2,Milk,2,2\n'
    outcome, curated = ingest(tmp_path, instance, write_tiny(tmp_path / "clean", products__dot__csv=products))
    _fails_with_one_line(outcome, curated, "products.csv: column product_name: 1 missing value(s)")


# --- 9: undefined metrics ------------------------------------------------------------------


def _bought_once(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The same data with every (user, product) kept only at its first purchase: no repeats."""
    orders = tables["orders"].select("order_id", "user_id", "order_number")
    stems = ("order_products__prior", "order_products__train")
    lines = pl.concat([tables[s].with_columns(_file=pl.lit(s)) for s in stems])
    first = (
        lines.join(orders, on="order_id")
        .sort("user_id", "order_number", "add_to_cart_order")
        .filter(pl.struct("user_id", "product_id").is_first_distinct())
    )
    out = dict(tables)
    for s in stems:
        out[s] = first.filter(pl.col("_file") == s).select(tables[s].columns).with_columns(pl.col("reordered") * 0)
    return out


def test_no_repeat_purchase_runs_the_whole_graph_and_is_promoted(tmp_path, small_tables):
    from insightflow_assets.data.generate import write_instacart
    from resources import LocalStorage

    clean, curated = tmp_path / "clean", tmp_path / "curated"
    write_instacart(_bought_once(small_tables), clean)
    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated))
    assert outcome.ok, (outcome.errors, outcome.failed_error_checks)
    in_range = next(c for c in outcome.checks if c["check"] == "als_eval_metrics_in_range")
    assert in_range["passed"] and "als.repeat" in in_range["metadata"]["undefined"]

    metrics = json.loads((curated / f"recsys/eval/als-{RUN[4:]}/metrics.json").read_text())
    repeat = metrics["methods"]["als"]["repeat"]
    assert repeat["n_users"] == 0 and repeat["recall@10"] is None and "bought before" in repeat["undefined"]
    assert json.loads((curated / "recsys/latest/index.json").read_text())["run_key"] == RUN

    from insightflow_assets.report import run_summary

    summary = "\n".join(run_summary(LocalStorage(root=str(curated)), outcome))
    assert "undefined (null in metrics.json): repeat metrics" in summary
    assert f"latest/ → {RUN} (this run)" in summary


def test_one_user_explore_is_undefined_not_a_failure(tmp_path):
    from insightflow_assets.charts.eval_trends import metrics_bar
    from insightflow_assets.evaluation.assets import metrics_in_unit_interval
    from insightflow_assets.evaluation.offline import evaluation_report
    from insightflow_assets.report import evaluation_lines
    from resources.io_manager import ArtifactFolder

    # One user who buys again exactly what they bought before: nothing new to explore.
    ratings = pl.DataFrame({"user_id": [1, 1, 1], "product_id": [10, 11, 12], "rating": [3.0, 2.0, 1.0], "purchases": [3, 2, 1]})
    holdout = pl.DataFrame({"user_id": [1, 1], "product_id": [10, 11]})
    recs = pl.DataFrame({"user_id": [1, 1], "rank": [1, 2], "product_id": [10, 12]})
    users = np.array([1], dtype=np.int32)
    metrics, cov = evaluation_report(recs, ratings, holdout, users, n_items=3, ks=(5, 10))
    explore = metrics["methods"]["als"]["explore"]
    assert explore["map@10"] is None and "new to them" in explore["undefined"]
    assert metrics["methods"]["als"]["repeat"]["recall@10"] == pytest.approx(0.5)

    check = metrics_in_unit_interval(ArtifactFolder.of({"metrics.json": metrics, "coverage.json": cov}))
    assert check.passed, check.metadata
    assert any("undefined" in line and "explore" in line for line in evaluation_lines(metrics))
    assert metrics_bar(RUN, {"als": metrics, "als_coverage": cov})[:4] == b"\x89PNG"


def test_a_null_without_a_reason_still_fails_the_range_check():
    from insightflow_assets.evaluation.assets import metrics_in_unit_interval
    from resources.io_manager import ArtifactFolder

    metrics = {"als": {"map@10": None, "recall@10": float("nan")}, "baseline": {"map@10": 0.5}}
    check = metrics_in_unit_interval(ArtifactFolder.of({"metrics.json": metrics, "coverage.json": {}}))
    assert not check.passed


# --- 10: `insightflow run` after a failure --------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload_tiny(s3, bucket: str) -> None:
    client = s3.get_client()
    for name, text in TINY.items():
        client.put_object(Bucket=bucket, Key=f"instacart/{name}", Body=text.encode())


def test_cli_run_with_a_missing_curated_bucket_prints_one_line_per_failure(tmp_path, monkeypatch, capsys, moto_endpoint, s3_buckets):
    import insightflow_assets.definitions as definitions
    from insightflow_assets.cli import main

    s3, clean, _ = s3_buckets
    _upload_tiny(s3, clean)
    for key, value in {
        "INSIGHTFLOW_STORAGE": "s3",
        "INSIGHTFLOW_S3_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "INSIGHTFLOW_SOURCE_BUCKET": clean,
        "INSIGHTFLOW_SOURCE_PREFIX": "instacart",
        "INSIGHTFLOW_CURATED_BUCKET": "no-such-curated-bucket",
        "DAGSTER_HOME": str(tmp_path / "home"),
    }.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "home").mkdir()
    monkeypatch.setattr(definitions, "defs", definitions.make_definitions())  # the code location of this env

    code = main(["run", "--run", RUN])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "Traceback" not in out + err
    failures = [line for line in err.splitlines() if line.startswith("FAILED:")]
    assert len(failures) == 1 and "NoSuchBucket" in failures[0], err
    pointer = err.splitlines()[-1]
    assert pointer.startswith("full log: Dagster run ") and RUN in pointer and str(tmp_path / "home") in pointer
    assert "not reached" in out  # the checks after the failed step are counted, not listed


def test_cli_bad_run_config_is_one_line(tmp_path, monkeypatch, capsys):
    import insightflow_assets.definitions as definitions
    from insightflow_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setattr(definitions, "defs", local_defs(write_tiny(tmp_path / "clean"), tmp_path / "curated"))
    config = tmp_path / "run_config.json"
    config.write_text(json.dumps({"ops": {"als_model": {"config": {"factors": "many"}}}}))
    code = main(["run", "--run", RUN, "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("insightflow: run config: ") and "factors" in lines[0], err


def test_summary_of_a_partial_run_on_an_unreachable_store_never_raises(s3_buckets):
    from dagster_aws.s3 import S3Resource

    from insightflow_assets.report import headline
    from resources import S3Storage

    # Nothing listens on the port; one attempt per call keeps the test fast.
    down = S3Resource(endpoint_url=f"http://127.0.0.1:{_closed_port()}", region_name="us-east-1", max_attempts=1)
    store = S3Storage(s3=down, bucket="curated", prefix="insightflow")
    outcome = RunOutcome(
        RUN, False, ["instacart_snapshot"], errors=["EndpointConnectionError: Could not connect\nto the endpoint"],
        materialized={"raw_order_products": {"source": {}}}, run_id="abc123",
    )
    lines = headline(store, RUN, outcome.materialized)
    assert len([line for line in lines if "could not be read" in line]) == 1  # stops at the first

    from insightflow_assets.report import failure_lines, run_summary

    text = run_summary(store, outcome)
    assert any("cannot list" in line for line in text)
    failures = failure_lines(outcome)
    assert failures[0] == "FAILED: EndpointConnectionError: Could not connect to the endpoint"
    assert failures[-1].startswith("full log: Dagster run abc123 of partition " + RUN)


def _one_basket_before_the_target(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Train users only, each with their last prior order and the train order: nobody has a
    basket before the second-to-last one, so nothing can be validated."""
    orders = tables["orders"]
    train_users = orders.filter(pl.col("eval_set") == "train").select("user_id")
    kept = (
        orders.join(train_users, on="user_id", how="semi")
        .filter(pl.col("order_number") >= pl.col("order_number").max().over("user_id") - 1)
        .with_columns(order_number=pl.col("order_number").rank("ordinal").over("user_id").cast(orders["order_number"].dtype))
        # nothing missing but the first orders' gap: MICE has nothing to fill (not what is tested)
        .with_columns(
            days_since_prior_order=pl.when(pl.col("order_number") == 1).then(None).otherwise(pl.col("days_since_prior_order").fill_null(7)),
            order_dow=pl.col("order_dow").fill_null(1), order_hour_of_day=pl.col("order_hour_of_day").fill_null(10),
        )
    )
    out = dict(tables, orders=kept)
    for stem in ("order_products__prior", "order_products__train"):
        out[stem] = tables[stem].join(kept.select("order_id"), on="order_id", how="semi").with_columns(pl.col("reordered") * 0)
    return out


def test_nothing_to_validate_exports_gp_topfreq_and_publishes(tmp_path, small_tables):
    """A log where every customer has one basket before the last (a young shop): model selection
    and LightFM's early stopping have nothing to validate on. The run still publishes: GP-TopFreq
    is exported and the run says why; LightFM trains its default epochs."""
    from insightflow_assets.data.generate import write_instacart
    from insightflow_assets.lightfm.fit import UNVALIDATED_EPOCHS
    from insightflow_assets.report import run_summary
    from resources import LocalStorage

    clean, curated = tmp_path / "clean", tmp_path / "curated"
    write_instacart(_one_basket_before_the_target(small_tables), clean)
    with DagsterInstance.ephemeral() as instance:
        outcome = run_graph(instance, run_key=RUN, defs=local_defs(clean, curated))
    assert outcome.ok, (outcome.errors, outcome.failed_error_checks)
    selection = json.loads((curated / f"recsys/eval/selection-{RUN[4:]}/selection.json").read_text())
    assert selection["users"] == 0 and selection["winner"]["method"] == "gp_topfreq"
    assert "nothing could be validated" in selection["unvalidated"]
    recos = outcome.materialized["user_recos"]
    assert recos["exported_method"] == "GP-TopFreq" and "nothing could be validated" in recos["why"]
    lightfm = outcome.materialized["lightfm_model"]
    assert lightfm["epochs_final"] == UNVALIDATED_EPOCHS and "nothing could be validated" in lightfm["chosen_on"]
    assert json.loads((curated / "recsys/latest/index.json").read_text())["run_key"] == RUN
    summary = "\n".join(run_summary(LocalStorage(root=str(curated)), outcome))
    assert "exported: GP-TopFreq — no user has a basket before their second-to-last one" in summary
