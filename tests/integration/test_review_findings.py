"""The holes an independent review found in the store and the locks, one test each,
on a real etcd. Every test here failed on the code before its fix (issue 10,
findings 1, 2, 4, 6, 7, 8 and the compaction suspicion); the finding is named in
each test's docstring.

Faults are injected in the client adapter, below the code under test: the real
etcd applies (or never sees) the request, and only what the caller hears back is
changed: a reply lost after the request landed, a request that never left, a
transaction delayed past its deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.integration.helpers import assert_history_invariants, change, wait_for

from etcdconfig.concurrency import ConfigLocks, Mutex, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import (
    Compacted,
    EtcdUnavailable,
    LockTimeout,
    OwnerUnconfirmed,
    StaleIncarnation,
)
from etcdconfig.etcd import DeleteRange, EtcdClient, EtcdSettings, Put, Range, prefix_end
from etcdconfig.store import VersionedStore

NS, NAME = "prod", "payments"
Hook = Callable[[], Awaitable[None]]


def _is_commit(success: Any) -> bool:
    return any(isinstance(op, Put) and b"/versions/" in op.key for op in success)


def _is_acquire(success: Any) -> bool:
    return any(isinstance(op, Put) and b"/locks/" in op.key and op.lease for op in success)


def _is_release(success: Any) -> bool:
    return (
        len(success) == 1 and isinstance(success[0], DeleteRange) and b"/locks/" in (success[0].key)
    )


class FaultyClient(EtcdClient):
    """A real client whose next transaction of a kind meets a scripted fault."""

    def __init__(self, settings: EtcdSettings) -> None:
        super().__init__(settings)
        # kind -> (mode, hook): "after" lands it, runs hook, then reports unknown;
        # "before" runs hook and reports unknown without sending it; "late" reports
        # unknown at once and lands it when the hook's event fires
        self.faults: dict[str, tuple[str, Hook | None]] = {}
        self.late: list[asyncio.Task[Any]] = []
        self.late_gate = asyncio.Event()
        self.watch_faults: list[Hook] = []
        self.land_after_head_read = False

    async def _after_head_read(self) -> None:
        """A "late" transaction lands right after the next read of the head: the retry
        has read the old head, and its own commit comes after the late one."""
        if self.land_after_head_read and self.late and not self.late_gate.is_set():
            self.late_gate.set()
            await self.late[0]

    async def get(self, key: bytes, *, revision: int = 0) -> Any:
        result = await super().get(key, revision=revision)
        if key.endswith(b"/head"):
            await self._after_head_read()
        return result

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        if not compare and all(isinstance(op, Range) for op in success):
            result = await super().txn(compare, success, failure)
            if any(op.key.endswith(b"/head") for op in success):
                await self._after_head_read()
            return result
        kind = (
            "commit"
            if _is_commit(success)
            else "acquire"
            if _is_acquire(success)
            else "release"
            if _is_release(success)
            else None
        )
        fault = self.faults.pop(kind, None) if kind else None
        if fault is None:
            return await super().txn(compare, success, failure)
        mode, hook = fault
        if mode == "before":
            if hook:
                await hook()
            raise EtcdUnavailable(f"simulated: the {kind} request never reached etcd")
        if mode == "late":

            async def land_later() -> Any:
                await self.late_gate.wait()
                return await EtcdClient.txn(self, compare, success, failure)

            self.late.append(asyncio.create_task(land_later()))
            raise EtcdUnavailable(f"simulated: the {kind} reply did not come in time")
        await super().txn(compare, success, failure)
        if hook:
            await hook()
        raise EtcdUnavailable(f"simulated: the {kind} landed but its reply was lost")

    async def watch(self, *args: Any, **kwargs: Any) -> AsyncIterator[tuple[int, list[Any]]]:
        if self.watch_faults:
            await self.watch_faults.pop(0)()
            raise Compacted("simulated: the watch start revision was compacted", 1)
        async for item in super().watch(*args, **kwargs):
            yield item


@pytest.fixture
async def faulty(etcd_server: EtcdServer) -> AsyncIterator[FaultyClient]:
    c = FaultyClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def other(client: EtcdClient, prefix: str) -> AsyncIterator[tuple[VersionedStore, Any]]:
    """Another replica on a clean connection."""
    session = await Session(client, ttl=10).start()
    try:
        yield (
            VersionedStore(client, prefix=prefix, replica_id="other"),
            ConfigLocks(session, prefix=prefix, identity="other", acquire_timeout=5),
        )
    finally:
        await session.close()


async def lock_keys(client: EtcdClient, prefix: str) -> list[bytes]:
    base = f"{prefix}/locks/".encode()
    return [kv.key for kv in (await client.range(base, prefix_end(base))).kvs]


async def delete(store: VersionedStore, locks: ConfigLocks, uid: str, *, purge: bool) -> None:
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, uid, mutex, purge=purge)


# --- finding 1: a deleted uid never writes again -------------------------------------------------


async def test_stale_copy_of_a_deleted_uid_is_refused_after_a_foreign_tombstone(
    other: Any, client: EtcdClient
) -> None:
    """Finding 1: resync holds a stale copy of u1; u1 is deleted; u2 is created and
    deleted (the head's tombstone now names u2); the stale u1 must write nothing —
    before the fix it became a live head again."""
    store, locks = other
    await store.record(change(1, "u1"), locks)
    await delete(store, locks, "u1", purge=False)
    await store.record(change(1, "u2"), locks)
    await delete(store, locks, "u2", purge=False)
    before = await store.head(NS, NAME)
    for confirmed in (False, True):  # not even a (wrong) confirmation resurrects it
        with pytest.raises(StaleIncarnation, match="uid u1 was deleted"):
            await store.record(change(2, "u1", confirmed=confirmed), locks)
    after = await store.head(NS, NAME)
    assert after == before
    assert after is not None and (after.uid, after.deleted, after.version) == ("u2", True, 2)
    records, _ = await store.history(NS, NAME)
    assert [(r.version, r.uid, r.generation) for r in records] == [(2, "u2", 1), (1, "u1", 1)]
    assert await store.verify(NS, NAME) == []


async def test_a_uid_the_store_never_saw_needs_the_api_servers_word(other: Any) -> None:
    """Finding 1, second half (and the suspicion "deleted before the finalizer was
    added"): with no head at all, an unknown uid is not written unconfirmed."""
    store, locks = other
    with pytest.raises(OwnerUnconfirmed, match="no live record of uid ghost"):
        await store.record(change(1, "ghost", confirmed=False), locks)
    assert await store.head(NS, NAME) is None
    assert await store.incarnations(NS, NAME) == []
    result = await store.record(change(1, "ghost", confirmed=True), locks)
    assert (result.recorded, result.version) == (True, 1)
    # once seen (the head names it), later generations need no confirmation
    result = await store.record(change(2, "ghost", confirmed=False), locks)
    assert (result.recorded, result.version) == (True, 2)


# --- finding 6: Purge removes only the purging incarnation's versions ----------------------------


async def test_purge_by_an_incarnation_that_recorded_nothing_keeps_earlier_retained_history(
    other: Any,
) -> None:
    """Finding 6: u1 keeps 3 versions under Retain; u2 records nothing and is purged:
    before the fix u1's history was wiped."""
    store, locks = other
    for g in (1, 2, 3):
        await store.record(change(g, "u1"), locks)
    await delete(store, locks, "u1", purge=False)
    await delete(store, locks, "u2", purge=True)
    records, _ = await store.history(NS, NAME)
    assert [r.version for r in records] == [3, 2, 1]
    head = await store.head(NS, NAME)
    assert head is not None
    assert (head.uid, head.deleted, head.purged, head.version) == ("u2", True, True, 3)
    assert await store.verify(NS, NAME) == []


async def test_purge_removes_exactly_the_purging_incarnations_versions(other: Any) -> None:
    """Finding 6: u1 records 1..2 (Retain), u2 records 3..4 and is purged: 1..2 stay,
    the tombstone points at 2, and u3 continues the chain at 3."""
    store, locks = other
    for g in (1, 2):
        await store.record(change(g, "u1"), locks)
    await delete(store, locks, "u1", purge=False)
    for g in (1, 2):
        await store.record(change(g, "u2"), locks)
    v2 = await store.get_version(NS, NAME, 2)
    await delete(store, locks, "u2", purge=True)
    records, _ = await store.history(NS, NAME)
    assert [(r.version, r.uid) for r in records] == [(2, "u1"), (1, "u1")]
    head = await store.head(NS, NAME)
    assert head is not None
    assert (head.version, head.record_checksum, head.checksum) == (
        2,
        v2.record_checksum(),
        v2.checksum,
    )
    result = await store.record(change(1, "u3"), locks)
    assert result.version == 3
    assert (await store.get_version(NS, NAME, 3)).parent_checksum == v2.record_checksum()
    assert await store.verify(NS, NAME) == []
    # u2's deletion is recorded for good: its late events write nothing
    with pytest.raises(StaleIncarnation):
        await store.record(change(3, "u2"), locks)


# --- finding 4: verify checks the head against the newest record ---------------------------------


async def _edit_head(client: EtcdClient, prefix: str, **fields: Any) -> None:
    key = f"{prefix}/configs/{NS}/{NAME}/head".encode()
    kv, _ = await client.get(key)
    assert kv is not None
    head = json.loads(kv.value)
    head.update(fields)
    await client.put(key, json.dumps(head).encode())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"generation": 99}, "head says generation 99, version 2 records generation 2"),
        ({"uid": "intruder"}, "head says uid intruder, version 2 was recorded for uid u1"),
        ({"deleted": True}, "head says uid u1 is deleted, its incarnation record says live"),
    ],
)
async def test_verify_reports_a_head_that_disagrees_with_the_newest_record(
    other: Any, client: EtcdClient, prefix: str, fields: dict[str, Any], message: str
) -> None:
    """Finding 4: a raised generation in the head passed verify, and then every later
    generation counted as already recorded."""
    store, locks = other
    for g in (1, 2):
        await store.record(change(g, "u1"), locks)
    await _edit_head(client, prefix, **fields)
    problems = [(p.kind, p.message) for p in await store.verify(NS, NAME)]
    assert ("head-mismatch", message) in problems


