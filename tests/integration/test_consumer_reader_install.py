"""The consumer API installs without the operator's dependencies.

The project's wheel is built from a copy of the sources and installed, with only the
dependencies it declares (no extras), into a fresh venv: kopf, kubernetes_asyncio,
aiohttp, rich and PyYAML must not be there, and ``examples/reader_app.py`` run by that
venv's Python reads a version recorded in a real etcd. Needs PyPI (or a pip mirror /
cache) for the base dependencies, as ``make install`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient
from etcdconfig.store import ChangeRequest, VersionedStore

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_ONLY = ("kopf", "kubernetes-asyncio", "aiohttp", "rich", "pyyaml")


def run(*args: str | Path, timeout: float = 600, **kwargs: object) -> str:
    out = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return str(out.stdout)


@pytest.fixture(scope="module")
def reader_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project's wheel and its base dependencies only."""
    base = tmp_path_factory.mktemp("reader-install")
    src = base / "src"
    src.mkdir()
    # build from a copy: building in the work tree would leave build/ and egg-info there
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "operator",
        src / "operator",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    wheels = base / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, src)
    (wheel,) = wheels.glob("etcdconfig-*.whl")
    venv = base / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    return venv


def installed(venv: Path) -> set[str]:
    out = run(venv / "bin" / "python", "-m", "pip", "list", "--format", "json")
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


def test_base_install_has_none_of_the_operator_dependencies(reader_venv: Path) -> None:
    names = installed(reader_venv)
    assert "etcdconfig" in names
    assert sorted(n for n in OPERATOR_ONLY if n in names) == []
    run(reader_venv / "bin" / "python", "-m", "pip", "check")
    probe = (
        "import importlib.util, etcdconfig.reader, etcdconfig.settings; "
        "print([m for m in ('kopf', 'kubernetes_asyncio', 'aiohttp') "
        "if importlib.util.find_spec(m)])"
    )
    assert run(reader_venv / "bin" / "python", "-c", probe).strip() == "[]"


@pytest.fixture
async def recorded(client: EtcdClient, prefix: str) -> AsyncIterator[int]:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="writer")
    store = VersionedStore(client, prefix=prefix, replica_id="writer")
    result = await store.record(
        ChangeRequest(
            "prod",
            "payments",
            uid="uid-1",
            generation=1,
            data={"currency": "EUR", "retries": 5, "name": "zürich"},
            owner_confirmed=True,
        ),
        locks,
    )
    yield result.version
    await session.close()


async def test_reader_app_reads_a_version_without_the_operator_dependencies(
    reader_venv: Path, etcd_server: EtcdServer, prefix: str, recorded: int
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "ETCDCONFIG_ETCD_ENDPOINTS": etcd_server.endpoint,
        "ETCDCONFIG_ETCD_PREFIX": prefix,
    }
    out = run(
        reader_venv / "bin" / "python",
        ROOT / "examples" / "reader_app.py",
        "--once",
        "prod/payments",
        env=env,
        cwd=reader_venv,  # not the repo: the package must come from the venv
        timeout=60,
    )
    first, _, rest = out.partition(":\n")
    assert first.startswith(f"version {recorded} (sha256:")
    assert json.loads(rest) == {"currency": "EUR", "name": "zürich", "retries": 5}
