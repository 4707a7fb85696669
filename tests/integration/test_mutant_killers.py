"""Guards no other test failed without: each test here kills a mutant of
``tests/mutation/mutants.py`` (named in its docstring) that survived every existing
test. On a real etcd; faults are writes made behind the lock's back (as a writer
that does not take the lock would make them) or a lease revoked as if it expired.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.integration.helpers import change

from etcdconfig.canonical import sha256_of
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import Conflict, EtcdUnavailable, StaleIncarnation
from etcdconfig.etcd import EtcdClient, EtcdSettings, Put
from etcdconfig.store import VersionedStore
from etcdconfig.store.records import Incarnation, dump

NS, NAME = "prod", "payments"
Hook = Callable[[], Awaitable[None]]


class MeddlingClient(EtcdClient):
    """A real client that runs ``before_commit`` just before it sends the next commit
    transaction; with ``lose_commit`` that commit then never reaches etcd (the caller
    hears EtcdUnavailable, the outcome unknown to it)."""

    def __init__(self, settings: EtcdSettings) -> None:
        super().__init__(settings)
        self.before_commit: Hook | None = None
        self.before_delete: Hook | None = None  # before the next deletion (tombstone) txn
        self.lose_commit = False

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        is_deletion = any(
            isinstance(op, Put) and b"/incarnations/" in op.key and b'"deleted":true' in op.value
            for op in success
        ) and not any(isinstance(op, Put) and b"/versions/" in op.key for op in success)
        if is_deletion and self.before_delete is not None:
            hook, self.before_delete = self.before_delete, None
            await hook()
        is_commit = any(isinstance(op, Put) and b"/versions/" in op.key for op in success)
        if is_commit and self.before_commit is not None:
            hook, self.before_commit = self.before_commit, None
            await hook()
            if self.lose_commit:
                self.lose_commit = False
                raise EtcdUnavailable("simulated: the commit request never reached etcd")
        return await super().txn(compare, success, failure)


@pytest.fixture
async def meddling(etcd_server: EtcdServer) -> AsyncIterator[MeddlingClient]:
    c = MeddlingClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def env(
    meddling: MeddlingClient, prefix: str
) -> AsyncIterator[tuple[VersionedStore, ConfigLocks, Session]]:
    session = await Session(meddling, ttl=10).start()
    try:
        yield (
            VersionedStore(meddling, prefix=prefix, replica_id="me"),
            ConfigLocks(session, prefix=prefix, identity="me", acquire_timeout=5),
            session,
        )
    finally:
        await session.close()


def key(prefix: str, *parts: str) -> bytes:
    return "/".join([prefix, "configs", NS, NAME, *parts]).encode()


def version_key(prefix: str, version: int) -> bytes:
    return key(prefix, "versions", f"{version:020d}")


async def history(store: VersionedStore) -> list[tuple[int, str, int]]:
    records, _ = await store.history(NS, NAME)
    return [(r.version, r.uid, r.generation) for r in records]


# --- the commit transaction's compares ---------------------------------------------------------


async def test_commit_refused_when_the_head_moved_after_it_was_read(
    env: Any, meddling: MeddlingClient, client: EtcdClient, prefix: str
) -> None:
    """Kills M02 (the commit without ``mod_revision(head)``): the head changes after
    the commit read it (a tombstone put by a writer that does not take the lock); the
    commit must not write over it."""
    store, locks, _ = env
    await store.record(change(1), locks)
    head_kv, _ = await client.get(key(prefix, "head"))
    assert head_kv is not None
    tomb = {**json.loads(head_kv.value), "deleted": True}

    async def put_tombstone() -> None:
        await client.put(key(prefix, "head"), dump(tomb))

    meddling.before_commit = put_tombstone
    with pytest.raises(Conflict, match="moved during the commit"):
        await store.record(change(2), locks)
    head = await store.head(NS, NAME)
    assert head is not None and (head.version, head.deleted) == (1, True)
    assert (await client.get(version_key(prefix, 2)))[0] is None


async def test_commit_refused_when_its_uid_was_deleted_after_the_read(
    env: Any, meddling: MeddlingClient, client: EtcdClient, prefix: str
) -> None:
    """Kills M04 (the commit without ``mod_revision(incarnation)``): u1's live head
    holds the name, so the deletion of u2 writes only u2's incarnation record; written
    after u2's commit read it, the commit must not record u2."""
    store, locks, _ = env
    await store.record(change(1, "u1"), locks)
    ended = Incarnation(uid="u2", deleted=True, recorded_at="2026-01-01T00:00:00.000Z")

    async def record_u2_deleted() -> None:
        await client.put(key(prefix, "incarnations", "u2"), dump(ended.to_json()))

    meddling.before_commit = record_u2_deleted
    with pytest.raises(Conflict, match="moved during the commit"):
        await store.record(change(1, "u2"), locks)
    head = await store.head(NS, NAME)
    assert head is not None and (head.uid, head.version, head.deleted) == ("u1", 1, False)
    assert await history(store) == [(1, "u1", 1)]
    # and a retry is refused for good
    with pytest.raises(StaleIncarnation, match="uid u2 was deleted"):
        await store.record(change(1, "u2"), locks)


