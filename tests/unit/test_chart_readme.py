"""The chart's README.md (``helm show readme``, Artifact Hub) is generated from
values.yaml by charts/etcdconfig/hack/readme.py and must be up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "etcdconfig"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", CHART / "hack" / "readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_readme_is_generated_from_the_values() -> None:
    assert (CHART / "README.md").read_text() == _generator().render(), (
        "charts/etcdconfig/README.md is stale: run `python charts/etcdconfig/hack/readme.py`"
    )


def test_chart_readme_lists_every_documented_value_and_the_install_fixes() -> None:
    gen = _generator()
    text = (CHART / "README.md").read_text()
    rows = gen.documented((CHART / "values.yaml").read_text())
    assert len(rows) > 50
    assert all(f"| `{path}` |" in text for path, _ in rows)
    # the two ways out of "invalid ownership metadata" and the required image
    assert "--set crds.enabled=false" in text and "--take-ownership" in text
    assert "set `image.repository`" in text


def test_the_generator_is_not_packaged_with_the_chart() -> None:
    assert "hack/" in (CHART / ".helmignore").read_text().splitlines()
