"""Adversarial review of the usage index ``{p}/configs/{ns}/{name}/sizes`` and retention
by ``spec.history.maxBytes`` (commit 3544918), on a real etcd.

``test_review_*`` proved a defect of the code as reviewed (each fixed, with a mutant
that it kills: M88-M91); ``test_held_*`` are attacks the code withstood, kept as
regression tests.

An "old release" replica (rolling upgrade) is the store with every write of the index
dropped from its transactions (the release before the index, 3eb8712, wrote exactly
the rest): it takes the same locks and writes the same records, heads and
incarnations, and prunes by count, but never writes the index.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from tests.integration.helpers import admin_cli
from tests.integration.test_store import change

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import EtcdUnavailable, InvalidConfig
from etcdconfig.etcd import DeleteRange, EtcdClient, EtcdSettings, Put
from etcdconfig.models import DEFAULT_MAX_BYTES, MAX_VERSIONS_LIMIT
from etcdconfig.store import ChangeRequest, VersionedStore
from etcdconfig.store.records import Sizes, dump
from etcdconfig.store.store import _REQUEST_OVERHEAD, DEFAULT_MAX_REQUEST_BYTES

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NS, NAME = "prod", "payments"


@pytest.fixture
async def env(client: EtcdClient, prefix: str) -> Any:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="test")
    store = VersionedStore(client, prefix=prefix, replica_id="test-replica")
    yield store, locks
    await session.close()


class _IndexBlindClient:
    """An etcd client that drops every write of a usage index (``…/sizes``) from a
    transaction: the store then writes exactly what a release before the index did
    (its lock, records, heads, incarnations and pruning are unchanged)."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        kept = [
            op
            for op in success
            if not (isinstance(op, (Put, DeleteRange)) and bytes(op.key).endswith(b"/sizes"))
        ]
        return await self._client.txn(compare, kept, failure)


@pytest.fixture
def old_release() -> Any:
    """A replica of the release before the usage index (3eb8712): one that neither
    writes nor trusts the index — its writes are the store's with every index write
    dropped, and ``max_bytes`` is never set (that release had no such field)."""

    def make(client: EtcdClient, prefix: str, replica_id: str) -> VersionedStore:
        return VersionedStore(
            cast("Any", _IndexBlindClient(client)), prefix=prefix, replica_id=replica_id
        )

    return SimpleNamespace(VersionedStore=make, ChangeRequest=ChangeRequest)


async def stored(store: VersionedStore) -> list[tuple[int, int]]:
    """(version, stored bytes) of every record, read key by key: the truth."""
    start = store.keys.versions(NS, NAME)
    res = await store.client.range(start, store.keys.end(start))
    return [(int(kv.key.decode().rsplit("/", 1)[1]), len(kv.value)) for kv in res.kvs]


async def index(store: VersionedStore) -> Sizes | None:
    kv, _ = await store.client.get(store.keys.sizes(NS, NAME))
    return Sizes.parse(kv.value) if kv is not None else None


def blob(kib: int) -> dict[str, Any]:
    return {"blob": "x" * (kib * 1024)}


def put_index(entries: list[list[int]]) -> bytes:
    return json.dumps({"format": 1, "versions": entries}).encode()


# --- defects --------------------------------------------------------------------------------


async def test_review_an_index_naming_the_head_but_claiming_huge_sizes_prunes_all_history(
    env: Any,
) -> None:
    """The index is trusted whenever its newest entry is the head's version number; its
    sizes are never checked. A tampered (or buggily written) index that keeps the right
    newest version but claims huge sizes makes the next commit prune every version but
    the new head, under the DEFAULT maxBytes, though the records take ~2 KB in all."""
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g), locks)
    truth = await stored(store)
    assert [v for v, _ in truth] == [1, 2, 3]
    huge = 2**53 - 1  # a valid index entry as far as Sizes.parse is concerned
    await store.client.put(store.keys.sizes(NS, NAME), put_index([[1, huge], [2, huge], [3, huge]]))

    await store.record(change(4, max_bytes=DEFAULT_MAX_BYTES), locks)

    after = await stored(store)
    assert sum(s for _, s in after) < DEFAULT_MAX_BYTES // 1000
    # every version fits the budget a thousand times over: none may be pruned
    assert [v for v, _ in after] == [1, 2, 3, 4], (
        f"history pruned by a lying index: {after}; retention must never prune more than "
        "maxBytes says of the records as stored"
    )


