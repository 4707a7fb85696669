"""Build infrastructure binaries from Go modules, cached by version.

Binaries land in ``$ETCDCONFIG_CACHE`` (default ``~/.cache/etcdconfig``) under
``bin/<name>-<version>``; a second call finds them and returns at once.
Release binaries are never downloaded: Go modules are the only source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ETCD_VERSION = "v3.6.16"


class BuildError(RuntimeError):
    """A tool could not be built; the message says what to install or fix."""


def cache_dir() -> Path:
    root = os.environ.get("ETCDCONFIG_CACHE") or str(Path.home() / ".cache" / "etcdconfig")
    return Path(root)


@dataclass(frozen=True)
class GoTool:
    """One binary built from a Go package inside a wrapper module."""

    name: str
    version: str
    module: str
    package: str
    ldflags: tuple[str, ...] = ()
    extra_modules: tuple[str, ...] = ()
    replaces: tuple[tuple[str, str], ...] = field(default=())

    @property
    def path(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"


def _log(msg: str) -> None:
    print(f"[etcdconfig build] {msg}", file=sys.stderr, flush=True)


def go_binary() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the Go toolchain is required to build etcd/kube-apiserver/helm from Go modules: "
            "install Go >= 1.24 (e.g. `apt-get install golang`) and make sure `go` is on PATH"
        )
    return go


def run_go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    full_env = dict(os.environ)
    full_env.setdefault("GOTOOLCHAIN", "local")
    full_env.setdefault("GOFLAGS", "-mod=mod")
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [go_binary(), *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BuildError(f"`go {' '.join(args)}` failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def build_in_wrapper(tools: list[GoTool], wrapper: Path, *, go_mod_extra: str = "") -> None:
    """Build ``tools`` (all from the same wrapper module) unless cached."""
    missing = [t for t in tools if not t.path.exists()]
    if not missing:
        return
    wrapper.mkdir(parents=True, exist_ok=True)
    gomod = wrapper / "go.mod"
    if not gomod.exists():
        gomod.write_text("module etcdconfig.local/wrapper\n\ngo 1.24\n" + go_mod_extra)
    for tool in missing:
        for mod in (tool.module, *tool.extra_modules):
            _log(f"resolving {mod} ({tool.name}) through the Go module proxy…")
            run_go(["get", "-tool", f"{mod}"], cwd=wrapper)
    (cache_dir() / "bin").mkdir(parents=True, exist_ok=True)
    for tool in missing:
        _log(f"building {tool.name} {tool.version} (this takes a while the first time)…")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            out = Path(tmp) / tool.name
            args = ["build", "-trimpath", "-o", str(out)]
            if tool.ldflags:
                args += ["-ldflags", " ".join(tool.ldflags)]
            run_go([*args, tool.package], cwd=wrapper, env={"CGO_ENABLED": "0"})
            out.replace(tool.path)
        _log(f"built {tool.path} in {time.monotonic() - start:.0f}s")


def etcd_tools(version: str = ETCD_VERSION) -> list[GoTool]:
    return [
        GoTool("etcd", version, f"go.etcd.io/etcd/server/v3@{version}", "go.etcd.io/etcd/server/v3"),
        GoTool(
            "etcdctl", version, f"go.etcd.io/etcd/etcdctl/v3@{version}", "go.etcd.io/etcd/etcdctl/v3"
        ),
    ]


def ensure_etcd(version: str = ETCD_VERSION) -> tuple[Path, Path]:
    """Return paths of (etcd, etcdctl), building them on first use."""
    override = os.environ.get("ETCDCONFIG_ETCD_BIN")
    if override:
        return Path(override), Path(os.environ.get("ETCDCONFIG_ETCDCTL_BIN", "etcdctl"))
    tools = etcd_tools(version)
    build_in_wrapper(tools, cache_dir() / "src" / f"etcd-{version}")
    return tools[0].path, tools[1].path


def main(argv: list[str] | None = None) -> int:
    """``python -m etcdconfig.devenv.build [etcd|all]``."""
    what = (argv if argv is not None else sys.argv[1:]) or ["all"]
    try:
        if "etcd" in what or "all" in what:
            etcd, _ = ensure_etcd()
            _log(f"etcd ready: {etcd}")
    except BuildError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
