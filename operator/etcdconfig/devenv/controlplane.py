"""A real Kubernetes control plane as local processes on loopback.

etcd + kube-apiserver + kube-controller-manager, built from Go modules by
:mod:`etcdconfig.devenv.build`, the way controller-runtime's envtest runs them:
no container runtime, no kubelet, so pods never run, but every API, admission,
RBAC, watch, namespace deletion and garbage collection behaves as in a cluster.

Everything lives in one state directory (``.dev/`` by default)::

    state.json                 what is running: PIDs, ports, paths
    kubeconfig                 cluster-admin (client cert, group system:masters)
    users/<name>.kubeconfig    non-admin users made by add_user()
    pki/                       CA, serving/client certificates, service-account keys
    etcd/                      etcd data;  etcd.log, kube-apiserver.log, ... logs
    bin/                       kubectl and helm links, for ``env``

Processes are started in their own session and stopped by PID (checked against
the recorded executable, so a recycled PID is never signalled), which lets one
command start them and another, later, stop them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from etcdconfig.devenv import build
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.devenv.pki import CertificateAuthority, KeyPair, write_signing_key

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["ControlPlane", "ControlPlaneError", "ProcessInfo"]

STATE_FORMAT = 1
CLUSTER_NAME = "etcdconfig-dev"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service, first address of SERVICE_CIDR
# Controllers the tests and demos need: namespace deletion, garbage collection
# (ownerReferences), service accounts and their tokens, kube-root-ca.crt.
# Workload controllers are left out: without a kubelet their pods never run.
CONTROLLERS = (
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)
_PROC = Path("/proc")
_POLL = 0.1  # poll interval of deadline-bounded waits, never used as synchronisation


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or stopped; the message says why."""


