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

Processes are started in their own session and stopped by PID, which lets one
command start them and another, later, stop them. A PID alone is not an identity
(PIDs are recycled), so each is recorded with its start time (``/proc/<pid>/stat``
field 22, fixed at fork, never rewritten) and the boot it belongs to: a recorded
process is running exactly when that PID, in this boot, has that start time and
is not a zombie. Signals go through a pidfd, pinned after that check, so they
can never reach a process that merely inherited the PID.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import os
import select
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from etcdconfig.devenv import build, network
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.devenv.node import NODE_NAME, Node
from etcdconfig.devenv.pki import CertificateAuthority, KeyPair, write_signing_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = ["STOP_GRACE", "ControlPlane", "ControlPlaneError", "ProcessInfo"]

#: The node's processes (started after the control plane's, when ``node=True``).
NODE_PROCESSES = ("kube-scheduler", "containerd", "coredns", "kubelet", "kube-proxy")
#: What the node's CoreDNS may read (the kubelet, kube-proxy and the scheduler have their
#: bootstrap roles: system:node via the Node authorizer, system:node-proxier, and
#: system:kube-scheduler).
_NODE_RBAC = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "etcdconfig-dev:coredns"}
rules:
- apiGroups: [""]
  resources: [services, namespaces, pods]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "etcdconfig-dev:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "etcdconfig-dev:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:etcdconfig-dev:coredns"}
