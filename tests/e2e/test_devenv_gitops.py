"""``etcdconfig dev up --gitops``: Flux (built from Go modules) and a Git server run as the
cluster's own processes, apply a seeded repository, follow a pushed commit, and ``down``
stops every one of them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from tests.e2e.operator_env import OperatorProcess, wait_observed, wait_until
from tests.e2e.test_devenv_cli import mentioning

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.flux import ready_condition
from etcdconfig.devenv.gitserver import git

PROCESSES = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "git-server",
    "source-controller",
    "kustomize-controller",
]


def dev(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etcdconfig.devenv", "--dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=900,  # a first run builds Flux from Go modules
        check=False,
    )


def test_dev_up_gitops_applies_the_repository_and_follows_a_push(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    up = dev(state, "up", "--no-node", "--gitops")
    try:
        assert up.returncode == 0, up.stderr
        work = state / "gitops" / "work" / "fleet"
        assert (
            f"            commit and `git push` in {work}, then "
            "`python -m etcdconfig.devenv gitops-sync`\n"
        ) in up.stdout
        status = json.loads(dev(state, "status", "--json").stdout)
        assert [(p["name"], p["running"]) for p in status["processes"]] == [
            (name, True) for name in PROCESSES
        ]
        assert status["ready"] is True

        plane = ControlPlane(state)
        wait_until(
            lambda: plane.kubectl(
                "get", "configs.etcdconfig.io", "payments", "-n", "gitops-demo",
                "--ignore-not-found", "-o", "name",
            ).stdout.strip(),
            90.0,
            "Flux to apply the seeded payments Config",
        )  # fmt: skip
        op = OperatorProcess(
            plane=plane,
            etcd_endpoint=plane.etcd_endpoint,
            prefix=f"/dev-gitops-{uuid.uuid4().hex[:6]}",
            workdir=tmp_path / "op",
        )
        op.start()
        try:
            op.wait_ready()
            obj = wait_observed(plane, "gitops-demo", "payments", timeout=60)
            assert obj["status"]["version"] == 1

            def kustomization_ready() -> bool:
                out = plane.kubectl(
                    "get", "kustomization", "fleet", "-n", "flux-system", "-o", "json"
                )
                cond = ready_condition(json.loads(out.stdout))
                return cond is not None and cond["status"] == "True"

            wait_until(kustomization_ready, 90.0, "the Kustomization Ready (wait: true)")

            manifest = yaml.safe_load((work / "deploy" / "payments.yaml").read_text())
            manifest["spec"]["data"]["retries"] = 4
            manifest["metadata"]["annotations"]["etcdconfig.io/change-cause"] = "four retries"
            (work / "deploy" / "payments.yaml").write_text(yaml.safe_dump(manifest))
            git("commit", "--quiet", "-am", "four retries", cwd=work)
            git("push", "--quiet", "origin", "main", cwd=work)
            sync = dev(state, "gitops-sync")
            assert (sync.returncode, sync.stdout) == (
                0,
                "requested: Flux fetches flux-system/fleet now\n",
            ), sync.stderr

            def recorded_v2() -> bool:
                obj = wait_observed(plane, "gitops-demo", "payments", timeout=60)
                return bool(obj["status"]["version"] == 2)

            wait_until(recorded_v2, 90.0, "the pushed commit recorded as version 2")
            obj = wait_observed(plane, "gitops-demo", "payments")
            assert obj["spec"]["data"]["retries"] == 4
        finally:
            op.stop()
    finally:
        down = dev(state, "down")
    assert down.returncode == 0, down.stderr
    assert [line.split()[0] for line in down.stdout.splitlines()[:-1]] == list(reversed(PROCESSES))
    assert mentioning(state) == []
