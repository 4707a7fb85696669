"""Flux's source-controller and kustomize-controller as local processes.

Built from their Go modules by :mod:`etcdconfig.devenv.build` (``ensure_flux``), run
against a :class:`~etcdconfig.devenv.controlplane.ControlPlane` with its admin
kubeconfig: every namespace watched, no leader election, metrics and health on
``127.0.0.1:<free port>``. source-controller keeps its artifacts (the tarballs of
each fetched Git revision) under ``<state_dir>/storage`` and serves them on
``127.0.0.1:<free port>``, the address it advertises in each artifact's URL, which
kustomize-controller downloads from. Flux's CRDs come from the same module versions
(``config/crd/bases``) and are applied server-side (they are too large for a
client-side apply's annotation).

Host state: ``state_dir`` only (logs, artifact storage, the controllers' temporary
files); the CRDs stay in the cluster (they are the cluster's, like any CRD).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etcdconfig.devenv import build
from etcdconfig.devenv.etcd import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from etcdconfig.devenv.controlplane import ControlPlane

    #: starts ``(name, binary, args, env)`` and returns the process (default: a child
    #: of this process, logging to ``<state_dir>/<name>.log``)
    Launcher = Callable[[str, Path, Sequence[str], Mapping[str, str]], subprocess.Popen[bytes]]

SOURCE_API = "source.toolkit.fluxcd.io/v1"
KUSTOMIZE_API = "kustomize.toolkit.fluxcd.io/v1"


class FluxError(RuntimeError):
    """A Flux controller failed to start or exited; the message names its log."""


@dataclass
class FluxProcess:
    """One controller process."""

    name: str
    binary: Path
    args: list[str]
    log_path: Path
    health_port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, launcher: Launcher | None = None) -> None:
        if launcher is not None:
            self.proc = launcher(self.name, self.binary, self.args, self.env)
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            code = self.proc.returncode if self.proc is not None else None
            raise FluxError(f"{self.name} exited ({code}); log: {self.log_path}\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/readyz", timeout=1
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Flux:
    """source-controller and kustomize-controller against ``plane``."""

    plane: ControlPlane
    state_dir: Path
    log_level: str = "debug"
    log_dir: Path | None = None  # default: state_dir (a launcher must log there too)
    processes: dict[str, FluxProcess] = field(default_factory=dict)
    crd_dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def storage_port(self) -> int:
        return int(self.processes["source-controller"].args[-1].rsplit(":", 1)[1])

    def install_crds(self, timeout: float = 60.0) -> list[str]:
        """Apply every CRD of both controllers (server-side); return their names."""
        names = []
        for directory in self.crd_dirs.values():
            for crd in sorted(directory.glob("*.yaml")):
                out = self.plane.kubectl(
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager=etcdconfig-devenv",
                    "-f",
                    str(crd),
                    "-o",
                    "name",
                )
                names.append(out.stdout.strip())
        self.plane.kubectl(
            "wait", "--for=condition=Established", *names, f"--timeout={int(timeout)}s"
        )
        return names

    def _env(self) -> dict[str, str]:
        tmp = self.state_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KUBECONFIG": str(self.plane.kubeconfig),
            "HOME": str(self.state_dir),
            "TMPDIR": str(tmp),
            "RUNTIME_NAMESPACE": "flux-system",
        }

    def _common_args(self, metrics: int, health: int) -> list[str]:
        return [
            f"--metrics-addr=127.0.0.1:{metrics}",
            f"--health-addr=127.0.0.1:{health}",
            "--enable-leader-election=false",
            "--watch-all-namespaces=true",
            f"--log-level={self.log_level}",
            "--log-encoding=json",
        ]

    def start(self, timeout: float = 60.0, launcher: Launcher | None = None) -> None:
        """Build (or find cached) the controllers, install the CRDs, start both (through
        ``launcher`` if given: ``dev up --gitops`` records them with the cluster's
        processes) and wait until each answers ``/readyz``."""
        built = build.ensure_flux()
        self.crd_dirs = {name: crds for name, (_, crds) in built.items()}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.install_crds(timeout)
        env = self._env()
        storage, storage_port = self.state_dir / "storage", free_port()
        storage.mkdir(exist_ok=True)
        health = free_port()
        self.processes["source-controller"] = FluxProcess(
            "source-controller",
            built["source-controller"][0],
            [
                *self._common_args(free_port(), health),
                f"--storage-path={storage}",
                f"--storage-addr=127.0.0.1:{storage_port}",
                f"--storage-adv-addr=127.0.0.1:{storage_port}",
            ],
            (self.log_dir or self.state_dir) / "source-controller.log",
            health,
            env,
        )
        health = free_port()
        self.processes["kustomize-controller"] = FluxProcess(
            "kustomize-controller",
            built["kustomize-controller"][0],
            [*self._common_args(free_port(), health), "--no-remote-bases=true"],
            (self.log_dir or self.state_dir) / "kustomize-controller.log",
            health,
            env,
        )
        try:
            for proc in self.processes.values():
                proc.start(launcher)
            deadline = time.monotonic() + timeout
            for proc in self.processes.values():
                while not proc.ready():
                    if time.monotonic() > deadline:
                        raise FluxError(
                            f"{proc.name} not ready after {timeout:.0f}s; log: {proc.log_path}"
                        )
                    time.sleep(0.2)  # poll interval of the deadline-bounded wait above
        except BaseException:
            if launcher is None:  # a launcher's owner stops what it launched
                self.stop()
            raise

    def stop(self, grace: float = 10.0) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop(grace)

    def logs(self) -> dict[str, str]:
        return {name: p.log_tail() for name, p in self.processes.items()}

    # --- objects ---------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        out = self.plane.kubectl(
            "get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found"
        )
        return dict(json.loads(out.stdout)) if out.stdout.strip() else None

    def reconcile_now(self, kind: str, namespace: str, name: str) -> str:
        """What ``flux reconcile`` does: set ``reconcile.fluxcd.io/requestedAt``."""
        stamp = f"{time.time():.6f}"
        self.plane.kubectl(
            "annotate",
            "--overwrite",
            kind,
            name,
            "-n",
            namespace,
            f"reconcile.fluxcd.io/requestedAt={stamp}",
        )
        return stamp

    def suspend(self, kind: str, namespace: str, name: str, suspended: bool = True) -> None:
        """What ``flux suspend``/``flux resume`` do: set ``spec.suspend``."""
        self.plane.kubectl(
            "patch",
            kind,
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"suspend": suspended}}),
        )

    def applied(self, namespace: str, name: str) -> list[dict[str, str]]:
        """What kustomize-controller's server-side applies of Kustomization
        ``namespace/name`` did, oldest first, from its log: one ``{"Kind/ns/name":
        "created" | "configured" | "unchanged" | …}`` per apply that changed something
        (an apply that changes nothing is not logged)."""
        out = []
        proc = self.processes.get("kustomize-controller")
        for line in (proc.log_text() if proc else "").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                entry.get("msg") == "server-side apply completed"
                and entry.get("namespace") == namespace
                and entry.get("name") == name
            ):
                out.append(dict(entry.get("output") or {}))
        return out


def git_repository(
    name: str, namespace: str, url: str, branch: str = "main", interval: str = "5s"
) -> dict[str, Any]:
    return {
        "apiVersion": SOURCE_API,
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, "interval": interval, "ref": {"branch": branch}, "timeout": "20s"},
    }


def kustomization(
    name: str,
    namespace: str,
    source: str,
    path: str,
    *,
    interval: str = "5s",
    timeout: str = "60s",
    wait: bool = True,
    prune: bool = True,
) -> dict[str, Any]:
    return {
        "apiVersion": KUSTOMIZE_API,
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "interval": interval,
            "retryInterval": interval,
            "timeout": timeout,
            "path": path,
            "prune": prune,
            "wait": wait,
            "sourceRef": {"kind": "GitRepository", "name": source},
        },
    }


def ready_condition(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return dict(c)
    return None
