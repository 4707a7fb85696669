"""The repository layout keeps `operator/` a plain source root (STYLE.md)."""

from __future__ import annotations

import operator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_operator_source_root_is_not_a_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_stdlib_operator_module_is_not_shadowed() -> None:
    assert operator.eq(1, 1)
    assert Path(operator.__file__ or "").parent != ROOT / "operator"


def test_package_imports_from_the_source_root() -> None:
    import etcdconfig

    assert Path(etcdconfig.__file__).parent == ROOT / "operator" / "etcdconfig"


def test_no_two_test_modules_share_a_basename() -> None:
    """The tiers are folders without __init__.py, so pytest imports test modules by
    basename: two of the same name in different tiers abort the whole collection."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path
