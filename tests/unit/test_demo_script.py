"""``make demo`` (etcdconfig.devenv.demo) without a cluster: what it asks Helm for, the
volume it makes, its one-line errors, and the closing lines the README shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from etcdconfig.devenv import demo, images
from etcdconfig.devenv.cli import DEFAULT_DIR
from etcdconfig.devenv.controlplane import ControlPlaneError

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = "etcdconfig.local/etcdconfig:0123456789ab"
ETCD = "etcdconfig.local/etcd:v3.6.16"


def _sets(args: list[str]) -> dict[str, str]:
    """``--set`` and ``--set-string`` values (image tags are strings even when all digits)."""
    out = {}
    for a in args:
        for flag in ("--set=", "--set-string="):
            if a.startswith(flag):
                key, value = a.removeprefix(flag).split("=", 1)
                out[key] = value
    return out


def test_helm_installs_or_upgrades_the_chart_with_the_local_images_never_pulled() -> None:
    args = demo.helm_args(OPERATOR, ETCD)
    assert args[:4] == ["upgrade", "--install", "etcdconfig", str(ROOT / "charts" / "etcdconfig")]
    assert args[args.index("--namespace") + 1] == "etcdconfig-system"
    assert "--create-namespace" in args and "--wait" in args
    assert _sets(args) == {
        "image.repository": "etcdconfig.local/etcdconfig",
        "image.tag": "0123456789ab",
        "image.pullPolicy": "Never",
        "etcd.bundled.enabled": "true",
        "etcd.bundled.image.repository": "etcdconfig.local/etcd",
        "etcd.bundled.image.tag": "v3.6.16",
        "etcd.bundled.image.pullPolicy": "Never",
        "etcd.bundled.persistence.enabled": "true",
    }


def test_the_rest_is_the_charts_defaults_two_replicas_and_the_fail_closed_webhook() -> None:
    values = yaml.safe_load((ROOT / "charts" / "etcdconfig" / "values.yaml").read_text())
    assert values["replicaCount"] == 2
    assert values["webhook"]["enabled"] is True
    assert values["webhook"]["failurePolicy"] == "Fail"
    assert values["etcd"]["prefix"] == demo.PREFIX
    assert values["etcd"]["bundled"]["persistence"]["size"] == demo.VOLUME_SIZE


def test_the_etcd_volume_is_a_host_directory_reserved_for_the_charts_claim(tmp_path: Path) -> None:
    path = demo.volume_dir(tmp_path)
    assert path == tmp_path.resolve() / "node" / "volumes" / "etcd-0"
    spec = demo.etcd_volume(path)["spec"]
    assert spec["hostPath"] == {"path": str(path), "type": "Directory"}
    # the StatefulSet's claim "data-<statefulset>-<ordinal>" of the release's only member
    assert spec["claimRef"] == {"namespace": "etcdconfig-system", "name": "data-etcdconfig-etcd-0"}
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"


def test_a_service_address_is_its_cluster_ip_and_the_named_port() -> None:
    svc = {
        "spec": {
            "clusterIP": "198.18.16.30",
            "ports": [{"name": "peer", "port": 2380}, {"name": "client", "port": 2379}],
        }
    }
    assert demo.service_address(svc, "client") == "198.18.16.30:2379"


def test_pods_that_are_not_ready_are_named_with_the_reason() -> None:
    def pod(name: str, ready: str, **status: Any) -> dict[str, Any]:
        conds = [{"type": "Ready", "status": ready}, *status.pop("conditions", [])]
        return {"metadata": {"name": name}, "status": {"conditions": conds, **status}}

    waiting = {"state": {"waiting": {"reason": "ErrImageNeverPull"}}}
    crashed = {"state": {"running": {}}, "lastState": {"terminated": {"reason": "Error"}}}
    unscheduled = {"type": "PodScheduled", "status": "False", "message": "unbound claims"}
    pods = [
        pod("ok", "True", phase="Running"),
        pod("op", "False", phase="Pending", containerStatuses=[waiting]),
        pod("crash", "False", phase="Running", containerStatuses=[crashed]),
        pod("etcd", "False", phase="Pending", conditions=[unscheduled]),
    ]
    assert demo.pod_problems(pods) == [
        "op: ErrImageNeverPull",
        "crash: Error",
        "etcd: unschedulable: unbound claims",
    ]


class _Plane:
    """kubectl and helm answers: ``wait`` as given, ``get`` the objects below."""

    def __init__(self, wait: Any = 0) -> None:
        self.wait = wait

    def kubectl(self, *args: str, **_: Any) -> subprocess.CompletedProcess[str]:
        if args[0] == "wait":
            if isinstance(self.wait, Exception):
                raise self.wait
            return subprocess.CompletedProcess(args, self.wait, "", "timed out")
        if args[:2] == ("get", "pods"):
            waiting = {"state": {"waiting": {"reason": "ErrImageNeverPull"}}}
            pod = {
                "metadata": {"name": "etcdconfig-5d9-x"},
                "status": {"phase": "Pending", "containerStatuses": [waiting]},
            }
            return subprocess.CompletedProcess(args, 0, json.dumps({"items": [pod]}), "")
        ready = {
            "type": "Ready",
            "status": "False",
            "reason": "InvalidData",
            "message": "generation 3 was not recorded: /retries: 99 is greater than 10",
        }
        body = {"status": {"conditions": [ready]}}
        return subprocess.CompletedProcess(args, 0, json.dumps(body), "")

    def helm(self, *args: str, **_: Any) -> subprocess.CompletedProcess[str]:
        err = "coalesce.go:237: warning\nError: UPGRADE FAILED: context deadline exceeded\n"
        return subprocess.CompletedProcess(args, 1, "", err)


@pytest.mark.parametrize("wait", [1, subprocess.TimeoutExpired(["kubectl", "wait"], 90)])
def test_a_config_that_is_not_ready_is_one_line_naming_it_and_why(wait: Any) -> None:
    with pytest.raises(demo.DemoError) as err:
        demo._wait_ready(_Plane(wait), "default", "payments")  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("Config default/payments is not Ready after 60s (InvalidData: ")
    assert "99 is greater than 10" in message
    assert "`kubectl logs -n etcdconfig-system deployment/etcdconfig`" in message


def test_a_failed_install_is_one_line_naming_the_pod_and_why() -> None:
    class Image:
        ref = OPERATOR

    with pytest.raises(demo.DemoError) as err:
        demo._install(_Plane(), {"operator": Image(), "etcd": Image()})  # type: ignore[arg-type,dict-item]
    assert str(err.value) == (
        "helm upgrade --install failed (Error: UPGRADE FAILED: context deadline exceeded); "
        "not Ready: etcdconfig-5d9-x: ErrImageNeverPull; see `kubectl get pods -n "
        "etcdconfig-system` and `kubectl describe pods -n etcdconfig-system`"
    )


def test_without_root_up_is_one_line_saying_to_run_as_root_and_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_build() -> None:
        raise AssertionError("built images without root")

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(images, "ensure_images", no_build)
    assert demo.main(["--dir", str(tmp_path), "up"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        "error: `make demo` runs a real node (containerd, the kubelet, a network device, "
        "iptables rules, cgroups): run it as root (sudo make demo)\n"
    )


@pytest.mark.parametrize("uid", [0, 1000])
def test_down_with_nothing_running_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], uid: int
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    volume = demo.volume_dir(tmp_path)
    volume.mkdir(parents=True)  # an earlier cluster's store: removed with it
    assert demo.main(["--dir", str(tmp_path), "down"]) == 0
    assert capsys.readouterr().out == f"nothing is running (state: {tmp_path})\n"
    assert not volume.exists()


def test_a_timeout_anywhere_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def up(_: Path) -> int:
        raise subprocess.TimeoutExpired(["kubectl", "apply", "-f", "-"], 60)

    monkeypatch.setattr(demo, "up", up)
    assert demo.main(["--dir", str(tmp_path), "up"]) == 1
    err = capsys.readouterr().err
    assert err == "error: `kubectl apply -f -` did not finish in 60s\n"


def test_a_multi_line_error_is_printed_on_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def up(_: Path) -> int:
        raise ControlPlaneError("`kubectl apply -f -` exited 1:\nError from server\n\n")

    monkeypatch.setattr(demo, "up", up)
    assert demo.main(["--dir", str(tmp_path), "up"]) == 1
    assert capsys.readouterr().err == "error: `kubectl apply -f -` exited 1: Error from server\n"


def test_an_interruption_is_one_line_saying_what_is_left_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def up(_: Path) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "up", up)
    assert demo.main(["--dir", str(tmp_path), "up"]) == 130
    assert capsys.readouterr().err == "error: interrupted; nothing is left running\n"


def test_samples_are_the_config_documents_of_examples() -> None:
    names = [(p.name, d["metadata"]["name"]) for p, d in demo._samples()]
    assert ("payments.yaml", "payments") in names
    assert all(d["kind"] == "Config" for _, d in demo._samples())


def test_the_closing_lines_use_the_services_and_name_the_state_dir_when_not_the_default(
    tmp_path: Path,
) -> None:
    lines = demo.try_it_yourself(
        tmp_path, "198.18.16.30:2379", "http://198.18.16.20:8080/metrics"
    ).splitlines()
    assert lines[:3] == [
        "",
        "Try it yourself:",
        f'  eval "$(.venv/bin/python -m etcdconfig.devenv --dir {tmp_path} env)"',
    ]
    # users read history with the kubeconfig; etcd endpoints are the admin path, last
    assert (
        "  kubectl etcdconfig history payments   # the plugin: a kubeconfig is all it needs"
        in lines
    )
    assert (
        "  export ETCDCONFIG_ETCD_ENDPOINTS=198.18.16.30:2379 ETCDCONFIG_ETCD_PREFIX=/etcdconfig"
        in lines
    )
    assert "  operator metrics: http://198.18.16.20:8080/metrics" in lines
    assert lines[-1] == (
        f"  .venv/bin/python -m etcdconfig.devenv.demo --dir {tmp_path} down # stop everything"
    )


def _normalise(text: str) -> list[str]:
    text = re.sub(r"198\.18\.16\.\d+:", "198.18.16.X:", text)
    return [line.rstrip() for line in text.strip().splitlines()]


def test_readme_shows_the_closing_lines_the_demo_prints() -> None:
    printed = _normalise(
        demo.try_it_yourself(DEFAULT_DIR, "198.18.16.30:2379", "http://198.18.16.20:8080/metrics")
    )
    assert printed[-1] == "  make demo-down                        # stop everything"
    readme = _normalise((ROOT / "README.md").read_text())
    start = readme.index(printed[0])
    assert readme[start : start + len(printed)] == printed
