"""An adversarial review of the fenced commit, Purge, incarnations and the lock
keys (commit 5bd6a9e), on a real etcd.

Tests named ``test_defect_*`` FAIL on the reviewed code: each shows an
interleaving that breaks one of the rules the code claims (the docstring says
which, what happens and what should). The other tests pin hypotheses that held:
interleavings that looked dangerous and are safe, so that a later change keeps
them safe.

Faults are injected below the code under test, in the client adapter (the idea
of ``tests/integration/test_review_findings.py``): etcd applies a request, or
never sees it, or applies it late; only what the caller hears back changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.integration.helpers import change, wait_for
from tests.integration.test_review_findings import FaultyClient

from etcdconfig.concurrency import ConfigLocks, Mutex, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import (
    Compacted,
    Conflict,
    EtcdConfigError,
    EtcdUnavailable,
    LockTimeout,
    OwnerUnconfirmed,
    StaleIncarnation,
)
from etcdconfig.etcd import DeleteRange, EtcdClient, EtcdSettings, Put, prefix_end
from etcdconfig.store import ChangeRequest, VersionedStore

NS, NAME = "prod", "payments"


@dataclasses.dataclass
class Replica:
    """One operator replica as far as the store is concerned: a session (lease),
    its per-Config locks and a store, all on one client."""

    client: EtcdClient
    session: Session
    locks: ConfigLocks
    store: VersionedStore

    async def record(self, ch: ChangeRequest) -> Any:
        return await self.store.record(ch, self.locks)

    async def delete(self, uid: str, *, purge: bool) -> Any:
        async with self.locks.hold(NS, NAME) as mutex:
            return await self.store.delete(NS, NAME, uid, mutex, purge=purge)


async def start_replica(
    client: EtcdClient, prefix: str, rid: str, *, acquire_timeout: float = 5.0
) -> Replica:
    session = await Session(client, ttl=10).start()
    return Replica(
        client,
        session,
        ConfigLocks(session, prefix=prefix, identity=rid, acquire_timeout=acquire_timeout),
        VersionedStore(client, prefix=prefix, replica_id=rid),
    )


@pytest.fixture
async def faulty(etcd_server: EtcdServer) -> AsyncIterator[FaultyClient]:
    c = FaultyClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await c.connect()
    try:
        yield c
    finally:
        for t in c.late:
            t.cancel()
        await c.close()


@pytest.fixture
async def two(client: EtcdClient, prefix: str) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas on a clean connection each (their own leases)."""
    a = await start_replica(client, prefix, "a")
    b = await start_replica(client, prefix, "b")
    try:
        yield a, b
    finally:
        await a.session.close()
        await b.session.close()


async def lock_keys(client: EtcdClient, prefix: str) -> list[bytes]:
    base = f"{prefix}/locks/".encode()
    return [kv.key for kv in (await client.range(base, prefix_end(base))).kvs]


async def versions(store: VersionedStore) -> list[tuple[int, str, int]]:
    records, _ = await store.history(NS, NAME, limit=1000)
    return sorted((r.version, r.uid, r.generation) for r in records)


# =================================================================================================
# DEFECTS
# =================================================================================================


async def test_defect_late_purge_of_a_superseded_incarnation_punches_a_hole_in_history(
    two: tuple[Replica, Replica],
) -> None:
    """Purge of an incarnation that no longer holds the head removes versions from the
    MIDDLE of the history: a gap, and the next version's parentChecksum names a record
    that is gone (verify: missing-versions).

    Interleaving (the "finalizer removed by hand" case the supersede path exists for):
    u0 records v1 and is deleted under Retain. u1 (deletionPolicy Purge) records v2, v3.
    u1 is deleted; replica A's finalize for u1 is in flight (waiting for the lock); the
    user strips the stuck finalizer, u1 vanishes without a tombstone; u2 is created and
    replica B records it (owner confirmed): the supersede marks u1's incarnation
    deleted with purged=False and writes v4 (parent = v3). Then A's finalize of u1 gets
    the lock: ``delete(u1, purge=True)`` sees "deleted but not purged" and deletes u1's
    run v2..v3, under u2's v4.

    Observed: versions [1, 4]; verify reports ``missing-versions``.
    Expected: versions stay gapless and chained (verify == []): a Purge must not delete a
    run that a later incarnation's version chains from (keep it, or only delete runs at
    the top / bottom of the retained history).
    """
    a, b = two
    await b.record(change(1, "u0"))
    await b.delete("u0", purge=False)
    for g in (1, 2):
        await b.record(change(g, "u1"))
    # u1 vanishes without a tombstone; u2 supersedes it
    result = await b.record(change(1, "u2"))
    assert result.version == 4
    # the finalize of u1 (deletionPolicy Purge) that was in flight on replica A
    await a.delete("u1", purge=True)
    kept = [v for v, _, _ in await versions(b.store)]
    problems = [str(p) for p in await b.store.verify(NS, NAME)]
    assert problems == [], problems
    assert kept == list(range(kept[0], kept[0] + len(kept))), f"gap in history: {kept}"


