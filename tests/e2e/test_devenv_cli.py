"""`python -m etcdconfig.devenv` starts a control plane that outlives the command and
stops it later, by PID, from another command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def devenv(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etcdconfig.devenv", "--dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def running(pid: int) -> bool:
    """Exists and is not a zombie waiting for an init that may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_status_env_user_down(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    up = devenv(state, "up")
    try:
        assert up.returncode == 0, up.stderr
        assert "control plane ready in" in up.stdout

        status = devenv(state, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["ready"] is True
        names = [p["name"] for p in report["processes"]]
        assert names == ["etcd", "kube-apiserver", "kube-controller-manager"]
        assert all(p["running"] for p in report["processes"])

        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in devenv(state, "env").stdout.splitlines()
        )
        assert env["KUBECONFIG"] == str(state / "kubeconfig")
        assert env["ETCDCONFIG_DEV_ETCD_ENDPOINT"] == report["etcd_endpoint"]
        kubectl = state / "bin" / "kubectl"
        whoami = subprocess.run(
            [str(kubectl), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
            env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]},
            capture_output=True,
            text=True,
            check=True,
        )
        assert whoami.stdout == "admin"

        user = devenv(state, "user", "carol", "--group", "auditors")
        assert user.returncode == 0, user.stderr
        groups = subprocess.run(
            [str(kubectl), "auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"],
            env={**os.environ, "KUBECONFIG": user.stdout.strip()},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(groups.stdout) == ["auditors", "system:authenticated"]

        again = devenv(state, "up")
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        down = devenv(state, "down")
    assert down.returncode == 0, down.stderr
    assert [p["name"] for p in report["processes"] if running(p["pid"])] == []
    after = devenv(state, "status")
    assert after.returncode == 1
