"""``make demo`` end to end (its own local control plane in a temporary directory):
the webhook rejects invalid data at `--dry-run=server`, and running it again leaves the
user's changes alone and does not wait on a Config it did not create."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from etcdconfig.devenv.controlplane import ControlPlane


def _demo(state: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etcdconfig.devenv.demo", "--dir", str(state), action],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_validates_at_admission_and_reruns_without_overwriting(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    try:
        first = _demo(state, "up")
        assert first.returncode == 0, first.stderr
        assert (
            'admission webhook "validate.configs.etcdconfig.io" denied the request: '
            "InvalidData: spec.data.retries: violates maximum 10" in first.stdout
        )
        assert "MESSAGE" in first.stdout and "Try it yourself:" in first.stdout
        plane = ControlPlane(state)
        # kubectl shows why (MESSAGE), -o wide more, and explain describes every field
        wide = plane.kubectl("get", "cfg", "-n", "default", "-o", "wide").stdout
        assert wide.split("\n")[0].split() == [
            "NAME", "VERSION", "CHECKSUM", "READY", "AGE", "MESSAGE",
            "REASON", "GENERATION", "OBSERVED", "RECORDED",
        ]  # fmt: skip
        assert "version 2 is the head" in wide
        explain = plane.kubectl("explain", "config.spec.history").stdout
        assert "Versions kept in the store; the head is never pruned. Default: 100." in explain
        # the user changes a sample, and adds a Config that cannot become Ready
        plane.kubectl(
            "patch", "cfg", "payments", "-n", "default", "--type=merge",
            "-p", json.dumps({"spec": {"data": {"retries": 7}}}),
        )  # fmt: skip
        plane.kubectl("create", "configmap", "foreign", "-n", "default", "--from-literal=a=b")
        mine = {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "metadata": {"name": "mine", "namespace": "default"},
            "spec": {"data": {"a": 1}, "publish": {"configMap": {"name": "foreign"}}},
        }
        plane.kubectl("apply", "-f", "-", input=json.dumps(mine))

        again = _demo(state, "up")
        assert again.returncode == 0, again.stderr
        assert "Traceback" not in again.stderr
        assert "config.etcdconfig.io/payments exists in default: left as it is" in again.stdout
        out = plane.kubectl("get", "cfg", "payments", "-n", "default", "-o", "json").stdout
        assert json.loads(out)["spec"]["data"]["retries"] == 7
    finally:
        down = _demo(state, "down")
        assert down.returncode == 0, down.stderr