async def test_review_an_old_release_purge_and_re_create_leaves_an_index_that_prunes_history(
    env: Any, old_release: Any
) -> None:
    """Rolling upgrade: a new-release replica recorded uid-1 (three 10 KiB versions, the
    index says so). An old-release replica then records uid-1's Purge (the versions go,
    the head becomes a version-0 tombstone; the index is not touched), and the Config is
    re-created and recorded by the old release as small versions 1..3 (version numbers
    are reused after a Purge to nothing). The index's newest entry (3) equals the head's
    version (3), so the new release trusts its sizes, those of uid-1's records, and
    prunes uid-2's small versions by bytes it does not take."""
    store, locks = env
    old = old_release.VersionedStore(store.client, prefix=store.keys.prefix, replica_id="old")

    for g in range(1, 4):
        await store.record(change(g, blob(10)), locks)
    async with locks.hold(NS, NAME) as mutex:
        await old.delete(NS, NAME, "uid-1", mutex, purge=True)
    assert await stored(store) == []
    for g in range(1, 4):
        old_change = old_release.ChangeRequest(
            namespace=NS, name=NAME, uid="uid-2", generation=g, data={"replicas": g},
            owner_confirmed=True,
        )  # fmt: skip
        await old.record(old_change, locks)
    truth = await stored(store)
    assert [v for v, _ in truth] == [1, 2, 3]
    # the budget holds every small record many times over (but not one 10 KiB record
    # more than one and a half times)
    budget = 15 * 1024
    assert sum(s for _, s in truth) * 4 < budget

    await store.record(change(4, uid="uid-2", max_bytes=budget), locks)

    after = await stored(store)
    assert [v for v, _ in after] == [1, 2, 3, 4], (
        f"uid-2's history was pruned by uid-1's sizes: {after} (index said "
        f"{(await index(store) or Sizes()).entries})"
    )


async def test_review_a_deeply_nested_index_breaks_every_commit_of_the_config(
    env: Any,
) -> None:
    """``Sizes.parse`` promises None for anything that is not an index (then the records
    are measured), but catches only ValueError/CorruptRecord: a deeply nested value
    raises RecursionError out of the JSON parser, out of ``_commit_once`` (and of
    ``usage``): every commit of the Config fails, for good, with a non-etcdconfig error
    (the reconciler's and the integrity scan's ``except EtcdConfigError`` do not catch
    it)."""
    store, locks = env
    await store.record(change(1), locks)
    await store.client.put(store.keys.sizes(NS, NAME), b'{"format":1,"versions":' + b"[" * 100_000)

    try:
        result = await store.record(change(2), locks)
    except RecursionError as exc:
        pytest.fail(f"a garbage index broke the commit: {type(exc).__name__}: {exc}")
    assert result.recorded and result.version == 2
    assert list((await index(store) or Sizes()).entries) == await stored(store)


