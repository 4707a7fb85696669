"""The user guide stays true to the code: its links resolve, every metric is in the
metrics table, and every page is linked from the index."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from etcdconfig import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert broken == []


def test_every_page_is_linked_from_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert sorted(p for p in pages if f"]({p})" not in index) == []


def test_metrics_table_lists_every_metric() -> None:
    text = (DOCS / "metrics.md").read_text()
    names = {
        m.name + ("_total" if m.type == "counter" else "")
        for m in metrics.REGISTRY.collect()  # the operator's registry
    }
    assert names, "no metrics found"
    assert sorted(n for n in names if f"`{n}`" not in text) == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_and_index_point_only_at_what_is_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    broken = [
        t for t in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", readme) if not (ROOT / t).exists()
    ]
    assert broken == []
    assert "DESIGN" not in readme and "design notes" not in readme
    index = (DOCS / "index.md").read_text()
    assert "design notes" not in index
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    for anchor in re.findall(r"\(\.\./README\.md#([^)]+)\)", index):
        assert anchor in anchors


def test_metrics_page_does_not_hide_the_created_series() -> None:
    text = (DOCS / "metrics.md").read_text()
    assert "only these metrics" not in text
    assert "_created" in text


def test_project_license_is_an_spdx_expression() -> None:
    """A table (`{text = ...}`) makes setuptools print a deprecation banner."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_install_guide_gives_the_fixes_for_the_chart_s_first_errors() -> None:
    text = (DOCS / "install.md").read_text()
    # the CRD applied by hand: Helm's message, and both ways out
    assert "cannot be imported into the current release: invalid ownership metadata" in (
        " ".join(text.split())
    )
    assert "--set crds.enabled=false" in text and "--take-ownership" in text
    assert "meta.helm.sh/release-name=" in text
    # no published image; endpoints from --set; the webhook on by default
    assert "No image is published" in text and "set image.repository" in text
    assert "--set etcd.endpoints=https://etcd.example:2379" in text
    assert "The webhook is on by default" in text
