"""Fixtures of the integration tier: a real etcd server (single node and a
3-member cluster) on loopback with free ports and temporary data dirs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from etcdconfig.devenv.etcd import EtcdServer, start_cluster
from etcdconfig.etcd import EtcdClient, EtcdSettings


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    base = tmp_path_factory.mktemp("etcd")
    server = EtcdServer(data_dir=base / "data", name="single")
    server.start()
    try:
        server.wait_healthy(60)
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[EtcdServer]]:
    members = start_cluster(tmp_path / "cluster", size=3)
    try:
        yield members
    finally:
        for m in members:
            m.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own for each test: tests share one etcd server."""
    return f"/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    c = EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await c.connect()
    try:
        yield c
    finally:
        await c.close()