async def test_review_the_index_eats_the_request_budget_until_small_records_are_refused(
    client: EtcdClient, prefix: str
) -> None:
    """``_check_size`` now counts the whole index against etcd's request limit, and the
    index grows by one entry per retained version: once enough versions are retained,
    every commit is refused as TooLarge with "make spec.data smaller", though the record
    is tiny and would fit (the request limit here is scaled down so the test is fast;
    with etcd's default 1.5 MiB the same happens with maxVersions within its allowed
    100000 and a raised maxBytes, see the first assertion)."""
    # at the real limit: 100000 retained versions (maxVersions allows it; maxBytes has no
    # upper bound) of 100 KiB records numbered past a million make an index beyond the
    # request limit on its own: then no commit of the Config can ever succeed
    big = Sizes(tuple((v, 102400) for v in range(1_000_001, 1_000_001 + MAX_VERSIONS_LIMIT)))
    assert len(dump(big.to_json())) + _REQUEST_OVERHEAD > DEFAULT_MAX_REQUEST_BYTES

    session = await Session(client, ttl=10).start()
    try:
        locks = ConfigLocks(session, prefix=prefix, identity="test")
        probe = VersionedStore(client, prefix=prefix + "-probe", replica_id="r")
        first = await probe.record(change(1, max_versions=1000, max_bytes=None), locks)
        assert first.record is not None
        record_and_head = len(dump(first.record.raw)) + len(dump(first.head.to_json()))
        # room for the record and head plus ~600 bytes: about 60 index entries
        limit = _REQUEST_OVERHEAD + record_and_head + 600
        store = VersionedStore(client, prefix=prefix, replica_id="r", max_request_bytes=limit)
        refused: str | None = None
        for g in range(1, 121):
            try:
                await store.record(change(g, max_versions=1000, max_bytes=None), locks)
            except InvalidConfig as exc:
                refused = f"generation {g}: {exc}"
                break
        assert refused is None, (
            "a record that fits on its own is refused because of the index: " + str(refused)
        )
    finally:
        await session.close()


# --- held ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        put_index([[1, -5], [2, 5]]),
        put_index([[1, 5], [1, 5]]),
        put_index([[0, 5]]),
        b'{"format":1,"versions":[[1,true],[2,5]]}',
        b'{"format":1,"versions":[[1,5.0],[2,5]]}',
        b'{"format":1,"versions":[[1,1e400]]}',
        b'{"format":1,"versions":[[1,NaN]]}',
        b'{"format":1,"versions":[[1,' + b"9" * 5000 + b"]]}",
        b'{"format":2,"versions":[]}',
        b"null",
        b"\xff\xfe\x00",
        b"",
    ],
)
async def test_held_a_garbage_index_is_measured_again(env: Any, garbage: bytes) -> None:
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g, blob(4)), locks)
    await store.client.put(store.keys.sizes(NS, NAME), garbage)
    assert list((await store.usage(NS, NAME)).entries) == await stored(store)
    truth = await stored(store)
    budget = truth[-1][1] * 2 + 200
    await store.record(change(4, blob(4), max_bytes=budget), locks)
    assert [v for v, _ in await stored(store)] == [3, 4]
    assert list((await index(store) or Sizes()).entries) == await stored(store)
    assert await store.verify(NS, NAME) == []


async def test_held_max_bytes_below_every_record_keeps_the_head_alone(env: Any) -> None:
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g), locks)
    result = await store.record(change(4, max_bytes=1), locks)
    assert [v for v, _ in await stored(store)] == [4]
    assert result.sizes is not None and list(result.sizes.entries) == await stored(store)
    # and again: the head alone, numbering continues, the chain is sound
    await store.record(change(5, max_bytes=1), locks)
    assert [v for v, _ in await stored(store)] == [5]
    assert await store.verify(NS, NAME) == []
    head = await store.head(NS, NAME)
    assert head is not None and head.version == 5


async def test_held_an_old_release_commit_makes_the_index_stale_and_it_is_measured(
    env: Any, old_release: Any
) -> None:
    """An old-release replica commits (and prunes by count) without the index: the
    index names an older head, so the new release measures the records."""
    store, locks = env
    old = old_release.VersionedStore(store.client, prefix=store.keys.prefix, replica_id="old")
    for g in range(1, 4):
        await store.record(change(g, {"small": g}), locks)
    for g in range(4, 7):
        await old.record(
            old_release.ChangeRequest(
                namespace=NS, name=NAME, uid="uid-1", generation=g, data=blob(8),
                owner_confirmed=True, max_versions=4,
            ),
            locks,
        )  # fmt: skip
    assert [v for v, _ in await stored(store)] == [3, 4, 5, 6]
    assert list((await store.usage(NS, NAME)).entries) == await stored(store)
    truth = await stored(store)
    budget = truth[-1][1] * 3 + 200  # 6, 5 and the new 7 (8 KiB each)
    await store.record(change(7, blob(8), max_bytes=budget), locks)
    assert [v for v, _ in await stored(store)] == [5, 6, 7]
    assert list((await index(store) or Sizes()).entries) == await stored(store)


