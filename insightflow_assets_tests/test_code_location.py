"""The code location as tools and the UI see it: the `dg` CLI, code references, and the text
(kinds, descriptions) shown beside each definition."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from insightflow_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).parent / "dg"
# Words that point at the project's internal papers (seed 003, issue 13, a doc) rather than
# saying what a definition does.
INTERNAL = re.compile(r"\bseed(?:'s| \d+)|\bissues?\b|\bdocs?\b|\bdocument", re.IGNORECASE)


@pytest.fixture(scope="module")
def dagster_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("dg_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def dg(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    return subprocess.run([str(DG), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_dg_check_defs_loads_the_code_location_without_warnings(dagster_home):
    proc = dg("check", "defs", home=dagster_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "All definitions loaded successfully" in out
    assert not re.search(r"warn|superseded|deprecat", out, re.IGNORECASE), out


def test_dg_list_defs_lists_every_asset_and_both_sensors(dagster_home):
    proc = dg("list", "defs", "--json", home=dagster_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = json.loads(proc.stdout)
    graph = defs.resolve_asset_graph()
    assert {a["asset_key"] for a in listed["assets"]} == {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {s["name"] for s in listed["sensors"]} == {"new_source_data", "daily_retrain"}
    assert listed["schedules"] == []


def test_every_asset_links_to_its_source_file():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        (ref,) = node.metadata["dagster/code_references"].code_references
        source = Path(ref.file_path)
        assert source.is_file() and source.is_relative_to(ROOT / "insightflow_assets"), (key, source)
        # the reference points at the definition: its decorator, then the function
        assert "def " in "".join(source.read_text().splitlines(keepends=True)[ref.line_number - 1 :][:40]), key


def test_code_references_become_repository_links_when_a_git_url_is_set(monkeypatch):
    from insightflow_assets.code_references import linked_to_source
    from insightflow_assets.stages import collect, stage_modules

    monkeypatch.setenv("INSIGHTFLOW_GIT_URL", "https://github.com/acme/insightflow/")
    assets, _ = collect(stage_modules())
    linked = linked_to_source(assets)
    urls = [
        ref.url
        for a in linked
        for spec in a.specs
        for ref in spec.metadata["dagster/code_references"].code_references
    ]
    assert urls and all(re.match(r"https://github\.com/acme/insightflow/tree/main/insightflow_assets/\w+/assets\.py#L\d+$", u) for u in urls), urls


def test_descriptions_say_what_things_do():
    graph = defs.resolve_asset_graph()
    texts = {f"asset {k.to_user_string()}": graph.get(k).description for k in graph.get_all_asset_keys()}
    texts |= {f"check {c.to_user_string()}": graph.get_check_spec(c).description for c in graph.asset_check_keys}
    texts |= {f"job {j.name}": j.description for j in defs.jobs}
    texts |= {f"sensor {s.name}": s.description for s in defs.sensors}
    texts |= {f"resource {name}": type(r).__doc__ for name, r in defs.resources.items()}
    named = {what: text for what, text in texts.items() if text and INTERNAL.search(text)}
    assert not named, named
    assert all(texts[f"asset {k.to_user_string()}"] for k in graph.get_all_asset_keys())


def test_no_asset_claims_a_storage_kind():
    # Where assets are stored is one setting for the whole location (INSIGHTFLOW_STORAGE), so
    # a storage kind on an asset would be untrue in the other setting.
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert not graph.get(key).kinds & {"s3", "local", "file"}, key


def test_readme_commands_are_not_superseded():
    """Dagster 1.13 prints a supersession warning for these; the `dg` commands replace them."""
    readme = (ROOT / "README.md").read_text()
    for old in ("dagster dev", "dagster asset materialize", "dagster definitions validate", "dagster job launch", "dagster job execute"):
        assert old not in readme, old
