"""The store's bytes per Config on a real etcd: the usage index the commit keeps
(``{p}/configs/{ns}/{name}/sizes``), retention by ``spec.history.maxBytes`` (never the
head), the index after a Purge, an index that is missing, stale or unreadable
(measured from the records instead), and ``etcdconfig usage``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.integration.helpers import admin_cli
from tests.integration.test_store import change

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import ChangeRequest, VersionedStore
from etcdconfig.store.records import Sizes, dump

BIN = Path(sys.executable).parent


@pytest.fixture
async def env(client: EtcdClient, prefix: str) -> Any:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="test")
    store = VersionedStore(client, prefix=prefix, replica_id="test-replica")
    yield store, locks
    await session.close()


async def stored_sizes(store: VersionedStore) -> list[tuple[int, int]]:
    """What the records take, measured key by key (the truth the index must equal)."""
    start = store.keys.versions("prod", "payments")
    res = await store.client.range(start, store.keys.end(start))
    return [(int(kv.key.decode().rsplit("/", 1)[1]), len(kv.value)) for kv in res.kvs]


async def index(store: VersionedStore) -> Sizes | None:
    kv, _ = await store.client.get(store.keys.sizes("prod", "payments"))
    return Sizes.parse(kv.value) if kv is not None else None


def blob(kib: int) -> dict[str, Any]:
    return {"blob": "x" * (kib * 1024)}


async def test_the_index_is_exactly_the_retained_records_and_max_bytes_prunes_the_oldest(
    env: Any,
) -> None:
    store, locks = env
    for g in range(1, 5):
        await store.record(change(g, blob(10)), locks)
    sizes = await stored_sizes(store)
    assert [v for v, _ in sizes] == [1, 2, 3, 4]
    found = await index(store)
    assert found is not None and list(found.entries) == sizes

    # a budget for two of these records: the two newest stay, the commit prunes the rest
    two = sizes[-1][1] * 2 + 100
    result = await store.record(change(5, blob(10), max_bytes=two), locks)
    after = await stored_sizes(store)
    assert [v for v, _ in after] == [4, 5]
    assert result.sizes is not None and list(result.sizes.entries) == after
    assert list((await index(store) or Sizes()).entries) == after
    assert await store.verify("prod", "payments") == []

    # a head larger than the budget alone is kept (never the head), the rest goes
    await store.record(change(6, blob(40), max_bytes=two), locks)
    assert [v for v, _ in await stored_sizes(store)] == [6]
    # maxVersions still prunes by count within the budget
    await store.record(change(7, {"small": 1}, max_bytes=10**9), locks)
    await store.record(change(8, {"small": 2}, max_bytes=10**9, max_versions=2), locks)
    assert [v for v, _ in await stored_sizes(store)] == [7, 8]
    assert list((await store.usage("prod", "payments")).entries) == await stored_sizes(store)


@pytest.mark.parametrize("damage", ["missing", "unreadable", "stale"])
async def test_an_index_that_does_not_match_the_head_is_measured_again(
    env: Any, damage: str
) -> None:
    """An index from before it existed (missing), one a replica of an earlier release
    left behind (stale: it names an older head), or a damaged one: the next commit
    measures the records and retention prunes by their real sizes."""
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g, blob(10)), locks)
    key = store.keys.sizes("prod", "payments")
    if damage == "missing":
        await store.client.delete_range(key)
    elif damage == "unreadable":
        await store.client.put(key, b'{"format": 1, "versions": [[2, 5], [1, 5]]}')
    else:  # an index of an older head that claims tiny records
        await store.client.put(key, b'{"format":1,"versions":[[1,1],[2,1]]}')
    sizes = await stored_sizes(store)
    assert list((await store.usage("prod", "payments")).entries) == sizes
    budget = sizes[-1][1] * 2 + 100
    await store.record(change(4, blob(10), max_bytes=budget), locks)
    assert [v for v, _ in await stored_sizes(store)] == [3, 4]
    assert list((await index(store) or Sizes()).entries) == await stored_sizes(store)


async def test_a_purge_takes_its_versions_out_of_the_index(env: Any) -> None:
    store, locks = env
    await store.record(change(1), locks)
    async with locks.hold("prod", "payments") as mutex:
        await store.delete("prod", "payments", "uid-1", mutex, purge=False)
    await store.record(change(1, uid="uid-2"), locks)  # version 2
    await store.record(change(2, uid="uid-2"), locks)  # version 3
    assert [v for v, _ in (await index(store) or Sizes()).entries] == [1, 2, 3]
    async with locks.hold("prod", "payments") as mutex:
        await store.delete("prod", "payments", "uid-2", mutex, purge=True)
    assert list((await index(store) or Sizes()).entries) == await stored_sizes(store)
    assert [v for v, _ in await stored_sizes(store)] == [1]
    # a re-created Config continues from what remains, the index with it
    await store.record(change(1, uid="uid-3"), locks)
    assert [v for v, _ in (await index(store) or Sizes()).entries] == [1, 2]


def usage_cli(etcd: EtcdServer, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return admin_cli(etcd.endpoint, prefix, "usage", *args)


async def test_usage_lists_each_configs_bytes_and_the_total(
    env: Any, etcd_server: EtcdServer, prefix: str
) -> None:
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g, blob(2)), locks)
    orders_change = ChangeRequest(
        namespace="prod", name="orders", uid="uid-o", generation=1, data={"n": 1},
        owner_confirmed=True,
    )  # fmt: skip
    await store.record(orders_change, locks)
    payments = sum(size for _, size in await stored_sizes(store))
    start = store.keys.versions("prod", "orders")
    orders = sum(
        len(kv.value) for kv in (await store.client.range(start, store.keys.end(start))).kvs
    )

    proc = usage_cli(etcd_server, prefix, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["configs"] == [
        {"config": "prod/orders", "state": "live", "versions": 1, "oldest": 1, "head": 1,
         "bytes": orders},
        {"config": "prod/payments", "state": "live", "versions": 3, "oldest": 1, "head": 3,
         "bytes": payments},
    ]  # fmt: skip
    assert doc["total"] == {"configs": 2, "versions": 4, "bytes": orders + payments}
    assert doc["etcd"]["alarms"] == [] and doc["etcd"]["dbSize"] > 0

    by_bytes = json.loads(usage_cli(etcd_server, prefix, "-o", "json", "--sort-by", "bytes").stdout)
    assert [c["config"] for c in by_bytes["configs"]] == ["prod/payments", "prod/orders"]

    table = usage_cli(etcd_server, prefix)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CONFIG", "STATE", "VERSIONS", "RETAINED", "SIZE"]
    assert lines[2].split()[:4] == ["prod/payments", "live", "3", "1..3"]
    assert table.stderr.startswith("total: 2 Configs, 4 versions, ")

    one = json.loads(usage_cli(etcd_server, prefix, "prod/payments", "-o", "json").stdout)
    assert [c["config"] for c in one["configs"]] == ["prod/payments"]
    missing = usage_cli(etcd_server, prefix, "prod/nothing")
    assert missing.returncode == 4
    assert missing.stderr.startswith("error: prod/nothing has no history in the store")


async def test_an_index_claiming_records_larger_than_etcd_accepts_is_measured(env: Any) -> None:
    """An index written for the right head that claims a record larger than any etcd
    takes (its request limit) is no index: the records are measured, nothing is pruned."""
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g, blob(1)), locks)
    found = await index(store)
    assert found is not None and found.head is not None
    huge = Sizes(tuple((v, store.max_request_bytes + 1) for v, _ in found.entries), found.head)
    await store.client.put(store.keys.sizes("prod", "payments"), dump(huge.to_json()))
    await store.record(change(4, blob(1), max_bytes=1024 * 1024), locks)
    assert [v for v, _ in await stored_sizes(store)] == [1, 2, 3, 4]


async def test_an_index_that_would_overflow_etcds_request_limit_is_dropped_not_sent(
    tmp_path: Path,
) -> None:
    """With etcd's --max-request-bytes small, a long history's index plus a record that
    fits alone would make the commit's request too large: the index is dropped from that
    commit (the next one measures the records) and the version is recorded."""
    limit = 24 * 1024
    server = EtcdServer(
        data_dir=tmp_path / "etcd", name="tight", extra_args=(f"--max-request-bytes={limit}",)
    )
    server.start()
    try:
        server.wait_healthy(60)
        client = EtcdClient(EtcdSettings(endpoints=[server.endpoint]))
        session = await Session(client, ttl=10).start()
        locks = ConfigLocks(session, prefix="/p", identity="test")
        store = VersionedStore(client, prefix="/p", replica_id="r", max_request_bytes=limit)
        try:
            for g in range(1, 1601):  # 1,600 entries: an index of about 18 KB
                await store.record(change(g, {"g": g}, max_versions=100_000), locks)
            assert len((await index(store) or Sizes()).entries) == 1600
            # 8 KiB of data: record, head and index together are over etcd's limit
            result = await store.record(change(1601, blob(8), max_versions=100_000), locks)
            assert (result.recorded, result.version) == (True, 1601)
            assert await index(store) is None  # dropped, not sent
            assert len((await store.usage("prod", "payments")).entries) == 1601  # measured
        finally:
            await session.close()
            await client.close()
    finally:
        server.stop()


async def test_an_index_for_the_right_head_whose_entries_stop_short_is_measured(
    env: Any,
) -> None:
    """An index that names the head's recordChecksum but not the head's version as its
    newest entry (written by a faulty writer, or edited) is not the index of that head."""
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g, blob(1)), locks)
    found = await index(store)
    assert found is not None
    short = Sizes(found.entries[:-1], found.head)
    await store.client.put(store.keys.sizes("prod", "payments"), dump(short.to_json()))
    assert list((await store.usage("prod", "payments")).entries) == await stored_sizes(store)
