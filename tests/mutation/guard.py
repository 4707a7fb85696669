"""A pytest plugin the mutation runner loads (``-p tests.mutation.guard``) in each copy
of the repository: before any test runs, it checks that ``etcdconfig`` (and the module
under mutation) is imported from that copy, not from /work/main or an installed
package, and writes what it found to ``$ETCDCONFIG_MUTATION_REPORT``. If the import
comes from anywhere else, the session stops with exit code ``GUARD_EXIT`` and the
runner reports an error instead of a result.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

GUARD_EXIT = 97


def pytest_sessionstart(session: pytest.Session) -> None:
    root_env = os.environ.get("ETCDCONFIG_MUTATION_ROOT")
    if not root_env:
        return
    root = Path(root_env).resolve()
    names = ["etcdconfig"] + [
        m for m in os.environ.get("ETCDCONFIG_MUTATION_MODULES", "").split(",") if m
    ]
    found: dict[str, str] = {}
    wrong: list[str] = []
    for name in names:
        module = importlib.import_module(name)
        origin = Path(module.__file__ or "").resolve()
        found[name] = str(origin)
        if not origin.is_relative_to(root):
            wrong.append(f"{name} from {origin}")
    report = os.environ.get("ETCDCONFIG_MUTATION_REPORT")
    if report:
        Path(report).write_text(json.dumps({"root": str(root), "modules": found}))
    if wrong:
        pytest.exit(
            f"mutation guard: imported outside the copy {root}: {'; '.join(wrong)}",
            returncode=GUARD_EXIT,
        )
