"""Shared pieces of the end-to-end benchmarks (``e2e.py``, ``replicas.py``).

A :class:`Cluster` is one real control plane (etcd + kube-apiserver +
kube-controller-manager, from the cached binaries) plus a separate etcd for the
versioned store, in a temporary directory, with the Config CRD installed; it
stops everything it started — operators included — when the ``with`` block ends,
on errors, Ctrl-C and SIGTERM alike.

:class:`KubeAPI` is a small admin HTTPS client (one keep-alive connection per
thread, much faster than kubectl); :class:`ConfigWatch` is one cluster-wide
watch on Configs that timestamps, per Config, the moment its status says the
current generation is recorded (``observedGeneration`` + ``Ready=True``), so a
latency is measured to the event, not to a poll.

This module deliberately does not import from ``tests/``: the benchmarks run
from a plain checkout with the venv.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from etcdconfig import crd
from etcdconfig.devenv import images
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.devenv.network import NODE_IP
from etcdconfig.devenv.node import Node

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GROUP_PATH = "/apis/etcdconfig.io/v1alpha1"
NOOP_OPERATOR = Path(__file__).resolve().parent / "noop_operator.py"
CHART = ROOT / "charts" / "etcdconfig"
POD_RELEASE_NS = "etcdconfig-bench"  # where the pod-mode Helm releases live
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- small helpers ------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` … of /proc/PID/status, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB (10^6 bytes), from /proc/PID/status."""
    st = proc_status(pid)
    return st["VmRSS"] * 1024 / 1e6, st["VmHWM"] * 1024 / 1e6


class RssSampler:
    """Samples a process's VmRSS every ``interval`` s in a thread (``with`` block)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.samples.append((time.monotonic() - started, rss_mb(self.pid)[0]))
            self._stop.wait(self.interval)  # the sampling period

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def max_mb(self) -> float:
        return max((mb for _, mb in self.samples), default=math.nan)

    def timeline(self, every: float = 5.0) -> list[list[float]]:
        """[seconds, MB] about every ``every`` seconds (for the JSON)."""
        out: list[list[float]] = []
        for t, mb in self.samples:
            if not out or t - out[-1][0] >= every:
                out.append([round(t, 1), round(mb, 1)])
        return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)  # poll interval of a deadline-bounded wait
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format → {'name{labels}': value} (labels kept verbatim)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def config_data(i: int, revision: int = 0) -> dict[str, Any]:
    """A Config's data of about 1 KB."""
    return {
        "replicas": i % 7 + 1,
        "image": f"registry.example/app-{i}:1.{revision}",
        "revision": revision,
        "env": {f"FEATURE_{k:02d}": f"value-{k}-{revision % 3}" for k in range(24)},
    }


# --- the Kubernetes API -------------------------------------------------------------------------


