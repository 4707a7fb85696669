"""The consumer-side reader on a real etcd: current and given versions, the cache of
immutable versions, checksum verification on load, and the watch of new versions
(tombstones, purge and re-create, compaction)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from etcdconfig import metrics
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import CorruptRecord, NotFound
from etcdconfig.etcd import EtcdClient
from etcdconfig.reader import ConfigReader
from etcdconfig.settings import Settings
from etcdconfig.store import ChangeRequest, VersionedStore, VersionRecord

NS, NAME = "prod", "payments"
ROOT = Path(__file__).resolve().parents[2]


class Writer:
    """Records versions the way the operator does (lock, fenced commit)."""

    def __init__(self, store: VersionedStore, locks: ConfigLocks) -> None:
        self.store, self.locks = store, locks
        self.generation = 0

    async def record(self, data: dict[str, Any], uid: str = "uid-1") -> int:
        self.generation += 1
        result = await self.store.record(
            ChangeRequest(
                NS,
                NAME,
                uid=uid,
                generation=self.generation,
                data=data,
                # the test is the API server here: the uid it names owns the Config
                owner_confirmed=True,
            ),
            self.locks,
        )
        assert result.recorded
        return result.version

    async def delete(self, uid: str = "uid-1", *, purge: bool) -> None:
        async with self.locks.hold(NS, NAME) as mutex:
            await self.store.delete(NS, NAME, uid, mutex, purge=purge)
        self.generation = 0


@pytest.fixture
async def writer(client: EtcdClient, prefix: str) -> AsyncIterator[Writer]:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="writer")
    yield Writer(VersionedStore(client, prefix=prefix, replica_id="writer"), locks)
    await session.close()


@pytest.fixture
def reader(client: EtcdClient, prefix: str) -> ConfigReader:
    return ConfigReader(client, prefix)


def counter(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, {"cache": "reader"})
    return value or 0.0


async def test_current_and_given_versions_are_read_and_immutable_ones_cached(
    writer: Writer, reader: ConfigReader
) -> None:
    for n in (1, 2, 3):
        await writer.record({"replicas": n})
    hits0, misses0 = (
        counter("etcdconfig_cache_hits_total"),
        counter("etcdconfig_cache_misses_total"),
    )

    cur = await reader.current(NS, NAME)
    assert (cur.version, cur.data, cur.uid) == (3, {"replicas": 3}, "uid-1")
    assert (reader.hits, reader.misses) == (0, 1)
    assert await reader.current(NS, NAME) is cur  # head re-read, version from the cache
    assert (reader.hits, reader.misses) == (1, 1)

    v1 = await reader.version(NS, NAME, 1)
    assert (v1.version, v1.data, v1.parent_checksum) == (1, {"replicas": 1}, None)
    assert await reader.version(NS, NAME, 1) is v1
    assert (reader.hits, reader.misses) == (2, 2)
    assert counter("etcdconfig_cache_hits_total") - hits0 == 2
    assert counter("etcdconfig_cache_misses_total") - misses0 == 2
    assert reader.cached() == 2


async def test_missing_configs_and_versions_raise_not_found(
    writer: Writer, reader: ConfigReader
) -> None:
    with pytest.raises(NotFound, match="prod/payments has no recorded version"):
        await reader.current(NS, NAME)
    await writer.record({"a": 1})
    with pytest.raises(NotFound, match="prod/payments has no version 9 in the store"):
        await reader.version(NS, NAME, 9)
    with pytest.raises(NotFound, match="versions start at 1"):
        await reader.version(NS, NAME, 0)
    await writer.delete(purge=False)
    with pytest.raises(NotFound, match="was deleted"):
        await reader.current(NS, NAME)
    assert (await reader.version(NS, NAME, 1)).data == {"a": 1}  # Retain keeps history


async def test_cache_is_bounded_least_recently_used_first(
    writer: Writer, client: EtcdClient, prefix: str
) -> None:
    for n in range(1, 5):
        await writer.record({"n": n})
    reader = ConfigReader(client, prefix, cache_size=2)
    for v in (1, 2, 1, 3):  # 2 is now the least recently used
        await reader.version(NS, NAME, v)
    assert reader.cached() == 2
    await reader.version(NS, NAME, 1)
    assert (reader.hits, reader.misses) == (2, 3)
    await reader.version(NS, NAME, 2)
    assert (reader.hits, reader.misses) == (2, 4)
    uncached = ConfigReader(client, prefix, cache_size=0)
    await uncached.version(NS, NAME, 1)
    await uncached.version(NS, NAME, 1)
    assert (uncached.hits, uncached.misses, uncached.cached()) == (0, 2, 0)


async def _tamper(client: EtcdClient, prefix: str, version: int, **fields: Any) -> None:
    key = f"{prefix}/configs/{NS}/{NAME}/versions/{version:020d}".encode()
    kv, _ = await client.get(key)
    assert kv is not None
    record = json.loads(kv.value)
    record.update(fields)
    await client.put(key, json.dumps(record).encode())


async def test_a_tampered_record_is_refused_and_never_cached(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    await writer.record({"limit": 10})
    await writer.record({"limit": 20})
    await _tamper(client, prefix, 1, data={"limit": 1000})
    with pytest.raises(CorruptRecord, match="version 1: data checksum mismatch"):
        await reader.version(NS, NAME, 1)
    assert reader.cached() == 0
    # data intact, another field edited: only the head's record checksum shows it
    await _tamper(client, prefix, 2, author={"manager": "mallory"})
    assert (await reader.version(NS, NAME, 2)).data == {"limit": 20}
    reader.clear_cache()
    with pytest.raises(CorruptRecord, match="version 2: record checksum mismatch"):
        await reader.current(NS, NAME)


async def test_a_version_changed_in_etcd_after_it_was_cached_is_not_served_from_the_cache(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    await writer.record({"limit": 10})
    await writer.record({"limit": 20})
    assert (await reader.version(NS, NAME, 1)).data == {"limit": 10}
    assert reader.cached() == 1
    await _tamper(client, prefix, 1, data={"limit": 1000})
    with pytest.raises(
        CorruptRecord, match=r"version 1: data checksum mismatch .* `etcdconfig verify`"
    ):
        await reader.version(NS, NAME, 1)


async def test_watch_refuses_a_missed_version_its_successor_does_not_name_as_parent(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    for n in (1, 2, 3):
        await writer.record({"v": n})
    # the data of version 2 still matches its checksum; version 3's parentChecksum does not
    await _tamper(client, prefix, 2, origin={"kind": "rollback", "fromVersion": 1})
    versions = reader.watch(NS, NAME, after_version=1)
    try:
        with pytest.raises(CorruptRecord, match="version 2: record checksum mismatch"):
            await anext(versions)
    finally:
        await versions.aclose()


class Watcher:
    """Runs ``reader.watch`` in a task and hands over what it yields."""

    def __init__(self, reader: ConfigReader, **kwargs: Any) -> None:
        self.queue: asyncio.Queue[VersionRecord] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(reader, kwargs))

    async def _run(self, reader: ConfigReader, kwargs: dict[str, Any]) -> None:
        async for record in reader.watch(NS, NAME, **kwargs):
            await self.queue.put(record)

    async def next(self, timeout: float = 10.0) -> VersionRecord:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def versions(self, n: int) -> list[tuple[int, Any]]:
        return [((r := await self.next()).version, r.data) for _ in range(n)]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_watch_yields_current_then_each_new_version_once_skipping_tombstones(
    writer: Writer, reader: ConfigReader
) -> None:
    await writer.record({"v": 1})
    w = Watcher(reader)
    try:
        assert await w.versions(1) == [(1, {"v": 1})]
        await writer.record({"v": 2})
        await writer.record({"v": 3})
        assert await w.versions(2) == [(2, {"v": 2}), (3, {"v": 3})]
        await writer.delete(purge=False)  # a tombstone is not a version
        await writer.record({"v": 4}, uid="uid-2")  # re-created: numbering continues
        record = await w.next()
        assert (record.version, record.uid, record.data) == (4, "uid-2", {"v": 4})
        assert w.queue.empty()
    finally:
        await w.close()


async def test_watch_of_a_config_not_yet_recorded_starts_at_version_one(
    writer: Writer, reader: ConfigReader
) -> None:
    w = Watcher(reader)
    try:
        await asyncio.sleep(0.2)  # let the watch start before the first write
        await writer.record({"first": True})
        assert await w.versions(1) == [(1, {"first": True})]
    finally:
        await w.close()


async def test_watch_after_version_yields_only_newer_ones(
    writer: Writer, reader: ConfigReader
) -> None:
    for n in (1, 2, 3):
        await writer.record({"v": n})
    w = Watcher(reader, after_version=1)
    try:
        # the versions the consumer missed come first, in order, then new ones
        assert await w.versions(2) == [(2, {"v": 2}), (3, {"v": 3})]
        await writer.record({"v": 4})
        assert await w.versions(1) == [(4, {"v": 4})]
    finally:
        await w.close()


async def test_watch_resumes_after_its_revision_was_compacted(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    await writer.record({"v": 1})
    head_key = f"{prefix}/configs/{NS}/{NAME}/head".encode()
    _, seen_revision = await client.get(head_key)
    await writer.record({"v": 2})
    await writer.record({"v": 3})
    _, now = await client.get(head_key)
    await client.compact(now)
    # a consumer that kept revision `seen_revision` and holds version 1 comes back
    w = Watcher(reader, after_version=1, start_revision=seen_revision + 1)
    try:
        assert await w.versions(2) == [(2, {"v": 2}), (3, {"v": 3})]
        await writer.record({"v": 4})
        assert await w.versions(1) == [(4, {"v": 4})]
        assert w.queue.empty()
    finally:
        await w.close()


async def test_watch_and_cache_follow_a_purge_and_recreate(
    writer: Writer, reader: ConfigReader
) -> None:
    await writer.record({"old": 1})
    w = Watcher(reader)
    try:
        assert await w.versions(1) == [(1, {"old": 1})]
        assert (await reader.version(NS, NAME, 1)).uid == "uid-1"  # cached
        await writer.delete(purge=True)
        await writer.record({"new": 1}, uid="uid-2")  # nothing remained: a new version 1
        record = await w.next()
        assert (record.version, record.uid, record.data) == (1, "uid-2", {"new": 1})
        assert (await reader.current(NS, NAME)).uid == "uid-2"
        assert (await reader.version(NS, NAME, 1)).data == {"new": 1}
    finally:
        await w.close()


async def _purged_incarnation_between_two_others(writer: Writer) -> None:
    """uid-a records 1, 2 and is deleted under Retain (its history stays); uid-b records
    3, 4 (continuing the numbering) and the test then purges it."""
    await writer.record({"a": 1}, uid="uid-a")
    await writer.record({"a": 2}, uid="uid-a")
    await writer.delete("uid-a", purge=False)
    await writer.record({"b": 3}, uid="uid-b")
    await writer.record({"b": 4}, uid="uid-b")


def seen(records: list[VersionRecord]) -> list[tuple[int, str, Any]]:
    return [(r.version, r.uid, r.data) for r in records]


async def test_the_cache_never_serves_a_purged_incarnations_version_under_a_reused_number(
    writer: Writer, reader: ConfigReader
) -> None:
    await _purged_incarnation_between_two_others(writer)
    cached = [await reader.version(NS, NAME, v) for v in (1, 2, 3, 4)]
    assert seen(cached)[2:] == [(3, "uid-b", {"b": 3}), (4, "uid-b", {"b": 4})]
    assert (await reader.current(NS, NAME)).uid == "uid-b"
    await writer.delete("uid-b", purge=True)  # 3 and 4 go; the tombstone points at 2
    with pytest.raises(NotFound, match="has no version 4"):
        await reader.version(NS, NAME, 4)
    await writer.record({"c": 3}, uid="uid-c")  # continues from 2: a new version 3
    await writer.record({"c": 4}, uid="uid-c")
    now = [await reader.version(NS, NAME, v) for v in (1, 2, 3, 4)]
    assert seen(now) == [
        (1, "uid-a", {"a": 1}),
        (2, "uid-a", {"a": 2}),
        (3, "uid-c", {"c": 3}),
        (4, "uid-c", {"c": 4}),
    ]
    assert now[:2] == cached[:2]  # uid-a's kept versions are still the cached ones
    current = await reader.current(NS, NAME)
    assert (current.version, current.uid, current.data) == (4, "uid-c", {"c": 4})


async def test_watch_yields_a_new_incarnation_that_reuses_purged_version_numbers(
    writer: Writer, reader: ConfigReader
) -> None:
    await writer.record({"a": 1}, uid="uid-a")
    await writer.record({"a": 2}, uid="uid-a")
    w = Watcher(reader)
    try:
        assert await w.versions(1) == [(2, {"a": 2})]
        await writer.delete("uid-a", purge=False)
        await writer.record({"b": 3}, uid="uid-b")
        await writer.record({"b": 4}, uid="uid-b")
        assert await w.versions(2) == [(3, {"b": 3}), (4, {"b": 4})]
        await writer.delete("uid-b", purge=True)
        await writer.record({"c": 3}, uid="uid-c")
        await writer.record({"c": 4}, uid="uid-c")
        # in order, so anything else (uid-a's versions again) would come first
        assert seen([await w.next(), await w.next()]) == [
            (3, "uid-c", {"c": 3}),
            (4, "uid-c", {"c": 4}),
        ]
    finally:
        await w.close()


async def test_watch_resumed_across_a_compaction_yields_the_incarnation_after_a_purge(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    await _purged_incarnation_between_two_others(writer)
    head_key = f"{prefix}/configs/{NS}/{NAME}/head".encode()
    _, kept_revision = await client.get(head_key)  # the consumer holds uid-b's version 4
    await writer.delete("uid-b", purge=True)
    await writer.record({"c": 3}, uid="uid-c")
    await writer.record({"c": 4}, uid="uid-c")
    _, now = await client.get(head_key)
    await client.compact(now)  # the tombstone's revision is gone: only the new head is left
    w = Watcher(reader, after_version=4, start_revision=kept_revision + 1)
    try:
        assert seen([await w.next(), await w.next()]) == [
            (3, "uid-c", {"c": 3}),
            (4, "uid-c", {"c": 4}),
        ]
        await writer.record({"c": 5}, uid="uid-c")
        assert seen([await w.next()]) == [(5, "uid-c", {"c": 5})]
    finally:
        await w.close()


async def test_reader_made_from_settings_owns_and_closes_its_client(
    writer: Writer, etcd_server: EtcdServer, prefix: str
) -> None:
    await writer.record({"from": "settings"})
    settings = Settings(etcd_endpoints=[etcd_server.endpoint], etcd_prefix=prefix)
    async with ConfigReader(settings) as r:
        assert r.keys.prefix == prefix
        assert (await r.current(NS, NAME)).data == {"from": "settings"}


def test_reader_exports_only_the_reader() -> None:
    from etcdconfig import reader as module

    assert module.__all__ == ["ConfigReader"]


async def test_example_app_prints_the_current_version(
    writer: Writer, etcd_server: EtcdServer, prefix: str
) -> None:
    await writer.record({"currency": "EUR"})
    root = ROOT
    env = {
        **os.environ,
        "PYTHONPATH": str(root / "operator"),
        "ETCDCONFIG_ETCD_ENDPOINTS": etcd_server.endpoint,
        "ETCDCONFIG_ETCD_PREFIX": prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(root / "examples" / "reader_app.py"),
        f"{NS}/{NAME}",
        "--once",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    first, *rest = out.decode().splitlines()
    assert first.startswith("version 1 (sha256:")
    assert json.loads("\n".join(rest)) == {"currency": "EUR"}