async def test_verify_reports_versions_without_a_head(
    other: Any, client: EtcdClient, prefix: str
) -> None:
    """Finding 4: a missing head skipped every head check."""
    store, locks = other
    await store.record(change(1, "u1"), locks)
    await client.delete_range(f"{prefix}/configs/{NS}/{NAME}/head".encode())
    problems = [(p.kind, p.message) for p in await store.verify(NS, NAME)]
    assert problems == [("missing-head", "1 version(s) stored but no head")]


# --- finding 7 and 8: unknown outcomes are classified by the record itself -----------------------


async def test_an_attempt_that_lands_late_is_reported_recorded_not_lock_lost(
    faulty: FaultyClient, prefix: str
) -> None:
    """Finding 7: attempt 1 times out but is in flight; the retry reads the unchanged
    head; attempt 1 lands and releases the lock; attempt 2 fails the fence. Before
    the fix: "LockLost … nothing was written" for a version that was written."""
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        store = VersionedStore(faulty, prefix=prefix, replica_id="me")
        await store.record(change(1), locks)
        faulty.faults["commit"] = ("late", None)
        faulty.land_after_head_read = True
        result = await store.record(change(2), locks)
        assert (result.recorded, result.version, result.attempts) == (True, 2, 2)
        assert store.stats["lost_locks"] == 0
        await assert_history_invariants(faulty, prefix, NS, NAME, final_generation=2)
        assert await lock_keys(faulty, prefix) == []


