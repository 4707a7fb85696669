"""Background tasks on a real etcd survive any exception: a hold timeout ending a
resync-like round, a non-etcd error in the membership watch, a failure while the
session keeper replaces a lost lease. Readiness is false while a task waits to
restart and true again once it runs.

How each can fail: ``test_an_unsupervised_round_loop_dies_of_the_same_hold_timeout``
runs the first test's loop the way the operator used to (a bare task): it ends
for good at the first hold timeout. The membership test uses only the public API
of before; against the old watch (catching only etcd errors) the member set
freezes and it times out. Against the old session keeper (catching only
``EtcdError``) the keeper dies: the replica keeps the new lease of the failed
attempt but never registers as a member again (checked with the old code in a
scratch copy: the wait for the membership key times out).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from tests.integration.helpers import wait_for

from etcdconfig import metrics
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.concurrency.membership import Membership
from etcdconfig.controller.runtime import Runtime
from etcdconfig.controller.supervisor import SupervisedTask, Supervisor, TaskState
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, prefix_end
from etcdconfig.settings import Settings

# a hold past hold_timeout raised the built-in TimeoutError; locks.py now raises
# HoldTimeout (a LockError): the supervisor must survive either
HOLD_TIMEOUT_ERRORS = {"TimeoutError", "HoldTimeout"}


class Transitions:
    """Every state change of a supervised task with readiness at that moment."""

    def __init__(self, sup: Supervisor, name: str) -> None:
        self.name = name
        self.sup = sup
        self.seen: list[tuple[str, bool, list[str]]] = []
        sup.on_change.append(self)

    def __call__(self, task: SupervisedTask) -> None:
        if task.name == self.name:
            self.seen.append((task.state.value, self.sup.ready, self.sup.problems()))


async def _lock_keys(client: EtcdClient, prefix: str) -> list[bytes]:
    p = lock_prefix(prefix, "ns", "cfg").encode() + b"/"
    res = await client.range(p, prefix_end(p))
    return [kv.key for kv in res.kvs]


@dataclass
class RoundLoop:
    """A resync-shaped loop: each round does its work under the per-Config lock.
    Round 1 is deliberately slow and exceeds the hold timeout; the next completes."""

    locks: ConfigLocks
    client: EtcdClient
    key: bytes
    started: int = 0
    completed: int = 0
    raised: list[str] = field(default_factory=list)
    _never: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            self.started += 1
            try:
                async with self.locks.hold("ns", "cfg"):
                    if self.started == 1:
                        await self._never.wait()  # slow work: ended by the hold timeout
                    await self.client.put(self.key, f"round {self.started}".encode())
            except Exception as exc:
                self.raised.append(type(exc).__name__)
                raise
            self.completed += 1
            await self._never.wait()  # wait for the next round (none in this test)


async def test_a_hold_timeout_ending_a_round_restarts_the_task_and_its_next_round_runs(
    client: EtcdClient, prefix: str
) -> None:
    key = f"{prefix}/work".encode()
    async with Session(client, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me", hold_timeout=0.2)
        loop = RoundLoop(locks, client, key)
        sup = Supervisor(initial_backoff=0.2)
        seen = Transitions(sup, "resync")
        restarts = metrics.REGISTRY.get_sample_value(
            "etcdconfig_background_task_restarts_total", {"task": "resync"}
        )
        task = sup.add("resync", loop.run)
        try:
            await wait_for(lambda: loop.completed == 1, 10, "the round after the timeout")
            assert loop.started == 2
            assert len(loop.raised) == 1 and loop.raised[0] in HOLD_TIMEOUT_ERRORS
            assert (task.state, task.restarts, task.last_error) == (
                TaskState.RUNNING,
                1,
                loop.raised[0],
            )
            # readiness: true, false while waiting to restart (naming the task), true
            assert [(s, r) for s, r, _ in seen.seen] == [
                ("running", True),
                ("restarting", False),
                ("running", True),
            ]
            (problem,) = seen.seen[1][2]
            assert problem.startswith(
                f"background task resync crashed ({loop.raised[0]}) and restarts in "
            )
            assert sup.problems() == []
            kv, _ = await client.get(key)
            assert kv is not None and kv.value == b"round 2"  # round 1 wrote nothing
            assert await _lock_keys(client, prefix) == []  # the timed-out hold released
            after = metrics.REGISTRY.get_sample_value(
                "etcdconfig_background_task_restarts_total", {"task": "resync"}
            )
            assert after == (restarts or 0) + 1
            up = metrics.REGISTRY.get_sample_value(
                "etcdconfig_background_task_up", {"task": "resync"}
            )
            assert up == 1
        finally:
            await sup.stop()
        assert task.state is TaskState.STOPPED


async def test_an_unsupervised_round_loop_dies_of_the_same_hold_timeout(
    client: EtcdClient, prefix: str
) -> None:
    """The control for the test above: the operator's old wiring (a bare task, as
    controller/main.py had) loses the loop for good at the first hold timeout."""
    key = f"{prefix}/work".encode()
    async with Session(client, ttl=10) as session:
        locks = ConfigLocks(session, prefix=prefix, identity="me", hold_timeout=0.2)
        loop = RoundLoop(locks, client, key)
        bare = asyncio.create_task(loop.run())
        await wait_for(bare.done, 10, "the bare task to end")
        assert type(bare.exception()).__name__ in HOLD_TIMEOUT_ERRORS
        assert (loop.started, loop.completed) == (1, 0)  # no next round, ever
        assert (await client.get(key))[0] is None


class WatchFault:
    """Make the first ``times`` watch streams of ``client`` raise a non-etcd error on
    their first batch of events (the batch is lost, as with a bug processing it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: EtcdClient, times: int = 1):
        self.real = client.watch
        self.left = times
        self.raised = 0
        self.calls = 0  # watches started (each after the list it resumes from)
        monkeypatch.setattr(client, "watch", self)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.calls += 1
        stream = self.real(*args, **kwargs)
        if self.left <= 0:
            return stream
        self.left -= 1
        return self._faulty(stream)

    async def _faulty(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async with contextlib.aclosing(cast("Any", stream)):
            async for _batch in stream:
                self.raised += 1
                raise RuntimeError("injected: not an etcd error")
                yield _batch  # an async generator, like the real watch


async def _members_follow_etcd(
    client: EtcdClient, m: Membership, base: bytes, fault: WatchFault
) -> None:
    """Put b once the watch has started from its list: b's event is the batch the
    injected fault loses, so only a re-list finds b. Then put c and delete b: the
    restarted watch is live, not only re-listed."""
    await wait_for(lambda: fault.calls == 1, 10, "the membership watch to start")
    await client.put(base + b"b", b"{}")
    await wait_for(lambda: m.members == ("a", "b"), 15, "member b (by re-listing)")
    await client.put(base + b"c", b"{}")
    await wait_for(lambda: m.members == ("a", "b", "c"), 10, "member c (by watching)")
    await client.delete_range(base + b"b")
    await wait_for(lambda: m.members == ("a", "c"), 10, "member b gone (by watching)")


async def test_membership_watch_survives_a_non_etcd_exception_and_re_lists(
    client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = WatchFault(monkeypatch, client)
    base = f"{prefix}/members/".encode()
    async with Session(client, ttl=10) as session:
        m = Membership(client, prefix, "a")  # runs its own watch (no supervisor)
        await m.join(session)
        try:
            assert m.members == ("a",)
            await _members_follow_etcd(client, m, base, fault)
            assert (fault.raised, fault.calls) == (1, 2)
        finally:
            await m.leave()


async def test_supervised_membership_watch_restarts_after_a_non_etcd_exception(
    client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = WatchFault(monkeypatch, client)
    base = f"{prefix}/members/".encode()
    sup = Supervisor(initial_backoff=0.2)
    seen = Transitions(sup, "membership-watch")
    async with Session(client, ttl=10) as session:
        m = Membership(client, prefix, "a", own_watch=False)
        await m.join(session)
        task = sup.add("membership-watch", m.watch)
        try:
            await _members_follow_etcd(client, m, base, fault)
            assert (fault.raised, fault.calls) == (1, 2)
            assert (task.state, task.restarts, task.last_error) == (
                TaskState.RUNNING,
                1,
                "RuntimeError",
            )
            assert [(s, r) for s, r, _ in seen.seen] == [
                ("running", True),
                ("restarting", False),
                ("running", True),
            ]
        finally:
            await sup.stop()
            await m.leave()


async def test_session_keeper_survives_a_non_etcd_failure_while_replacing_a_lost_lease(
    etcd_server: EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        etcd_endpoints=[etcd_server.endpoint], etcd_prefix=prefix, replica_id="r1", lock_ttl=2
    )
    client = EtcdClient(settings.etcd())
    await client.connect(write=True)
    # Runtime.start() touches etcd only; the Kubernetes client is not needed here
    rt = Runtime(
        settings=settings,
        client=client,
        kube=cast("Any", None),
        supervisor=Supervisor(initial_backoff=0.2),
    )
    await rt.start()
    try:
        assert rt.session is not None and rt.membership is not None
        assert set(rt.supervisor.tasks) == {
            "session-keeper",
            "membership-watch",
            "lock-sweeper",
            "space-watch",
        }
        first = rt.session.lease_id
        failed_leases: list[int] = []
        real_join = rt.membership.join

        async def join_fails_once(session: Session) -> None:
            if not failed_leases:
                failed_leases.append(session.lease_id)
                raise RuntimeError("injected: not an etcd error")
            await real_join(session)

        monkeypatch.setattr(rt.membership, "join", join_fails_once)
        lost_before = metrics.REGISTRY.get_sample_value("etcdconfig_session_lost_total") or 0
        await client.revoke(first)  # the lease is lost: the keeper must replace it

        async def member_again() -> bool:
            # a new live session, and this replica registered under it
            if not (rt.healthy and rt.session is not None and rt.session.lease_id != first):
                return False
            assert rt.membership is not None
            kv, _ = await client.get(rt.membership.key)
            return kv is not None and kv.lease == rt.session.lease_id

        await wait_for(member_again, 15, "a new session with the membership key on it")
        keeper = rt.supervisor.tasks["session-keeper"]
        assert (keeper.state, keeper.restarts, keeper.last_error) == (
            TaskState.RUNNING,
            1,
            "RuntimeError",
        )
        assert rt.supervisor.ready
        # one lost lease is counted once, although the keeper ran twice for it
        assert (metrics.REGISTRY.get_sample_value("etcdconfig_session_lost_total") or 0) == (
            lost_before + 1
        )
        # the lease of the failed attempt was revoked, not left to its keep-alive
        assert len(failed_leases) == 1 and await client.time_to_live(failed_leases[0]) == -1
    finally:
        await rt.stop()
        await client.close()
    assert {t.state for t in rt.supervisor.tasks.values()} == {TaskState.STOPPED}
