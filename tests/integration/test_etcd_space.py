"""etcd out of space (docs/operations.md#etcd-space), on a real etcd whose
``--quota-backend-bytes`` is small: a write is refused as ``StoreFull`` with the cause
and the way out, nothing is recorded partially (no version, no head move, no lock key
left), reads keep working, and once an admin frees space with the documented
commands (compact, defrag, ``etcdctl alarm disarm``) the next commit records the next
version, gapless."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_store import change

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.build import ensure_etcd
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import StoreFull
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end
from etcdconfig.store import VersionedStore

QUOTA = 4 * 1024 * 1024  # bytes: a few filler writes raise the NOSPACE alarm
FILLER = 512 * 1024


@pytest.fixture
def small_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(
        data_dir=tmp_path / "data", name="small", extra_args=(f"--quota-backend-bytes={QUOTA}",)
    )
    server.start()
    try:
        server.wait_healthy(60)
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(small_etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    c = EtcdClient(EtcdSettings(endpoints=[small_etcd.endpoint]))
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


def etcdctl(server: EtcdServer, *args: str) -> str:
    _, ctl = ensure_etcd()
    proc = subprocess.run(
        [str(ctl), f"--endpoints={server.endpoint}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


async def fill(client: EtcdClient) -> int:
    """Write filler (outside the store's prefix) until etcd refuses: the alarm is up."""
    for i in range(200):
        try:
            await client.put(f"/filler/{i:04d}".encode(), b"x" * FILLER)
        except StoreFull:
            return i
    raise AssertionError("etcd never ran out of space")


async def test_a_full_etcd_records_nothing_and_recovers_once_space_is_freed(
    client: EtcdClient, small_etcd: EtcdServer
) -> None:
    prefix = "/etcdconfig"
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="test")
    store = VersionedStore(client, prefix=prefix, replica_id="r1")
    try:
        await store.record(change(1), locks)
        await fill(client)
        assert await client.alarms() == ["NOSPACE"]
        status = await client.status()
        assert status["db_size_quota"] == QUOTA
        assert status["db_size"] > QUOTA // 2  # the alarm goes off before the file reaches it

        with pytest.raises(StoreFull) as err:
            await store.record(change(2), locks)
        message = str(err.value)
        assert "database space exceeded" in message
        assert "`etcdctl alarm disarm` (docs/operations.md#etcd-space)" in message
        # nothing partially: the head, the versions and the lock keys are as before
        head = await store.head("prod", "payments")
        assert head is not None and (head.version, head.generation) == (1, 1)
        records, _ = await store.history("prod", "payments", limit=10)
        assert [r.version for r in records] == [1]  # reads keep working
        held = await client.range(
            f"{prefix}/locks/".encode(), prefix_end(f"{prefix}/locks/".encode())
        )
        assert list(held.kvs) == []

        # the admin frees space as docs/operations.md says
        await client.delete_range(b"/filler/", b"/filler0")
        revision = int(etcdctl(small_etcd, "endpoint", "status", "-w", "fields").split(
            '"Revision" : ')[1].split("\n")[0])  # fmt: skip
        etcdctl(small_etcd, "compact", str(revision), "--physical")
        etcdctl(small_etcd, "defrag")
        etcdctl(small_etcd, "alarm", "disarm")
        assert await client.alarms() == []

        result = await store.record(change(2), locks)
        assert (result.recorded, result.version) == (True, 2)
        assert await store.verify("prod", "payments") == []
    finally:
        await session.close()


async def test_status_reports_sizes_and_quota(client: EtcdClient) -> None:
    status: dict[str, Any] = await client.status()
    assert status["db_size_quota"] == QUOTA
    assert 0 < status["db_size_in_use"] <= status["db_size"]
    assert await client.alarms() == []