async def test_same_generation_written_by_another_holder_is_not_claimed_as_ours(
    faulty: FaultyClient, client: EtcdClient, prefix: str, other: Any
) -> None:
    """Finding 8: our commit never reached etcd, our lock was lost, another replica
    recorded the same (uid, generation, data): before the fix the retry said
    recorded=True."""
    other_store, other_locks = other
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        store = VersionedStore(faulty, prefix=prefix, replica_id="me")
        await store.record(change(1), locks)

        async def lose_lock_and_let_other_record() -> None:
            await client.revoke(session.lease_id)  # as if the lease expired in a pause
            await other_store.record(change(2), other_locks)

        faulty.faults["commit"] = ("before", lose_lock_and_let_other_record)
        result = await store.record(change(2), locks)
        assert (result.recorded, result.version) == (False, 2)
        assert (await store.get_version(NS, NAME, 2)).recorded_by == "other"
        assert store.stats["commits"] == 1  # only version 1 was ours


async def test_our_landed_version_is_ours_even_after_a_later_generation_followed(
    faulty: FaultyClient, prefix: str, other: Any
) -> None:
    """Finding 8: ours landed (reply lost) and another replica recorded a later
    generation before our retry read the head: before the fix recorded=False."""
    other_store, other_locks = other
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        store = VersionedStore(faulty, prefix=prefix, replica_id="me")
        await store.record(change(1), locks)

        async def other_records_next() -> None:
            await other_store.record(change(3), other_locks)

        faulty.faults["commit"] = ("after", other_records_next)
        result = await store.record(change(2), locks)
        assert result.recorded is True
        assert result.version == 3  # the head now: the later generation
        assert (await store.get_version(NS, NAME, 2)).recorded_by == "me"
        await assert_history_invariants(faulty, prefix, NS, NAME, final_generation=3)


