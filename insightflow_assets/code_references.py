"""Each asset links to its source file in the UI (Dagster code references).

Locally the link is the file and line on this machine. A deployed UI runs elsewhere, so there
``INSIGHTFLOW_GIT_URL`` (a GitHub or GitLab repository URL) turns the links into links to
that repository, on ``INSIGHTFLOW_GIT_BRANCH`` (default ``main``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from dagster import (
    AnchorBasedFilePathMapping,
    AssetsDefinition,
    BetaWarning,
    link_code_references_to_git,
    with_source_code_references,
)

# The repository root, anchored on a file that sits there in every checkout.
_ANCHOR = Path(__file__).resolve().parents[1] / "pyproject.toml"


def linked_to_source(assets: Sequence[AssetsDefinition]) -> list[AssetsDefinition]:
    """The assets with ``dagster/code_references`` metadata pointing at their definitions."""
    # Both functions are beta in Dagster 1.13: using them is a choice made once, here, not
    # something to warn about at every load of the code location.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        linked = with_source_code_references(assets)
        url = os.getenv("INSIGHTFLOW_GIT_URL")
        if url:
            linked = link_code_references_to_git(
                linked,
                git_url=url.rstrip("/"),
                git_branch=os.getenv("INSIGHTFLOW_GIT_BRANCH", "main"),
                file_path_mapping=AnchorBasedFilePathMapping(
                    local_file_anchor=_ANCHOR, file_anchor_path_in_repository="pyproject.toml"
                ),
            )
    return list(linked)
