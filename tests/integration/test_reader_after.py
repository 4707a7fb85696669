"""``watch(after=record)``: the consumer names the record it holds, not just its number;
and ``version(n)`` holds an older version to its successor's ``parentChecksum``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from tests.integration.test_adversarial_reader import (
    NAME,
    NS,
    Writer,
    collect,
    ident,
)

from etcdconfig.canonical import checksum
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.errors import CorruptRecord
from etcdconfig.etcd import EtcdClient
from etcdconfig.reader import ConfigReader
from etcdconfig.store import VersionedStore


@pytest.fixture
async def writer(client: EtcdClient, prefix: str) -> AsyncIterator[Writer]:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="writer")
    yield Writer(VersionedStore(client, prefix=prefix, replica_id="writer"), locks)
    await session.close()


@pytest.fixture
def reader(client: EtcdClient, prefix: str) -> ConfigReader:
    return ConfigReader(client, prefix)


async def test_after_a_record_follows_a_retained_incarnation_into_the_next(
    writer: Writer, reader: ConfigReader
) -> None:
    await writer.record({"n": 1})
    await writer.record({"n": 2})
    held = await reader.current(NS, NAME)
    await writer.delete(purge=False)
    await writer.record({"n": 3}, uid="uid-2")
    await writer.record({"n": 4}, uid="uid-2")
    got = await collect(reader, 2, timeout=3.0, after=held)
    assert ident(got) == [("uid-2", 3), ("uid-2", 4)]


async def test_after_a_purged_record_whose_number_came_back_yields_the_new_incarnation(
    writer: Writer, reader: ConfigReader
) -> None:
    for n in (1, 2, 3):
        await writer.record({"n": n})
    held = await reader.current(NS, NAME)
    await writer.delete(purge=True)
    for n in (1, 2, 3):  # the new incarnation reaches the held number again
        await writer.record({"m": n}, uid="uid-2")
    got = await collect(reader, 3, timeout=3.0, after=held)
    assert ident(got) == [("uid-2", 1), ("uid-2", 2), ("uid-2", 3)]
    # the same with the record checksum the consumer kept
    got = await collect(
        reader,
        3,
        timeout=3.0,
        after_record_checksum=held.record_checksum(),
        after_version=held.version,
    )
    assert ident(got) == [("uid-2", 1), ("uid-2", 2), ("uid-2", 3)]


async def test_after_the_current_record_yields_only_newer_versions(
    writer: Writer, reader: ConfigReader
) -> None:
    await writer.record({"n": 1})
    await writer.record({"n": 2})
    held = await reader.current(NS, NAME)
    assert await collect(reader, 1, timeout=1.0, after=held) == []
    got = await collect(reader, 1, timeout=1.0, after=await reader.version(NS, NAME, 1))
    assert ident(got) == [("uid-1", 2)]


async def test_version_refuses_an_older_record_its_successor_does_not_name(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    for n in (1, 2, 3):
        await writer.record({"limit": n})
    key = f"{prefix}/configs/{NS}/{NAME}/versions/{1:020d}".encode()
    kv, _ = await client.get(key)
    assert kv is not None
    record = json.loads(kv.value)
    record["data"] = {"limit": 1000}
    record["checksum"] = checksum(record["data"])
    await client.put(key, json.dumps(record).encode())
    with pytest.raises(CorruptRecord, match="version 1: record checksum mismatch"):
        await reader.version(NS, NAME, 1)
    assert (await reader.version(NS, NAME, 2)).data == {"limit": 2}
    assert reader.cached() == 1  # the successor read for its pointer is not cached