@dataclass(frozen=True)
class ProcessInfo:
    """One started process, as recorded in ``state.json``."""

    name: str
    pid: int
    exe: str
    log: str

    def alive(self) -> bool:
        """Running and still the process we started (PIDs get recycled)."""
        if not _PROC.is_dir():  # no procfs (macOS): existence is all we can check
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return False
        state = stat.rsplit(")", 1)[1].split()[0]
        return state != "Z" and os.fsdecode(cmdline) == self.exe

    def rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _stop_process(proc: ProcessInfo, deadline: float) -> None:
    """SIGTERM, wait until ``deadline``, then SIGKILL."""
    if not proc.alive():
        _reap(proc.pid)
        return
    with contextlib.suppress(ProcessLookupError):  # it may exit on its own meanwhile
        os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        os.kill(proc.pid, signal.SIGTERM)
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not proc.alive():
            return
        time.sleep(_POLL)
    if proc.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while proc.alive() and time.monotonic() < kill_deadline:
            _reap(proc.pid)
            time.sleep(_POLL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _kubeconfig(server: str, ca_pem: bytes, user: str, pair: KeyPair) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pair.cert_pem),
                    "client-key-data": b64(pair.key_pem),
                },
            }
        ],
        "contexts": [
            {
                "name": f"{user}@{CLUSTER_NAME}",
                "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": "default"},
            }
        ],
        "current-context": f"{user}@{CLUSTER_NAME}",
        "preferences": {},
    }


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager rooted at ``state_dir``.

    ``start()`` builds (or finds cached) binaries, writes the PKI and kubeconfig,
    starts the processes and returns once the API is ready; ``stop()`` ends them.
    ``ControlPlane(dir)`` for a directory where another process ran ``start()``
    reads ``state.json`` and can query or stop what that process started.
    """

    state_dir: Path
    kubernetes_version: str = build.KUBERNETES_VERSION
    extra_apiserver_args: tuple[str, ...] = ()
    _state: dict[str, Any] = field(default_factory=dict, repr=False)
    # Popen handles of processes started by this object, so they are waited for (no
    # zombies, no ResourceWarning); a ControlPlane loaded from state.json has none.
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        if self.state_path.exists():
            self._state = json.loads(self.state_path.read_text())

    # --- paths and facts ------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        """The cluster-admin kubeconfig (user ``admin``, group ``system:masters``)."""
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        """The API server URL, ``https://127.0.0.1:<port>``."""
        return str(self._require("server"))

    @property
    def etcd_endpoint(self) -> str:
        """``127.0.0.1:<port>`` of the etcd the API server stores Kubernetes objects in."""
        return str(self._require("etcd_endpoint"))

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_endpoint}"

    @property
    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo(**p) for p in self._state.get("processes", [])]

    @property
    def log_dir(self) -> Path:
        return self.state_dir

    def _require(self, key: str) -> Any:
        if key not in self._state:
            raise ControlPlaneError(f"no control plane state in {self.state_dir}: run `up` first")
        return self._state[key]

    # --- lifecycle ------------------------------------------------------------------------

    def running(self) -> bool:
        procs = self.processes
        return bool(procs) and all(p.alive() for p in procs)

    def start(self, timeout: float = 120.0) -> None:
        """Start everything and wait (up to ``timeout`` seconds) until the API is ready.

        A fresh etcd data directory and fresh ports every time: each start is a new,
        empty cluster. The CA is kept if present, so whatever trusted it (a webhook's
        caBundle, a browser) keeps trusting it; leaf certificates are reissued.
        """
        if any(p.alive() for p in self.processes):
            raise ControlPlaneError(
                f"a control plane from {self.state_dir} is already running: stop it first (`down`)"
            )
        # every binary first (kubectl and helm too): builds take minutes and must not
        # eat into the readiness deadline or run while the cluster idles
        binaries = build.ensure_kubernetes(self.kubernetes_version)
        etcd_bin, _ = build.ensure_etcd()
        self._link_tools()
        begin = time.monotonic()
        deadline = begin + timeout
        self.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
            (self.log_dir / f"{name}.log").unlink(missing_ok=True)  # logs of this run only
        self._state = {"format": STATE_FORMAT, "processes": []}
        try:
            self._start(binaries, str(etcd_bin), deadline)
        except BaseException:
            self.stop()
            raise
        self._state["ready_after_seconds"] = round(time.monotonic() - begin, 2)
        self._save()

    def _start(self, binaries: Mapping[str, Path], etcd_bin: str, deadline: float) -> None:
        etcd = EtcdServer(data_dir=self.state_dir / "etcd", name="etcd")
        etcd.start()
        assert etcd.proc is not None
        self._children[etcd.proc.pid] = etcd.proc
        self._record("etcd", etcd.proc.pid, etcd_bin, etcd.log_path)
        self._state["etcd_endpoint"] = etcd.endpoint
        apiserver_port, kcm_port = free_port(), free_port()
        self._state["server"] = f"https://127.0.0.1:{apiserver_port}"
        self._write_pki()
        self._save()
        etcd.wait_healthy(max(deadline - time.monotonic(), 1.0))
        self._spawn(
            "kube-apiserver", binaries["kube-apiserver"], self._apiserver_args(apiserver_port)
        )
        self._wait_api_ready(deadline)
        self._spawn(
            "kube-controller-manager",
            binaries["kube-controller-manager"],
            self._controller_manager_args(kcm_port),
        )
        self._wait_url(
            "kube-controller-manager",
            f"https://127.0.0.1:{kcm_port}/healthz",
            deadline,
            context=ssl._create_unverified_context(),  # self-signed serving cert, loopback only
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every recorded process (newest first): SIGTERM, then SIGKILL at the deadline."""
        deadline = time.monotonic() + timeout
        for proc in reversed(self.processes):
            _stop_process(proc, deadline)
            child = self._children.pop(proc.pid, None)
            if child is not None:
                child.wait(timeout=10)  # already reaped or exiting: records the return code
        if self._state:
            self._state["processes"] = []
            self._save()

    # --- processes ------------------------------------------------------------------------

    def _record(self, name: str, pid: int, exe: str, log: Path) -> None:
        info = ProcessInfo(name=name, pid=pid, exe=exe, log=str(log))
        self._state["processes"].append(dataclasses.asdict(info))
        self._save()

    def _spawn(self, name: str, exe: Path, args: Sequence[str]) -> None:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(exe), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the starting command; stopped by PID
            )
        self._children[proc.pid] = proc
        self._record(name, proc.pid, str(exe), log_path)

    def _apiserver_args(self, port: int) -> list[str]:
        pki = self.pki_dir
        return [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # the `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints reject
            # (loopback); nothing in-cluster needs to reach the API server through it
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            *self.extra_apiserver_args,
        ]

    def _controller_manager_args(self, port: int) -> list[str]:
        pki = self.pki_dir
        kubeconfig = self.state_dir / "kube-controller-manager.kubeconfig"
        return [
            # no --authentication/authorization-kubeconfig: its own endpoint serves only
            # /healthz (always allowed), which is all we ask of it
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / 'kcm-certs'}",
            "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}",
            # each controller acts as its own service account, as in a kubeadm cluster,
            # so RBAC is exercised the way production exercises it
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--profiling=false",
        ]

    # --- PKI and kubeconfigs --------------------------------------------------------------

    def _ca(self) -> CertificateAuthority:
        return CertificateAuthority.load_or_create(self.pki_dir)

    def _write_pki(self) -> None:
        pki = self.pki_dir
        ca = self._ca()
        ca.issue(
            pki / "apiserver",
            common_name="kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", SERVICE_IP),
        )
        if not (pki / "sa.key").exists():
            write_signing_key(pki / "sa.key", pki / "sa.pub")
        admin = ca.issue(
            pki / "admin", common_name="admin", organizations=("system:masters",), client=True
        )
        _write_private(
            self.kubeconfig, yaml.safe_dump(_kubeconfig(self.server, ca.cert_pem, "admin", admin))
        )
        kcm = ca.issue(
            pki / "kube-controller-manager",
            common_name="system:kube-controller-manager",
            client=True,
        )
        _write_private(
            self.state_dir / "kube-controller-manager.kubeconfig",
            yaml.safe_dump(
                _kubeconfig(self.server, ca.cert_pem, "system:kube-controller-manager", kcm)
            ),
        )

    def add_user(self, name: str, groups: Sequence[str] = ()) -> Path:
        """Write a kubeconfig for user ``name`` in ``groups``, authenticated by a client
        certificate; it can do only what RBAC grants it (nothing, until bound)."""
        if "system:masters" in groups:
            raise ValueError("use the admin kubeconfig for system:masters")
        ca = self._ca()
        pair = ca.issue(
            self.pki_dir / "users" / name,
            common_name=name,
            organizations=tuple(groups),
            client=True,
        )
        path = self.state_dir / "users" / f"{name}.kubeconfig"
        _write_private(path, yaml.safe_dump(_kubeconfig(self.server, ca.cert_pem, name, pair)))
        return path

    # --- readiness ------------------------------------------------------------------------

    def _admin_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def _check_alive(self, name: str) -> None:
        for proc in self.processes:
            if proc.name == name and not proc.alive():
                _reap(proc.pid)
                raise ControlPlaneError(
                    f"{name} exited during start-up; log {proc.log}:\n{_tail(Path(proc.log))}"
                )

    def _wait_url(
        self, name: str, url: str, deadline: float, *, context: ssl.SSLContext, expect: str = "ok"
    ) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    body = resp.read().decode(errors="replace")
                    if resp.status == 200 and (not expect or body.strip() == expect):
                        return
                    last = f"{resp.status} {body[:200]}"
            except urllib.error.HTTPError as exc:
                last = f"{exc.code} {exc.read()[:300].decode(errors='replace')}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(_POLL)
        log = self.log_dir / f"{name}.log"
        raise ControlPlaneError(
            f"{name} not ready at {url} before the deadline (last: {last}); log {log}:\n"
            f"{_tail(log)}"
        )

    def _wait_api_ready(self, deadline: float) -> None:
        ctx = self._admin_context()
        self._wait_url("kube-apiserver", f"{self.server}/readyz", deadline, context=ctx)
        # /readyz can pass a moment before the apiserver's own controller creates the
        # "default" namespace; tests and demos apply there first.
        self._wait_url(
            "kube-apiserver",
            f"{self.server}/api/v1/namespaces/default",
            deadline,
            context=ctx,
            expect="",
        )

    def ready(self) -> bool:
        """Whether ``/readyz`` answers ok right now."""
        try:
            req = f"{self.server}/readyz"
            with urllib.request.urlopen(req, timeout=2, context=self._admin_context()) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ControlPlaneError):
            return False

    # --- clients --------------------------------------------------------------------------

    def _link_tools(self) -> None:
        """``bin/kubectl`` and ``bin/helm`` for ``env``: the versions matching this cluster."""
        bin_dir = self.state_dir / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name, target in (("kubectl", build.ensure_kubectl()), ("helm", build.ensure_helm())):
            link = bin_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    def client_env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for kubectl/helm: this cluster, and caches inside the state dir
        (never the user's ~/.kube or ~/.config/helm)."""
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "KUBECACHEDIR": str(self.state_dir / "cache" / "kube"),
            "HELM_CACHE_HOME": str(self.state_dir / "cache" / "helm"),
            "HELM_CONFIG_HOME": str(self.state_dir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.state_dir / "helm" / "data"),
        }

    def _run(
        self,
        exe: Path,
        args: Sequence[str],
        *,
        kubeconfig: Path | None,
        input: str | None,  # noqa: A002 - mirrors subprocess.run
        check: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(exe), *args],
            env=self.client_env(kubeconfig),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"`{exe.name} {' '.join(args)}` exited {proc.returncode}:\n"
                f"{proc.stderr.strip()}\n{proc.stdout.strip()}"
            )
        return proc

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl against this cluster (admin unless ``kubeconfig``)."""
        return self._run(
            build.ensure_kubectl(),
            args,
            kubeconfig=kubeconfig,
            input=input,
            check=check,
            timeout=timeout,
        )

    def helm(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm (built from Go modules) against this cluster."""
        return self._run(
            build.ensure_helm(),
            args,
            kubeconfig=kubeconfig,
            input=None,
            check=check,
            timeout=timeout,
        )

    # --- reporting ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        procs = self.processes
        return {
            "state_dir": str(self.state_dir),
            "server": self._state.get("server"),
            "etcd_endpoint": self._state.get("etcd_endpoint"),
            "kubeconfig": str(self.kubeconfig),
            "ready": bool(procs) and self.ready(),
            "ready_after_seconds": self._state.get("ready_after_seconds"),
            "processes": [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "running": p.alive(),
                    "rss_mib": round(p.rss_bytes() / 2**20, 1),
                    "log": p.log,
                }
                for p in procs
            ],
        }

    def env(self) -> dict[str, str]:
        """Shell variables for using this cluster: KUBECONFIG, PATH with kubectl/helm,
        and the etcd endpoint (``ETCDCONFIG_DEV_ETCD_ENDPOINT``)."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.state_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "ETCDCONFIG_DEV_ETCD_ENDPOINT": self.etcd_endpoint,
        }

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=2) + "\n")
        tmp.replace(self.state_path)
