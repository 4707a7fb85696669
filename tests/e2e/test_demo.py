"""``make demo`` end to end, on its own node in a temporary directory (root: a node is
one per host, so this must not run beside another; pytest runs tests one at a time).

Judged from the running system: the chart's pods Running from the image the demo built,
payments' version 2 recorded by one of them, the webhook refusing invalid data at
``--dry-run=server``, the printed lines to continue by hand working as printed; then a
second ``up`` reuses everything, leaves the user's changes alone and does not wait on a
Config it did not create; ``down`` leaves nothing running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from etcdconfig.devenv import demo
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.node import Node

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo runs a node, which needs root"),
]

ROOT = Path(__file__).resolve().parents[2]
NS = demo.NAMESPACE


def _demo(state: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etcdconfig.devenv.demo", "--dir", str(state), action],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _printed(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not in the demo's output:\n{text}"
    return found.group(1)


def _cli(endpoint: str, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "etcdconfig.cli.main", *args, "--etcd-endpoints", endpoint],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout)


def _wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)  # poll interval of a deadline-bounded wait
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _pods(plane: ControlPlane, component: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/component={component}"
    out = plane.kubectl("get", "pods", "-n", NS, "-l", selector, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def _assert_running_from(pod: dict[str, Any], image: str) -> None:
    (container,) = pod["spec"]["containers"]
    assert container["image"] == image
    assert container["imagePullPolicy"] == "Never"
    assert pod["status"]["phase"] == "Running"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is True and status["restartCount"] == 0
    assert status["image"] == image


def test_demo_installs_the_chart_on_a_node_and_reruns_without_overwriting(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    try:
        first = _demo(state, "up")
        assert first.returncode == 0, first.stderr + first.stdout
        out = first.stdout
        assert "==> starting the cluster: control plane + node" in out
        assert "release etcdconfig revision 1 deployed in " in out
        assert (
            'admission webhook "validate.configs.etcdconfig.io" denied the request: '
            "InvalidData: spec.data.retries: violates maximum 10" in out
        )
        operator_ref = _printed(r"^operator\s+(etcdconfig\.local/etcdconfig:\w+)\s", out)
        etcd_ref = _printed(r"^etcd\s+(etcdconfig\.local/etcd:\S+)\s", out)
        plane = ControlPlane(state)
        assert plane.node and plane.running()

        # the chart's pods, from the images the demo built, never pulled
        operators = _pods(plane, "operator")
        assert len(operators) == 2, [p["metadata"]["name"] for p in operators]
        for pod in operators:
            _assert_running_from(pod, operator_ref)
        (etcd,) = _pods(plane, "etcd")
        _assert_running_from(etcd, etcd_ref)
        claim = json.loads(plane.kubectl("get", "pvc", demo.CLAIM, "-n", NS, "-o", "json").stdout)
        assert (claim["status"]["phase"], claim["spec"]["volumeName"]) == ("Bound", demo.VOLUME)

        # the closing lines name the Services; payments v2 was recorded by an operator pod
        endpoint = _printed(r"^  export ETCDCONFIG_ETCD_ENDPOINTS=(\S+) ", out)
        metrics_url = _printed(r"^  operator metrics: (\S+)$", out)
        assert endpoint == demo._service_address(plane, demo.ETCD_SERVICE, "client")
        assert metrics_url == (
            f"http://{demo._service_address(plane, demo.METRICS_SERVICE, 'http-metrics')}/metrics"
        )
        history = _cli(endpoint, "history", "default/payments", "-o", "json")
        versions = sorted(history["versions"], key=lambda v: v["version"])
        assert [v["version"] for v in versions] == [1, 2]
        assert versions[1]["author"]["changeCause"] == "raise retries for the holiday peak"
        assert versions[1]["recordedBy"] in {p["metadata"]["name"] for p in operators}
        versions_data = {
            v: _cli(endpoint, "show", "default/payments", "--version", str(v), "-o", "json")["data"]
            for v in (1, 2)
        }
        assert (versions_data[1]["retries"], versions_data[2]["retries"]) == (3, 5)
        assert _cli(endpoint, "verify", "--all", "-o", "json")["intact"] is True
        assert "2 checked, 0 problem(s)" in out
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            assert "etcdconfig_members 2.0" in resp.read().decode().splitlines()

        # kubectl shows why (MESSAGE), -o wide more, and explain describes every field
        assert "MESSAGE" in out and "pod/etcdconfig-etcd-0" in out
        wide = plane.kubectl("get", "cfg", "-n", "default", "-o", "wide").stdout
        assert wide.split("\n")[0].split() == [
            "NAME", "VERSION", "CHECKSUM", "READY", "AGE", "MESSAGE",
            "REASON", "GENERATION", "OBSERVED", "RECORDED", "ROLLOUT",
        ]  # fmt: skip
        assert "version 2 is the head" in wide
        explain = plane.kubectl("explain", "config.spec.history").stdout
        assert "Versions kept in the store; the head is never pruned. Default: 100." in explain

        # the lines to continue by hand work as printed (from the repository's root)
        tail = out[out.index("Try it yourself:") :].splitlines()[1:]
        by_hand = [
            line.strip()
            for line in tail
            if line.strip().startswith(("eval ", "export ", "kubectl get", "kubectl etcdconfig"))
        ]
        # users: kubectl and the plugin with the kubeconfig alone (the history API); the
        # etcd export for admins comes last and is not needed by any line before it
        assert len(by_hand) == 7, tail
        assert by_hand[-1].startswith("export ETCDCONFIG_ETCD_ENDPOINTS="), by_hand
        shell = subprocess.run(
            ["bash", "-ec", "\n".join(by_hand)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shell.returncode == 0, shell.stderr + shell.stdout
        assert "raise retries for the holiday peak" in shell.stdout
        assert "default/payments rolled back to the data of version 1" in shell.stdout

        def show() -> dict[str, Any]:
            return dict(_cli(endpoint, "show", "default/payments", "-o", "json"))

        _wait_for("the rollback recorded as version 3", lambda: show()["version"] == 3)
        assert show()["data"] == versions_data[1]

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
        assert again.returncode == 0, again.stderr + again.stdout
        assert "Traceback" not in again.stderr
        assert f"==> reusing the running cluster in {state.resolve()} " in again.stdout
        assert "release etcdconfig revision 2 deployed in " in again.stdout
        assert "config.etcdconfig.io/payments exists in default: left as it is" in again.stdout
        assert _printed(r"^  export ETCDCONFIG_ETCD_ENDPOINTS=(\S+) ", again.stdout) == endpoint
        got = plane.kubectl("get", "cfg", "payments", "-n", "default", "-o", "json").stdout
        assert json.loads(got)["spec"]["data"]["retries"] == 7
        if _printed(r"^operator\s+(\S+)\s", again.stdout) == operator_ref:
            # the same image: nothing to roll out, the same pods
            assert {p["metadata"]["name"] for p in _pods(plane, "operator")} == {
                p["metadata"]["name"] for p in operators
            }
        _wait_for(
            "version 4 (retries 7) recorded",
            lambda: show()["version"] == 4 and show()["data"]["retries"] == 7,
        )
    finally:
        down = _demo(state, "down")
        assert down.returncode == 0, down.stderr + down.stdout
    assert "cluster stopped" in down.stdout
    assert ControlPlane(state).processes == []
    assert not Node(state).host.pending
    assert not demo.volume_dir(state).exists()
    again = _demo(state, "down")
    assert (again.returncode, again.stdout) == (0, f"nothing is running (state: {state})\n")
