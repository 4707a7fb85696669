"""Faults at the network level, one etcd call kind at a time (tests/faultproxy.py).

A replica ("replica-a": a Session, ConfigLocks and VersionedStore on an etcd
client whose endpoint is the fault proxy) records, releases and deletes while
the proxy loses, withholds or delays the request or the answer of ONE kind of
call: the lock acquire, the commit, the release, the tombstone or the lease
keep-alive. The request reaches etcd (except in ``lose`` mode), so the
replica's view and etcd's differ: it must find out what happened, or at least
leave nothing behind.

After every scenario, read from etcd directly (``assert_after_faults``):

- no lock key is left on a live lease by a process that no longer wants the lock;
- another replica ("replica-b", a direct connection) takes the lock within the TTL
  and records the next generation;
- every version a replica was told was recorded is there, exactly once;
- nothing was written after its lock was lost: each record's lock key (its
  fencing revision) was the owner just before the record's revision;
- head = newest record, versions gapless, ``verify()`` == [].
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.faultproxy import Fault, FaultProxy, Kind, Mode
from tests.integration.helpers import assert_history_invariants, wait_for

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import EtcdConfigError, LockError, StaleIncarnation
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end
from etcdconfig.store import ChangeRequest, CommitResult, VersionedStore
from etcdconfig.store.records import Head

NS, NAME = "prod", "payments"
TTL = 5  # session lease of both replicas
REQUEST_TIMEOUT = 1.0  # the faulty replica's gRPC deadline
HOLD = 2.0  # timeout mode: how long the connection stays silent (past the deadline)


@dataclass
class Replica:
    name: str
    client: EtcdClient
    session: Session
    locks: ConfigLocks
    store: VersionedStore
    acked: list[tuple[ChangeRequest, CommitResult]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, name: str, endpoint: str, prefix: str, *, ttl: int = TTL, timeout: float = 5.0
    ) -> Replica:
        client = EtcdClient(EtcdSettings(endpoints=[endpoint], request_timeout=timeout))
        session = await Session(client, ttl=ttl).start()
        locks = ConfigLocks(
            session, prefix=prefix, identity=name, acquire_timeout=TTL, hold_timeout=30
        )
        store = VersionedStore(client, prefix=prefix, replica_id=name)
        return cls(name, client, session, locks, store)

    async def record(self, change: ChangeRequest) -> CommitResult:
        result = await self.store.record(change, self.locks)
        self.acked.append((change, result))
        return result

    async def try_record(self, change: ChangeRequest) -> CommitResult | EtcdConfigError:
        """What the operator does: record, and take an error as an outcome to retry later."""
        try:
            return await self.record(change)
        except EtcdConfigError as exc:
            return exc

    async def close(self) -> None:
        await self.session.close()
        await self.client.close()


def change(generation: int, uid: str = "uid-1") -> ChangeRequest:
    return ChangeRequest(
        namespace=NS,
        name=NAME,
        uid=uid,
        generation=generation,
        data={"retries": generation, "uid": uid},
        owner_confirmed=True,  # the test plays the API server: this uid owns the name
    )


@pytest.fixture
def proxy(etcd_server: EtcdServer, prefix: str) -> Iterator[FaultProxy]:
    host, port = etcd_server.endpoint.split(":")
    with FaultProxy(host, int(port), prefix=prefix) as p:
        yield p


@pytest.fixture
async def direct(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    c = EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    yield c
    await c.close()


@pytest.fixture
async def faulty(proxy: FaultProxy, prefix: str) -> AsyncIterator[Replica]:
    r = await Replica.start("replica-a", proxy.endpoint, prefix, timeout=REQUEST_TIMEOUT)
    yield r
    await r.close()


@pytest.fixture
async def other(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Replica]:
    r = await Replica.start("replica-b", etcd_server.endpoint, prefix)
    yield r
    await r.close()


# --- invariants (read from etcd directly) -----------------------------------------------------


async def live_lock_keys(client: EtcdClient, prefix: str) -> list[str]:
    """Lock keys under ``{prefix}/locks/`` whose lease is still alive."""
    base = f"{prefix}/locks/".encode()
    res = await client.range(base, prefix_end(base))
    live = []
    for kv in res.kvs:
        if kv.lease and await client.time_to_live(kv.lease) > 0:
            live.append(f"{kv.key.decode()} (lease {kv.lease:x}, {kv.value.decode()})")
    return live


async def assert_no_live_lock_keys(client: EtcdClient, prefix: str, within: float) -> None:
    """No process that is done with the lock may leave its key behind on a live lease
    (it is given ``within`` seconds to clean up)."""
    deadline = time.monotonic() + within
    while live := await live_lock_keys(client, prefix):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"lock keys left on live leases {within}s after their processes stopped "
                f"wanting the lock (nobody else can lock while they live): {live}"
            )
        await asyncio.sleep(0.1)  # poll interval of a deadline-bounded wait


async def assert_written_under_lock(client: EtcdClient, prefix: str) -> None:
    """Each record's lock key (create revision = its fencingRevision) was the owner
    (the oldest key) at the revision just before the record was written."""
    store = VersionedStore(client, prefix=prefix)
    records, _ = await store.history(NS, NAME, limit=1000)
    base = lock_prefix(prefix, NS, NAME).encode() + b"/"
    for r in records:
        res = await client.range(
            base, prefix_end(base), revision=r.mod_revision - 1, sort_by_create=True, limit=1
        )
        owner = res.kvs[0].create_revision if res.kvs else None
        assert owner == r.fencing_revision, (
            f"version {r.version} (fencing revision {r.fencing_revision}, by {r.recorded_by}) "
            f"was written at revision {r.mod_revision} while the lock owner was {owner}"
        )


async def assert_acknowledged_present(
    client: EtcdClient, prefix: str, replicas: tuple[Replica, ...], purged: frozenset[str]
) -> None:
    """Every version a replica was told it recorded is there (unless its uid was
    purged), holding what that replica recorded."""
    store = VersionedStore(client, prefix=prefix)
    records, _ = await store.history(NS, NAME, limit=1000)
    by_version = {r.version: r for r in records}
    for replica in replicas:
        for ch, res in replica.acked:
            if not res.recorded or ch.uid in purged:
                continue
            rec = by_version.get(res.version)
            assert rec is not None, f"{replica.name} was told v{res.version} was recorded: missing"
            assert (rec.uid, rec.generation, rec.checksum) == (
                ch.uid,
                ch.generation,
                res.checksum,
            ), f"{replica.name} was told v{res.version} holds {ch.uid}/{ch.generation}"
            assert rec.recorded_by == replica.name


async def assert_after_faults(
    client: EtcdClient,
    prefix: str,
    faulty: Replica,
    other: Replica,
    *,
    next_change: ChangeRequest | None,
    purged: frozenset[str] = frozenset(),
) -> None:
    await assert_no_live_lock_keys(client, prefix, within=TTL)
    if next_change is not None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(TTL):
                result = await other.record(next_change)
        except (TimeoutError, LockError) as exc:
            raise AssertionError(
                f"another replica could not lock and record within the TTL ({TTL}s): {exc!r}"
            ) from exc
        assert result.recorded, result
        assert time.monotonic() - started < TTL
    await assert_acknowledged_present(client, prefix, (faulty, other), purged)
    await assert_written_under_lock(client, prefix)
    await assert_history_invariants(client, prefix, NS, NAME)


def assert_fired(proxy: FaultProxy, kind: Kind, mode: Mode, times: int = 1) -> list[Fault]:
    fired = proxy.fired
    assert [(f.kind, f.mode) for f in fired] == [(kind, mode)] * times, fired
    return fired


# --- the proxy sees every call kind -----------------------------------------------------------


async def test_the_proxy_classifies_every_call_kind(
    proxy: FaultProxy, faulty: Replica, prefix: str
) -> None:
    await faulty.record(change(1))  # acquire + commit (the commit releases)
    await faulty.record(change(1))  # acquire + release (already recorded)
    async with faulty.locks.hold(NS, NAME) as mutex:  # acquire + tombstone
        await faulty.store.delete(NS, NAME, "uid-1", mutex, purge=False)
    await wait_for(lambda: proxy.seen["keepalive"] >= 1, TTL, "a keep-alive")
    assert {k: proxy.seen[k] for k in ("acquire", "commit", "release", "tombstone")} == {
        "acquire": 3,
        "commit": 1,
        "release": 1,
        "tombstone": 1,
    }
    assert proxy.fired == []


# --- lock acquire -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "timeout"])
async def test_acquire_that_lands_while_the_client_sees_an_error_leaks_no_lock_key(
    proxy: FaultProxy, faulty: Replica, other: Replica, direct: EtcdClient, prefix: str, mode: Mode
) -> None:
    """The acquire transaction creates the waiter key, its answer is lost: whether the
    replica retries or gives up, its key must not outlive its interest in the lock."""
    await faulty.record(change(1))
    proxy.arm("acquire", mode=mode, hold=HOLD)
    outcome = await faulty.try_record(change(2))
    (fault,) = assert_fired(proxy, "acquire", mode)
    assert fault.answered, "etcd never executed the faulted acquire"
    if isinstance(outcome, CommitResult):
        assert outcome.recorded and outcome.head.generation == 2
    await assert_after_faults(direct, prefix, faulty, other, next_change=change(3))


# --- commit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "timeout", "late"])
async def test_commit_that_lands_while_the_client_sees_an_error_is_reported_recorded(
    proxy: FaultProxy, faulty: Replica, other: Replica, direct: EtcdClient, prefix: str, mode: Mode
) -> None:
    """The commit lands, its answer is lost (``late``: it lands after the retry re-read
    the head). The store must find its own commit (fencing revision + recordedBy in the
    record) and report it recorded, once, instead of "lock lost, nothing was written"."""
    await faulty.record(change(1))
    proxy.arm("commit", mode=mode, hold=HOLD)
    outcome = await faulty.try_record(change(2))
    (fault,) = assert_fired(proxy, "commit", mode)
    assert fault.answered, "etcd never executed the faulted commit"
    records, _ = await faulty.store.history(NS, NAME)
    landed = [r for r in records if r.generation == 2]
    assert len(landed) == 1 and landed[0].recorded_by == "replica-a"
    assert isinstance(outcome, CommitResult), (
        f"generation 2 was recorded as v{landed[0].version}, yet the commit said: {outcome!r}"
    )
    assert outcome.recorded and outcome.version == landed[0].version
    await assert_after_faults(direct, prefix, faulty, other, next_change=change(3))


# --- release ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lose", "drop", "timeout"])
async def test_release_that_meets_a_transient_error_leaks_no_lock_key(
    proxy: FaultProxy, faulty: Replica, other: Replica, direct: EtcdClient, prefix: str, mode: Mode
) -> None:
    """A duplicate event: the generation is already recorded, so the lock is released
    without a commit. The release request is lost (``lose``) or its answer is: the
    release must be retried until the key is gone."""
    await faulty.record(change(1))
    proxy.arm("release", mode=mode, hold=HOLD)
    outcome = await faulty.try_record(change(1))
    assert_fired(proxy, "release", mode)
    if isinstance(outcome, CommitResult):
        assert not outcome.recorded and outcome.head.generation == 1
    await assert_after_faults(direct, prefix, faulty, other, next_change=change(2))


# --- tombstone ----------------------------------------------------------------------------------


async def finalize_until_done(replica: Replica, uid: str, *, purge: bool) -> Head | None:
    """The finalizer as kopf runs it: retried after an error (the first retries may
    still meet the faulted connection as it is reset)."""
    for attempt in range(1, 6):
        try:
            async with replica.locks.hold(NS, NAME) as mutex:
                return await replica.store.delete(NS, NAME, uid, mutex, purge=purge)
        except EtcdConfigError:
            if attempt == 5:
                raise
            await asyncio.sleep(0.2)  # kopf's retry delay
    raise AssertionError("unreachable")


@pytest.mark.parametrize("purge", [False, True], ids=["retain", "purge"])
@pytest.mark.parametrize("mode", ["drop", "timeout"])
async def test_tombstone_that_lands_while_the_client_sees_an_error(
    proxy: FaultProxy,
    faulty: Replica,
    other: Replica,
    direct: EtcdClient,
    prefix: str,
    mode: Mode,
    purge: bool,
) -> None:
    """The deletion lands, its answer is lost; the finalizer retries it. The retry must
    find the tombstone, the deleted uid's late events must write nothing, and a new
    incarnation records after it (continuing the numbering under Retain)."""
    await faulty.record(change(1))
    await faulty.record(change(2))
    proxy.arm("tombstone", mode=mode, hold=HOLD)
    try:
        async with faulty.locks.hold(NS, NAME) as mutex:
            await faulty.store.delete(NS, NAME, "uid-1", mutex, purge=purge)
    except EtcdConfigError:
        pass  # an unknown outcome: the finalizer runs again
    (fault,) = assert_fired(proxy, "tombstone", mode)
    assert fault.answered, "etcd never executed the faulted tombstone"
    tomb = await finalize_until_done(faulty, "uid-1", purge=purge)
    assert tomb is not None and tomb.deleted and tomb.uid == "uid-1"
    head = await faulty.store.head(NS, NAME)
    assert head is not None and head.deleted and head.uid == "uid-1"
    tombstoned_at = head.mod_revision
    # a late event of the deleted incarnation, from either replica, writes nothing
    for replica in (faulty, other):
        with pytest.raises(StaleIncarnation):
            await replica.record(change(3))
    records, _ = await faulty.store.history(NS, NAME)
    assert [r.version for r in records] == ([] if purge else [2, 1])
    assert all(r.mod_revision < tombstoned_at for r in records)
    # the new incarnation records after it
    await assert_after_faults(
        direct,
        prefix,
        faulty,
        other,
        next_change=change(1, uid="uid-2"),
        purged=frozenset({"uid-1"} if purge else ()),
    )
    records, _ = await faulty.store.history(NS, NAME)
    assert [(r.uid, r.generation) for r in reversed(records)] == (
        [("uid-2", 1)] if purge else [("uid-1", 1), ("uid-1", 2), ("uid-2", 1)]
    )


# --- lease keep-alive -----------------------------------------------------------------------


async def test_a_lost_keepalive_answer_keeps_the_session_and_the_lock(
    proxy: FaultProxy, faulty: Replica, other: Replica, direct: EtcdClient, prefix: str
) -> None:
    """One keep-alive answer lost (the ping reached etcd, the connection is reset):
    the session carries on with the next pings, and the lock held meanwhile commits."""
    async with faulty.locks.hold(NS, NAME) as mutex:
        proxy.arm("keepalive", times=1, mode="drop")
        await wait_for(lambda: proxy.armed_left == 0, 2 * TTL, "a keep-alive fault")
        after = proxy.seen["keepalive"]
        await wait_for(
            lambda: proxy.seen["keepalive"] >= after + 2 or not faulty.session.alive,
            2 * TTL,
            "two more keep-alives",
        )
        assert faulty.session.alive, "one lost keep-alive answer ended the session"
        result = await faulty.store.commit(change(1), mutex)
    assert_fired(proxy, "keepalive", "drop")
    assert result.recorded
    faulty.acked.append((change(1), result))
    await assert_after_faults(direct, prefix, faulty, other, next_change=change(2))


@pytest.mark.parametrize(("mode", "times"), [("timeout", 1), ("drop", 2)])
async def test_lost_keepalive_answers_do_not_use_up_the_lease(
    proxy: FaultProxy,
    faulty: Replica,
    other: Replica,
    direct: EtcdClient,
    prefix: str,
    mode: Mode,
    times: int,
) -> None:
    """An answer held silent past the deadline (the connection then reset), or two
    answers lost in a row, while etcd keeps the lease alive: the session must retry
    on a fresh stream in time, not wait out the lease's whole life on one ping (before
    the fix the session declared itself lost after exactly one TTL)."""
    async with faulty.locks.hold(NS, NAME) as mutex:
        proxy.arm("keepalive", times=times, mode=mode, hold=HOLD)
        await wait_for(lambda: proxy.armed_left == 0, 2 * TTL, "the keep-alive faults")
        after = proxy.seen["keepalive"]
        await wait_for(
            lambda: proxy.seen["keepalive"] >= after + 2 or not faulty.session.alive,
            2 * TTL,
            "two more keep-alives",
        )
        assert faulty.session.alive, f"{times} lost keep-alive answer(s) ended the session"
        result = await faulty.store.commit(change(1), mutex)
    assert_fired(proxy, "keepalive", mode, times)
    assert result.recorded
    faulty.acked.append((change(1), result))
    await assert_after_faults(direct, prefix, faulty, other, next_change=change(2))


@pytest.mark.parametrize("mode", ["drop", "lose"])
async def test_keepalive_answers_lost_for_a_ttl_free_the_lock_and_fence_the_old_holder(
    proxy: FaultProxy, other: Replica, direct: EtcdClient, prefix: str, mode: Mode
) -> None:
    """Every keep-alive answer lost (``drop``: the pings still refresh the lease) or
    every ping lost (``lose``): the session ends, another replica takes the lock within
    the TTL, and the old holder's commit under its stale lock writes nothing."""
    faulty = await Replica.start(
        "replica-a", proxy.endpoint, prefix, ttl=3, timeout=REQUEST_TIMEOUT
    )
    try:
        async with faulty.locks.hold(NS, NAME) as mutex:
            proxy.arm("keepalive", times=1000, mode=mode)
            async with asyncio.timeout(3 * TTL):
                await faulty.session.done.wait()
            proxy.disarm()
            result = await other.record(change(1))  # within the TTL: other.locks' timeout
            assert result.recorded
            stale: Any
            try:
                stale = await faulty.store.commit(change(2), mutex)
            except EtcdConfigError as exc:
                stale = exc
            assert isinstance(stale, LockError), f"a holder whose lock was lost got {stale!r}"
        await assert_after_faults(direct, prefix, faulty, other, next_change=change(3))
        records, _ = await other.store.history(NS, NAME)
        assert [(r.generation, r.recorded_by) for r in reversed(records)] == [
            (1, "replica-b"),
            (3, "replica-b"),
        ]
    finally:
        await faulty.close()