async def test_our_version_pruned_by_retention_is_still_found_by_its_successor(
    faulty: FaultyClient, prefix: str, other: Any
) -> None:
    """Finding 8 with maxVersions 1: our landed record was pruned by the next
    commit; its successor's parentChecksum still names it."""
    other_store, other_locks = other
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        store = VersionedStore(faulty, prefix=prefix, replica_id="me")
        await store.record(change(1, max_versions=1), locks)

        async def other_records_next() -> None:
            await other_store.record(change(3, max_versions=1), other_locks)

        faulty.faults["commit"] = ("after", other_records_next)
        result = await store.record(change(2, max_versions=1), locks)
        assert (result.recorded, result.version) == (True, 3)
        records, _ = await store.history(NS, NAME)
        assert [r.version for r in records] == [3]


# --- finding 2: lock keys never outlive their use --------------------------------------------


async def test_acquire_that_lands_with_a_lost_reply_leaves_no_key(
    faulty: FaultyClient, client: EtcdClient, prefix: str, other: Any
) -> None:
    """Finding 2a: before the fix the key stayed on our live lease and locked every
    other replica out."""
    _, other_locks = other
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        faulty.faults["acquire"] = ("after", None)
        with pytest.raises(EtcdUnavailable, match="landed but its reply was lost"):
            async with locks.hold(NS, NAME):
                pass
        assert await lock_keys(client, prefix) == []
        async with other_locks.hold(NS, NAME) as mutex:  # at once, not after a TTL
            assert mutex.held


async def test_release_that_meets_a_transient_error_is_retried(
    faulty: FaultyClient, client: EtcdClient, prefix: str, other: Any
) -> None:
    """Finding 2b: a release hit by one transient error was suppressed and leaked."""
    _, other_locks = other
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        async with locks.hold(NS, NAME):
            faulty.faults["release"] = ("before", None)
        assert await lock_keys(client, prefix) == []
        async with other_locks.hold(NS, NAME) as mutex:
            assert mutex.held


async def test_acquire_abandoned_in_flight_is_swept(
    faulty: FaultyClient, client: EtcdClient, prefix: str, other: Any
) -> None:
    """Finding 2c: the acquire timed out while its transaction was in flight and it
    landed after we gave up (13-37 of 60 such acquires leaked): the sweep removes it."""
    _, other_locks = other
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        faulty.faults["acquire"] = ("late", None)
        with pytest.raises(EtcdUnavailable):
            async with locks.hold(NS, NAME):
                pass
        faulty.late_gate.set()
        await faulty.late[0]  # the abandoned acquire lands after our clean-up
        assert len(await lock_keys(client, prefix)) == 1
        assert await locks.sweep() == 1
        assert await lock_keys(client, prefix) == []
        async with other_locks.hold(NS, NAME) as mutex:
            assert mutex.held