async def test_defect_purge_after_retain_leaves_the_tombstone_pointing_at_a_purged_version(
    two: tuple[Replica, Replica],
) -> None:
    """``delete`` explicitly accepts a Purge after a Retain deletion of the same uid
    (``inc.deleted and (inc.purged or not purge)`` lets it through). When another
    incarnation's tombstone holds the head by then, the Purge copies that tombstone's
    pointer after deleting the very version it points at.

    Interleaving: u1 records v1; u1 is deleted under Retain (replica B saw
    deletionPolicy Retain), tombstone -> v1. u2 is created, records nothing (invalid
    data) and is deleted: tombstone (uid u2) -> v1. Replica A's late finalize of u1 saw
    deletionPolicy Purge (edited while the object was terminating) and now runs:
    owns_head is False, the head is a tombstone, so it deletes u1's v1 and writes a
    tombstone that still points at v1 (version 1, recordChecksum of v1).

    Observed: head -> version 1, no version stored; verify: ``head-mismatch: head points
    to version 1, newest stored is none``; the next incarnation records version 2 with a
    parentChecksum naming a purged record.
    Expected: the tombstone points at the newest remaining version (here: none, version
    0), as the Purge contract says; verify == [].
    """
    a, b = two
    await b.record(change(1, "u1"))
    await b.delete("u1", purge=False)
    await b.delete("u2", purge=False)  # u2 recorded nothing
    await a.delete("u1", purge=True)
    head = await b.store.head(NS, NAME)
    assert head is not None and head.deleted
    remaining = await versions(b.store)
    problems = [str(p) for p in await b.store.verify(NS, NAME)]
    assert problems == [], (problems, head, remaining)
    assert head.version == (remaining[-1][0] if remaining else 0)


async def test_defect_a_late_by_name_delete_of_an_abandoned_acquire_removes_the_next_holders_key(
    faulty: FaultyClient, client: EtcdClient, prefix: str
) -> None:
    """ "Lock keys are deleted by name on every failure path" — and a delete by name
    that lands late deletes a key that is in use.

    Interleaving (one replica, no cancellation needed): hold #1's acquire transaction
    lands but its reply is lost (outcome unknown, revision unknown), so ``_abandon``
    deletes our key BY NAME (no compare). That first delete times out client-side but
    is still in flight (the "late" fault: applied by etcd later, e.g. across a leader
    change); the retried delete succeeds, hold #1 ends. Hold #2 of the same Config in
    the same process then creates the same key name (same lease) and holds the lock.
    The in-flight by-name delete lands: it deletes hold #2's key.

    Observed: while hold #2 believes it holds the lock, another replica acquires it
    (two holders); hold #2's commit then fails its fence (LockLost).
    Expected: the other replica waits (LockTimeout here). Fix: never send an
    unconditional delete; read the key first and delete with a compare on its
    create_revision (or on a revision bound taken before the acquire), so that a delete
    that lands late can only remove the key it was meant for.
    """
    other = await start_replica(client, prefix, "other", acquire_timeout=1.0)
    try:
        async with Session(faulty, ttl=10) as session:
            locks = ConfigLocks(session, prefix=prefix, identity="me", acquire_timeout=5)
            faulty.faults["acquire"] = ("after", None)
            faulty.faults["release"] = ("late", None)
            with pytest.raises(EtcdUnavailable):
                async with locks.hold(NS, NAME):
                    pass
            assert await lock_keys(client, prefix) == []  # the retried delete removed it
            assert len(faulty.late) == 1  # the first delete is still in flight
            async with locks.hold(NS, NAME) as mine:
                assert mine.held
                faulty.late_gate.set()
                await faulty.late[0]  # the abandoned delete lands now
                other_got_it = False
                try:
                    async with other.locks.hold(NS, NAME):
                        other_got_it = True
                except LockTimeout:
                    pass
                assert not other_got_it, (
                    "another replica acquired the lock while this process held it: the "
                    "late by-name delete removed the holder's key"
                )
    finally:
        await other.session.close()


