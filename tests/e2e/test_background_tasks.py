"""The operator's background tasks, in a real operator process: a crashed task
makes ``/readyz`` fail and name it until it runs again; a Kubernetes API outage
during resync rounds never stops the resync loop.

How they can fail: the second test fails against the operator before
supervision — its resync task died at the first round that met the outage, so
the resync reconcile count never moves again (checked by running this test with
``PYTHONPATH`` pointing the operator process at a copy of the old code).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

FAULT_ENV = "ETCDCONFIG_TEST_TASK_FAULT"  # test-only hook of controller/supervisor.py


def http_get(op: OperatorProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.http_port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def metric(op: OperatorProcess, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def log_records(op: OperatorProcess) -> list[dict[str, object]]:
    out = []
    for line in op.log_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def operator(
    plane: ControlPlane, etcd: EtcdServer, namespace: str, workdir: Path, *extra: str
) -> OperatorProcess:
    return OperatorProcess(
        plane=plane,
        etcd_endpoint=etcd.endpoint,
        prefix=f"/bg-{uuid.uuid4().hex[:8]}",
        workdir=workdir,
        replica_id="bg-op",
        extra=("--resync-interval", "1", "--namespaces", namespace, *extra),
    )


def test_readyz_names_a_crashed_task_until_it_runs_again(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trigger = tmp_path / "crash-resync"
    monkeypatch.setenv(FAULT_ENV, f"resync={trigger}")  # the operator inherits it
    op = operator(control_plane, store_etcd, namespace, tmp_path / "op")
    op.start()
    try:
        op.wait_ready()
        wait_until(lambda: metric(op, "etcdconfig_resync_rounds_total") >= 1, 30, "a resync round")
        assert metric(op, "etcdconfig_background_task_up", task="resync") == 1

        trigger.touch()  # from now on the resync task crashes on every start
        _, body = wait_until(
            lambda: (r := http_get(op, "/readyz"))[0] == 503 and r, 30, "/readyz failing"
        )
        assert body.startswith("background task resync crashed (InjectedFault) and restarts in ")
        assert http_get(op, "/healthz") == (200, "ok\n")  # liveness is not affected
        assert metric(op, "etcdconfig_background_task_up", task="resync") == 0
        for other in ("session-keeper", "membership-watch"):
            assert metric(op, "etcdconfig_background_task_up", task=other) == 1
            assert metric(op, "etcdconfig_background_task_restarts_total", task=other) == 0

        trigger.unlink()  # the next restart runs normally
        wait_until(lambda: http_get(op, "/readyz") == (200, "ok\n"), 60, "/readyz ok again")
        assert metric(op, "etcdconfig_background_task_up", task="resync") == 1
        assert metric(op, "etcdconfig_background_task_restarts_total", task="resync") >= 1
        rounds = metric(op, "etcdconfig_resync_rounds_total")
        wait_until(
            lambda: metric(op, "etcdconfig_resync_rounds_total") >= rounds + 2,
            30,
            "the restarted resync loop doing rounds",
        )
        crashes = [
            r
            for r in log_records(op)
            if r.get("msg") == "background task failed; restarting it after a backoff"
        ]
        assert crashes, op.log_tail()
        assert {(r["task"], r["error"]) for r in crashes} == {("resync", "InjectedFault")}
    finally:
        op.stop()


class TcpProxy:
    """A TCP proxy in a thread (the test blocks while it forwards); ``cut()`` ends
    every connection and ends each new one at once until ``heal()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # lets the accept loop see close()
        self.port = self.listener.getsockname()[1]
        self.refused = 0
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                _end(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _end(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _end(s)
                with self._lock:
                    self._conns.discard(s)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            _end(s)

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self.listener.close()


def _end(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def test_a_kubernetes_api_outage_during_resync_rounds_never_stops_the_loop(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A resync round whose list of Configs fails with a connection error (not an
    ``EtcdConfigError``) used to end the resync task for good: nothing repaired
    missed events or took over a departed replica's Configs afterwards."""
    url = urllib.parse.urlsplit(control_plane.server)
    assert url.hostname is not None and url.port is not None
    proxy = TcpProxy((url.hostname, url.port))
    kubeconfig = yaml.safe_load(control_plane.kubeconfig.read_text())
    for cluster in kubeconfig["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    via_proxy = tmp_path / "kubeconfig-via-proxy"
    via_proxy.write_text(yaml.safe_dump(kubeconfig))
    op = operator(
        control_plane, store_etcd, namespace, tmp_path / "op", "--kubeconfig", str(via_proxy)
    )
    op.start()
    try:
        op.wait_ready()
        apply(control_plane, config_manifest("k", namespace, {"v": 1}))
        wait_observed(control_plane, namespace, "k")
        key = "etcdconfig_reconcile_duration_seconds_count"
        wait_until(lambda: metric(op, key, trigger="resync") >= 1, 30, "a resync of the Config")

        proxy.cut()
        time.sleep(3)  # the outage lasts three resync intervals: the fault schedule
        proxy.heal()
        assert proxy.refused > 0  # the operator did meet the outage

        before = metric(op, key, trigger="resync")
        wait_until(
            lambda: metric(op, key, trigger="resync") >= before + 2,
            60,
            "resync rounds over the Config after the outage",
        )
        failed_rounds = sum(
            s.value
            for family in text_string_to_metric_families(op.metrics())
            for s in family.samples
            if s.name == "etcdconfig_resync_errors_total" and s.labels.get("stage") == "round"
        )
        assert failed_rounds >= 1  # rounds met the outage, and the loop went on
        assert metric(op, "etcdconfig_background_task_restarts_total", task="resync") == 0
        wait_until(lambda: http_get(op, "/readyz") == (200, "ok\n"), 30, "/readyz ok")
    finally:
        op.stop()
        proxy.close()