async def test_held_purge_retain_and_re_create_keep_the_index_exact(env: Any) -> None:
    """Retain-delete, re-create, a late Purge of the middle incarnation (kept: a later
    one chains on it), a Purge of the newest; the index is the records at every step."""
    store, locks = env
    await store.record(change(1, blob(2)), locks)
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "uid-1", mutex, purge=False)
    await store.record(change(1, blob(3), uid="uid-2"), locks)
    await store.record(change(2, blob(3), uid="uid-2"), locks)
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "uid-2", mutex, purge=False)
    await store.record(change(1, blob(1), uid="uid-3"), locks)
    assert list((await index(store) or Sizes()).entries) == await stored(store)
    # uid-2's Purge comes late: uid-3 chains on its versions, so they are kept
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "uid-2", mutex, purge=True)
    assert [v for v, _ in await stored(store)] == [1, 2, 3, 4]
    assert list((await index(store) or Sizes()).entries) == await stored(store)
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "uid-3", mutex, purge=True)
    assert [v for v, _ in await stored(store)] == [1, 2, 3]
    assert list((await index(store) or Sizes()).entries) == await stored(store)
    await store.record(change(1, blob(1), uid="uid-4"), locks)
    assert [v for v, _ in await stored(store)] == [1, 2, 3, 4]
    assert list((await store.usage(NS, NAME)).entries) == await stored(store)
    assert await store.verify(NS, NAME) == []


class CommitFaults(EtcdClient):
    """The n-th commit transaction (the one that writes the index) lands with its reply
    lost ("after") or is never sent ("before")."""

    def __init__(self, settings: EtcdSettings, mode: str, nth: int) -> None:
        super().__init__(settings)
        self.mode, self.nth, self.seen = mode, nth, 0

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        if any(isinstance(op, Put) and op.key.endswith(b"/sizes") for op in success) and any(
            isinstance(op, DeleteRange) and b"/versions/" in op.key for op in success
        ):
            self.seen += 1
            if self.seen == self.nth:
                if self.mode == "before":
                    raise EtcdUnavailable("simulated: never sent")
                await super().txn(compare, success, failure)
                raise EtcdUnavailable("simulated: landed, reply lost")
        return await super().txn(compare, success, failure)


@pytest.mark.parametrize("mode", ["after", "before"])
async def test_held_an_unknown_outcome_of_a_pruning_commit_neither_duplicates_nor_overprunes(
    etcd_server: EtcdServer, prefix: str, mode: str
) -> None:
    c = CommitFaults(EtcdSettings(endpoints=[etcd_server.endpoint]), mode, nth=1)
    await c.connect()
    session = await Session(c, ttl=10).start()
    try:
        locks = ConfigLocks(session, prefix=prefix, identity="t")
        store = VersionedStore(c, prefix=prefix, replica_id="r")
        for g in range(1, 4):
            await store.record(change(g, blob(4)), locks)
        budget = (await stored(store))[-1][1] * 2 + 200
        result = await store.record(change(4, blob(4), max_bytes=budget), locks)
        assert result.recorded and result.version == 4 and result.attempts == 2
        assert c.seen >= 1
        assert [v for v, _ in await stored(store)] == [3, 4]
        assert list((await index(store) or Sizes()).entries) == await stored(store)
        assert await store.verify(NS, NAME) == []
        # the next commit continues from the right head and index
        await store.record(change(5, blob(4), max_bytes=budget), locks)
        assert [v for v, _ in await stored(store)] == [4, 5]
        assert list((await index(store) or Sizes()).entries) == await stored(store)
    finally:
        await session.close()
        await c.close()


