"""The versioned store on a real etcd: commit, history, retention, deletion, integrity."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tests.integration.helpers import assert_history_invariants

from etcdconfig.canonical import checksum
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import (
    CorruptRecord,
    EtcdUnavailable,
    InvalidConfig,
    OwnerUnconfirmed,
    StaleIncarnation,
)
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import ChangeRequest, VersionedStore


def change(gen: int, data: dict[str, Any] | None = None, **kw: Any) -> ChangeRequest:
    return ChangeRequest(
        namespace="prod",
        name="payments",
        uid=kw.pop("uid", "uid-1"),
        generation=gen,
        data=data if data is not None else {"replicas": gen},
        # the tests play the API server: the uid they commit owns the name
        owner_confirmed=kw.pop("owner_confirmed", True),
        **kw,
    )


@pytest.fixture
async def env(client: EtcdClient, prefix: str) -> Any:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="test")
    store = VersionedStore(client, prefix=prefix, replica_id="test-replica")
    yield store, locks
    await session.close()


async def test_first_commit_records_version_one_with_exact_record(
    env: Any, client: EtcdClient, prefix: str
) -> None:
    store, locks = env
    result = await store.record(
        change(1, {"b": 1, "a": [1, 2]}, author={"manager": "kubectl"}), locks
    )
    assert result.recorded
    assert result.version == 1
    raw, _ = await client.get(f"{prefix}/configs/prod/payments/versions/{1:020d}".encode())
    assert raw is not None
    record = json.loads(raw.value)
    assert set(record) == {
        "format",
        "version",
        "uid",
        "generation",
        "checksum",
        "parentChecksum",
        "data",
        "recordedAt",
        "recordedBy",
        "author",
        "origin",
        "schema",
        "schemaChecksum",
        "fencingRevision",
    }
    assert record["format"] == 1
    assert record["checksum"] == checksum({"a": [1, 2], "b": 1})
    assert record["parentChecksum"] is None
    assert record["recordedBy"] == "test-replica"
    assert record["origin"] == {"kind": "apply"}
    assert record["schema"] is None and record["schemaChecksum"] is None  # no schema given
    assert record["fencingRevision"] > 0
    head = json.loads((await client.get(f"{prefix}/configs/prod/payments/head".encode()))[0].value)  # type: ignore[union-attr]
    assert head["version"] == 1
    assert (
        head["recordChecksum"] == (await store.get_version("prod", "payments", 1)).record_checksum()
    )
    # the lock was released by the commit transaction itself
    lock_keys = await client.range(f"{prefix}/locks/".encode(), f"{prefix}/locks0".encode())
    assert lock_keys.kvs == ()


async def test_same_generation_twice_is_recorded_once(env: Any) -> None:
    store, locks = env
    first = await store.record(change(1), locks)
    again = await store.record(change(1), locks)
    older = await store.record(change(0), locks)
    assert (first.recorded, again.recorded, older.recorded) == (True, False, False)
    assert again.version == older.version == 1


async def test_versions_chain_and_history_pages_newest_first(env: Any) -> None:
    store, locks = env
    for g in range(1, 8):
        await store.record(change(g), locks)
    page1, cursor = await store.history("prod", "payments", limit=3)
    assert [r.version for r in page1] == [7, 6, 5]
    page2, cursor2 = await store.history("prod", "payments", limit=3, before=cursor)
    assert [r.version for r in page2] == [4, 3, 2]
    page3, cursor3 = await store.history("prod", "payments", limit=3, before=cursor2)
    assert [r.version for r in page3] == [1]
    assert cursor3 is None
    v3 = await store.get_version("prod", "payments", 3)
    v2 = await store.get_version("prod", "payments", 2)
    assert v3.parent_checksum == v2.record_checksum()
    assert await store.verify("prod", "payments") == []


async def test_retention_keeps_max_versions_and_never_the_head(
    env: Any, client: EtcdClient, prefix: str
) -> None:
    store, locks = env
    for g in range(1, 7):
        await store.record(change(g, max_versions=3), locks)
    records, _ = await store.history("prod", "payments", limit=100)
    assert [r.version for r in records] == [6, 5, 4]
    await store.record(change(7, max_versions=1), locks)
    records, _ = await store.history("prod", "payments", limit=100)
    assert [r.version for r in records] == [7]
    assert await store.verify("prod", "payments") == []


async def test_invalid_data_records_nothing_and_lists_every_error(env: Any) -> None:
    store, locks = env
    schema = {
        "type": "object",
        "properties": {"replicas": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
        "required": ["name"],
    }
    await store.record(change(1, {"replicas": 2, "name": "a"}, schema=schema), locks)
    with pytest.raises(InvalidConfig) as err:
        await store.record(change(2, {"replicas": 0}, schema=schema), locks)
    assert [str(i) for i in err.value.issues] == [
        "data: missing required property 'name'",
        "data.replicas: violates minimum 1",
    ]
    head = await store.head("prod", "payments")
    assert head is not None and (head.version, head.generation) == (1, 1)


async def test_record_over_the_request_limit_is_refused_with_size_and_limit(env: Any) -> None:
    store, locks = env
    store.max_request_bytes = 10_000
    with pytest.raises(InvalidConfig, match=r"over etcd's request limit of 10000 bytes") as err:
        await store.record(change(1, {"blob": "x" * 20_000}), locks)
    assert err.value.reason == "TooLarge"
    assert await store.head("prod", "payments") is None


async def test_retain_delete_tombstones_and_recreate_continues_numbering(env: Any) -> None:
    store, locks = env
    await store.record(change(1), locks)
    await store.record(change(2), locks)
    async with locks.hold("prod", "payments") as mutex:
        await store.delete("prod", "payments", "uid-1", mutex, purge=False)
    head = await store.head("prod", "payments")
    assert head is not None and head.deleted and head.version == 2
    # a late event of the deleted incarnation writes nothing
    with pytest.raises(StaleIncarnation):
        await store.record(change(3), locks)
    result = await store.record(change(1, uid="uid-2"), locks)
    assert (result.version, result.head.uid) == (3, "uid-2")
    gens = await assert_history_invariants(store.client, store.keys.prefix, "prod", "payments")
    assert gens == [1, 2, 1]


async def test_purge_removes_history_and_blocks_late_events(env: Any) -> None:
    store, locks = env
    await store.record(change(1), locks)
    async with locks.hold("prod", "payments") as mutex:
        await store.delete("prod", "payments", "uid-1", mutex, purge=True)
    records, _ = await store.history("prod", "payments")
    assert records == []
    with pytest.raises(StaleIncarnation):
        await store.record(change(2), locks)
    result = await store.record(change(1, uid="uid-2"), locks)
    assert result.version == 1
    assert (await store.get_version("prod", "payments", 1)).parent_checksum is None


async def test_other_incarnation_is_refused_until_the_owner_is_confirmed(env: Any) -> None:
    store, locks = env
    await store.record(change(5, uid="old"), locks)
    with pytest.raises(OwnerUnconfirmed, match="the store has no live record of uid new"):
        await store.record(change(1, uid="new", owner_confirmed=False), locks)
    result = await store.record(change(1, uid="new", owner_confirmed=True), locks)
    assert result.version == 2
    # "old" vanished without a tombstone: the newer uid ended it, for good
    with pytest.raises(StaleIncarnation, match="uid old was deleted"):
        await store.record(change(6, uid="old"), locks)
    [old, new] = await store.incarnations("prod", "payments")
    assert (old.uid, old.first_version, old.last_version, old.deleted, old.superseded_by) == (
        "old",
        1,
        1,
        True,
        "new",
    )
    assert (new.uid, new.first_version, new.deleted) == ("new", 2, False)


class FlakyClient(EtcdClient):
    """Lands the first commit transaction, then reports its outcome as unknown."""

    def __init__(self, settings: EtcdSettings) -> None:
        super().__init__(settings)
        self.fail_next_txn = True

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().txn(*args, **kwargs)
        is_commit = any(b"/versions/" in getattr(op, "key", b"") for op in args[1])
        if self.fail_next_txn and is_commit:
            self.fail_next_txn = False
            raise EtcdUnavailable("simulated timeout after the commit landed")
        return result


async def test_commit_with_unknown_outcome_is_retried_without_duplicating(
    etcd_server: EtcdServer, prefix: str
) -> None:
    client = FlakyClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    async with Session(client, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix)
        store = VersionedStore(client, prefix=prefix)
        result = await store.record(change(1), locks)
        assert result.recorded and result.attempts == 2 and result.version == 1
        assert store.stats["unknown_outcomes"] == 1
        await assert_history_invariants(client, prefix, "prod", "payments", final_generation=1)
    await client.close()


async def test_sixteen_concurrent_committers_record_a_gapless_chain(
    etcd_server: EtcdServer, prefix: str
) -> None:
    clients = [EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint])) for _ in range(16)]
    sessions = [await Session(c, ttl=10).start() for c in clients]
    try:

        async def committer(i: int) -> None:
            locks = ConfigLocks(sessions[i], prefix=prefix, identity=f"r{i}")
            store = VersionedStore(clients[i], prefix=prefix, replica_id=f"r{i}")
            for g in range(i * 4 + 1, i * 4 + 5):
                await store.record(change(g), locks)

        await asyncio.gather(*(committer(i) for i in range(16)))
        gens = await assert_history_invariants(
            clients[0], prefix, "prod", "payments", final_generation=64
        )
        assert gens[-1] == 64
    finally:
        for s, c in zip(sessions, clients, strict=True):
            await s.close()
            await c.close()


async def test_verify_finds_tampered_data_fields_and_missing_versions(
    env: Any, client: EtcdClient, prefix: str
) -> None:
    store, locks = env
    for g in range(1, 6):
        await store.record(change(g), locks)
    key = lambda v: f"{prefix}/configs/prod/payments/versions/{v:020d}".encode()  # noqa: E731
    # 1. rewrite v2's data, keeping its checksum field
    rec = json.loads((await client.get(key(2)))[0].value)  # type: ignore[union-attr]
    rec["data"] = {"replicas": 99}
    await client.put(key(2), json.dumps(rec).encode())
    # 2. change a non-data field of v4 (its author): the chain breaks at v5
    rec4 = json.loads((await client.get(key(4)))[0].value)  # type: ignore[union-attr]
    rec4["author"] = {"manager": "mallory"}
    await client.put(key(4), json.dumps(rec4).encode())
    problems = [(p.version, p.kind) for p in await store.verify("prod", "payments")]
    assert problems == [(2, "checksum-mismatch"), (3, "chain-broken"), (5, "chain-broken")]
    # 3. remove v3 entirely
    await client.delete_range(key(3))
    problems = [(p.version, p.kind) for p in await store.verify("prod", "payments")]
    assert problems == [(2, "checksum-mismatch"), (4, "missing-versions"), (5, "chain-broken")]


async def test_verify_reports_garbage_and_unknown_formats_without_crashing(
    env: Any, client: EtcdClient, prefix: str
) -> None:
    store, locks = env
    await store.record(change(1), locks)
    await client.put(f"{prefix}/configs/prod/payments/versions/{2:020d}".encode(), b"{not json")
    await client.put(
        f"{prefix}/configs/prod/payments/versions/{3:020d}".encode(),
        json.dumps({"format": 9, "version": 3}).encode(),
    )
    problems = await store.verify("prod", "payments")
    assert [(p.version, p.kind) for p in problems] == [
        (2, "corrupt-record"),
        (3, "corrupt-record"),
    ]
    assert "format 9; this etcdconfig reads format 1 only" in problems[1].message
    # the store never writes over a key it did not expect
    with pytest.raises(CorruptRecord, match="refusing to overwrite"):
        await store.record(change(2), locks)
    assert (await client.get(f"{prefix}/configs/prod/payments/versions/{2:020d}".encode()))[
        0
    ].value == b"{not json"  # type: ignore[union-attr]
