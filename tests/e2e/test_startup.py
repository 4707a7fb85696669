"""``etcdconfig run`` refuses to start, with one clear line and exit code 2, when
etcd or the Kubernetes API server cannot be reached."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from tests.e2e.operator_env import BIN

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
