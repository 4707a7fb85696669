"""The per-Config lock on a real etcd: exclusion, FIFO order, timeouts, crashes."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from tests.integration.helpers import Holder, wait_for

from etcdconfig.concurrency import ConfigLocks, Mutex, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import HoldTimeout, LockTimeout, SessionExpired
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end


async def _lock_keys(client: EtcdClient, prefix: str) -> list[bytes]:
    p = lock_prefix(prefix, "ns", "cfg").encode() + b"/"
    res = await client.range(p, prefix_end(p))
    return [kv.key for kv in res.kvs]


async def test_eight_waiters_are_mutually_exclusive_and_served_in_fifo_order(
    etcd_server: EtcdServer, prefix: str
) -> None:
    clients = [EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint])) for _ in range(8)]
    sessions = [await Session(c, ttl=10).start() for c in clients]
    inside = 0
    max_inside = 0
    order: list[int] = []
    queued: list[int] = []

    async def worker(i: int, m: Mutex) -> None:
        nonlocal inside, max_inside
        await m.acquire(30)
        inside += 1
        max_inside = max(max_inside, inside)
        order.append(m.revision)
        await asyncio.sleep(0.01)  # simulated work while holding
        inside -= 1
        await m.release()

    mutexes = [
        Mutex(s, lock_prefix(prefix, "ns", "cfg"), identity=f"w{i}") for i, s in enumerate(sessions)
    ]
    first = mutexes[0]
    await first.acquire(5)
    tasks = []
    for i, m in enumerate(mutexes[1:], start=1):
        tasks.append(asyncio.create_task(worker(i, m)))
        # queue the waiters one after another so their order is known
        await wait_for(lambda m=m: m.revision != 0, 10, f"waiter {i} key")
        queued.append(m.revision)
    assert len(await _lock_keys(clients[0], prefix)) == 8
    await first.release()
    await asyncio.gather(*tasks)
    try:
        assert max_inside == 1
        assert order == queued == sorted(queued)
        assert await _lock_keys(clients[0], prefix) == []
    finally:
        for s, c in zip(sessions, clients, strict=True):
            await s.close()
            await c.close()


async def test_acquire_timeout_removes_the_waiter_key_and_names_the_holder(
    client: EtcdClient, prefix: str
) -> None:
    other = EtcdClient(client.settings)
    async with Session(client, ttl=10) as s1, Session(other, ttl=10) as s2:
        holder = Mutex(s1, lock_prefix(prefix, "ns", "cfg"), identity="replica-a")
        await holder.acquire(5)
        waiter = Mutex(s2, lock_prefix(prefix, "ns", "cfg"), identity="replica-b")
        with pytest.raises(LockTimeout, match=r"within 0.5s \(held by replica-a\)"):
            await waiter.acquire(0.5)
        assert await _lock_keys(client, prefix) == [holder.key]
        await holder.release()
        assert await _lock_keys(client, prefix) == []
    await other.close()


async def test_a_waiter_gives_up_as_soon_as_its_session_is_lost(
    client: EtcdClient, prefix: str
) -> None:
    """Its waiter key went with the lease, so the lock can never be its: it must not
    wait on for the holder (30 s by default), holding up a resync round or a handler."""
    other = EtcdClient(client.settings)
    async with Session(client, ttl=10) as s1, Session(other, ttl=2) as s2:
        holder = Mutex(s1, lock_prefix(prefix, "ns", "cfg"), identity="replica-a")
        await holder.acquire(5)
        waiter = Mutex(s2, lock_prefix(prefix, "ns", "cfg"), identity="replica-b")
        task = asyncio.create_task(waiter.acquire(30))
        await wait_for(lambda: waiter.revision > 0, 5.0, "the waiter queued")
        await client.revoke(s2.lease_id)
        await wait_for(s2.done.is_set, 5.0, "the waiter's session noticed the loss")
        lost_at = time.monotonic()
        with pytest.raises(SessionExpired):
            await task
        assert time.monotonic() - lost_at < 1.0
        assert not waiter.held
        assert await _lock_keys(client, prefix) == [holder.key]
        await holder.release()
    await other.close()


async def test_in_process_lock_makes_tasks_of_one_process_take_turns(
    client: EtcdClient, prefix: str
) -> None:
    async with Session(client, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me")
        inside = 0
        seen = 0

        async def task() -> None:
            nonlocal inside, seen
            async with locks.hold("ns", "cfg"):
                inside += 1
                seen = max(seen, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*(task() for _ in range(5)))
        assert seen == 1


async def test_hold_timeout_cancels_a_stuck_holder_and_releases(
    client: EtcdClient, prefix: str
) -> None:
    async with Session(client, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me", hold_timeout=0.3)
        never = asyncio.Event()
        # a named lock error, not the built-in TimeoutError: callers that handle lock
        # failures (EtcdConfigError) handle this one too
        with pytest.raises(HoldTimeout, match=r"ns/cfg exceeded the hold timeout of 0\.3s"):
            async with locks.hold("ns", "cfg"):
                await never.wait()
        assert await _lock_keys(client, prefix) == []


async def test_killed_holder_loses_the_lock_within_ttl_plus_one_second(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    ttl = 2
    holder = Holder(etcd_server.endpoint, prefix, "ns", "cfg", ttl)
    try:
        holder.read_line("LOCKED")
        holder.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        async with Session(client, ttl=10) as session:
            mutex = Mutex(session, lock_prefix(prefix, "ns", "cfg"), identity="successor")
            await mutex.acquire(ttl + 5)
            took = time.monotonic() - killed_at
            await mutex.release()
        assert took <= ttl + 1.0, f"lock taken over after {took:.2f}s"
    finally:
        holder.close()
