"""Third adversarial review round, against a real etcd: the lock sweeper after the
"sweep at once" fix, the session's give-up, the audit stamps.

Tests named ``test_defect_*`` FAIL on the code as reviewed: each docstring gives the
interleaving, what is observed and what the promise requires. The others are
hypotheses that held.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from tests.faultproxy import FaultProxy

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.controller.runtime import Runtime
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings, Put

NS, NAME, UID = "prod", "payments", "uid-1"


async def _orphan(client: EtcdClient, prefix: str, session: Session, name: str) -> bytes:
    """A lock key of ``session`` that no task holds: what an acquire abandoned in flight
    leaves when its transaction lands after ``_delete_own_key`` looked."""
    key = f"{lock_prefix(prefix, NS, name)}/{session.lease_id:x}".encode()
    await client.txn([], [Put(key, b"r", lease=session.lease_id)])
    return key


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# =================================================================================================
# DEFECTS
# =================================================================================================


async def test_defect_the_sweeper_waits_on_the_lost_sessions_event_after_a_new_session(
    client: EtcdClient, prefix: str
) -> None:
    """``_sweep_locks`` snapshots ``locks = self.locks`` and waits on *that* object's
    ``suspects.reported`` for up to ``lock_ttl``. ``_keep_session`` replaces
    ``self.locks`` with a new session's ``ConfigLocks`` (a new ``Suspects`` with its own
    event) when the session is lost — which is exactly when acquires are abandoned in
    flight and orphans are reported.

    Interleaving: the sweeper waits on session 1's event (no suspect); session 1 is
    lost, the keeper installs session 2 and its locks; an acquire on session 2 is
    abandoned in flight, its key lands and is reported to session 2's ``suspects``.
    Nobody sets the event the sweeper waits on.

    Observed: the key is still there 1.5 s later; it goes when the wait on the old
    event times out (a whole ``lock_ttl``), locking every other replica out of that
    Config meanwhile — the defect b850ce7 fixed, back for the first report after each
    new session. Expected: swept within about a second, as for the first session.
    Fix: wait on an event owned by the Runtime (or re-check ``self.locks is locks``
    with a short timeout), set by every ConfigLocks it creates."""
    s1 = await Session(client, ttl=10).start()
    s2 = await Session(client, ttl=10).start()
    fake = SimpleNamespace(
        settings=SimpleNamespace(lock_ttl=6), locks=ConfigLocks(s1, prefix=prefix, identity="r")
    )
    sweeper = asyncio.create_task(Runtime._sweep_locks(fake))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.2)  # waiting on session 1's event
        fake.locks = ConfigLocks(s2, prefix=prefix, identity="r")  # the keeper's new session
        key = await _orphan(client, prefix, s2, NAME)
        fake.locks.suspects.add(key)  # Mutex.on_orphan
        await asyncio.sleep(1.5)
        kv, _ = await client.get(key)
        assert kv is None, "an orphan of the new session was not swept within 1.5 s"
    finally:
        await _stop(sweeper)
        await s1.close()
        await s2.close()


class _SlowFirstRange:
    """The session's client, whose first range answer reaches the sweeper late (a slow
    etcd, a busy event loop): the range was served, the sweep is still in progress."""

    def __init__(self, client: EtcdClient, delay: float) -> None:
        self._client = client
        self._delay = delay
        self.ranges = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def range(self, *args: Any, **kwargs: Any) -> Any:
        res = await self._client.range(*args, **kwargs)
        self.ranges += 1
        if self.ranges == 1:
            await asyncio.sleep(self._delay)
        return res


async def test_defect_a_report_made_while_a_sweep_runs_is_cleared_unswept(
    client: EtcdClient, prefix: str
) -> None:
    """``ConfigLocks.sweep`` ends with ``self.suspects.clear()``, which also drops (and
    un-sets the event of) every key reported *after* its range was read: that key is
    not in the range (it landed later) or was skipped as in use, yet it is forgotten.

    Interleaving: orphan A is reported; the sweeper wakes, waits 0.5 s, sweeps: its
    range is served (A only); meanwhile another task's acquire is abandoned in flight,
    its key B lands and is reported; the sweep deletes A and clears ``suspects``
    (B with it). The sweeper goes back to waiting with no suspect.

    Observed: B is still there ~2 s after its report; it goes at the next periodic
    round (``lock_ttl`` later), locking every other replica out of that Config.
    Expected: swept within about a second of its report (the promise of b850ce7).
    Fix: snapshot the suspects at the start of the sweep and remove only those
    (``self.suspects -= snapshot``; clear the event only when the set is empty)."""
    session = await Session(client, ttl=10).start()
    slow = _SlowFirstRange(client, 1.0)
    locks = ConfigLocks(session, prefix=prefix, identity="r")
    fake = SimpleNamespace(settings=SimpleNamespace(lock_ttl=8), locks=locks)
    sweeper = asyncio.create_task(Runtime._sweep_locks(fake))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.1)
        a = await _orphan(client, prefix, session, "a")
        locks.suspects.add(a)
        session.client = slow  # type: ignore[assignment]  # the sweep's reads only
        await asyncio.sleep(0.8)  # the sweep's range was served at ~0.5 s
        assert slow.ranges == 1, "the sweep did not start when expected"
        b = await _orphan(client, prefix, session, "b")
        locks.suspects.add(b)  # reported during the sweep
        await asyncio.sleep(2.0)
        kv_a, _ = await client.get(a)
        assert kv_a is None  # A went with the sweep in progress
        kv_b, _ = await client.get(b)
        assert kv_b is None, "an orphan reported during a sweep was not swept within 2 s"
    finally:
        session.client = client
        await _stop(sweeper)
        await session.close()


async def test_defect_after_one_failed_ping_the_keepalive_waits_out_the_lease_on_a_dead_member(
    etcd_server: EtcdServer, prefix: str
) -> None:
    """b850ce7 made every retry after a failed ping wait ``left`` (as long as the lease
    can live) instead of max(TTL/6, 1 s), to tolerate slow answers. But a retry goes to
    the *next* endpoint, which may be just as unreachable: the whole remaining life of
    the lease is then spent on that one endpoint, and the healthy ones are never tried.

    Interleaving (endpoints [m1, m2, m3], a zone outage blackholes m1 and m2 — with 5
    members spread 2+2+1 the quorum survives; here m3 is the healthy etcd itself;
    TTL 6): the keep-alive stream is on m1; ping at t=2 waits 1 s, fails, rotates to
    m2; retry at t=3.5 waits ``left`` = 2.5 s on m2, fails at t=6; the lease's known
    life is over: give up (revoke via m3, which answers at once).

    Observed: the session is declared lost (and its lease revoked: every lock held is
    gone, membership flaps, Configs are reassigned) although m3 answered every request
    in time; before b850ce7 the retry on m2 would have timed out after 1 s and m3
    renewed the lease. Expected: the session stays alive while some endpoint answers.
    Fix: bound each retry's wait by the per-ping timeout while other endpoints are
    untried in this round (wait ``left`` only on an endpoint that answered before, or
    after every endpoint failed once), or ask ``LeaseTimeToLive`` on the next endpoint."""
    host, port = etcd_server.endpoint.split(":")
    with (
        FaultProxy(host, int(port), prefix=prefix) as m1,
        FaultProxy(host, int(port), prefix=prefix) as m2,
    ):
        client = EtcdClient(
            EtcdSettings(
                endpoints=[m1.endpoint, m2.endpoint, etcd_server.endpoint], request_timeout=1.0
            )
        )
        session = await Session(client, ttl=6).start()  # granted through m1
        try:
            m1.blackhole()
            m2.blackhole()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3 * session.ttl):
                    await session.done.wait()
            assert not session.done.is_set(), (
                "the session was declared lost while the third endpoint answered in time"
            )
        finally:
            m1.heal()
            m2.heal()
            await session.close()
            await client.close()


# =================================================================================================
# HYPOTHESES THAT HELD
# =================================================================================================


@pytest.fixture
def proxy(etcd_server: EtcdServer, prefix: str) -> Iterator[FaultProxy]:
    host, port = etcd_server.endpoint.split(":")
    with FaultProxy(host, int(port), prefix=prefix) as p:
        yield p


async def test_give_up_revokes_only_its_own_lease_and_no_key_outlives_it(
    proxy: FaultProxy, client: EtcdClient, prefix: str
) -> None:
    """Session A's keep-alive answers never come back (each ping lands and renews the
    lease); session B (another client, same etcd) is healthy. A gives up: by the time
    ``done`` is set its lease (and the lock key on it) is gone, while B's lease and key
    are untouched (revoke names A's lease id only)."""
    faulty = EtcdClient(EtcdSettings(endpoints=[proxy.endpoint], request_timeout=1.0))
    a = await Session(faulty, ttl=3).start()
    b = await Session(client, ttl=3).start()
    try:
        key_a = await _orphan(client, prefix, a, "x")
        key_b = await _orphan(client, prefix, b, "y")
        proxy.arm("keepalive", times=1000, mode="timeout", hold=10.0)
        async with asyncio.timeout(6 * a.ttl):
            await a.done.wait()
        assert await client.time_to_live(a.lease_id) <= 0
        assert (await client.get(key_a))[0] is None
        assert b.alive and await client.time_to_live(b.lease_id) > 0
        assert (await client.get(key_b))[0] is not None
    finally:
        proxy.disarm()
        await a.close()
        await b.close()
        await faulty.close()