async def test_held_two_replicas_racing_with_max_bytes_keep_index_and_chain_exact(
    client: EtcdClient, etcd_server: EtcdServer, prefix: str
) -> None:
    """Two replicas (own sessions and clients) record the same rising generations of
    one Config at once, each with a small maxBytes; no generation twice, the chain
    intact, the index exactly the records, the budget kept (or the head alone)."""
    clients = [EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint])) for _ in range(2)]
    sessions = []
    for c in clients:
        await c.connect()
        sessions.append(await Session(c, ttl=10).start())
    try:
        stores = [
            VersionedStore(c, prefix=prefix, replica_id=f"r{i}") for i, c in enumerate(clients)
        ]
        lockss = [ConfigLocks(s, prefix=prefix, identity=f"r{i}") for i, s in enumerate(sessions)]
        budget = 5 * 1024

        async def replica(i: int) -> None:
            for g in range(1, 25):
                await stores[i].record(change(g, blob(1), max_bytes=budget), lockss[i])

        await asyncio.gather(replica(0), replica(1))
        store = stores[0]
        truth = await stored(store)
        assert list((await index(store) or Sizes()).entries) == truth
        versions = [v for v, _ in truth]
        assert versions == list(range(versions[0], versions[-1] + 1))
        assert sum(s for _, s in truth) <= budget
        # not over-pruned: one more record of the same size would not fit
        assert sum(s for _, s in truth) + min(s for _, s in truth) > budget
        gens = []
        for v in versions:
            rec = await store.get_version(NS, NAME, v)
            gens.append(rec.generation)
        assert gens == sorted(set(gens))
        head = await store.head(NS, NAME)
        assert head is not None and head.generation == 24
        assert await store.verify(NS, NAME) == []
    finally:
        for s in sessions:
            await s.close()
        for c in clients:
            await c.close()


def cli(etcd: EtcdServer, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return admin_cli(etcd.endpoint, prefix, *args)


async def test_held_listers_and_verify_do_not_choke_on_the_index_key(
    env: Any, etcd_server: EtcdServer, prefix: str
) -> None:
    """The index key under configs/, valid or garbage, and an orphan index of a name
    with nothing else stored: list_configs, the history API's walk, verify (store and
    CLI ``verify --all``), history and the usage CLI all go on."""
    store, locks = env
    for g in range(1, 3):
        await store.record(change(g), locks)
    await store.client.put(store.keys.sizes(NS, NAME), b"\x00garbage")
    await store.client.put(store.keys.sizes("prod", "orphan"), put_index([[1, 10]]))
    assert await store.list_configs() == [(NS, NAME)]
    assert await store.verify(NS, NAME) == []
    assert await store.verify("prod", "orphan") == []
    page, _ = await store.history(NS, NAME)
    assert [r.version for r in page] == [2, 1]

    from etcdconfig.controller.history_api import HistoryStore

    hs = HistoryStore(store.client, prefix=prefix)
    seen = [c async for c in hs.configs("prod")]
    assert (NS, NAME) in seen
    versions, _, _ = await hs.versions(NS, NAME, limit=10, before=None)
    assert [r.version for r in versions] == [2, 1]

    proc = cli(etcd_server, prefix, "verify", "--all", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["intact"] is True
    proc = cli(etcd_server, prefix, "usage", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [c["config"] for c in doc["configs"]] == [f"{NS}/{NAME}"]
    assert doc["configs"][0]["bytes"] == sum(s for _, s in await stored(store))
    proc = cli(etcd_server, prefix, "history", f"{NS}/{NAME}", "-o", "json")
    assert proc.returncode == 0, proc.stderr


async def test_held_the_prefetched_index_is_the_one_read_with_the_lock(env: Any) -> None:
    """The index is read in the lock's own transaction; a writer of the index is always
    a writer of the head under the same lock, so a prefetched index is never older than
    the prefetched head, and a commit that raced the prefetch fails its head compare
    instead of writing an index from the wrong state."""
    store, locks = env
    for g in range(1, 3):
        await store.record(change(g, blob(2)), locks)
    prefetch = store.lock_prefetch(NS, NAME, "uid-1")
    assert store.keys.sizes(NS, NAME) in prefetch
    async with locks.hold(NS, NAME, prefetch=prefetch) as mutex:
        found, kv = mutex.take_prefetched(store.keys.sizes(NS, NAME))
        assert found and kv is not None
        assert list((Sizes.parse(kv.value) or Sizes()).entries) == await stored(store)
        mutex.prefetched[store.keys.sizes(NS, NAME)] = kv  # put it back for the commit
        result = await store.commit(change(3, blob(2)), mutex)
    assert result.recorded
    assert list((await index(store) or Sizes()).entries) == await stored(store)
