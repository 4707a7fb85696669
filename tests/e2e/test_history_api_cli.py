"""``kubectl etcdconfig`` with a kubeconfig alone: history, show, diff and rollback read
the history API (no etcd endpoint, no etcd credentials), with the same output as the
etcd path admins use; RBAC per namespace; the namespace of the kubeconfig's context."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.history_env import HistoryApi, history_api
from tests.e2e.operator_env import BIN, apply, config_manifest, get, wait_observed, wait_until

from etcdconfig.devenv import build
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store.keys import Keys

__all__ = ["history_api"]  # the fixture, imported for this module


def plugin(
    api: HistoryApi, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``kubectl etcdconfig ARGS`` as a user runs it: kubectl finds the plugin on PATH;
    nothing of etcd in the environment."""
    env = {
        k: v for k, v in api.plane.client_env(kubeconfig).items() if not k.startswith("ETCDCONFIG_")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(build.ensure_kubectl()), "etcdconfig", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin_via_etcd(api: HistoryApi, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command on the admin path: straight to etcd."""
    op = api.operator
    return subprocess.run(
        [
            str(BIN / "etcdconfig"),
            *args,
            "--etcd-endpoints",
            op.etcd_endpoint,
            "--prefix",
            op.prefix,
        ],
        env=api.plane.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


ROLLOUTS: dict[int, dict[str, Any]] = {
    1: {"state": "Succeeded", "endedAt": "2026-12-07T10:01:00.000+00:00"},
    2: {
        "state": "RolledBack",
        "rolledBackTo": 1,
        "reason": "version 2 failed: Deployment/web: pod web-1: CrashLoopBackOff",
        "endedAt": "2026-12-07T10:02:00.000+00:00",
    },
}


def put_rollout(api: HistoryApi, ns: str, uid: str, version: int, outcome: dict[str, Any]) -> None:
    record = {
        "config": f"{ns}/cart",
        "uid": uid,
        "version": version,
        "targets": ["Deployment/web"],
        "startedAt": f"2026-12-07T10:00:0{version}.000+00:00",
        "startedBy": "r1",
        **outcome,
    }
    key = Keys(api.operator.prefix).rollout(ns, "cart", uid, version)

    async def put() -> None:
        client = EtcdClient(EtcdSettings(endpoints=[api.operator.etcd_endpoint]))
        try:
            await client.put(key, json.dumps(record, sort_keys=True).encode())
        finally:
            await client.close()

    asyncio.run(put())


@pytest.fixture(scope="module")
def shop(control_plane: ControlPlane, history_api: HistoryApi) -> Iterator[str]:
    """``cart`` with versions 1..3 in a namespace of its own, and ``vault`` in another."""
    ns = f"shop-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    m = config_manifest("cart", ns, {"size": 1})
    for size in (1, 2, 3):
        m["spec"]["data"] = {"size": size}
        apply(control_plane, m)
        wait_observed(control_plane, ns, "cart")
    # two rollout records beside the history, as the operator writes them
    uid = get(control_plane, ns, "cart")["metadata"]["uid"]
    for version, outcome in ROLLOUTS.items():
        put_rollout(history_api, ns, uid, version, outcome)
    yield ns
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="module")
def vault(control_plane: ControlPlane, history_api: HistoryApi) -> Iterator[str]:
    ns = f"vault-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    apply(control_plane, config_manifest("keys", ns, {"key": "classified"}))
    wait_observed(control_plane, ns, "keys")
    yield ns
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


@pytest.mark.parametrize(
    "args",
    [
        ("history", "cart", "-o", "json"),
        ("history", "cart", "--limit", "1", "--before", "3", "-o", "yaml"),
        ("history", "cart", "-o", "wide"),
        ("show", "cart", "--version", "2", "--full", "-o", "json"),
        ("show", "cart"),
        ("diff", "cart", "1", "3", "--no-color"),
    ],
)
def test_the_plugin_reads_through_the_api_what_admins_read_in_etcd(
    history_api: HistoryApi, shop: str, args: tuple[str, ...]
) -> None:
    through_api = plugin(history_api, "-n", shop, *args)
    through_etcd = admin_via_etcd(history_api, *args, "-n", shop)
    assert (through_api.returncode, through_api.stdout, through_api.stderr) == (
        through_etcd.returncode,
        through_etcd.stdout,
        through_etcd.stderr,
    )
    assert through_api.returncode in (0, 1)  # diff: 1 when the versions differ
    assert through_api.stdout


def test_history_json_through_the_api(history_api: HistoryApi, shop: str) -> None:
    doc = json.loads(plugin(history_api, "history", f"{shop}/cart", "-o", "json").stdout)
    assert doc["config"] == f"{shop}/cart" and doc["state"] == "live"
    assert [v["version"] for v in doc["versions"]] == [3, 2, 1]
    assert [(o["version"], o["state"], o.get("rolledBackTo")) for o in doc["rollouts"]] == [
        (2, "RolledBack", 1),
        (1, "Succeeded", None),
    ]
    assert doc["rollouts"][0]["reason"] == ROLLOUTS[2]["reason"]
    table = plugin(history_api, "history", f"{shop}/cart").stdout.splitlines()
    assert table[0].split()[-1] == "ROLLOUT"
    assert [line.split()[0] for line in table[1:]] == ["3", "2", "1"]
    assert table[2].rstrip().endswith("RolledBack to v1")
    assert table[3].rstrip().endswith("Succeeded")


def test_a_reader_reads_its_namespace_only_and_gets_its_context_namespace(
    history_api: HistoryApi, shop: str, vault: str
) -> None:
    plane = history_api.plane
    dana = history_api.bind_reader("dana", shop)
    plane.kubectl("config", "set-context", "--current", f"--namespace={shop}", kubeconfig=dana)
    wait_until(
        lambda: plugin(history_api, "history", "cart", kubeconfig=dana).returncode == 0,
        30,
        "dana's binding in effect",
    )
    # no -n and no NS/: the context's namespace, as kubectl
    doc = json.loads(plugin(history_api, "show", "cart", "-o", "json", kubeconfig=dana).stdout)
    assert doc["data"] == {"size": 3}
    # flags after the command, as kubectl allows
    after = plugin(history_api, "history", "cart", "-n", shop, "-o", "name", kubeconfig=dana)
    assert after.stdout.split() == [f"{shop}/cart@v{n}" for n in (3, 2, 1)]
    refused = plugin(history_api, "show", f"{vault}/keys", kubeconfig=dana)
    line = one_line_error(refused, 1)
    assert line == (
        'error: Error from server (Forbidden): confighistories.history.etcdconfig.io "keys" '
        'is forbidden: User "dana" cannot get resource "confighistories" in API group '
        f'"history.etcdconfig.io" in the namespace "{vault}"'
    )
    assert "classified" not in refused.stdout


def test_a_rollback_with_a_kubeconfig_alone(
    control_plane: ControlPlane, history_api: HistoryApi, shop: str
) -> None:
    erin = history_api.bind_reader("erin", shop)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "config-editor", "namespace": shop},
        "rules": [
            {"apiGroups": ["etcdconfig.io"], "resources": ["configs"], "verbs": ["get", "patch"]}
        ],
    }
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(role))
    control_plane.kubectl(
        "create", "rolebinding", "erin-edit", "--role=config-editor", "--user=erin", "-n", shop
    )
    wait_until(
        lambda: control_plane.kubectl(
            "auth", "can-i", "patch", "configs.etcdconfig.io", "-n", shop, kubeconfig=erin,
            check=False,
        ).returncode
        == 0,
        30,
        "erin may patch Configs",
    )  # fmt: skip
    before = get(control_plane, shop, "cart")["metadata"]["generation"]
    out = plugin(history_api, "rollback", f"{shop}/cart", "--to", "1", kubeconfig=erin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{shop}/cart rolled back to the data of version 1")

    def rolled() -> dict[str, Any] | None:
        doc = json.loads(plugin(history_api, "history", f"{shop}/cart", "-o", "json").stdout)
        newest = doc["versions"][0]
        return newest if newest["version"] == 4 else None

    newest = wait_until(rolled, 60, "the rollback recorded as version 4")
    assert newest["origin"]["kind"] == "rollback" and newest["origin"]["fromVersion"] == 1
    assert newest["generation"] == before + 1
    shown = json.loads(plugin(history_api, "show", f"{shop}/cart", "-o", "json").stdout)
    assert shown["version"] == 4 and shown["data"] == {"size": 1}


def test_the_operator_down_is_one_line(history_api: HistoryApi, shop: str) -> None:
    """Last in the module: stops the operator, then starts it again."""
    op = history_api.operator
    op.stop()
    try:
        wait_until(lambda: history_api.available() == "False", 60, "APIService unavailable")
        line = one_line_error(plugin(history_api, "history", f"{shop}/cart"), 1)
        assert line == (
            "error: the history API (history.etcdconfig.io/v1alpha1) is unavailable: no "
            "operator replica serves it (see kubectl get apiservice "
            "v1alpha1.history.etcdconfig.io); admins can read etcd directly with "
            "--etcd-endpoints"
        )
    finally:
        op.start()
        op.wait_ready()
    wait_until(lambda: history_api.available() == "True", 60, "APIService available again")