"""

STATE_FORMAT = 2  # 2: processes carry start_time and boot_id
CLUSTER_NAME = "etcdconfig-dev"
SERVICE_CIDR = network.SERVICE_CIDR  # in 198.18.0.0/15 with the node's other addresses
SERVICE_IP = network.SERVICE_IP  # the `kubernetes` Service, first address of SERVICE_CIDR
# the common name of the API server's front-proxy client certificate (the aggregation layer)
FRONT_PROXY_CLIENT = "front-proxy-client"
# Controllers the process-only mode needs: namespace deletion, garbage collection
# (ownerReferences), service accounts and their tokens, kube-root-ca.crt. Workload
# controllers are left out: without a kubelet their pods never run. With a node, every
# default controller runs (node lifecycle, EndpointSlices, Deployments, StatefulSets...).
CONTROLLERS = (
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL, per process
KILL_WAIT = 5.0  # seconds a SIGKILLed process gets to be gone before we give up on it
_PROC = Path("/proc")
_POLL = 0.1  # poll interval of deadline-bounded waits, never used as synchronisation
_DEAD = frozenset("ZXx")  # /proc/<pid>/stat states of a process that has exited
# how a process ended, as stop() reports it and state.json's "stopped" records it
NOT_RUNNING = "not running"  # had exited (or been stopped) before we signalled it
TERMINATED = "terminated"  # ended within the grace period after SIGTERM
KILLED = "killed"  # ignored SIGTERM for the grace period; ended by SIGKILL


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or stopped; the message (one
    line, naming the log to read) says why."""


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@functools.cache
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (the state) on, read at once (one consistent
    snapshot, generated by the kernel on the first read); None if there is no such PID."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 2 is "(comm)", which may itself hold ")" or spaces: split after the last ")"
    return text.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> int | None:
    """When ``pid`` was forked, in clock ticks after boot (field 22 of its stat)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


@dataclass(frozen=True)
class ProcessInfo:
    """One started process, as recorded in ``state.json``."""

    name: str
    pid: int
    exe: str
    log: str
    # who the PID is: its start time in clock ticks after boot, in the boot boot_id.
    # None in a state.json written before they were recorded, or without procfs.
    start_time: int | None = None
    boot_id: str | None = None

    @classmethod
    def of(cls, name: str, pid: int, exe: str, log: str) -> ProcessInfo:
        """Describe ``pid``, a child started a moment ago and not yet waited for (so its
        PID cannot have been recycled)."""
        return cls(name, pid, exe, log, start_time=_start_time(pid), boot_id=_boot_id())

    @classmethod
    def from_state(cls, entry: Mapping[str, Any]) -> ProcessInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in names})

    def alive(self) -> bool:
        """Running, and still the process we started (PIDs get recycled).

        Exact: the PID's start time is fixed at fork, so it does not change while the
        process runs, execs or rewrites its command line (``/proc/<pid>/cmdline`` is
        empty while an exec is under way: matching it said "exited" of a process that
        was starting). A zombie has exited: its status just has not been collected.
        """
        if not _PROC.is_dir():  # no procfs (macOS): existence is all we can check
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        if self.boot_id is not None and self.boot_id != _boot_id():
            return False  # recorded before a reboot: whatever has the PID now is not it
        fields = _stat(self.pid)
        if fields is None or fields[0] in _DEAD:
            return False
        if self.start_time is not None:
            return int(fields[19]) == self.start_time
        # recorded by an older version, without a start time: the command is all we
        # have (good enough long after start-up, when ``down`` asks)
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return False
        return os.fsdecode(cmdline) == self.exe

    def rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


class _Pinned:
    """A recorded process, pinned for signalling once it was found running.

    Through a pidfd where Linux has them: the pidfd is opened first and the process's
    identity checked second, so the pidfd names the process we started, a signal
    cannot reach a process that merely inherited the PID, and its exit is an event
    to wait for. Without pidfds (macOS, Linux < 5.3): by PID, polling ``gone``.
    """

    def __init__(self, proc: ProcessInfo, pidfd: int | None, gone: Callable[[], bool]) -> None:
        self.proc = proc
        self.pidfd = pidfd
        self.gone = gone

    def send(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may end on its own meanwhile
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.proc.pid, sig)

    def wait_gone(self, timeout: float) -> bool:
        """Whether the process ends within ``timeout`` seconds."""
        if self.pidfd is not None:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)  # readable once it has exited
            return bool(poller.poll(max(timeout, 0.0) * 1000))
        deadline = time.monotonic() + timeout
        while not self.gone():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True


@contextlib.contextmanager
def _pin(proc: ProcessInfo, gone: Callable[[], bool]) -> Iterator[_Pinned | None]:
    """``proc`` pinned, or None if it is ``gone()`` (or not ours any more)."""
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        yield None
        return
    except (AttributeError, OSError):  # no pidfd_open here: fall back to the PID
        pidfd = None
    try:
        yield None if gone() else _Pinned(proc, pidfd, gone)
    finally:
        if pidfd is not None:
            os.close(pidfd)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a process is started and recorded (an interruption
    between the two would leave it running, unrecorded); one that came meanwhile is
    raised again on leaving, to its own handler. Python-level handlers, not the signal
    mask: a child inherits the mask (and kube-apiserver would ignore SIGTERM), while
    handlers are reset by exec. Only the main thread can set handlers; elsewhere, as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: came.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, which cannot restore it
                signal.signal(sig, handler)
        for signum in came[:1]:
            signal.raise_signal(signum)


def _stop_process(
    proc: ProcessInfo, grace: float, child: subprocess.Popen[bytes] | None = None
) -> str | None:
    """SIGCONT and SIGTERM, then SIGKILL if it is still running ``grace`` seconds later.

    Returns how it ended (NOT_RUNNING, TERMINATED, KILLED), or None if it outlived
    SIGKILL too. ``child``: its Popen handle, if we started it; its status is collected.
    """

    def gone() -> bool:
        # our child: ask it (collecting a zombie's status); else the recorded identity
        return child.poll() is not None if child is not None else not proc.alive()

    with _pin(proc, gone) as pinned:
        if pinned is None:
            outcome: str | None = NOT_RUNNING
        else:
            pinned.send(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            pinned.send(signal.SIGTERM)
            if pinned.wait_gone(grace):
                outcome = TERMINATED
            else:
                pinned.send(signal.SIGKILL)
                outcome = KILLED if pinned.wait_gone(KILL_WAIT) else None
    if child is not None and outcome is not None:
        try:
            child.wait(timeout=KILL_WAIT)  # it has exited: returns at once
        except subprocess.TimeoutExpired:
            outcome = None
    return outcome


def _describe(procs: Sequence[ProcessInfo]) -> str:
    return ", ".join(f"{p.name} pid {p.pid}" for p in procs)


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _last_line(path: Path) -> str | None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line for line in reversed(lines) if line.strip()), None)


def _see_log(path: Path | str) -> str:
    """``log <path>`` and its last line: where to read why, in one line."""
    last = _last_line(Path(path))
    return f"log {path} " + (f"(last line: {_one_line(last, 240)})" if last else "(empty)")


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

    Every process is recorded in ``state.json`` the moment it is started and
    forgotten only once it is gone, so whatever happens to the command that started
    it (a failed or interrupted start, a crash), ``stop()`` from any later command
    finds it.
    """

    state_dir: Path
    kubernetes_version: str = build.KUBERNETES_VERSION
    extra_apiserver_args: tuple[str, ...] = ()
    #: run a node (containerd, kubelet, kube-proxy, CoreDNS) with the control plane; needs
    #: root. ``ControlPlane(dir)`` of a running cluster reads it from state.json.
    node: bool = False
    #: kube-apiserver dials a webhook Service's endpoints itself, without kube-proxy
    aggregator_routing: bool = False
    _state: dict[str, Any] = field(default_factory=dict, repr=False)
    # Popen handles of processes started by this object, so they are waited for (no
    # zombies, no ResourceWarning); a ControlPlane loaded from state.json has none.
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        if self.state_path.exists():
            try:
                self._state = json.loads(self.state_path.read_text())
            except (OSError, ValueError) as exc:
                raise ControlPlaneError(f"cannot read {self.state_path}: {exc}") from exc
            if self._state.get("node"):
                self.node = True

    @property
    def host_ip(self) -> str:
        """Where the API server listens: loopback, or the node IP when there is a node."""
        return network.NODE_IP if self.node else "127.0.0.1"

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
        """The processes started and not yet known to be stopped, oldest first."""
        return [ProcessInfo.from_state(p) for p in self._state.get("processes", [])]

    @property
    def complete(self) -> bool:
        """Whether the last ``start()`` finished (every process up, the API ready)."""
        return "ready_after_seconds" in self._state

    @property
    def log_dir(self) -> Path:
        return self.state_dir

    def _require(self, key: str) -> Any:
        if key not in self._state:
            raise ControlPlaneError(f"no control plane state in {self.state_dir}: run `up` first")
        return self._state[key]

    # --- lifecycle ------------------------------------------------------------------------

    def running(self) -> bool:
        """Whether a start finished and every process it started still runs."""
        procs = self.processes
        return self.complete and bool(procs) and all(p.alive() for p in procs)

    def leftovers(self) -> list[ProcessInfo]:
        """Recorded processes still running although the control plane is not (a start
        that failed or was interrupted half-way, a process that died): ``stop()`` them."""
        procs = self.processes
        alive = [p for p in procs if p.alive()]
        return [] if self.complete and len(alive) == len(procs) else alive

    def start(self, timeout: float = 120.0, *, grace: float = STOP_GRACE) -> None:
        """Start everything and wait (up to ``timeout`` seconds) until the API is ready.

        A fresh etcd data directory and fresh ports every time: each start is a new,
        empty cluster. The CA is kept if present, so whatever trusted it (a webhook's
        caBundle, a browser) keeps trusting it; leaf certificates are reissued.

        If anything fails (or the start is interrupted), every process it started is
        stopped (SIGTERM, SIGKILL after ``grace`` seconds) before the error is raised:
        a ControlPlaneError with a one-line message naming the log to read (and any
        process the clean-up could not stop: it stays recorded for ``stop()``).
        """
        running = [p for p in self.processes if p.alive()]
        if running:
            raise ControlPlaneError(
                f"a control plane from {self.state_dir} is already running "
                f"({_describe(running)}): stop it first (`down`)"
            )
        # every binary first (kubectl and helm too): builds take minutes and must not
        # eat into the readiness deadline or run while the cluster idles
        binaries = build.ensure_kubernetes(self.kubernetes_version)
        etcd_bin, _ = build.ensure_etcd()
        self._link_tools()
        images: list[Any] = []
        if self.node:
            images = self._prepare_node()
        begin = time.monotonic()
        deadline = begin + timeout
        self.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", *NODE_PROCESSES):
            (self.log_dir / f"{name}.log").unlink(missing_ok=True)  # logs of this run only
        self._state = {"format": STATE_FORMAT, "processes": [], "node": self.node}
        self._save()
        try:
            self._start(binaries, str(etcd_bin), deadline)
            if self.node:
                self._start_node(binaries, images, deadline)
        except BaseException as exc:
            unstopped = self._clean_up(grace)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: as they were
                raise
            reason = (
                str(exc)
                if isinstance(exc, ControlPlaneError)
                else _one_line(f"start-up failed: {type(exc).__name__}: {exc}")
            )
            raise ControlPlaneError(f"{reason}{unstopped}") from exc
        self._state["ready_after_seconds"] = round(time.monotonic() - begin, 2)
        self._save()

    # --- the node -------------------------------------------------------------------------

    def _prepare_node(self) -> list[Any]:
        """Before the clock starts: root, the node's binaries, the images (built once)."""
        from etcdconfig.devenv import images

        if os.geteuid() != 0:
            raise ControlPlaneError(
                "a node needs root (network devices, iptables, cgroups, mounts): run as root, "
                "or use the process-only control plane (`up --no-node`)"
            )
        for tool in ("ip", "iptables", "runc", "umount"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise ControlPlaneError(
                    f"`{tool}` not found: `make install` installs the node's Debian packages "
                    "(iptables, runc, containernetworking-plugins, buildah, mmdebstrap)"
                )
        if not Path("/usr/lib/cni/bridge").exists():
            raise ControlPlaneError(
                "CNI plugins not found in /usr/lib/cni: apt-get install containernetworking-plugins"
            )
        build.ensure_containerd()
        build.ensure_crictl()
        build.ensure_coredns()
        try:
            built = images.ensure_images()
        except images.ImageError as exc:
            raise ControlPlaneError(_one_line(str(exc))) from exc
        return list(built.values())

    def _node(self) -> Node:
        return Node(self.state_dir)

    def _start_node(
        self, binaries: Mapping[str, Path], imgs: Sequence[Any], deadline: float
    ) -> None:
        """kube-scheduler, then containerd (images imported), CoreDNS, the kubelet and
        kube-proxy; returns once the node is Ready."""
        from etcdconfig.devenv import images

        node = self._node()
        self.kubectl("apply", "-f", "-", input=_NODE_RBAC)
        sched_port = free_port()
        self._spawn("kube-scheduler", binaries["kube-scheduler"], self._scheduler_args(sched_port))
        pause = next((i.ref for i in imgs if "/pause:" in i.ref), images.PAUSE_IMAGE)
        node.write_config(ca=self._ca(), server=self.server, pause_ref=pause)
        cmds = node.commands()
        ctd = cmds["containerd"]
        self._spawn("containerd", Path(ctd[0]), ctd[1:], env=node.env())
        while not node.cri_ready():
            self._check_alive("containerd")
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"containerd's CRI did not answer on {node.containerd_socket}; "
                    f"{_see_log(self.log_dir / 'containerd.log')}"
                )
            time.sleep(_POLL)
        try:
            images.import_images(
                build.ensure_containerd()["ctr"], str(node.containerd_socket), imgs
            )
        except images.ImageError as exc:
            raise ControlPlaneError(_one_line(str(exc))) from exc
        for name in ("coredns", "kubelet", "kube-proxy"):
            self._spawn(name, Path(cmds[name][0]), cmds[name][1:])
        self._wait_url(
            "kube-scheduler",
            f"https://127.0.0.1:{sched_port}/healthz",
            deadline,
            context=ssl._create_unverified_context(),  # self-signed serving cert, loopback only
        )
        self._wait_node_ready(deadline)

    def _wait_node_ready(self, deadline: float) -> None:
        last = "not registered"
        while time.monotonic() < deadline:
            for name in NODE_PROCESSES:
                self._check_alive(name)
            proc = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if proc.returncode == 0:
                status = json.loads(proc.stdout).get("status", {})
                ready = [c for c in status.get("conditions", []) if c.get("type") == "Ready"]
                taints = json.loads(proc.stdout).get("spec", {}).get("taints") or []
                if ready and ready[0].get("status") == "True" and not taints:
                    return
                if ready:
                    last = f"Ready={ready[0].get('status')} ({ready[0].get('message', '')})"
                if taints:
                    last += f"; taints {[t.get('key') for t in taints]}"
            time.sleep(0.2)
        raise ControlPlaneError(
            f"node {NODE_NAME} not Ready before the start-up deadline ({_one_line(last, 200)}); "
            f"{_see_log(self.log_dir / 'kubelet.log')}"
        )

    def _scheduler_args(self, port: int) -> list[str]:
        return [
            f"--kubeconfig={self.state_dir / 'kube-scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={self.state_dir / 'kube-scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={self.state_dir / 'kube-scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _stop_node(self, grace: float) -> list[str]:
        """Before the processes go: the kubelet (so nothing restarts pods), then every pod
        through the CRI while containerd still runs. Returns what went wrong, if anything."""
        problems: list[str] = []
        for proc in self.processes:
            if proc.name == "kubelet":
                outcome = _stop_process(proc, grace, self._children.get(proc.pid))
                if outcome is not None:
                    self._children.pop(proc.pid, None)
                    self._forget(proc, outcome)
        if any(p.name == "containerd" and p.alive() for p in self.processes):
            why = self._node().remove_pods()
            if why:
                problems.append(f"pods not removed through the CRI: {why}")
        return problems

    def _undo_host(self) -> list[str]:
        """After the processes: kill what outlived containerd, undo every host change.
        Only with a journal of ours: a start refused because another node runs here
        recorded nothing, and must touch nothing of that node's."""
        node = self._node()
        if not node.host.data.get("cgroups_before") and not node.host.pending:
            return []
        node.kill_leftovers()
        proxy = None
        with contextlib.suppress(build.BuildError):
            proxy = build.ensure_kubernetes(self.kubernetes_version)["kube-proxy"]
        return node.host.undo(
            kube_proxy=proxy, roots=(node.dir, Path(network.KUBELET_ROOT), Path(network.RUN_DIR))
        )

    def _clean_up(self, grace: float) -> str:
        """Stop what a failed start started; never raises. Returns "" if everything
        stopped, else a note (for the error message) on what could not be."""
        try:
            self.stop(grace=grace)
        except ControlPlaneError as exc:
            return f"; clean-up: {exc}"
        except Exception as exc:  # a bug here must not hide why the start failed
            return f"; clean-up failed ({_one_line(repr(exc), 200)}): `down` stops what is left"
        return ""

    def _start(self, binaries: Mapping[str, Path], etcd_bin: str, deadline: float) -> None:
        etcd = EtcdServer(data_dir=self.state_dir / "etcd", name="etcd")
        with _signals_deferred():
            try:
                etcd.start()
            except OSError as exc:
                raise ControlPlaneError(f"cannot start etcd ({etcd_bin}): {exc}") from exc
            assert etcd.proc is not None
            self._children[etcd.proc.pid] = etcd.proc
            self._record("etcd", etcd.proc.pid, etcd_bin, etcd.log_path)
        self._state["etcd_endpoint"] = etcd.endpoint
        apiserver_port, kcm_port = free_port(), free_port()
        if self.node:
            host = self._node().host
            try:
                host.claim()
                host.record_before()
                host.ensure_paths()
                host.set_up_network()
            except network.NetworkError as exc:
                raise ControlPlaneError(_one_line(str(exc))) from exc
        self._state["server"] = f"https://{self.host_ip}:{apiserver_port}"
        self._write_pki()
        self._save()
        try:
            etcd.wait_healthy(max(deadline - time.monotonic(), 1.0))
        except (RuntimeError, TimeoutError) as exc:  # its messages name the log
            self._check_alive("etcd")
            raise ControlPlaneError(_one_line(str(exc))) from exc
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

    def stop(self, grace: float = STOP_GRACE) -> list[tuple[ProcessInfo, str]]:
        """Stop every recorded process, newest first: SIGTERM, then SIGKILL if it still
        runs ``grace`` seconds later.

        Each is forgotten (and listed under "stopped" in ``state.json``, with how it
        ended) as soon as it is gone, so a stop that is itself interrupted leaves the
        rest recorded for the next. Returns ``(process, how it ended)`` pairs; raises
        ControlPlaneError naming any process that outlived SIGKILL (it stays recorded).
        """
        stopped: list[tuple[ProcessInfo, str]] = []
        unstopped: list[str] = []
        node_problems: list[str] = []
        if self.node:
            node_problems = self._stop_node(grace)
        for proc in reversed(self.processes):
            child = self._children.get(proc.pid)
            try:
                outcome = _stop_process(proc, grace, child)
            except OSError as exc:  # e.g. EPERM: a process of another user
                unstopped.append(f"{proc.name} (pid {proc.pid}): {exc.strerror}")
                continue
            if outcome is None:
                unstopped.append(f"{proc.name} (pid {proc.pid}) outlived SIGKILL")
                continue
            self._children.pop(proc.pid, None)
            self._forget(proc, outcome)
            stopped.append((proc, outcome))
        if unstopped:
            raise ControlPlaneError(
                f"could not stop {', '.join(unstopped)}: still recorded in {self.state_path}"
            )
        if self.node or self._node().host.pending:
            left = self._undo_host()
            if left:
                raise ControlPlaneError(
                    f"host changes not undone: {', '.join(left)} "
                    f"({'; '.join(node_problems) or 'see ' + str(self.state_dir / 'host.json')})"
                )
        return stopped

    # --- processes ------------------------------------------------------------------------

    def _record(self, name: str, pid: int, exe: str, log: Path) -> None:
        info = ProcessInfo.of(name, pid, exe, str(log))
        self._state["processes"].append(dataclasses.asdict(info))
        self._save()

    def _forget(self, proc: ProcessInfo, outcome: str) -> None:
        self._state["processes"] = [
            p for p in self._state.get("processes", []) if ProcessInfo.from_state(p) != proc
        ]
        stopped = {**dataclasses.asdict(proc), "outcome": outcome}
        self._state.setdefault("stopped", []).append(stopped)
        self._save()

    def spawn(
        self, name: str, exe: Path, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process that belongs to this cluster (e.g. ``dev up --gitops``'s Flux):
        recorded in ``state.json``, logged to ``<log_dir>/<name>.log``, listed by
        ``status`` and stopped by ``stop()`` (newest first, before the control plane)."""
        self._spawn(name, exe, args, env)
        return self._children[self.processes[-1].pid]

    def _spawn(
        self, name: str, exe: Path, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> None:
        log_path = self.log_dir / f"{name}.log"
        with _signals_deferred(), log_path.open("ab") as log:
            try:
                proc = subprocess.Popen(
                    [str(exe), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # survives the starting command; stopped by PID
                    env=env,
                )
            except OSError as exc:
                raise ControlPlaneError(f"cannot start {name} ({exe}): {exc}") from exc
            self._children[proc.pid] = proc
            self._record(name, proc.pid, str(exe), log_path)

    def _apiserver_args(self, port: int) -> list[str]:
        pki = self.pki_dir
        return [
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host_ip}",
            f"--advertise-address={self.host_ip}",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            # the aggregation layer (kube-apiserver publishes these in kube-system's
            # extension-apiserver-authentication ConfigMap for aggregated servers)
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            *(self._node_apiserver_args() if self.node else self._process_only_args()),
            *self.extra_apiserver_args,
        ]

    @staticmethod
    def _process_only_args() -> list[str]:
        return [
            "--authorization-mode=RBAC",
            # the `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints reject
            # (loopback); nothing in-cluster needs to reach the API server through it
            "--endpoint-reconciler-type=none",
        ]

    def _node_apiserver_args(self) -> list[str]:
        pki = self.pki_dir
        return [
            # the kubelet is judged as a node: its own Node, its pods' secrets, nothing else
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--enable-aggregator-routing={'true' if self.aggregator_routing else 'false'}",
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
            f"--controllers={'*' if self.node else ','.join(CONTROLLERS)}",
            *(["--node-monitor-grace-period=20s"] if self.node else []),
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
            ip_addresses=("127.0.0.1", SERVICE_IP, network.NODE_IP),
        )
        if self.node:
            ca.issue(
                pki / "apiserver-kubelet-client",
                common_name="kube-apiserver-kubelet-client",
                organizations=("system:masters",),
                client=True,
            )
            sched = ca.issue(
                pki / "kube-scheduler", common_name="system:kube-scheduler", client=True
            )
            _write_private(
                self.state_dir / "kube-scheduler.kubeconfig",
                yaml.safe_dump(
                    _kubeconfig(self.server, ca.cert_pem, "system:kube-scheduler", sched)
                ),
            )
        # the aggregation layer: the API server proxies to aggregated API servers (the
        # history API) with this client certificate, from a CA of its own that the
        # aggregated servers trust for X-Remote-User/X-Remote-Group only
        CertificateAuthority.load_or_create(pki, "front-proxy-ca").issue(
            pki / "front-proxy-client", common_name=FRONT_PROXY_CLIENT, client=True
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
        """Raise if ``name`` has exited. Asked of the child itself (``Popen.poll``, which
        collects its status) when we started it: exact, and it knows the exit code."""
        for proc in self.processes:
            if proc.name != name:
                continue
            child = self._children.get(proc.pid)
            if child is not None:
                code = child.poll()
                if code is None:
                    continue
                how = _exit_reason(code)
            elif proc.alive():
                continue
            else:
                how = "exited"
            raise ControlPlaneError(f"{name} {how} during start-up; {_see_log(proc.log)}")

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
        self._check_alive(name)
        raise ControlPlaneError(
            f"{name} not ready at {url} before the start-up deadline "
            f"(last answer: {_one_line(last, 200)}); {_see_log(self.log_dir / f'{name}.log')}"
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
        """``ready`` only if a start finished, every process runs and /readyz says ok;
        ``leftovers``: the names of processes ``stop()`` should end."""
        procs = self.processes
        running = [p.alive() for p in procs]
        return {
            "state_dir": str(self.state_dir),
            "server": self._state.get("server"),
            "etcd_endpoint": self._state.get("etcd_endpoint"),
            "kubeconfig": str(self.kubeconfig),
            "ready": self.complete and bool(procs) and all(running) and self.ready(),
            "ready_after_seconds": self._state.get("ready_after_seconds"),
            "processes": [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "running": up,
                    "rss_mib": round(p.rss_bytes() / 2**20, 1),
                    "log": p.log,
                }
                for p, up in zip(procs, running, strict=True)
            ],
            "leftovers": [p.name for p in self.leftovers()],
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