async def test_a_running_replica_sweeps_its_orphaned_lock_key_within_the_ttl(
    faulty: FaultyClient, client: EtcdClient, prefix: str, etcd_server: EtcdServer
) -> None:
    """Found as a defect at 5bd6a9e (and still at HEAD 279b28c): ``ConfigLocks.sweep`` /
    ``run_sweeper`` existed but nothing ran them. A concurrent, not yet committed edit
    of ``controller/runtime.py`` adds a supervised "lock-sweeper" (every TTL); with it
    this test passes, without it it fails. Kept to pin that fix.

    Interleaving: a replica's acquire is abandoned while its transaction is in flight
    (deadline hit) and lands afterwards: the key stays on the replica's live lease, at the
    front of the queue. The replica does not own the Config (rendezvous hashing), so it
    never locks it again to adopt the key: without a sweeper every other replica's
    acquire of that Config times out for as long as the process lives.
    Expected: the running replica removes its orphan at least as fast as a crashed
    replica's key goes away (the lease TTL): the other replica gets the lock within
    2 x TTL.
    """
    from etcdconfig.controller.runtime import Runtime
    from etcdconfig.settings import Settings

    ttl = 3
    settings = Settings(
        etcd_endpoints=[etcd_server.endpoint],
        etcd_prefix=prefix,
        replica_id="r1",
        lock_ttl=ttl,
        acquire_timeout=5,
    )
    rt = Runtime(settings=settings, client=faulty, kube=None)  # type: ignore[arg-type]
    await rt.start()
    other = await start_replica(client, prefix, "other", acquire_timeout=2 * ttl)
    try:
        assert rt.locks is not None
        faulty.faults["acquire"] = ("late", None)
        with pytest.raises(EtcdUnavailable):
            async with rt.locks.hold(NS, NAME):
                pass
        faulty.late_gate.set()
        await faulty.late[0]  # the abandoned acquire lands after the clean-up
        assert len(await lock_keys(client, prefix)) == 1
        async with other.locks.hold(NS, NAME) as mutex:
            assert mutex.held
    finally:
        await other.session.close()
        await rt.stop()


# =================================================================================================
# HYPOTHESES THAT HELD
# =================================================================================================


async def test_purged_and_reused_version_number_is_not_mistaken_for_our_lost_attempt(
    faulty: FaultyClient, client: EtcdClient, prefix: str
) -> None:
    """Our commit of (u1, gen 2) as version 2 never reaches etcd; meanwhile our lease is
    lost, u1 is deleted with Purge and u2 records versions 1 and 2 with the SAME
    generation and data. ``_landed`` compares recordChecksums, not numbers: the reused
    version 2 is not ours; the retry writes nothing (u1 is deleted)."""
    b = await start_replica(client, prefix, "b")
    try:
        async with Session(faulty, ttl=10) as session:
            locks = ConfigLocks(session, prefix=prefix, identity="me")
            store = VersionedStore(faulty, prefix=prefix, replica_id="me")
            await store.record(change(1, "u1", data={"x": 1}), locks)

            async def lose_lock_purge_and_reuse() -> None:
                await client.revoke(session.lease_id)
                await b.delete("u1", purge=True)
                await b.record(change(1, "u2", data={"x": 1}))
                await b.record(change(2, "u2", data={"x": 2}))

            faulty.faults["commit"] = ("before", lose_lock_purge_and_reuse)
            with pytest.raises(StaleIncarnation):
                await store.record(change(2, "u1", data={"x": 2}), locks)
            assert store.stats["commits"] == 1
            assert await versions(b.store) == [(1, "u2", 1), (2, "u2", 2)]
            assert await b.store.verify(NS, NAME) == []
    finally:
        await b.session.close()


async def test_our_landed_attempt_purged_and_its_number_reused_is_neither_claimed_nor_redone(
    faulty: FaultyClient, client: EtcdClient, prefix: str
) -> None:
    """Ours lands as version 2 (reply lost, lock released by it); before the retry, u1
    is purged and u2 reuses versions 1..3. The retry finds neither its record nor a
    successor naming it, and u1's deletion stops it: nothing is written twice."""
    b = await start_replica(client, prefix, "b")
    try:
        async with Session(faulty, ttl=10) as session:
            locks = ConfigLocks(session, prefix=prefix, identity="me")
            store = VersionedStore(faulty, prefix=prefix, replica_id="me")
            await store.record(change(1, "u1"), locks)

            async def purge_and_reuse() -> None:
                await b.delete("u1", purge=True)
                for g in (1, 2, 3):
                    await b.record(change(g, "u2"))

            faulty.faults["commit"] = ("after", purge_and_reuse)
            with pytest.raises(StaleIncarnation):
                await store.record(change(2, "u1"), locks)
            assert await versions(b.store) == [(1, "u2", 1), (2, "u2", 2), (3, "u2", 3)]
            assert await b.store.verify(NS, NAME) == []
            assert await lock_keys(client, prefix) == []
    finally:
        await b.session.close()


