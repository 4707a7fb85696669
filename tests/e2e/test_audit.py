"""Audit that tells the truth (issue 11), end to end with the admission webhook on:
who made each change (the authenticated user, not only the field manager), why (a
change cause only for the change that set it), the schema of every version, and the
CLI's rollback recorded with the user who ran it. Records are read from etcd directly.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import (
    BIN,
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    install_webhook,
    make_webhook_certs,
    wait_observed,
)

from etcdconfig.canonical import checksum
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import VersionedStore

SCHEMA = {"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 1}}}
WIDER = {"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 0}}}
CAUSE = "etcdconfig.io/change-cause"


@pytest.fixture(scope="module")
def audited(
    control_plane: ControlPlane,
    store_etcd: Any,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """An operator serving the admission webhook, registered for namespaces ``audit-*``."""
    work = tmp_path_factory.mktemp("audit")
    certs = make_webhook_certs(work / "pki")
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-audit-{uuid.uuid4().hex[:6]}",
        workdir=work / "op",
        replica_id="audit-op",
        webhook=certs,
    )
    op.start()
    name = f"etcdconfig-audit-{uuid.uuid4().hex[:6]}"
    try:
        op.wait_ready()
        install_webhook(control_plane, name, op.webhook_port, certs, ["audit-a", "audit-b"])
        yield op
    finally:
        control_plane.kubectl(
            "delete", "validatingwebhookconfiguration", name, "--ignore-not-found"
        )
        op.stop()


@pytest.fixture
def ns(control_plane: ControlPlane, audited: OperatorProcess, request: Any) -> Iterator[str]:
    name = "audit-a" if "rollback" not in request.node.name else "audit-b"
    control_plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture
async def store(audited: OperatorProcess) -> AsyncIterator[VersionedStore]:
    client = EtcdClient(EtcdSettings(endpoints=[audited.etcd_endpoint]))
    yield VersionedStore(client, prefix=audited.prefix)
    await client.close()


def patch(plane: ControlPlane, ns: str, name: str, body: dict[str, Any], *as_: str) -> None:
    plane.kubectl(
        "patch",
        "configs.etcdconfig.io",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps(body),
        *as_,
    )


def grant(plane: ControlPlane, ns: str, subject: dict[str, str]) -> None:
    """Let ``subject`` get and patch Configs in ``ns``."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "config-editor", "namespace": ns},
        "rules": [
            {
                "apiGroups": ["etcdconfig.io"],
                "resources": ["configs"],
                "verbs": ["get", "list", "patch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "config-editors", "namespace": ns},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "config-editor",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", **subject}],
    }
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))


async def versions(store: VersionedStore, ns: str, name: str) -> list[Any]:
    head = await store.head(ns, name)
    assert head is not None
    return [await store.get_version(ns, name, v) for v in range(1, head.version + 1)]


