"""``insightflow``: what the Dagster CLI does not do for this project.

    insightflow generate --users N [--seed S] [--missing-rate R] --out DIR
    insightflow generate --form events --users N [--seed S] --out DIR
                                              a RetailRocket-shaped event log (N visitors)
    insightflow init                          set up DAGSTER_HOME's storage (once, under a lock)
    insightflow new-run [--tag TAG]          register a run partition, print its key
    insightflow run [--run KEY | --tag TAG] [--config FILE] [--select ASSET ...]
                                              materialize the graph for a run, print a summary
    insightflow runs                          list registered run partitions
    insightflow backfill (--runs KEY ... | --all) --select ASSET ...
                                              re-materialize assets for existing runs
    insightflow check RUN_KEY                 re-run every asset check of a stored run
    insightflow promote RUN_KEY               point latest/ at a run (rollback included)
    insightflow latest [--repair]             print what latest/ holds (and fix it: an interrupted
                                              promotion, objects not matching the manifest)
    insightflow serve [--host H] [--port P] [--watch-seconds N] [--profile NAME]
                                              the HTTP API over latest/ (one worker; README "Serving")
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _instance():
    # Under a lock in DAGSTER_HOME: two commands on a fresh home must not both set it up.
    from insightflow_assets.instance import get_instance

    return get_instance()


def cmd_init(args) -> int:
    from insightflow_assets.instance import dagster_home

    _instance().dispose()
    print(f"DAGSTER_HOME ready: {dagster_home()}")
    return 0


# Options of one form only: dest -> (flag, default when not given).
_INSTACART_ONLY = {"missing_rate": ("--missing-rate", 0.0), "test_share": ("--test-share", 0.0)}
_EVENTS_ONLY = {"opaque_properties": ("--opaque-properties", 5)}


def cmd_generate(args) -> int:
    from insightflow_assets.data.generate import write_instacart

    _check_form_options(args)
    t0 = time.perf_counter()
    if args.form == "events":
        from insightflow_assets.data.events import generate_events_tables, summarize_events

        tables = generate_events_tables(args.users, seed=args.seed, opaque_properties=args.opaque_properties)
        summary, who = summarize_events(tables), "visitors"
    else:
        from insightflow_assets.data.generate import generate_instacart, summarize

        tables = generate_instacart(args.users, seed=args.seed, missing_rate=args.missing_rate, test_share=args.test_share)
        summary, who = summarize(tables), "users"
    paths = write_instacart(tables, args.out, fmt=args.format)
    print(f"generated {args.users:,} {who} ({args.form}) in {time.perf_counter() - t0:.1f}s → {Path(args.out).resolve()}")
    for k, v in summary.items():
        print(f"  {k:>26}: {v:,.3f}" if isinstance(v, float) else f"  {k:>26}: {v:,}")
    for p in paths:
        print(f"  {p}")
    return 0


def _check_form_options(args) -> None:
    """Refuse an option the chosen form has no use for (one line), else fill in its default."""
    foreign = _EVENTS_ONLY if args.form == "instacart" else _INSTACART_ONLY
    given = [flag for dest, (flag, _) in foreign.items() if getattr(args, dest) is not None]
    if args.form == "events" and args.format == "parquet":
        given.append("--format parquet")  # the events form is read from CSV files only
    if given:
        raise ValueError(f"generate --form {args.form}: {', '.join(given)} does not apply to this form")
    for dest, (_, default) in {**_INSTACART_ONLY, **_EVENTS_ONLY}.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)


def cmd_new_run(args) -> int:
    from insightflow_assets.partitions import register_run

    print(register_run(_instance(), tag=args.tag))
    return 0


def cmd_runs(args) -> int:
    from insightflow_assets.partitions import registered_runs

    for key in sorted(registered_runs(_instance())):
        print(key)
    return 0


def cmd_run(args) -> int:
    from insightflow_assets.report import failure_lines, run_summary
    from insightflow_assets.runner import run_graph
    from resources import storages

    run_config = json.loads(Path(args.config).read_text()) if args.config else None
    t0 = time.perf_counter()
    outcome = run_graph(
        _instance(), run_key=args.run, tag=args.tag, run_config=run_config, selection=args.select, log_level=args.log_level,
        parallel=args.parallel,
    )
    elapsed = time.perf_counter() - t0
    _, curated = storages(resolve=True)

    print(f"\nrun key: {outcome.run_key}   ({'succeeded' if outcome.ok else 'FAILED'} in {elapsed:.1f}s)")
    if outcome.failed_steps:
        print("failed steps: " + ", ".join(outcome.failed_steps))
    # The summary shows what the run got to write; it never raises, even on a partial run.
    for line in run_summary(curated, outcome):
        print(line)
    # Last, on stderr: one line per failure (its root cause) and where the full log is.
    sys.stdout.flush()
    for line in failure_lines(outcome):
        print(line, file=sys.stderr)
    return 0 if outcome.ok else 1


def cmd_backfill(args) -> int:
    from insightflow_assets.partitions import registered_runs
    from insightflow_assets.report import one_line
    from insightflow_assets.runner import run_graph
    from resources.layout import RunKeyError

    instance = _instance()
    known = registered_runs(instance)
    runs = sorted(known) if args.all else args.runs
    unknown = [r for r in runs if r not in known]
    if unknown:
        raise ValueError(f"not registered: {', '.join(unknown)} (see `insightflow runs`)")
    failed = 0
    for run in runs:
        try:
            outcome = run_graph(instance, run_key=run, selection=args.select, log_level=args.log_level)
        except RunKeyError as exc:  # a malformed key added behind our back (e.g. in the UI)
            print(f"{run}: FAILED {exc}")
            failed += 1
            continue
        status = "ok" if outcome.ok else "FAILED " + "; ".join(map(one_line, outcome.errors or [c["check"] for c in outcome.failed_error_checks]))
        print(f"{run}: {status}")
        failed += not outcome.ok
    return 1 if failed else 0


def cmd_check(args) -> int:
    from insightflow_assets.report import one_line
    from insightflow_assets.runner import run_checks

    outcome = run_checks(_instance(), args.run_key)
    print(f"asset checks for {outcome.run_key}:")
    print(f"  {'result':<6} {'severity':<8} {'asset':<20} {'check':<36} details")
    for c in sorted(outcome.checks, key=lambda c: (c["asset"], c["check"])):
        details = ", ".join(f"{k}={_short(v)}" for k, v in c["metadata"].items())
        print(f"  {'PASS' if c['passed'] else 'FAIL':<6} {c['severity']:<8} {c['asset']:<20} {c['check']:<36} {details}")
    for err in outcome.errors:
        print("  ERROR " + one_line(err))
    failed = outcome.failed_error_checks
    print(f"{len(outcome.checks) - len(failed)}/{len(outcome.checks)} without an ERROR-severity failure")
    return 0 if outcome.ok else 1


def _short(value) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def cmd_promote(args) -> int:
    from insightflow_assets.publish.promotion import promote
    from resources import storages
    from resources.layout import parse_run_key

    parse_run_key(args.run_key)
    _, curated = storages(resolve=True)
    result = promote(curated, args.run_key, force=True)
    if result.get("recovered"):
        print(f"first {result['recovered']}")
    m = result["manifest"]
    print(f"latest/ → {m['run_key']} ({len(m['objects'])} objects; previous: {m['previous_run_key']})")
    return 0


def cmd_latest(args) -> int:
    from insightflow_assets.publish.promotion import describe_journal, read_journal, read_manifest, repair, verify_manifest
    from resources import storages
    from resources.storage import RootNotFound

    _, curated = storages(resolve=True)
    try:
        curated.require_root()  # else a missing bucket would read as "nothing promoted yet"
    except RootNotFound as exc:
        raise RootNotFound(f"curated {exc}") from None
    if args.repair:
        for line in repair(curated) or ["nothing to repair"]:
            print(f"repair: {line}")
    manifest = read_manifest(curated)
    journal = read_journal(curated)
    if manifest is None:
        print("latest/ is empty: no run has been promoted yet")
        if journal:
            print("  PROBLEM " + describe_journal(journal))
        return 1
    print(f"run key:        {manifest['run_key']}")
    print(f"finished (UTC): {manifest['finished_at_utc']}")
    print(f"promoted (UTC): {manifest['promoted_at_utc']}  (previous: {manifest['previous_run_key']})")
    for obj in manifest["objects"]:
        print(f"  {obj['key']:<58} {obj['size']:>12,} B  sha256 {obj['sha256'][:12]}…")
    problems = ([describe_journal(journal)] if journal else []) + verify_manifest(curated, manifest)
    for p in problems:
        print("  PROBLEM " + p)
    if problems and not journal:
        print("  `insightflow latest --repair` re-copies them from the run copies the manifest names")
    return 1 if problems else 0


def cmd_serve(args) -> int:
    import uvicorn

    from insightflow_assets.serving.app import create_app
    from resources import storages

    _, curated = storages(resolve=True)
    app = create_app(curated, watch_seconds=args.watch_seconds, profile=args.profile)
    # One worker: the bundle and the Prometheus counters live in this process.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="insightflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write synthetic Instacart-shaped data or a RetailRocket-shaped event log")
    g.add_argument("--form", choices=["instacart", "events"], default="instacart", help="input form to write (default: instacart)")
    g.add_argument("--users", type=int, default=2000, help="users (instacart) or visitors (events)")
    g.add_argument("--seed", type=int, default=42)
    # None marks "not given": each form refuses the other's options (see _check_form_options).
    g.add_argument("--missing-rate", type=float, default=None, help="instacart: share of dow/hour/gap hidden on non-first orders (default 0)")
    g.add_argument("--test-share", type=float, default=None, help="instacart: share of users whose last order is eval_set=test (default 0)")
    g.add_argument("--opaque-properties", type=int, default=None, help="events: hashed item properties besides categoryid and available (default 5)")
    g.add_argument("--format", choices=["csv", "csv.gz", "parquet"], default="csv", help="events: csv or csv.gz only")
    g.add_argument("--out", required=True)
    g.set_defaults(func=cmd_generate)

    it = sub.add_parser("init", help="set up DAGSTER_HOME's storage once, under a lock (make ui runs it)")
    it.set_defaults(func=cmd_init)

    n = sub.add_parser("new-run", help="register a new run partition and print its key")
    n.add_argument("--tag", default=None, help="optional suffix of [a-z0-9-]")
    n.set_defaults(func=cmd_new_run)

    r = sub.add_parser("run", help="materialize the graph for a (new) run partition")
    r.add_argument("--run", default=None, help="an existing or new run key; default: a new one")
    r.add_argument("--tag", default=None)
    r.add_argument("--config", default=None, help="a JSON file of Dagster run config")
    r.add_argument("--select", nargs="*", default=None, help="asset names (default: the whole graph)")
    r.add_argument("--log-level", default="CRITICAL", help="console log level of the run (default: only the summary; every log is in the UI)")
    r.add_argument("--parallel", action="store_true",
                   help="independent steps side by side, each in its own process (default: one at a time in this process)")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("runs", help="list registered run partitions")
    ls.set_defaults(func=cmd_runs)

    bf = sub.add_parser("backfill", help="re-materialize chosen assets for existing runs, oldest first")
    who = bf.add_mutually_exclusive_group(required=True)
    who.add_argument("--runs", nargs="+", help="run keys")
    who.add_argument("--all", action="store_true", help="every registered run")
    bf.add_argument("--select", nargs="+", required=True, help="asset names, e.g. als_eval als_postrank eval_charts")
    bf.add_argument("--log-level", default="CRITICAL")
    bf.set_defaults(func=cmd_backfill)

    ck = sub.add_parser("check", help="re-run every asset check of a stored run and print a table")
    ck.add_argument("run_key")
    ck.set_defaults(func=cmd_check)

    pr = sub.add_parser("promote", help="point latest/ at a run (e.g. roll back to an older one)")
    pr.add_argument("run_key")
    pr.set_defaults(func=cmd_promote)

    la = sub.add_parser("latest", help="print the run latest/ holds and verify its objects")
    la.add_argument(
        "--repair",
        action="store_true",
        help="first complete or roll back an interrupted promotion, re-copy objects that differ "
        "from the manifest and remove stale temp files",
    )
    la.set_defaults(func=cmd_latest)

    sv = sub.add_parser("serve", help="serve recommendations over HTTP from latest/ (FastAPI + uvicorn, one worker)")
    sv.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--watch-seconds", type=float, default=30.0, help="poll the manifest this often (0: only /admin/reload)")
    sv.add_argument("--profile", default=None, help="basket profile to serve (default: the active one in the run's profiles.json)")
    sv.add_argument("--log-level", default="info")
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        lines = _expected_failure(exc)
        if lines is None:
            raise  # a bug: its traceback is what is needed
        for line in lines:
            print(f"insightflow: {line}", file=sys.stderr)
        return 2


def _expected_failure(exc: Exception) -> list[str] | None:
    """One line per problem for the failures a user can cause or meet (bad input, run key or
    run config, a store that cannot be reached), or None for anything else."""
    from botocore.exceptions import BotoCoreError, ClientError
    from dagster import DagsterInvalidConfigError
    from dagster._core.errors import DagsterConfigMappingFunctionError

    from insightflow_assets.report import one_line

    if isinstance(exc, DagsterInvalidConfigError):  # --config: one line per wrong entry
        return [f"run config: {one_line(err.message)}" for err in exc.errors] or [one_line(exc)]
    if isinstance(exc, DagsterConfigMappingFunctionError):  # a value our mapping refuses (executor.run_executor)
        return [f"run config: {one_line(exc.user_exception or exc)}"]
    if isinstance(exc, (ValueError, RuntimeError, OSError, BotoCoreError, ClientError)):
        return [one_line(exc)]
    return None


if __name__ == "__main__":
    sys.exit(main())