async def test_deletion_recorded_between_a_landed_commit_and_its_retry_writes_nothing_more(
    faulty: FaultyClient, client: EtcdClient, prefix: str
) -> None:
    """Delete racing a commit with an unknown outcome: ours lands (v2), the reply is
    lost, another replica records u1's deletion (Retain) before our retry. The retry
    finds its record (the tombstone carries its recordChecksum) and writes nothing:
    no version after the deletion, verify clean.

    (Note: the CommitResult then carries the tombstone as ``head``; the reconciler
    uses it for status and publishing as if it were a live head.)"""
    b = await start_replica(client, prefix, "b")
    try:
        async with Session(faulty, ttl=10) as session:
            locks = ConfigLocks(session, prefix=prefix, identity="me")
            store = VersionedStore(faulty, prefix=prefix, replica_id="me")
            await store.record(change(1, "u1"), locks)

            async def delete_u1() -> None:
                await b.delete("u1", purge=False)

            faulty.faults["commit"] = ("after", delete_u1)
            result = await store.record(change(2, "u1"), locks)
            assert result.recorded is True
            assert await versions(b.store) == [(1, "u1", 1), (2, "u1", 2)]
            assert await b.store.verify(NS, NAME) == []
            with pytest.raises(StaleIncarnation):
                await store.record(change(3, "u1"), locks)
    finally:
        await b.session.close()


async def test_a_finalize_whose_lease_expired_writes_no_tombstone(
    two: tuple[Replica, Replica], client: EtcdClient
) -> None:
    """A finalize holder paused past its TTL (lease gone) wakes up and records the
    deletion: the fence refuses it, the successor's newer version stays live."""
    a, b = two
    await b.record(change(1, "u1"))
    async with a.locks.hold(NS, NAME) as mutex:
        await client.revoke(a.session.lease_id)
        await b.record(change(2, "u1"))
        with pytest.raises(Conflict):
            await a.store.delete(NS, NAME, "u1", mutex, purge=True)
    head = await b.store.head(NS, NAME)
    assert head is not None and (head.deleted, head.version, head.generation) == (False, 2, 2)
    assert [i.deleted for i in await b.store.incarnations(NS, NAME)] == [False]
    assert await versions(b.store) == [(1, "u1", 1), (2, "u1", 2)]


async def test_purge_after_retain_by_the_incarnation_that_still_holds_the_head_is_exact(
    two: tuple[Replica, Replica],
) -> None:
    """The legitimate use of a Purge after a Retain deletion (a finalize retried after
    deletionPolicy was edited, nothing recorded since): u0 keeps v1, u1 recorded v2..v3
    and its tombstone still holds the head; the Purge removes v2..v3 and points the
    tombstone at v1."""
    a, b = two
    await b.record(change(1, "u0"))
    await b.delete("u0", purge=False)
    for g in (1, 2):
        await b.record(change(g, "u1"))
    await b.delete("u1", purge=False)
    v1 = await b.store.get_version(NS, NAME, 1)
    await a.delete("u1", purge=True)
    head = await b.store.head(NS, NAME)
    assert head is not None
    assert (head.uid, head.deleted, head.purged, head.version) == ("u1", True, True, 1)
    assert head.record_checksum == v1.record_checksum()
    assert await versions(b.store) == [(1, "u0", 1)]
    assert await b.store.verify(NS, NAME) == []


async def test_a_late_finalize_of_a_superseded_retain_incarnation_is_a_no_op(
    two: tuple[Replica, Replica],
) -> None:
    """Supersede racing a finalize (same policy): u1 vanished without a tombstone, u2
    superseded it, then u1's in-flight Retain finalize runs: nothing changes."""
    a, b = two
    for g in (1, 2):
        await b.record(change(g, "u1"))
    await b.record(change(1, "u2"))
    before = await b.store.head(NS, NAME)
    await a.delete("u1", purge=False)
    assert await b.store.head(NS, NAME) == before
    assert await versions(b.store) == [(1, "u1", 1), (2, "u1", 2), (3, "u2", 1)]
    assert await b.store.verify(NS, NAME) == []
    with pytest.raises(StaleIncarnation):
        await b.record(change(3, "u1"))


@pytest.mark.parametrize(
    ("max_versions", "expected_pointer"),
    [(2, 0), (5, 3)],
    ids=["retention-left-nothing-below", "earlier-retained-version-below"],
)
async def test_purge_after_retention_pruned_part_of_the_run_points_at_what_remains(
    two: tuple[Replica, Replica], max_versions: int, expected_pointer: int
) -> None:
    """u1 keeps v1..v3 (Retain); u2 records v4..v7 with a small maxVersions (retention
    prunes below it, u1's history included) and is purged: ``_own_versions`` finds the
    retained part of u2's run, the tombstone points at the newest remaining version
    (0 when none), and u3 continues from there (a reused number when 0)."""
    _, b = two
    for g in (1, 2, 3):
        await b.record(change(g, "u1"))
    await b.delete("u1", purge=False)
    for g in (1, 2, 3, 4):
        await b.record(change(g, "u2", max_versions=max_versions))
    await b.delete("u2", purge=True)
    head = await b.store.head(NS, NAME)
    assert head is not None and (head.deleted, head.version) == (True, expected_pointer)
    assert all(uid != "u2" for _, uid, _ in await versions(b.store))
    assert await b.store.verify(NS, NAME) == []
    result = await b.record(change(1, "u3"))
    assert result.version == expected_pointer + 1
    assert await b.store.verify(NS, NAME) == []


