"""`eval "$(etcdconfig dev env)"` as the README says, in a shell with nothing else of
ours, then `etcdconfig history NS/NAME` and `kubectl etcdconfig` work (issue 11).

Its own module: an operator on the control plane's etcd with the default prefix,
as the demo runs it, and no other operator watching the same objects (kopf's
diff-base would let only one of them see a change)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.operator_env import (
    BIN,
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    wait_observed,
)

from etcdconfig.devenv.controlplane import ControlPlane

# --- `dev env` as the README says --------------------------------------------------------------


@pytest.fixture(scope="module")
def default_prefix_operator(
    control_plane: ControlPlane, crd: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OperatorProcess, str]]:
    """An operator as the demo runs it: the control plane's etcd, the default prefix;
    only its own namespace, so it leaves anything else (a reused `dev up`) alone."""
    namespace = f"e2e-cli-devenv-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=control_plane.etcd_endpoint,
        prefix="/etcdconfig",
        workdir=tmp_path_factory.mktemp("devenv-operator"),
        replica_id="op-devenv",
        extra=("--namespaces", namespace),
    )
    op.start()
    try:
        op.wait_ready()
        yield op, namespace
    finally:
        op.stop()


def test_dev_env_then_history_and_the_kubectl_plugin(
    control_plane: ControlPlane, default_prefix_operator: tuple[OperatorProcess, str]
) -> None:
    _, namespace = default_prefix_operator
    apply(control_plane, config_manifest("payments", namespace, {"retries": 3}))
    wait_observed(control_plane, namespace, "payments")
    ref = f"{namespace}/payments"
    script = (
        f'eval "$({BIN / "etcdconfig"} dev --dir {control_plane.state_dir} env)"\n'
        f"etcdconfig history {ref} -o json\n"
        f"kubectl etcdconfig history {ref} -o name\n"
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        # a shell with nothing of ours: no venv on PATH, no ETCDCONFIG_* variables
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    doc, end, names = proc.stdout.partition("\n}\n")  # the JSON document, then the names
    assert [v["version"] for v in json.loads(doc + end)["versions"]] == [1]
    assert names == f"{ref}@v1\n"