async def test_sweep_leaves_keys_in_use_alone(client: EtcdClient, prefix: str) -> None:
    """The sweep must not take a lock from a task of its own process (the guard that
    makes it safe to run any time)."""
    async with Session(client, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        async with locks.hold(NS, NAME) as mutex:
            # without the in-use guard the sweep would wait for our own in-process lock:
            # bound it, so that such a regression fails instead of hanging
            async with asyncio.timeout(5):
                assert await locks.sweep() == 0
            assert len(await lock_keys(client, prefix)) == 1
            assert mutex.held


async def test_no_acquire_is_sent_when_the_wait_in_process_used_the_budget(
    faulty: FaultyClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 2c's cause: after a long in-process wait the etcd acquire got a timeout
    of ~0 and was abandoned in flight; now it is not sent at all. (The clock of the
    locks module jumps past the budget between the in-process and the etcd step.)"""
    from etcdconfig.concurrency import locks as locks_module

    readings = iter([0.0])
    monkeypatch.setattr(locks_module, "_clock", lambda: next(readings, 100.0))
    async with Session(faulty, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me", acquire_timeout=0.5)
        sent: list[str] = []
        original = faulty.txn

        async def counting(compare: Any, success: Any, failure: Any = ()) -> Any:
            if _is_acquire(success):
                sent.append("acquire")
            return await original(compare, success, failure)

        faulty.txn = counting  # type: ignore[method-assign]
        with pytest.raises(LockTimeout, match="waited for another task of this process"):
            async with locks.hold(NS, NAME):
                pass
        assert sent == []


# --- suspicion: a waiter whose predecessor's key was re-created behind it ---------------------


async def test_waiter_is_not_stuck_behind_a_predecessor_key_recreated_after_compaction(
    faulty: FaultyClient, client: EtcdClient, prefix: str
) -> None:
    """The waiter's watch cannot resume after a compaction and re-reads the key: the
    predecessor released and queued again (same lease, same key name, a new create
    revision behind ours). Before the fix the waiter waited for that key too, i.e.
    until its acquire timeout."""
    lp = lock_prefix(prefix, NS, NAME)
    async with Session(client, ttl=10) as s1, Session(faulty, ttl=10) as s2:
        first = Mutex(s1, lp, identity="first")
        await first.acquire(5)
        waiter = Mutex(s2, lp, identity="waiter")
        requeued = Mutex(s1, lp, identity="first-again")

        async def release_and_requeue() -> None:
            await first.release()
            # same lease, same key name: queued again, now behind the waiter
            asyncio.get_running_loop().create_task(requeued.acquire(30))
            await wait_for(lambda: requeued.revision != 0, 5, "the re-queued key")

        faulty.watch_faults.append(release_and_requeue)
        await waiter.acquire(5)
        assert waiter.held
        assert requeued.revision > waiter.revision
        await waiter.release()
        await wait_for(lambda: requeued.held, 5, "the re-queued waiter to take its turn")
        await requeued.release()


# --- the key layout: what a deletion leaves ----------------------------------------------------


async def test_incarnation_records_say_what_each_uid_recorded(
    other: Any, client: EtcdClient, prefix: str
) -> None:
    store, locks = other
    for g in (1, 2):
        await store.record(change(g, "u1"), locks)
    await delete(store, locks, "u1", purge=False)
    raw, _ = await client.get(f"{prefix}/configs/{NS}/{NAME}/incarnations/u1".encode())
    assert raw is not None
    record = json.loads(raw.value)
    assert {k: v for k, v in record.items() if k != "recordedAt"} == {
        "format": 1,
        "uid": "u1",
        "firstVersion": 1,
        "lastVersion": 2,
        "deleted": True,
    }


async def test_the_operators_lock_sweeper_removes_an_orphan_of_its_session_within_the_ttl(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, other: Any
) -> None:
    """Finding 2, end to end in the runtime: a key left on the replica's live lease
    (what a finalize on a non-owner leaked before) is gone within about a TTL, and
    another replica locks the Config."""
    from typing import cast

    from etcdconfig import metrics
    from etcdconfig.controller.runtime import Runtime
    from etcdconfig.settings import Settings

    _, other_locks = other
    settings = Settings(
        etcd_endpoints=[etcd_server.endpoint], etcd_prefix=prefix, replica_id="r1", lock_ttl=2
    )
    rt_client = EtcdClient(settings.etcd())
    await rt_client.connect(write=True)
    rt = Runtime(settings=settings, client=rt_client, kube=cast("Any", None))
    await rt.start()
    try:
        assert rt.session is not None
        swept = metrics.REGISTRY.get_sample_value("etcdconfig_lock_keys_swept_total") or 0
        orphan = f"{lock_prefix(prefix, NS, NAME)}/{rt.session.lease_id:x}".encode()
        await rt_client.put(orphan, b"r1", lease=rt.session.lease_id)

        async def gone() -> bool:
            return await lock_keys(client, prefix) == []

        await wait_for(gone, 2 * settings.lock_ttl + 2, "the sweeper to remove the orphan")
        assert metrics.REGISTRY.get_sample_value("etcdconfig_lock_keys_swept_total") == swept + 1
        async with other_locks.hold(NS, NAME) as mutex:
            assert mutex.held
    finally:
        await rt.stop()
        await rt_client.close()
