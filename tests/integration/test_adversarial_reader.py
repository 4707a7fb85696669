"""Adversarial review of the consumer-side reader (``etcdconfig.reader``) on a real etcd.

Each test records versions the way the operator does (``VersionedStore`` under
``ConfigLocks``), deletes with ``store.delete`` (Retain/Purge) and compacts with
``client.compact``. Failing tests document defects; passing ones pin hypotheses that held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.errors import CorruptRecord
from etcdconfig.etcd import EtcdClient
from etcdconfig.reader import ConfigReader
from etcdconfig.store import ChangeRequest, VersionedStore, VersionRecord

NS, NAME = "prod", "adversarial"


class Writer:
    def __init__(self, store: VersionedStore, locks: ConfigLocks) -> None:
        self.store, self.locks = store, locks
        self.generation = 0

    async def record(
        self, data: dict[str, Any], uid: str = "uid-1", *, max_versions: int = 100
    ) -> int:
        self.generation += 1
        result = await self.store.record(
            ChangeRequest(
                NS,
                NAME,
                uid=uid,
                generation=self.generation,
                data=data,
                owner_confirmed=True,
                max_versions=max_versions,
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


async def collect(
    reader: ConfigReader, count: int, *, timeout: float = 20.0, **kwargs: Any
) -> list[VersionRecord]:
    """The first ``count`` records the watch yields (fewer if it stalls for ``timeout``)."""
    out: list[VersionRecord] = []
    gen = reader.watch(NS, NAME, **kwargs)
    try:
        while len(out) < count:
            try:
                out.append(await asyncio.wait_for(anext(gen), timeout))
            except TimeoutError:
                break
    finally:
        with contextlib.suppress(Exception):
            await gen.aclose()
    return out


def ident(records: list[VersionRecord]) -> list[tuple[str, int]]:
    return [(r.uid, r.version) for r in records]


async def head_revision(client: EtcdClient, prefix: str) -> int:
    kv, _ = await client.get(f"{prefix}/configs/{NS}/{NAME}/head".encode())
    assert kv is not None
    return kv.mod_revision


# --- defects ----------------------------------------------------------------------------------


async def test_watch_resumed_from_a_revision_with_more_than_1000_head_changes_skips_none(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    """DEFECT: a watch resumed (``start_revision``) from before more than 1000 head
    changes silently skips a version at each response boundary.

    etcd sends a catching-up (unsynced) watcher at most 1000 revisions of events per
    response and stamps that response with the *current* store revision
    (``watchable_store.syncWatchers``: ``Revision: curRev``; the rest follows in the
    next responses). ``ConfigReader.watch`` does ``seen = max(seen, revision)`` after
    each response, so the first head PUT of the next response has ``mod_revision <=
    seen``: ``_unseen`` returns [] for it while ``standing`` moves onto it, and the
    next version's walk stops at ``standing``. Observed: versions 2..1001, 1003..1011
    (version 1002 never yielded, no error). Expected: 2..1011 each once, in order.
    Fix: do not advance ``seen`` past the events actually received (use the last
    event's mod_revision; the header revision only for event-less progress
    responses), and never move ``seen`` backwards (``seen = ev.kv.mod_revision``)."""
    await writer.record({"n": 0}, max_versions=5000)
    start = await head_revision(client, prefix) + 1
    total = 1010
    for n in range(1, total + 1):
        await writer.record({"n": n}, max_versions=5000)
    got = await collect(reader, total, timeout=15.0, start_revision=start)
    assert [r.version for r in got] == list(range(2, total + 2))


async def test_watch_resumed_across_compaction_yields_versions_retained_under_a_tombstone(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    """DEFECT: a watch resumed from revision R after compaction misses versions recorded
    after R when the head is now a tombstone (Config deleted with Retain).

    On ``Compacted`` the watch re-reads the head and calls ``_unseen``, which returns []
    for a deleted head instead of walking back from the version the tombstone points
    at; ``standing`` then becomes that version's record checksum, so when the Config is
    re-created its first version's walk stops there: versions 2 and 3 (recorded after
    R, retained, never pruned) are never yielded. The same happens on any re-read of
    the head (reconnect after ``EtcdUnavailable``). Observed: [(uid-2, 4)].
    Expected: [(uid-1, 2), (uid-1, 3), (uid-2, 4)].
    Fix: for a tombstone with a ``recordChecksum`` (Retain, or a Purge that left an
    earlier incarnation's versions), walk back from the record it names, as for a live
    head (only the tombstone itself is not a version)."""
    await writer.record({"n": 1})
    start = await head_revision(client, prefix) + 1  # the consumer applied version 1
    await writer.record({"n": 2})
    await writer.record({"n": 3})
    await writer.delete(purge=False)
    _, now = await client.get(b"/nothing")
    await client.compact(now)

    async def later() -> None:
        await asyncio.sleep(1.0)
        await writer.record({"n": 4}, uid="uid-2")

    task = asyncio.create_task(later())
    got = await collect(reader, 3, timeout=5.0, start_revision=start)
    await task
    assert ident(got) == [("uid-1", 2), ("uid-1", 3), ("uid-2", 4)]


async def test_watch_after_the_current_version_follows_a_purge_and_recreate_in_between(
    writer: Writer, reader: ConfigReader
) -> None:
    """DEFECT: the documented pattern ``record = current(); watch(after_version=
    record.version)`` leaves the consumer on a purged incarnation's data.

    ``after_version`` is compared by number only (``_unseen``: ``head.version <=
    after_version`` -> []; the walk stops at ``number <= after_version``). If the Config
    is purged and re-created between ``current()`` and the watch's first head read, the
    new incarnation reuses numbers <= ``after_version``: the watch yields nothing for
    it, so the application keeps applying uid-1's purged version 3 until uid-2 records
    a further version, and never sees uid-2's versions 1-2. Observed: [] (then only
    later versions). Expected: [(uid-2, 1), (uid-2, 2)].
    Fix: let the consumer pass the record (or its record checksum) it holds, e.g.
    ``watch(after=record)``, and treat ``after_version`` as "the record with this
    number in the current history": if the head's chain does not contain the held
    record (walk back by parentChecksum, compare record checksums), yield the head's
    history from the start of the current incarnation (or at least the head)."""
    for n in (1, 2, 3):
        await writer.record({"n": n})
    held = await reader.current(NS, NAME)
    assert (held.uid, held.version) == ("uid-1", 3)
    await writer.delete(purge=True)
    await writer.record({"n": "new-1"}, uid="uid-2")
    await writer.record({"n": "new-2"}, uid="uid-2")
    got = await collect(reader, 2, timeout=3.0, after_version=held.version)
    assert ident(got) == [("uid-2", 1), ("uid-2", 2)]


async def test_version_serves_a_record_whose_data_and_checksum_were_rewritten_together(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    """DEFECT (against the consumer promise; the docs only promise a data-vs-checksum
    check for ``version()``): ``version(n)`` never checks the record against anything
    that points at it, so a record rewritten in etcd with new data *and* a matching new
    ``checksum`` is served, even when it is the head's version and ``current()`` of the
    same moment refuses it with ``CorruptRecord``. Observed: version() returns the
    forged data. Expected: CorruptRecord (as current() raises).
    Fix: in ``version()``, read the head (and, for an older version, the successor's
    ``parentChecksum`` when it exists) at the same revision and pass the record
    checksum they name as ``expected_record_checksum``."""
    from etcdconfig.canonical import checksum

    await writer.record({"limit": 1})
    await writer.record({"limit": 2})
    key = f"{prefix}/configs/{NS}/{NAME}/versions/{2:020d}".encode()
    kv, _ = await client.get(key)
    assert kv is not None
    record = json.loads(kv.value)
    record["data"] = {"limit": 1000}
    record["checksum"] = checksum(record["data"])
    await client.put(key, json.dumps(record).encode())
    with pytest.raises(CorruptRecord):
        await reader.current(NS, NAME)
    with pytest.raises(CorruptRecord):
        await reader.version(NS, NAME, 2)  # observed: returns data {"limit": 1000}


# --- hypotheses that held ---------------------------------------------------------------------


async def test_identical_data_in_two_incarnations_gives_distinct_record_checksums(
    writer: Writer, reader: ConfigReader
) -> None:
    """Held: the record checksum names one record: the same data recorded by a purged
    incarnation and its successor under the same number differ (uid, recordedAt,
    fencingRevision), so the cache never serves one for the other."""
    await writer.record({"same": True})
    first = await reader.current(NS, NAME)
    await writer.delete(purge=True)
    await writer.record({"same": True}, uid="uid-2")
    second = await reader.current(NS, NAME)
    assert first.version == second.version == 1
    assert first.checksum == second.checksum
    assert first.record_checksum() != second.record_checksum()
    assert first.fencing_revision != second.fencing_revision
    assert (second.uid, (await reader.version(NS, NAME, 1)).uid) == ("uid-2", "uid-2")


async def test_a_tampered_record_in_the_middle_of_a_resumed_walk_is_never_yielded(
    writer: Writer, reader: ConfigReader, client: EtcdClient, prefix: str
) -> None:
    """Held: after compaction the walk verifies each parent against its successor's
    parentChecksum: a record rewritten consistently (data and checksum) in the middle
    raises CorruptRecord and nothing of the walk is yielded."""
    from etcdconfig.canonical import checksum

    await writer.record({"n": 1})
    start = await head_revision(client, prefix) + 1
    for n in (2, 3, 4):
        await writer.record({"n": n})
    key = f"{prefix}/configs/{NS}/{NAME}/versions/{3:020d}".encode()
    kv, _ = await client.get(key)
    assert kv is not None
    record = json.loads(kv.value)
    record["data"] = {"n": 333}
    record["checksum"] = checksum(record["data"])
    await client.put(key, json.dumps(record).encode())
    _, now = await client.get(b"/nothing")
    await client.compact(now)
    got: list[VersionRecord] = []

    async def drain() -> None:
        async for r in reader.watch(NS, NAME, start_revision=start):
            got.append(r)

    with pytest.raises(CorruptRecord):
        await drain()
    assert got == []


async def test_live_watch_across_purge_recreate_with_reused_numbers_and_retention(
    writer: Writer, reader: ConfigReader
) -> None:
    """Held: a live watch yields every version of both incarnations, in order, though
    uid-2 reuses numbers 1-3 and its retention prunes its own early versions."""
    got: list[VersionRecord] = []

    async def consume() -> None:
        async for r in reader.watch(NS, NAME):
            got.append(r)

    await writer.record({"n": 1})
    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    await writer.record({"n": 2})
    await writer.record({"n": 3})
    await writer.delete(purge=True)
    for n in (1, 2, 3, 4):
        await writer.record({"m": n}, uid="uid-2", max_versions=2)
    for _ in range(50):
        if len(got) >= 7:
            break
        await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert ident(got) == [
        ("uid-1", 1),
        ("uid-1", 2),
        ("uid-1", 3),
        ("uid-2", 1),
        ("uid-2", 2),
        ("uid-2", 3),
        ("uid-2", 4),
    ]
