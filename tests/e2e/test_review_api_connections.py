"""Review of ``--api-connections``: can the capped clients starve kopf or the operator?

kopf holds one connection per watch stream for as long as the stream runs: one per
(resource, namespace) it watches, plus its CRD observer and, when namespaced, its
namespace observer. The login handler sizes kopf's pool as ``N + len(--namespaces) + 4``.
These tests run a real operator with a small cap against the real control plane and
wait (deadline-bounded) until every Config is recorded.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.operator_env import (
    OperatorProcess,
    config_manifest,
    get,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

CAP = 4
NAMESPACES = 12
PER_NAMESPACE = 4
HANG = 40.0  # seconds the API server hangs: beyond kopf's 30 s request timeout


@pytest.fixture
def many_namespaces(control_plane: ControlPlane) -> Iterator[list[str]]:
    stem = f"rv-{uuid.uuid4().hex[:6]}"
    names = [f"{stem}-{i:02d}" for i in range(NAMESPACES)]
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names]
    control_plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    yield names
    control_plane.kubectl(
        "delete", "namespace", *names, "--wait=false", "--ignore-not-found", check=False
    )


def _operator(
    plane: ControlPlane, etcd: EtcdServer, tmp_path: Path, name: str, *extra: str
) -> OperatorProcess:
    return OperatorProcess(
        plane=plane,
        etcd_endpoint=etcd.endpoint,
        prefix=f"/{name}-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path / "op",
        replica_id=name,
        extra=("--api-connections", str(CAP), *extra),
    )


def _apply_bulk(plane: ControlPlane, namespaces: list[str], version: int) -> list[tuple[str, str]]:
    manifests = [
        config_manifest(f"c{j}", ns, {"n": j, "v": version})
        for ns in namespaces
        for j in range(PER_NAMESPACE)
    ]
    plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    return [(m["metadata"]["namespace"], m["metadata"]["name"]) for m in manifests]


def _all_recorded(
    plane: ControlPlane, op: OperatorProcess, objs: list[tuple[str, str]], timeout: float
) -> None:
    missing: list[str] = []
    for ns, name in objs:
        try:
            wait_observed(plane, ns, name, timeout=timeout)
        except AssertionError:
            missing.append(f"{ns}/{name}")
            timeout = 1.0  # the deadline has passed: only collect the rest
    assert not missing, (
        f"{len(missing)}/{len(objs)} Configs never recorded: {missing[:10]}; "
        f"operator log:\n{op.log_tail(60)}"
    )


def _kopf_owns_status(plane: ControlPlane, ns: str, name: str) -> bool:
    out = plane.kubectl(
        "get", "configs.etcdconfig.io", name, "-n", ns, "-o", "json", "--show-managed-fields"
    )
    obj = json.loads(out.stdout)
    for entry in obj["metadata"].get("managedFields") or []:
        if entry.get("manager") == "kopf" and "f:status" in (entry.get("fieldsV1") or {}):
            return True
    return False


def test_review_many_exact_namespaces_small_cap(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    many_namespaces: list[str],
    tmp_path: Path,
) -> None:
    """12 namespaces given by name, --api-connections 4: a bulk and its update recorded."""
    plane = control_plane
    op = _operator(
        plane, store_etcd, tmp_path, "rv-exact", "--namespaces", ",".join(many_namespaces)
    )
    op.start()
    try:
        op.wait_ready(120)
        objs = _apply_bulk(plane, many_namespaces, 1)
        _all_recorded(plane, op, objs, 240)
        objs = _apply_bulk(plane, many_namespaces, 2)
        _all_recorded(plane, op, objs, 240)
        ns, name = objs[-1]
        assert get(plane, ns, name)["metadata"]["generation"] == 2
        assert _kopf_owns_status(plane, ns, name), "kopf no longer the manager of status"
    finally:
        op.stop()


def test_review_clusterwide_small_cap(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    many_namespaces: list[str],
    tmp_path: Path,
) -> None:
    """Cluster-wide (no --namespaces), --api-connections 4: a bulk and its update recorded."""
    plane = control_plane
    op = _operator(plane, store_etcd, tmp_path, "rv-cluster")
    op.start()
    try:
        op.wait_ready(120)
        objs = _apply_bulk(plane, many_namespaces, 1)
        _all_recorded(plane, op, objs, 240)
        objs = _apply_bulk(plane, many_namespaces, 2)
        _all_recorded(plane, op, objs, 240)
    finally:
        op.stop()


def test_review_a_namespace_glob_is_refused_at_start(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    many_namespaces: list[str],
    tmp_path: Path,
) -> None:
    """``--namespaces 'stem-*'`` was passed to kopf as is, which took it as a glob: 12
    namespace watchers + the namespace and CRD observers = 14 streams in a pool sized
    for 1 + 4 + the cap (9), so every finalizer and status patch waited for a connection
    until it timed out and nothing was recorded (found by this review). Namespaces are
    names now (the resync lists each entry as one): a pattern stops start-up with one
    line naming it."""
    stem = many_namespaces[0].rsplit("-", 1)[0]
    op = _operator(control_plane, store_etcd, tmp_path, "rv-glob", "--namespaces", f"{stem}-*")
    op.start()
    try:
        assert op.proc is not None
        assert op.proc.wait(timeout=60) == 2
        assert (
            f"error: invalid settings: namespaces: Value error, '{stem}-*' is not a "
            "namespace name (lowercase letters, digits and '-', at most 63, starting and "
            "ending with a letter or digit); patterns such as 'team-*' or '!kube-system' "
            "are not supported: list the namespaces, or leave it empty for all"
        ) in op.log_text()
    finally:
        op.stop()


def test_review_status_patches_still_by_kopf(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, namespace: str, tmp_path: Path
) -> None:
    """The custom session keeps kopf's User-Agent: its status patches show as ``kopf``."""
    plane = control_plane
    op = _operator(plane, store_etcd, tmp_path, "rv-fm", "--namespaces", namespace)
    op.start()
    try:
        op.wait_ready(120)
        plane.kubectl(
            "apply", "-f", "-", input=json.dumps(config_manifest("fm", namespace, {"a": 1}))
        )
        wait_observed(plane, namespace, "fm", timeout=120)
        wait_until(lambda: _kopf_owns_status(plane, namespace, "fm"), 60, "status managed by kopf")
    finally:
        op.stop()