class KubeAPI:
    """Admin client for the API server: one keep-alive HTTPS connection per thread."""

    def __init__(self, plane: ControlPlane) -> None:
        host, port = plane.server.removeprefix("https://").split(":")
        self.host, self.port = host, int(port)
        ctx = ssl.create_default_context(cafile=str(plane.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(plane.pki_dir / "admin.crt"), str(plane.pki_dir / "admin.key"))
        self.ctx = ctx
        self._local = threading.local()

    def connect(self, timeout: float = 30.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        payload = json.dumps(body) if body is not None else None
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connect()
            try:
                conn.request(method, path, body=payload, headers={"Content-Type": content_type})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            return resp.status, json.loads(data) if data else None
        raise AssertionError("unreachable")

    @staticmethod
    def config_path(namespace: str | None = None, name: str = "") -> str:
        base = (
            f"{GROUP_PATH}/namespaces/{namespace}/configs" if namespace else f"{GROUP_PATH}/configs"
        )
        return f"{base}/{name}" if name else base

    def create_namespace(self, name: str) -> None:
        status, obj = self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        if status not in (201, 409):
            raise RuntimeError(f"create namespace {name}: HTTP {status} {obj}")

    def create_config(self, namespace: str, name: str, data: dict[str, Any]) -> dict[str, Any]:
        status, obj = self.request(
            "POST",
            self.config_path(namespace),
            {
                "apiVersion": "etcdconfig.io/v1alpha1",
                "kind": "Config",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"data": data},
            },
        )
        if status != 201:
            raise RuntimeError(f"create Config {namespace}/{name}: HTTP {status} {obj}")
        return dict(obj)

    def patch_data(self, namespace: str, name: str, data: dict[str, Any]) -> int:
        """Merge-patch ``spec.data``; returns the new generation."""
        status, obj = self.request(
            "PATCH",
            self.config_path(namespace, name),
            {"spec": {"data": data}},
            content_type="application/merge-patch+json",
        )
        if status != 200:
            raise RuntimeError(f"patch Config {namespace}/{name}: HTTP {status} {obj}")
        return int(obj["metadata"]["generation"])

    def list_configs(self, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        status, obj = self.request("GET", self.config_path(namespace))
        if status != 200:
            raise RuntimeError(f"list Configs: HTTP {status} {obj}")
        return list(obj["items"]), str(obj["metadata"]["resourceVersion"])


def recorded_generation(obj: dict[str, Any]) -> int:
    """The generation the status says is recorded and Ready (kstatus), else 0."""
    st = obj.get("status") or {}
    gen = st.get("observedGeneration")
    if not isinstance(gen, int):
        return 0
    for c in st.get("conditions") or []:
        if c.get("type") == "Ready":
            ok = c.get("status") == "True" and c.get("observedGeneration", gen) == gen
            return gen if ok else 0
    return 0


@dataclass
class Seen:
    uid: str
    generation: int  # metadata.generation
    recorded: int  # recorded_generation(obj)
    observed: int  # status.observedGeneration as written, Ready or not


class ConfigWatch:
    """A cluster-wide watch on Configs in a background thread.

    Keeps, per (namespace, name), the latest object facts and the list of
    ``(monotonic time, recorded generation)`` each time the recorded generation
    rises, so ``recorded_at(key, gen)`` is the moment the status first said
    ``gen`` (or a later one) was recorded.
    """

    def __init__(self, api: KubeAPI) -> None:
        self.api = api
        self.seen: dict[tuple[str, str], Seen] = {}
        self.rises: dict[tuple[str, str], list[tuple[float, int]]] = {}
        self.cond = threading.Condition()
        self.events = 0
        # status.observedGeneration going backwards for the same uid (a stale status
        # write): namespace → count, and the first few cases
        self.regressions: dict[str, int] = {}
        self.regression_samples: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)

    def start(self) -> ConfigWatch:
        items, rv = self.api.list_configs()
        now = time.monotonic()
        with self.cond:
            for obj in items:
                self._update(obj, now)
        self._rv = rv
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            # wakes the thread blocked in readline (closing the response would wait for it)
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _update(self, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        rec = recorded_generation(obj)
        old = self.seen.get(key)
        if old is not None and old.uid != meta["uid"]:
            self.rises.pop(key, None)
            old = None
        observed = (obj.get("status") or {}).get("observedGeneration")
        observed = observed if isinstance(observed, int) else 0
        if old is not None and observed < old.observed:
            self.regressions[key[0]] = self.regressions.get(key[0], 0) + 1
            if len(self.regression_samples) < 5:
                self.regression_samples.append(
                    {
                        "config": "/".join(key),
                        "generation": int(meta.get("generation") or 0),
                        "observedGeneration": [old.observed, observed],
                        "version": (obj.get("status") or {}).get("version"),
                    }
                )
        self.seen[key] = Seen(meta["uid"], int(meta.get("generation") or 0), rec, observed)
        rises = self.rises.setdefault(key, [])
        if rec and (not rises or rec > rises[-1][1]):
            rises.append((now, rec))

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = self._conn = self.api.connect(timeout=3600)
            try:
                path = (
                    f"{self.api.config_path()}?watch=1&allowWatchBookmarks=true"
                    f"&resourceVersion={self._rv}&timeoutSeconds=1800"
                )
                conn.request("GET", path)
                resp = conn.getresponse()
                if resp.status != 200:
                    raise RuntimeError(f"watch: HTTP {resp.status} {resp.read()[:300]!r}")
                while not self._stop.is_set():
                    line = resp.readline()
                    if not line:
                        break  # the server ended the watch: resume from the last version
                    now = time.monotonic()
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        raise RuntimeError(f"watch error: {obj}")
                    self._rv = obj.get("metadata", {}).get("resourceVersion", self._rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        with self.cond:
                            self._update(obj, now)
                            self.events += 1
                            self.cond.notify_all()
                    elif ev.get("type") == "DELETED":
                        with self.cond:
                            meta = obj["metadata"]
                            self.seen.pop((meta["namespace"], meta["name"]), None)
                            self.cond.notify_all()
            except BaseException as exc:
                if not self._stop.is_set():
                    self.error = exc
                    with self.cond:
                        self.cond.notify_all()
                return
            finally:
                conn.close()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait (under the watch's lock) until ``predicate()`` is truthy."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"the Config watch failed: {self.error}") from self.error
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
                self.cond.wait(min(left, 1.0))

    def recorded(
        self, namespace: str, names: Iterable[str], generation: int | dict[str, int]
    ) -> int:
        """How many of ``names`` show a recorded generation ≥ the target (call under ``cond``)."""
        n = 0
        for name in names:
            s = self.seen.get((namespace, name))
            target = generation if isinstance(generation, int) else generation[name]
            if s is not None and s.recorded >= target:
                n += 1
        return n

    def wait_recorded(
        self, namespace: str, names: Sequence[str], generation: int | dict[str, int], timeout: float
    ) -> float:
        """Wait until every name is recorded at ≥ its target; returns the monotonic time
        the last one got there (from the watch timestamps, not from this call)."""
        total = len(names)
        self.wait(
            lambda: self.recorded(namespace, names, generation) == total,
            timeout,
            f"{total} Configs in {namespace} to be recorded",
        )
        return max(
            self.recorded_at(
                (namespace, n), generation if isinstance(generation, int) else generation[n]
            )
            or 0.0
            for n in names
        )

    def recorded_at(self, key: tuple[str, str], generation: int) -> float | None:
        with self.cond:
            for t, g in self.rises.get(key, []):
                if g >= generation:
                    return t
        return None


def parallel(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 8) -> list[Any]:
    """Run ``fn`` over ``items`` on ``workers`` threads (each with its own keep-alive
    connection through KubeAPI's thread-local); results in order; first error raised."""
    results: list[Any] = [None] * len(items)
    it = iter(enumerate(items))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not errors:
            with lock:
                nxt = next(it, None)
            if nxt is None:
                return
            i, item = nxt
            try:
                results[i] = fn(item)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --- operator processes -------------------------------------------------------------------------


@dataclass
class Process:
    """An operator (or any helper) as a child process with its own log file."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    http_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # Ctrl-C goes to the benchmark, which stops us
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive:
            rc = self.proc.returncode if self.proc else None
            raise RuntimeError(f"{self.name} exited ({rc}):\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def ready(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/readyz", timeout=1
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class PodOperator:
    """``etcdconfig run`` as a pod: a Helm release of charts/etcdconfig (one replica, the
    chart's default resources, local images) with the same interface as :class:`Process`.

    ``pid`` is the host PID of the container's main process (``crictl inspect``), so the
    /proc-based CPU and RSS helpers apply unchanged; ``metrics()`` goes to the pod IP;
    ``log_path`` is refreshed from ``kubectl logs`` each time it is read.
    """

    def __init__(
        self, name: str, plane: ControlPlane, values: Sequence[str], log_path: Path
    ) -> None:
        self.name = name  # the Helm release
        self.plane = plane
        self.values = list(values)
        self._log_path = log_path
        self.pod_name = ""
        self.pod_ip = ""
        self.container_id = ""
        self.http_port = 8080  # the chart's operator.httpPort
        self._pid: int | None = None
        self.installed = False

    def _pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
        out = self.plane.kubectl(
            "get", "pods", "-n", POD_RELEASE_NS, "-l", selector, "-o", "json", check=False
        )
        if out.returncode != 0:
            return []
        return [
            p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")
        ]

    def _ready_pod(self) -> dict[str, Any] | None:
        for pod in self._pods():
            conds = pod.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return pod
        return None

    def start(self) -> PodOperator:
        self.installed = True
        self.plane.helm(
            "install",
            self.name,
            str(CHART),
            "--namespace",
            POD_RELEASE_NS,
            "--create-namespace",
            *self.values,
            "--wait",
            "--timeout=180s",
            timeout=240,
        )
        pod = wait_until(self._ready_pod, 120, f"a Ready operator pod of {self.name}")
        self.pod_name = pod["metadata"]["name"]
        self.pod_ip = pod["status"]["podIP"]
        (status,) = pod["status"]["containerStatuses"]
        self.container_id = status["containerID"].partition("://")[2]
        out = Node(self.plane.state_dir).crictl("inspect", self.container_id)
        if out.returncode != 0:
            raise RuntimeError(f"crictl inspect {self.container_id}: {out.stderr}")
        self._pid = int(json.loads(out.stdout)["info"]["pid"])
        # the image's ENTRYPOINT is `etcdconfig run` itself (no init): that PID is the operator
        cmdline = Path(f"/proc/{self._pid}/cmdline").read_bytes().split(b"\0")
        if not any(b"etcdconfig" in part for part in cmdline[:2]):
            raise RuntimeError(f"PID {self._pid} of {self.pod_name} is not the operator: {cmdline}")
        # /metrics answers through the pod IP (routed from the host over the bridge)
        wait_until(self.ready, 60, f"{self.name} /readyz at {self.pod_ip}")
        return self

    @property
    def pid(self) -> int:
        assert self._pid is not None
        return self._pid

    @property
    def alive(self) -> bool:
        return self._pid is not None and os.path.exists(f"/proc/{self._pid}")

    def check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(f"the operator pod {self.pod_name} exited:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.installed:
            self.installed = False
            with contextlib.suppress(Exception):
                self.log_path  # noqa: B018 - keep the pod's log before it goes
            self.plane.helm(
                "uninstall",
                self.name,
                "--namespace",
                POD_RELEASE_NS,
                "--wait",
                f"--timeout={int(timeout)}s",
                check=False,
                timeout=timeout + 30,
            )

    def kill(self) -> None:
        self.stop()

    def metrics(self) -> dict[str, float]:
        url = f"http://{self.pod_ip}:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return parse_metrics(r.read().decode())

    def ready(self) -> bool:
        self.check_alive()
        try:
            url = f"http://{self.pod_ip}:{self.http_port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def log_path(self) -> Path:
        """The pod's log, fetched now (``kubectl logs``) into the bench's directory."""
        if self.pod_name:
            out = self.plane.kubectl(
                "logs", "-n", POD_RELEASE_NS, self.pod_name, check=False, timeout=60
            )
            if out.returncode == 0:
                self._log_path.write_text(out.stdout)
        return self._log_path

    def log_tail(self, lines: int = 30) -> str:
        path = self._log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the cluster --------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that every ``finally`` runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise Interrupted(f"signal {signum}")


@dataclass
class Cluster:
    """Control plane + store etcd + CRD in a temp dir; stops all it started on exit."""

    progress: Callable[[str], None]
    keep: bool = False  # keep the temp dir (logs) after the run
    # a real node (containerd, kubelet, kube-proxy; root): operators can also run as pods,
    # and the store etcd listens on the node IP too, so that pods reach it
    node: bool = False
    workdir: Path = field(init=False)
    plane: ControlPlane = field(init=False)
    store: EtcdServer = field(init=False)
    api: KubeAPI = field(init=False)
    watch: ConfigWatch = field(init=False)
    processes: list[Process | PodOperator] = field(default_factory=list)
    images: dict[str, images.Image] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __enter__(self) -> Cluster:
        stack = self._stack
        old = signal.signal(signal.SIGTERM, _on_sigterm)
        stack.callback(signal.signal, signal.SIGTERM, old)
        try:
            if self.keep:
                self.workdir = Path(tempfile.mkdtemp(prefix="etcdconfig-bench-"))
            else:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="etcdconfig-bench-"))
                self.workdir = Path(tmp)
            if self.node:
                self.images = images.ensure_images()
            self.plane = ControlPlane(self.workdir / "controlplane", node=self.node)
            stack.callback(self.plane.stop)
            self.progress(f"starting the control plane in {self.workdir}")
            started = time.monotonic()
            self.plane.start(timeout=240)
            self.progress(f"control plane ready in {time.monotonic() - started:.1f} s")
            if self.node:
                port = free_port()
                urls = f"http://127.0.0.1:{port},http://{NODE_IP}:{port}"
                self.store = EtcdServer(
                    data_dir=self.workdir / "store-etcd" / "data",
                    name="store",
                    client_port=port,
                    extra_args=(f"--listen-client-urls={urls}",),
                )
            else:
                self.store = EtcdServer(data_dir=self.workdir / "store-etcd" / "data", name="store")
            self.store.start()
            stack.callback(self.store.stop)
            self.store.wait_healthy(60)
            stack.callback(self._stop_processes)
            self.plane.kubectl("apply", "-f", "-", input=crd.render())
            self.plane.kubectl(
                "wait", "--for=condition=Established", "crd/configs.etcdconfig.io", "--timeout=60s"
            )
            self.api = KubeAPI(self.plane)
            # the CRD is served a moment after Established: wait for the list to answer
            wait_until(lambda: self.api.request("GET", KubeAPI.config_path())[0] == 200, 30, "CRD")
            self.watch = ConfigWatch(self.api).start()
            stack.callback(self.watch.stop)
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # the clean-up takes a few seconds: a second Ctrl-C or SIGTERM must not cut it short
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self._stack.close()
            if self.keep:
                self.progress(f"logs kept in {self.workdir}")
        finally:
            signal.signal(signal.SIGINT, old_int)

    def _stop_processes(self) -> None:
        for p in reversed(self.processes):
            with contextlib.suppress(Exception):
                p.stop(timeout=10)

    def operator(
        self,
        replica_id: str,
        prefix: str,
        *,
        namespaces: Sequence[str] = (),
        lock_ttl: int | None = None,
        resync_interval: float | None = None,
        extra: Sequence[str] = (),
    ) -> Process:
        """An ``etcdconfig run`` process (not started)."""
        port = free_port()
        cmd = [
            str(BIN / "etcdconfig"),
            "run",
            "--etcd-endpoints",
            self.store.endpoint,
            "--prefix",
            prefix,
            "--replica-id",
            replica_id,
            "--http-addr",
            "127.0.0.1",
            "--http-port",
            str(port),
            "--log-format",
            "json",
        ]
        if namespaces:
            cmd += ["--namespaces", ",".join(namespaces)]
        if lock_ttl is not None:
            cmd += ["--lock-ttl", str(lock_ttl)]
        if resync_interval is not None:
            cmd += ["--resync-interval", str(resync_interval)]
        p = Process(
            name=replica_id,
            cmd=[*cmd, *extra],
            env=self.plane.client_env(),
            log_path=self.workdir / f"{replica_id}.log",
            http_port=port,
        )
        self.processes.append(p)
        return p

    @property
    def pod_store_endpoint(self) -> str:
        """The store etcd as a pod reaches it: on the node IP (node clusters only)."""
        return f"{NODE_IP}:{self.store.client_port}"

    def pod_operator(
        self, release: str, prefix: str, *, namespaces: Sequence[str], extra: Sequence[str] = ()
    ) -> PodOperator:
        """``etcdconfig run`` as a pod, installed by the chart (not started): one replica,
        the chart's default resources, pullPolicy Never, the webhook off (the process
        subject has none either), the CRD left to this cluster, RBAC for ``namespaces``."""
        assert self.node, "pod operators need Cluster(node=True)"
        repo, _, tag = self.images["operator"].ref.rpartition(":")
        values = [
            f"--set=image.repository={repo}",
            f"--set-string=image.tag={tag}",  # a tag of digits alone is still a string
            "--set=image.pullPolicy=Never",
            "--set=replicaCount=1",
            "--set=crds.enabled=false",
            "--set=webhook.enabled=false",
            f"--set=etcd.endpoints={self.pod_store_endpoint}",
            f"--set=etcd.prefix={prefix}",
            f"--set=watchNamespaces={{{','.join(namespaces)}}}",
            *extra,
        ]
        p = PodOperator(release, self.plane, values, self.workdir / f"{release}.log")
        self.processes.append(p)
        return p

    def noop_operator(self, namespace: str) -> Process:
        """The no-op kopf operator (``bench/noop_operator.py``) on one namespace (not started)."""
        p = Process(
            name="noop",
            cmd=[
                str(BIN / "kopf"),
                "run",
                "--standalone",
                "--quiet",
                "--namespace",
                namespace,
                str(NOOP_OPERATOR),
            ],
            env=self.plane.client_env(),
            log_path=self.workdir / f"noop-{namespace}.log",
        )
        self.processes.append(p)
        return p

    def probe(self, namespace: str, name: str = "probe", timeout: float = 90.0) -> float:
        """Create (or bump) a Config and wait until it is recorded: proves that an operator
        watching ``namespace`` is up and working. Returns the seconds it took."""
        started = time.monotonic()
        key = (namespace, name)
        if key in self.watch.seen:
            gen = self.api.patch_data(namespace, name, {"probe": started})
        else:
            gen = int(
                self.api.create_config(namespace, name, {"probe": 0})["metadata"]["generation"]
            )
        self.watch.wait_recorded(namespace, [name], gen, timeout)
        return time.monotonic() - started


# --- report -------------------------------------------------------------------------------------

Goals = dict[str, tuple[str, float]]


def goal_results(figures: dict[str, Any], goals: Goals) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, (op, bound) in goals.items():
        value = figures.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            ok = False
        else:
            ok = value <= bound if op == "<=" else value >= bound
        out[key] = {"goal": f"{op} {bound:g}", "pass": bool(ok)}
    return out


def goal_cell(goals: dict[str, dict[str, Any]], key: str, unit: str = "") -> tuple[str, str]:
    g = goals[key]
    text = g["goal"].replace("<=", "≤").replace(">=", "≥") + unit
    return text, "[green]✓[/]" if g["pass"] else "[red]✗[/]"


def new_table(title: str, caption: str, columns: Sequence[str]) -> Table:
    table = Table(title=title, caption=caption, caption_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    table.add_column("goal")
    table.add_column("", justify="center")
    return table


def print_verdict(console: Console, goals: dict[str, dict[str, Any]]) -> None:
    failed = [k for k, g in goals.items() if not g["pass"]]
    if failed:
        console.print(f"goals missed: {', '.join(failed)}", style="red")
    else:
        console.print("all goals met", style="green")


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started