# --- outcome classification --------------------------------------------------------------------


async def test_a_pruned_version_of_another_holder_is_not_claimed_as_ours(
    env: Any, meddling: MeddlingClient, client: EtcdClient, prefix: str
) -> None:
    """Kills M05c (``_landed`` taking any successor's parentChecksum as proof): our
    commit of generation 2 never reached etcd and our lease expired; another replica
    recorded generations 2 and 3 with maxVersions 1, so version 2 (the number we
    tried) is pruned and version 3 names the other replica's record as parent."""
    store, locks, session = env
    await store.record(change(1, max_versions=1), locks)
    other_session = await Session(client, ttl=10).start()
    try:
        other_store = VersionedStore(client, prefix=prefix, replica_id="other")
        other_locks = ConfigLocks(other_session, prefix=prefix, identity="other")

        async def lose_lock_and_let_other_record() -> None:
            await client.revoke(session.lease_id)  # as if the lease expired in a pause
            await other_store.record(change(2, max_versions=1), other_locks)
            await other_store.record(change(3, max_versions=1), other_locks)

        meddling.before_commit = lose_lock_and_let_other_record
        meddling.lose_commit = True
        result = await store.record(change(2, max_versions=1), locks)
        assert (result.recorded, result.version) == (False, 3)
        assert store.stats["commits"] == 1  # only version 1 was ours
        assert (await client.get(version_key(prefix, 2)))[0] is None  # pruned
    finally:
        await other_session.close()


# --- stale incarnations ------------------------------------------------------------------------


async def test_a_tombstone_without_an_incarnation_record_refuses_its_uid(
    env: Any, client: EtcdClient, prefix: str
) -> None:
    """Kills M08 (the head's own tombstone no longer refusing its uid): a tombstone
    recorded before incarnation records existed (an earlier release) is in the head
    only; a late event of that uid must write nothing."""
    store, locks, _ = env
    for g in (1, 2):
        await store.record(change(g), locks)
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "u1", mutex, purge=False)
    await client.delete_range(key(prefix, "incarnations", "u1"))  # the earlier layout
    before = await store.head(NS, NAME)
    assert before is not None and before.deleted
    for confirmed in (False, True):
        with pytest.raises(StaleIncarnation, match="uid u1 was deleted"):
            await store.record(change(3, confirmed=confirmed), locks)
    assert await store.head(NS, NAME) == before
    assert await history(store) == [(2, "u1", 2), (1, "u1", 1)]


# --- purge scope -------------------------------------------------------------------------------


async def test_purge_without_an_incarnation_record_keeps_the_earlier_uids_history(
    env: Any, client: EtcdClient, prefix: str
) -> None:
    """Kills M10 (``_own_versions`` not stopping at another uid's record): u1 keeps 1..2
    under Retain, u2 records 3..4 and has no incarnation record (recorded by an
    earlier release), so the purge finds u2's versions by scanning down from the head:
    it must stop at u1's version 2."""
    store, locks, _ = env
    for g in (1, 2):
        await store.record(change(g, "u1"), locks)
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "u1", mutex, purge=False)
    for g in (1, 2):
        await store.record(change(g, "u2"), locks)
    v2 = await store.get_version(NS, NAME, 2)
    await client.delete_range(key(prefix, "incarnations", "u2"))  # the earlier layout
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "u2", mutex, purge=True)
    assert await history(store) == [(2, "u1", 2), (1, "u1", 1)]
    head = await store.head(NS, NAME)
    assert head is not None
    assert (head.uid, head.deleted, head.purged, head.version, head.record_checksum) == (
        "u2",
        True,
        True,
        2,
        v2.record_checksum(),
    )


# --- verify ------------------------------------------------------------------------------------


async def test_verify_reports_a_version_written_after_its_uids_deletion(
    env: Any, client: EtcdClient, prefix: str
) -> None:
    """Kills M17b (verify without the written-after-deletion check): u1's deletion is
    recorded, then a version of u1 appears (a late write that skipped every guard),
    well-formed and chained to version 1."""
    store, locks, _ = env
    await store.record(change(1), locks)
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "u1", mutex, purge=False)
    v1_kv, _ = await client.get(version_key(prefix, 1))
    assert v1_kv is not None
    late = {
        **json.loads(v1_kv.value),
        "version": 2,
        "generation": 2,
        "parentChecksum": sha256_of(v1_kv.value),
    }
    await client.put(version_key(prefix, 2), json.dumps(late).encode())
    problems = [(p.version, p.kind) for p in await store.verify(NS, NAME)]
    assert (2, "written-after-deletion") in problems