async def test_each_version_names_its_user_and_only_its_own_change_cause(
    control_plane: ControlPlane, audited: OperatorProcess, ns: str, store: VersionedStore
) -> None:
    plane = control_plane
    grant(plane, ns, {"kind": "Group", "name": "system:authenticated"})
    manifest = config_manifest("pay", ns, {"replicas": 1}, schema=SCHEMA)
    apply(plane, manifest)  # as the cluster admin
    wait_observed(plane, ns, "pay")
    # alice annotates, then changes the data in a second request: the cause is hers
    plane.kubectl(
        "annotate",
        "configs.etcdconfig.io",
        "pay",
        "-n",
        ns,
        f"{CAUSE}=raise for the peak",
        "--as",
        "alice",
        "--as-group",
        "dev",
    )
    patch(
        plane, ns, "pay", {"spec": {"data": {"replicas": 3}}}, "--as", "alice", "--as-group", "dev"
    )
    wait_observed(plane, ns, "pay")
    # bob changes the data later: the annotation is still there, but not his cause
    patch(plane, ns, "pay", {"spec": {"data": {"replicas": 4}}}, "--as", "bob")
    wait_observed(plane, ns, "pay")
    # carol sets data and a new cause in one request
    patch(
        plane,
        ns,
        "pay",
        {"metadata": {"annotations": {CAUSE: "hotfix"}}, "spec": {"data": {"replicas": 5}}},
        "--as",
        "carol",
    )
    wait_observed(plane, ns, "pay")
    # a schema-only change by dave: a version whose schema differs, data unchanged
    patch(plane, ns, "pay", {"spec": {"schema": WIDER}}, "--as", "dave")
    wait_observed(plane, ns, "pay")

    v1, v2, v3, v4, v5 = await versions(store, ns, "pay")
    authors = [(v.author.get("user"), v.author.get("source")) for v in (v1, v2, v3, v4, v5)]
    assert authors == [
        ("admin", "admission"),
        ("alice", "admission"),
        ("bob", "admission"),
        ("carol", "admission"),
        ("dave", "admission"),
    ]
    assert "system:masters" in v1.author["groups"]
    assert set(v2.author["groups"]) >= {"dev", "system:authenticated"}
    # the field manager is still there: the program (apply and patch within the same
    # second tie on managedFields' one-second times, so either may be the newest)
    assert v2.author["manager"] in ("kubectl-patch", "kubectl-client-side-apply")
    causes = [
        (v.author.get("changeCause"), v.author.get("inheritedChangeCause"))
        for v in (v1, v2, v3, v4, v5)
    ]
    assert causes == [
        (None, None),
        ("raise for the peak", None),
        (None, "raise for the peak"),
        ("hotfix", None),
        (None, "hotfix"),
    ]
    # the schema is part of every record, so a schema-only change is visible
    assert (v4.schema, v5.schema) == (SCHEMA, WIDER)
    assert v4.schema_checksum == checksum(SCHEMA, "schema")
    assert v5.schema_checksum == checksum(WIDER, "schema") != v4.schema_checksum
    assert v5.checksum == v4.checksum  # same data


async def test_cli_rollback_is_recorded_with_the_user_who_ran_it(
    control_plane: ControlPlane, audited: OperatorProcess, ns: str, store: VersionedStore
) -> None:
    plane = control_plane
    apply(plane, config_manifest("pay", ns, {"replicas": 1}, schema=SCHEMA))
    wait_observed(plane, ns, "pay")
    patch(plane, ns, "pay", {"spec": {"data": {"replicas": 2}}})
    wait_observed(plane, ns, "pay")
    grant(plane, ns, {"kind": "User", "name": "alice"})
    alice = plane.add_user("alice", ["dev"])
    bob = plane.add_user("bob")

    def rollback(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "etcdconfig"), "rollback", f"{ns}/pay", "--to", "1"],
            env={
                **plane.client_env(kubeconfig),
                "ETCDCONFIG_ETCD_ENDPOINTS": audited.etcd_endpoint,
                "ETCDCONFIG_ETCD_PREFIX": audited.prefix,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # bob may not: the refusal names him and the verb the API server refused
    refused = rollback(bob)
    assert refused.returncode != 0
    assert 'user "bob" may not get configs.etcdconfig.io in namespace "' + ns in refused.stderr
    done = rollback(alice)
    assert done.returncode == 0, done.stderr
    wait_observed(plane, ns, "pay")
    v3 = (await versions(store, ns, "pay"))[2]
    assert v3.origin == {"kind": "rollback", "fromVersion": 1}
    assert v3.author["user"] == "alice" and v3.author["source"] == "admission"
    assert "dev" in v3.author["groups"]
    assert v3.author["changeCause"] == "rollback to version 1"


async def test_without_the_webhook_the_field_manager_is_recorded_marked_as_such(
    control_plane: ControlPlane, namespace: str, audited: OperatorProcess, store: VersionedStore
) -> None:
    # ``namespace`` is outside the webhook's namespaceSelector: the API server never
    # calls it, exactly as when the webhook is off
    apply(control_plane, config_manifest("plain", namespace, {"replicas": 1}))
    wait_observed(control_plane, namespace, "plain")
    v1 = await store.get_version(namespace, "plain", 1)
    assert v1.author["source"] == "fieldManager"
    assert v1.author["manager"] == "kubectl-client-side-apply"
    assert "user" not in v1.author and "groups" not in v1.author
    assert (v1.schema, v1.schema_checksum) == (None, None)
