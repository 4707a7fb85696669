"""``etcdconfig run`` refuses to start, with one clear line and exit code 2, when
etcd or the Kubernetes API server cannot be reached."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from tests.e2e.operator_env import BIN, wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer, free_port


def _run(
    plane: ControlPlane, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "etcdconfig"),
            "run",
            "--log-format",
            "text",
            "--http-port",
            str(free_port()),
            *args,
        ],
        env=plane.client_env(kubeconfig),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unreachable_etcd_stops_start_up_with_the_cause(
    control_plane: ControlPlane, crd: Path
) -> None:
    port = free_port()
    proc = _run(control_plane, "--etcd-endpoints", f"127.0.0.1:{port}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1
    assert f"cannot start: etcd: cannot reach etcd at 127.0.0.1:{port}" in errors[0]


def test_unreachable_api_server_stops_start_up_with_the_cause(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, tmp_path: Path
) -> None:
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    port = free_port()
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    broken = tmp_path / "kubeconfig"
    broken.write_text(yaml.safe_dump(config))
    proc = _run(control_plane, "--etcd-endpoints", store_etcd.endpoint, kubeconfig=broken)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1
    assert "cannot start: Kubernetes: cannot reach the Kubernetes API server" in errors[0]
    assert f"127.0.0.1:{port}" in errors[0]


def _start(plane: ControlPlane, log: Path, http_port: int, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                str(BIN / "etcdconfig"),
                "run",
                "--log-format",
                "text",
                "--http-port",
                str(http_port),
                "--replica-id",
                "waiting",
                *args,
            ],
            env=plane.client_env(None),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_an_etcd_that_starts_later_is_waited_for_within_etcd_wait(
    control_plane: ControlPlane, crd: Path, tmp_path: Path
) -> None:
    """The chart's bundled etcd and the operator start together: the operator retries
    (saying so) instead of exiting, and becomes ready once etcd answers."""
    etcd = EtcdServer(tmp_path / "etcd")
    http_port = free_port()
    log = tmp_path / "operator.log"
    proc = _start(
        control_plane, log, http_port, "--etcd-endpoints", etcd.endpoint, "--etcd-wait", "60"
    )
    try:
        wait_until(lambda: log.read_text().count("waiting for etcd") >= 2, 30, "retries logged")
        assert proc.poll() is None
        etcd.start()
        etcd.wait_healthy()
        wait_until(lambda: _ready(http_port), 60, "operator ready after etcd came up")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        etcd.stop()
    assert proc.returncode == 0
    assert "cannot start" not in log.read_text()


def test_an_etcd_that_never_answers_stops_start_up_after_the_wait(
    control_plane: ControlPlane, crd: Path, tmp_path: Path
) -> None:
    port = free_port()
    started = time.monotonic()
    proc = _run(control_plane, "--etcd-endpoints", f"127.0.0.1:{port}", "--etcd-wait", "3")
    assert time.monotonic() - started >= 3
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1
    assert f"cannot start: etcd: cannot reach etcd at 127.0.0.1:{port}" in errors[0]
    assert errors[0].endswith("(waited 3s)")


def test_a_sigterm_while_waiting_for_etcd_stops_at_once_and_cleanly(
    control_plane: ControlPlane, crd: Path, tmp_path: Path
) -> None:
    """PID 1 in a container ignores a signal without a handler: without ours the pod
    would wait out its grace period."""
    log = tmp_path / "operator.log"
    proc = _start(
        control_plane,
        log,
        free_port(),
        "--etcd-endpoints",
        f"127.0.0.1:{free_port()}",
        "--etcd-wait",
        "300",
    )
    try:
        wait_until(lambda: "waiting for etcd" in log.read_text(), 30, "waiting logged")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "a signal arrived while waiting for etcd" in log.read_text()