# --- lock keys ---------------------------------------------------------------------------------


async def test_sweep_leaves_other_sessions_keys_alone(
    env: Any, etcd_server: EtcdServer, prefix: str
) -> None:
    """Kills M13c (the sweep without its own-lease check): another replica (session)
    holds a lock; this process's sweep must not delete that replica's key."""
    _, locks, _ = env
    other_client = EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    async with Session(other_client, ttl=10) as other_session:
        other_locks = ConfigLocks(other_session, prefix=prefix, identity="other")
        async with other_locks.hold(NS, NAME) as theirs:
            assert await locks.sweep() == 0
            held, _ = await other_client.get(theirs.key)
            assert held is not None and held.create_revision == theirs.revision
    await other_client.close()


# --- the deletion's and the supersede's compares -------------------------------------------------


async def _delete(store: VersionedStore, locks: ConfigLocks, uid: str, *, purge: bool) -> None:
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, uid, mutex, purge=purge)


async def test_deletion_refused_when_the_head_moved_after_it_was_read(
    env: Any, meddling: MeddlingClient, client: EtcdClient, prefix: str
) -> None:
    """Kills M20 (the deletion without ``mod_revision(head)``): a version lands after
    the deletion read the head (a writer that does not take the lock); the tombstone
    must not be written over it (it would hide a version the Purge never saw)."""
    store, locks, _ = env
    await store.record(change(1), locks)
    head_kv, _ = await client.get(key(prefix, "head"))
    assert head_kv is not None
    moved = {**json.loads(head_kv.value), "recordedAt": "2030-01-01T00:00:00.000Z"}

    async def move_head() -> None:
        await client.put(key(prefix, "head"), dump(moved))

    meddling.before_delete = move_head
    with pytest.raises(Conflict, match="head moved during deletion"):
        await _delete(store, locks, "u1", purge=True)
    head = await store.head(NS, NAME)
    assert head is not None and (head.deleted, head.recorded_at) == (False, moved["recordedAt"])
    assert await history(store) == [(1, "u1", 1)]
    [inc] = await store.incarnations(NS, NAME)
    assert (inc.uid, inc.deleted) == ("u1", False)


async def test_deletion_refused_when_its_incarnation_record_changed_after_the_read(
    env: Any, meddling: MeddlingClient, client: EtcdClient, prefix: str
) -> None:
    """Kills M21 (the deletion without ``mod_revision(incarnation)``): u2 is deleted
    while u1's live head holds the name, so only u2's incarnation record is written;
    if that record changed after the read (another deletion of u2 recorded Purge), the
    stale deletion must not overwrite it."""
    store, locks, _ = env
    await store.record(change(1, "u1"), locks)
    purged = Incarnation(
        uid="u2", deleted=True, purged=True, recorded_at="2030-01-01T00:00:00.000Z"
    )

    async def record_u2_purged() -> None:
        await client.put(key(prefix, "incarnations", "u2"), dump(purged.to_json()))

    meddling.before_delete = record_u2_purged
    with pytest.raises(Conflict, match="head moved during deletion"):
        await _delete(store, locks, "u2", purge=False)
    raw, _ = await client.get(key(prefix, "incarnations", "u2"))
    assert raw is not None and json.loads(raw.value) == purged.to_json()


async def test_supersede_refused_when_the_old_uids_record_changed_after_the_read(
    env: Any, meddling: MeddlingClient, client: EtcdClient, prefix: str
) -> None:
    """Kills M22 (the supersede without its compare on the old uid's incarnation
    record): u2 (confirmed by the API server) takes over from u1, whose record is
    rewritten after the commit read it (u1's Purge deletion recorded meanwhile): the
    commit must not overwrite that record with a "superseded, not purged" one."""
    store, locks, _ = env
    await store.record(change(1, "u1"), locks)
    purged = Incarnation(
        uid="u1",
        first_version=1,
        last_version=1,
        deleted=True,
        purged=True,
        recorded_at="2030-01-01T00:00:00.000Z",
    )

    async def record_u1_purged() -> None:
        await client.put(key(prefix, "incarnations", "u1"), dump(purged.to_json()))

    meddling.before_commit = record_u1_purged
    with pytest.raises(Conflict, match="moved during the commit"):
        await store.record(change(1, "u2"), locks)
    raw, _ = await client.get(key(prefix, "incarnations", "u1"))
    assert raw is not None and json.loads(raw.value) == purged.to_json()
    assert await history(store) == [(1, "u1", 1)]
