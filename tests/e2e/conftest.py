"""End-to-end tier: a real control plane (etcd, kube-apiserver, kube-controller-manager)
started once per session from binaries built from Go modules.

Fixtures:

- ``control_plane`` (session): an :class:`~etcdconfig.devenv.controlplane.ControlPlane`
  — ``.kubeconfig`` (cluster-admin), ``.server``, ``.etcd_endpoint`` (the etcd
  the API server uses), ``.kubectl(*args, kubeconfig=None, input=None,
  check=True)``, ``.helm(*args, ...)``, ``.add_user(name, groups) -> kubeconfig``.
- ``namespace`` (function): a fresh namespace, deleted afterwards.
- ``store_etcd`` (session): a second, separate etcd for the product's versioned
  store, so tests never mix Config history with Kubernetes' own keys.

``ETCDCONFIG_E2E_CONTROL_PLANE=.dev`` reuses a control plane started with
``python -m etcdconfig.devenv up`` (fast iteration; it is left running).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.e2e.operator_env import crd, operator  # noqa: F401 - fixtures shared by every e2e module

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

if TYPE_CHECKING:
    from collections.abc import Iterator

START_TIMEOUT = 180.0  # seconds; warm start takes ~10 on a 2-core machine


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    reuse = os.environ.get("ETCDCONFIG_E2E_CONTROL_PLANE")
    if reuse:
        plane = ControlPlane(Path(reuse))
        if not (plane.running() and plane.ready()):
            pytest.fail(f"ETCDCONFIG_E2E_CONTROL_PLANE={reuse}: no ready control plane there")
        yield plane
        return
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    plane.start(timeout=START_TIMEOUT)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def store_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(data_dir=tmp_path_factory.mktemp("store-etcd") / "data", name="store")
    server.start()
    try:
        server.wait_healthy(30.0)
        yield server
    finally:
        server.stop()