def test_review_apiserver_hang_recovers(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, namespace: str, tmp_path: Path
) -> None:
    """The API server hangs (SIGSTOP) longer than kopf's request timeout (30 s) right after
    a bulk of updates: the connections in the capped pools stall. After SIGCONT every
    update is still recorded, and so is a further round."""
    plane, ns = control_plane, namespace
    [apiserver] = [p for p in plane.processes if p.name == "kube-apiserver" and p.alive()]
    op = _operator(plane, store_etcd, tmp_path, "rv-hang", "--namespaces", ns)
    op.start()
    try:
        op.wait_ready(120)
        objs = _apply_bulk(plane, [ns], 1)
        manifests = [config_manifest(f"h{j}", ns, {"v": 1}) for j in range(20)]
        plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
        objs += [(ns, f"h{j}") for j in range(20)]
        _all_recorded(plane, op, objs, 240)
        manifests = [config_manifest(f"h{j}", ns, {"v": 2}) for j in range(20)]
        plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
        os.kill(apiserver.pid, signal.SIGSTOP)
        try:
            threading.Event().wait(HANG)  # the length of the fault, not a synchronisation
        finally:
            os.kill(apiserver.pid, signal.SIGCONT)
        _all_recorded(plane, op, objs, 300)
        # and the pools and streams work after it: a further round of updates
        manifests = [config_manifest(f"h{j}", ns, {"v": 3}) for j in range(20)]
        plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
        _all_recorded(plane, op, objs, 240)
        assert all(get(plane, ns, f"h{j}")["metadata"]["generation"] == 3 for j in range(20))
        assert op.proc is not None and op.proc.poll() is None, op.log_tail()
    finally:
        op.stop()
