"""What docs/consumers.md says about consumers in other languages, reloading and the
reader's install matches the examples and the packaging."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSUMERS = (ROOT / "docs" / "consumers.md").read_text()
EXAMPLES = ROOT / "examples"
OPERATOR_ONLY = {"kopf", "kubernetes_asyncio", "aiohttp", "rich", "pyyaml"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_the_rfc8785_libraries_named_are_the_ones_the_examples_use() -> None:
    go_mod = (EXAMPLES / "go-consumer" / "go.mod").read_text()
    (module,) = re.findall(r"^require (\S+) v", go_mod, flags=re.M)
    assert module == "github.com/gowebpki/jcs"
    assert module in (EXAMPLES / "go-consumer" / "go.sum").read_text()
    assert f"`{module}`" in CONSUMERS
    package = json.loads((EXAMPLES / "node-consumer" / "package.json").read_text())
    assert list(package["dependencies"]) == ["canonicalize"]
    lock = json.loads((EXAMPLES / "node-consumer" / "package-lock.json").read_text())
    assert (
        lock["packages"]["node_modules/canonicalize"]["version"]
        == (package["dependencies"]["canonicalize"])
    )
    assert "`canonicalize` on npm" in CONSUMERS
    assert "`rfc8785`" in CONSUMERS  # what etcdconfig.canonical uses
    for example in ("examples/go-consumer/", "examples/node-consumer/"):
        assert example in CONSUMERS


def test_no_built_binary_or_dependency_folder_is_in_the_examples() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in EXAMPLES.rglob("*")
        if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"
    ]
    offenders += [str(p.relative_to(ROOT)) for p in EXAMPLES.rglob("node_modules")]
    assert offenders == []


def test_reload_section_covers_volumes_subpath_env_and_rollouts() -> None:
    section = CONSUMERS.split("### Reloading a changed configuration", 1)[1].split("\n## ", 1)[0]
    for needle in (
        "kubelet",
        "`..data` symlink",
        "`subPath`",
        "**never updated**",
        "environment variables",
        "restart the pod",
        "`<name>-v<N>`",
        "old pods keep the one they started with",
    ):
        assert needle in section, needle


def test_base_install_is_the_reader_and_the_operator_is_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert base & OPERATOR_ONLY == set()
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["operator"]} == OPERATOR_ONLY
    # `pip install -e '.[dev]'` (the Makefile) still installs the operator's dependencies
    assert "etcdconfig[operator]" in extras["dev"]
    assert "pip install 'etcdconfig[operator]'" in CONSUMERS