class TombstoneFaults(EtcdClient):
    """A real client whose next deletion transaction (the one that writes an
    incarnation record and no version) meets a fault: "after" lands it and loses the
    reply; "late" reports unknown at once and lands it when ``gate`` is set."""

    def __init__(self, settings: EtcdSettings) -> None:
        super().__init__(settings)
        self.mode: str | None = None
        self.gate = asyncio.Event()
        self.late: list[asyncio.Task[Any]] = []

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        puts = [op.key for op in success if isinstance(op, Put)]
        is_delete = any(b"/incarnations/" in k for k in puts) and not any(
            b"/versions/" in k for k in puts
        )
        mode, self.mode = (self.mode, None) if is_delete else (None, self.mode)
        if mode == "after":
            await super().txn(compare, success, failure)
            raise EtcdUnavailable("simulated: the deletion landed but its reply was lost")
        if mode == "late":

            async def land() -> Any:
                await self.gate.wait()
                return await EtcdClient.txn(self, compare, success, failure)

            self.late.append(asyncio.create_task(land()))
            raise EtcdUnavailable("simulated: the deletion reply did not come in time")
        return await super().txn(compare, success, failure)


@pytest.fixture
async def tomb_faults(etcd_server: EtcdServer) -> AsyncIterator[TombstoneFaults]:
    c = TombstoneFaults(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


async def test_a_deletion_whose_reply_was_lost_is_recorded_once_and_the_retry_is_a_no_op(
    tomb_faults: TombstoneFaults, client: EtcdClient, prefix: str
) -> None:
    """Unknown outcome of the tombstone: it landed; kopf retries the finalize, which
    finds the incarnation deleted (and purged) and changes nothing."""
    a = await start_replica(tomb_faults, prefix, "a")
    try:
        for g in (1, 2):
            await a.record(change(g, "u1"))
        tomb_faults.mode = "after"
        with pytest.raises(EtcdUnavailable):
            await a.delete("u1", purge=True)
        head = await a.store.head(NS, NAME)
        assert head is not None and (head.deleted, head.purged, head.version) == (True, True, 0)
        await a.delete("u1", purge=True)  # the retry
        assert await a.store.head(NS, NAME) == head
        assert await versions(a.store) == []
        assert await a.store.verify(NS, NAME) == []
        assert await lock_keys(client, prefix) == []
    finally:
        await a.session.close()


async def test_a_deletion_that_lands_late_after_the_next_incarnation_recorded_is_fenced(
    tomb_faults: TombstoneFaults, client: EtcdClient, prefix: str
) -> None:
    """Unknown outcome of the tombstone, landing late: A's Purge deletion of u1 is in
    flight; A releases its lock; B's finalize records u1's deletion, u2 is created and
    recorded; then A's deletion lands — its fence (A's released key) refuses it, so u2's
    live head and versions are untouched."""
    a = await start_replica(tomb_faults, prefix, "a")
    b = await start_replica(client, prefix, "b")
    try:
        await b.record(change(1, "u1"))
        tomb_faults.mode = "late"
        with pytest.raises(EtcdUnavailable):
            await a.delete("u1", purge=True)
        await b.delete("u1", purge=False)
        await b.record(change(1, "u2"))
        tomb_faults.gate.set()
        late = await tomb_faults.late[0]
        assert late.succeeded is False
        head = await b.store.head(NS, NAME)
        assert head is not None and (head.uid, head.deleted, head.version) == ("u2", False, 2)
        assert await versions(b.store) == [(1, "u1", 1), (2, "u2", 1)]
        assert await b.store.verify(NS, NAME) == []
    finally:
        await a.session.close()
        await b.session.close()


async def test_a_late_compared_release_never_removes_the_next_holders_key(
    faulty: FaultyClient, client: EtcdClient, prefix: str
) -> None:
    """The contrast to the by-name defect: a release whose revision is known compares
    it, so the same late landing cannot take the key of the next hold."""
    other = await start_replica(client, prefix, "other", acquire_timeout=1.0)
    try:
        async with Session(faulty, ttl=10) as session:
            locks = ConfigLocks(session, prefix=prefix, identity="me", acquire_timeout=5)
            async with locks.hold(NS, NAME):
                faulty.faults["release"] = ("late", None)
            assert await lock_keys(client, prefix) == []
            async with locks.hold(NS, NAME) as mine:
                faulty.late_gate.set()
                await faulty.late[0]
                assert mine.held
                assert len(await lock_keys(client, prefix)) == 1
                with pytest.raises(LockTimeout):
                    async with other.locks.hold(NS, NAME):
                        pass
    finally:
        await other.session.close()


class HookedClient(EtcdClient):
    """A real client that runs ``before_txn(compare, success)`` before each txn."""

    before_txn: Callable[[Any, Any], Awaitable[None]] | None = None

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        if self.before_txn is not None:
            await self.before_txn(compare, success)
        return await super().txn(compare, success, failure)


async def test_sweep_racing_acquires_of_the_same_config_never_deletes_a_key_in_use(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    """The sweep lists two orphans (configs a and b of this lease). While it deletes
    the first, a task of the same process locks b: it adopts the orphan, commits
    (which deletes it), and a second task takes b's lock again (a new key, same name)
    and holds it while the sweep reaches b. The sweep skips b (in use) — and even if
    it did not, its compare on the listed create_revision could not match the new key."""
    hooked = HookedClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await hooked.connect()
    try:
        async with Session(hooked, ttl=10) as session:
            locks = ConfigLocks(session, prefix=prefix, identity="me")
            store = VersionedStore(hooked, prefix=prefix, replica_id="me")
            for cfg in ("a", "b"):
                key = f"{lock_prefix(prefix, NS, cfg)}/{session.lease_id:x}".encode()
                await client.put(key, b"me", lease=session.lease_id)
            holding = asyncio.Event()
            done = asyncio.Event()
            results: list[Any] = []

            async def second_holder() -> None:
                async with locks.hold(NS, "b") as m:
                    holding.set()
                    await done.wait()
                    results.append(
                        await store.commit(
                            ChangeRequest(NS, "b", "ub", 2, {"g": 2}, owner_confirmed=True), m
                        )
                    )

            fired = False

            async def race(compare: Any, success: Any) -> None:
                nonlocal fired
                if fired or not (
                    compare and len(success) == 1 and isinstance(success[0], DeleteRange)
                ):
                    return
                if f"/configs/{NS}/a/".encode() not in success[0].key:
                    return
                fired = True
                hooked.before_txn = None
                results.append(
                    await store.record(
                        ChangeRequest(NS, "b", "ub", 1, {"g": 1}, owner_confirmed=True), locks
                    )
                )
                asyncio.get_running_loop().create_task(second_holder())
                await holding.wait()

            hooked.before_txn = race
            removed = await locks.sweep()
            assert fired
            assert removed == 1  # a's orphan only
            held = await lock_keys(client, prefix)
            assert held == [f"{lock_prefix(prefix, NS, 'b')}/{session.lease_id:x}".encode()]
            done.set()
            await wait_for(lambda: len(results) == 2, 5, "the second holder's commit")
            assert [r.version for r in results] == [1, 2]
            assert await lock_keys(client, prefix) == []
    finally:
        await hooked.close()


class CompactingClient(EtcdClient):
    """Before the waiter's first watch starts, the predecessor releases, the store
    moves on and etcd REALLY compacts past the watch's start revision."""

    def __init__(self, settings: EtcdSettings, before_watch: Callable[[], Awaitable[None]]) -> None:
        super().__init__(settings)
        self.before_watch: Callable[[], Awaitable[None]] | None = before_watch
        self.compacted = 0

    async def watch(self, *args: Any, **kwargs: Any) -> AsyncIterator[tuple[int, list[Any]]]:
        if self.before_watch is not None:
            hook, self.before_watch = self.before_watch, None
            await hook()
        try:
            async for item in super().watch(*args, **kwargs):
                yield item
        except Compacted:
            self.compacted += 1
            raise


async def test_waiter_gets_the_lock_after_a_real_compaction_hid_the_release(
    tmp_path: Path,
) -> None:
    """etcd compaction during a lock wait (a dedicated server: compaction is global).
    The DELETE of the predecessor's key happens in the compacted range; the waiter's
    watch is refused (Compacted), it re-reads the key, finds it gone, and acquires."""
    server = EtcdServer(data_dir=tmp_path / "data", name="compaction")
    server.start()
    try:
        await asyncio.to_thread(server.wait_healthy, 60)
        admin = EtcdClient(EtcdSettings(endpoints=[server.endpoint]))
        await admin.connect()
        lp = lock_prefix("/c", NS, NAME)
        async with Session(admin, ttl=10) as s1:
            first = Mutex(s1, lp, identity="first")
            await first.acquire(5)

            async def release_and_compact() -> None:
                await first.release()
                for i in range(3):
                    await admin.put(b"/c/noise", str(i).encode())
                _, rev = await admin.get(b"/c/noise")
                await admin.compact(rev)

            waiter_client = CompactingClient(
                EtcdSettings(endpoints=[server.endpoint]), release_and_compact
            )
            await waiter_client.connect()
            try:
                async with Session(waiter_client, ttl=10) as s2:
                    waiter = Mutex(s2, lp, identity="waiter")
                    await waiter.acquire(5)
                    assert waiter.held and waiter.contended
                    assert waiter_client.compacted == 1  # a real Compacted from etcd
                    await waiter.release()
            finally:
                await waiter_client.close()
        await admin.close()
    finally:
        server.stop()


async def test_stale_bodies_after_delete_and_recreate_write_nothing_through_the_reconciler(
    client: EtcdClient, prefix: str
) -> None:
    """``Reconciler._record`` with the API server answering "u2 owns the name now":
    - a stale body of u1 whose deletion was recorded: StaleIncarnation -> nothing;
    - a stale body of u0, never recorded and deleted before any finalizer: the store
      has no live record of it, the API server names u2 -> nothing;
    - the current u2 (never seen by the store): confirmed under the lock -> recorded."""
    replica = await start_replica(client, prefix, "r")
    asked: list[str] = []

    class Kube:
        async def get_config(self, ns: str, name: str) -> dict[str, Any] | None:
            asked.append(name)
            return {"metadata": {"uid": "u2", "namespace": ns, "name": name}}

    rt = SimpleNamespace(
        store=replica.store,
        locks=replica.locks,
        kube=Kube(),
        intact={},
        rollouts=None,
        rollout_failures={},
        recheck=set(),
        note_usage=lambda uid, sizes: None,
        space=None,
    )
    reconciler = Reconciler(rt)  # type: ignore[arg-type]
    try:
        await replica.record(change(1, "u1"))
        await replica.delete("u1", purge=False)
        assert await reconciler._record(change(2, "u1", confirmed=False)) is None
        assert await reconciler._record(change(5, "u0", confirmed=False)) is None
        result = await reconciler._record(change(1, "u2", confirmed=False))
        assert result is not None and (result.recorded, result.version) == (True, 2)
        assert asked == [NAME, NAME]
        assert await versions(replica.store) == [(1, "u1", 1), (2, "u2", 1)]
        assert await replica.store.verify(NS, NAME) == []
    finally:
        await replica.session.close()


# --- model-based: random sequences of the lifecycle, checked after every step ----------------


async def _lifecycle(seed: int, replica: Replica) -> None:
    """Create, update, delete (Retain/Purge, each uid's policy fixed), vanish without a
    tombstone, stale events and repeated finalizes, with random maxVersions; after each
    step: verify clean, versions gapless, no (uid, generation) twice, nothing left of a
    purged uid, and no stale write accepted."""
    rnd = random.Random(seed)
    current: str | None = None
    gens: dict[str, int] = {}
    purge: dict[str, bool] = {}
    finalized: list[str] = []
    vanished: list[str] = []
    n = 0

    async def reconcile(uid: str, gen: int) -> Any:
        ch = change(gen, uid, confirmed=False, max_versions=rnd.choice([1, 2, 3, 100]))
        async with replica.locks.hold(
            NS, NAME, prefetch=replica.store.lock_prefetch(NS, NAME, uid)
        ) as m:
            try:
                return await replica.store.commit(ch, m)
            except StaleIncarnation:
                return "stale"
            except OwnerUnconfirmed:
                if uid != current:  # the API server names another object
                    return "unconfirmed"
                return await replica.store.commit(dataclasses.replace(ch, owner_confirmed=True), m)

    for step in range(40):
        op = rnd.choice(["create", "update", "update", "finalize", "vanish", "stale", "refinalize"])
        if op == "create" and current is None:
            n += 1
            current = f"u{n}"
            gens[current], purge[current] = 1, rnd.random() < 0.5
            await reconcile(current, 1)
        elif op == "update" and current is not None:
            gens[current] += 1
            await reconcile(current, gens[current])
        elif op == "finalize" and current is not None:
            await replica.delete(current, purge=purge[current])
            finalized.append(current)
            current = None
        elif op == "vanish" and current is not None:
            vanished.append(current)
            current = None
        elif op == "stale" and (finalized or vanished):
            uid = rnd.choice(finalized + vanished)
            r = await reconcile(uid, gens[uid] + rnd.choice([-1, 0, 1, 5]))
            if uid in finalized:
                assert r in ("stale", "unconfirmed") or not r.recorded, (seed, step, uid, r)
        elif op == "refinalize" and finalized:
            uid = rnd.choice(finalized)
            await replica.delete(uid, purge=purge[uid])
        else:
            continue
        problems = [str(p) for p in await replica.store.verify(NS, NAME)]
        assert problems == [], (seed, step, op, problems)
        recs = await versions(replica.store)
        nums = [v for v, _, _ in recs]
        assert nums == list(range(nums[0], nums[0] + len(nums))) if nums else True, (seed, nums)
        pairs = [(u, g) for _, u, g in recs]
        assert len(set(pairs)) == len(pairs), (seed, step, pairs)
        for uid in finalized:
            assert not (purge[uid] and any(u == uid for _, u, _ in recs)), (seed, step, uid)


@pytest.mark.parametrize("seed", [3, 11, 42, 87, 98])
async def test_random_lifecycles_keep_every_invariant(
    client: EtcdClient, prefix: str, seed: int
) -> None:
    replica = await start_replica(client, prefix, "r")
    try:
        await _lifecycle(seed, replica)
    finally:
        await replica.session.close()


# --- two replicas, random faults on every write, lease losses, delete and re-create ----------


class RandomFaults(EtcdClient):
    """Every write transaction meets, with probability ``p``, one of: landed with the
    reply lost, never sent, or landed late (after a random delay)."""

    def __init__(self, settings: EtcdSettings, rnd: random.Random, p: float) -> None:
        super().__init__(settings)
        self.rnd, self.p = rnd, p
        self.late: list[asyncio.Task[Any]] = []

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        writes = [op for op in success if isinstance(op, Put | DeleteRange)]
        if not writes or self.rnd.random() >= self.p:
            return await super().txn(compare, success, failure)
        mode = self.rnd.choice(["after", "before", "late"])
        if mode == "before":
            raise EtcdUnavailable("simulated: never sent")
        if mode == "after":
            await super().txn(compare, success, failure)
            raise EtcdUnavailable("simulated: reply lost")
        delay = self.rnd.random() * 0.3

        async def land() -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(Exception):
                await EtcdClient.txn(self, compare, success, failure)

        self.late.append(asyncio.create_task(land()))
        raise EtcdUnavailable("simulated: late")


@pytest.mark.parametrize("seed", [1, 7])
async def test_two_faulty_replicas_with_lease_losses_and_recreations_keep_the_history_sound(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, seed: int
) -> None:
    """Two replicas reconcile and finalize one Config from possibly stale views while a
    driver updates it and deletes/re-creates it; 25% of their writes meet a fault and
    leases are revoked at random. At the end: no (uid, generation) twice, gapless,
    verify clean (which also catches a write after a recorded deletion), nothing of a
    purged uid left, and no lock key left after the sweep."""
    rnd = random.Random(seed)
    k8s: dict[str, Any] = {"uid": "u1", "gen": 1, "deleting": False, "n": 1}
    policy: dict[str, bool] = {"u1": rnd.random() < 0.5}
    finalized: dict[str, bool] = {}

    async def replica(rid: int) -> None:
        rr = random.Random(seed * 31 + rid)
        c = RandomFaults(EtcdSettings(endpoints=[etcd_server.endpoint]), rr, 0.25)
        await c.connect()
        store = VersionedStore(c, prefix=prefix, replica_id=f"r{rid}", max_attempts=3)
        session = await Session(c, ttl=5).start()
        locks = ConfigLocks(session, prefix=prefix, identity=f"r{rid}", acquire_timeout=2)
        try:
            for _ in range(30):
                view = dict(k8s)
                await asyncio.sleep(rr.random() * 0.03)
                try:
                    if not session.alive:
                        session = await Session(c, ttl=5).start()
                        locks = ConfigLocks(
                            session, prefix=prefix, identity=f"r{rid}", acquire_timeout=2
                        )
                    uid = view["uid"]
                    if view["deleting"]:
                        async with locks.hold(NS, NAME) as m:
                            await store.delete(NS, NAME, uid, m, purge=policy[uid])
                        if k8s["uid"] == uid and k8s["deleting"]:
                            finalized[uid] = policy[uid]
                            k8s["n"] += 1
                            new = f"u{k8s['n']}"
                            k8s.update(uid=new, gen=1, deleting=False)
                            policy[new] = rr.random() < 0.5
                        continue
                    ch = change(
                        view["gen"], uid, confirmed=False, max_versions=rr.choice([1, 2, 100])
                    )
                    async with locks.hold(
                        NS, NAME, prefetch=store.lock_prefetch(NS, NAME, uid)
                    ) as m:
                        try:
                            await store.commit(ch, m)
                        except OwnerUnconfirmed:
                            if uid == k8s["uid"]:
                                await store.commit(dataclasses.replace(ch, owner_confirmed=True), m)
                except EtcdConfigError:
                    pass
                if rr.random() < 0.05:
                    with contextlib.suppress(Exception):
                        await client.revoke(session.lease_id)
                    session.done.set()
            c.p = 0
            for t in c.late:
                await t
            await locks.sweep()
        finally:
            await session.close()
            await c.close()

    async def driver() -> None:
        for _ in range(20):
            await asyncio.sleep(rnd.random() * 0.08)
            if k8s["deleting"]:
                continue
            if rnd.random() < 0.2:
                k8s["deleting"] = True
            else:
                k8s["gen"] += 1

    await asyncio.gather(replica(1), replica(2), driver())
    store = VersionedStore(client, prefix=prefix)
    recs = await versions(store)
    nums = [v for v, _, _ in recs]
    pairs = [(u, g) for _, u, g in recs]
    assert len(set(pairs)) == len(pairs), pairs
    assert nums == list(range(nums[0], nums[0] + len(nums))) if nums else True, nums
    assert [str(p) for p in await store.verify(NS, NAME)] == []
    for uid, purged in finalized.items():
        assert not (purged and any(u == uid for _, u, _ in recs)), (uid, recs)
    assert await lock_keys(client, prefix) == []
