"""Adversarial review of the "leave at once on SIGTERM" change (controller/main.py),
against a real etcd.

On SIGTERM/SIGINT the operator now runs ``runtime.stop()`` (stop the supervised
tasks, leave membership, revoke the session's lease) while kopf is still stopping:
kopf handlers may be in flight, or start, after the lease is gone.

Tests named ``test_defect_*`` FAIL on the code as reviewed: each docstring gives the
interleaving, what is observed and what is required. The others are hypotheses that
held. Interleavings are forced with hooks (events) on our own code, never with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kopf
import pytest
from tests.faultproxy import FaultProxy
from tests.integration.helpers import assert_history_invariants, wait_for

from etcdconfig.concurrency import Session
from etcdconfig.controller import main as main_module
from etcdconfig.controller.handlers import build_registry
from etcdconfig.controller.loops import Resync
from etcdconfig.controller.reconciler import Reconciler, RetryLater
from etcdconfig.controller.runtime import Runtime
from etcdconfig.controller.supervisor import Supervisor, TaskState
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import EtcdUnavailable, LockLost, SessionExpired
from etcdconfig.etcd import EtcdClient, Put, prefix_end
from etcdconfig.settings import Settings
from etcdconfig.store import VersionedStore

NS, NAME, UID = "prod", "payments", "uid-1"


# --- fakes and helpers ------------------------------------------------------------------------


class FakeKube:
    """The Kubernetes API as far as these tests need it: the Config object is owned by
    ``uid`` (OwnerUnconfirmed asks), no Config to list, events and patches recorded."""

    def __init__(self, uid: str = UID) -> None:
        self.uid = uid
        self.events: list[tuple[str, str]] = []
        self.patches: list[dict[str, Any]] = []
        self.closed = False
        self.api = None

    async def get_config(self, namespace: str, name: str) -> dict[str, Any] | None:
        return {"metadata": {"namespace": namespace, "name": name, "uid": self.uid}}

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(namespace)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return []

    async def patch_status(self, ns: str, name: str, status: dict[str, Any], **_: Any) -> None:
        self.patches.append(status)

    def event_soon(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    async def check_crd(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


def settings_for(endpoint: str, prefix: str, replica: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "etcd_endpoints": [endpoint],
        "etcd_prefix": prefix,
        "replica_id": replica,
        "lock_ttl": 5,
        "acquire_timeout": 10,
        "hold_timeout": 20,
        "http_addr": "127.0.0.1",
        "http_port": 0,
    }
    base.update(kw)
    return Settings(**base)


async def start_runtime(
    endpoint: str, prefix: str, replica: str, **kw: Any
) -> tuple[Runtime, EtcdClient]:
    settings = settings_for(endpoint, prefix, replica, **kw)
    client = EtcdClient(settings.etcd())
    await client.connect(write=True)
    rt = Runtime(
        settings=settings,
        client=client,
        kube=FakeKube(),  # type: ignore[arg-type]
        supervisor=Supervisor(initial_backoff=0.2),
    )
    await rt.start()
    return rt, client


def body(generation: int, data: dict[str, Any] | None = None, uid: str = UID) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NS, "name": NAME, "uid": uid, "generation": generation},
        "spec": {"data": data if data is not None else {"gen": generation}},
        "status": {},
    }


async def lock_keys(client: EtcdClient, prefix: str) -> list[Any]:
    base = f"{prefix}/locks/".encode()
    return list((await client.range(base, prefix_end(base))).kvs)


async def member_key(client: EtcdClient, prefix: str, replica: str) -> Any:
    kv, _ = await client.get(f"{prefix}/members/{replica}".encode())
    return kv


async def versions(client: EtcdClient, prefix: str) -> list[tuple[int, int, str]]:
    records, _ = await VersionedStore(client, prefix=prefix).history(NS, NAME, limit=1000)
    return sorted((r.version, r.generation, str(r.raw.get("recordedBy"))) for r in records)


def recorded_version(status: dict[str, Any] | None) -> int | None:
    return None if status is None else status.get("version")


class Gate:
    """``reached`` is set when the hooked code arrives; it goes on once ``go`` is set."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def pause(self) -> None:
        self.reached.set()
        await self.go.wait()


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


@pytest.fixture
async def survivor(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Runtime]:
    """Another replica, live for the whole test: it takes over what the dying one leaves."""
    rt, client = await start_runtime(etcd_server.endpoint, prefix, "survivor")
    try:
        yield rt
    finally:
        await rt.stop()
        await client.close()


@pytest.fixture
async def dying(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Runtime]:
    """The replica that gets SIGTERM (its ``stop()`` is called by the test)."""
    rt, client = await start_runtime(etcd_server.endpoint, prefix, "dying")
    try:
        yield rt
    finally:
        await rt.stop()
        await client.close()


# =================================================================================================
# A handler in flight while (or after) runtime.stop() revokes the lease
# =================================================================================================


async def test_handler_between_lock_and_commit_writes_nothing_when_the_lease_is_revoked(
    dying: Runtime, survivor: Runtime, client: EtcdClient, prefix: str
) -> None:
    """The reconciler of the dying replica holds the lock (head v1 prefetched with it)
    and is about to commit gen 2 when SIGTERM's ``runtime.stop()`` revokes the lease.
    The survivor takes the Config over, records gen 2 and gen 3 (v2, v3). Then the
    handler commits gen 2 on its stale prefetched head: the fencing compare fails, it
    writes nothing, and its status names the survivor's head (already recorded), not a
    version of its own; no lock key is left."""
    rec = Reconciler(dying)
    assert await rec.reconcile(body(1), trigger="create") is not None
    assert dying.store is not None
    gate = Gate()
    real_commit = dying.store.commit

    async def commit_after_gate(change: Any, mutex: Any) -> Any:
        await gate.pause()
        return await real_commit(change, mutex)

    dying.store.commit = commit_after_gate  # type: ignore[method-assign]
    handler = asyncio.create_task(rec.reconcile(body(2), trigger="update"))
    await asyncio.wait_for(gate.reached.wait(), 10)
    await dying.stop()  # SIGTERM: leave + revoke, the handler still in flight
    assert await lock_keys(client, prefix) == []
    other = Reconciler(survivor)
    await other.reconcile(body(2), trigger="resync")
    await other.reconcile(body(3), trigger="update")
    gate.go.set()
    status = await asyncio.wait_for(handler, 10)
    assert status is not None
    assert recorded_version(status) == 3, status  # the head as it is, recorded by the survivor
    recorded = next(c for c in status["conditions"] if c["type"] == "Recorded")
    assert "recorded as" not in recorded["message"], recorded  # no claim of a write of its own
    assert await versions(client, prefix) == [
        (1, 1, "dying"),
        (2, 2, "survivor"),
        (3, 3, "survivor"),
    ]
    assert await lock_keys(client, prefix) == []
    await assert_history_invariants(client, prefix, NS, NAME, final_generation=3)


async def test_handler_between_lock_and_commit_reports_retry_when_nobody_recorded(
    dying: Runtime, client: EtcdClient, prefix: str
) -> None:
    """As above, but nobody records meanwhile: the commit meets the lost lock
    (LockLost) and the reconcile says "retry" (RetryLater), with the head it read, v1."""
    rec = Reconciler(dying)
    await rec.reconcile(body(1), trigger="create")
    assert dying.store is not None
    gate = Gate()
    real_commit = dying.store.commit

    async def commit_after_gate(change: Any, mutex: Any) -> Any:
        await gate.pause()
        return await real_commit(change, mutex)

    dying.store.commit = commit_after_gate  # type: ignore[method-assign]
    handler = asyncio.create_task(rec.reconcile(body(2), trigger="update"))
    await asyncio.wait_for(gate.reached.wait(), 10)
    await dying.stop()
    gate.go.set()
    with pytest.raises(RetryLater) as info:
        await asyncio.wait_for(handler, 10)
    assert isinstance(info.value.__cause__, LockLost)
    assert info.value.status.get("version") == 1
    assert await versions(client, prefix) == [(1, 1, "dying")]
    assert await lock_keys(client, prefix) == []


class CommitHook:
    """Wraps the dying replica's client: the commit transaction (a txn that puts a
    version key) meets ``action`` — the test decides whether it reaches etcd."""

    def __init__(self, rt: Runtime, action: Callable[[Any], Awaitable[Any]]) -> None:
        self.real = rt.client.txn
        self.action = action
        self.fired = 0
        rt.client.txn = self.txn  # type: ignore[method-assign]

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> Any:
        is_commit = any(isinstance(o, Put) and b"/versions/" in o.key for o in success)
        if is_commit and not self.fired:
            self.fired += 1
            return await self.action(lambda: self.real(compare, success, failure))
        return await self.real(compare, success, failure)


async def test_commit_landed_reply_lost_then_lease_revoked_reports_its_own_version_once(
    dying: Runtime, client: EtcdClient, prefix: str
) -> None:
    """The commit transaction lands (and releases the lock in the same txn), its reply
    is lost; before the retry, ``runtime.stop()`` revokes the lease. The retry finds its
    own record and reports it: written once, reported once, no lock key left."""
    rec = Reconciler(dying)
    await rec.reconcile(body(1), trigger="create")

    async def land_then_lose_reply(send: Callable[[], Awaitable[Any]]) -> Any:
        await send()
        await dying.stop()
        raise EtcdUnavailable("injected: reply lost")

    hook = CommitHook(dying, land_then_lose_reply)
    status = await rec.reconcile(body(2), trigger="update")
    assert hook.fired == 1
    assert recorded_version(status) == 2
    assert await versions(client, prefix) == [(1, 1, "dying"), (2, 2, "dying")]
    assert await lock_keys(client, prefix) == []
    await assert_history_invariants(client, prefix, NS, NAME, final_generation=2)


async def test_commit_lost_then_lease_revoked_retry_writes_nothing(
    dying: Runtime, client: EtcdClient, prefix: str
) -> None:
    """The commit transaction never reaches etcd; ``runtime.stop()`` revokes the lease
    before the retry: the retry is refused by the fence (LockLost), nothing is written."""
    rec = Reconciler(dying)
    await rec.reconcile(body(1), trigger="create")

    async def lose_then_revoke(send: Callable[[], Awaitable[Any]]) -> Any:
        await dying.stop()
        raise EtcdUnavailable("injected: request lost")

    CommitHook(dying, lose_then_revoke)
    with pytest.raises(RetryLater) as info:
        await rec.reconcile(body(2), trigger="update")
    assert isinstance(info.value.__cause__, LockLost)
    assert await versions(client, prefix) == [(1, 1, "dying")]
    assert await lock_keys(client, prefix) == []


async def test_handler_started_after_leave_fails_fast_and_writes_nothing(
    dying: Runtime, client: EtcdClient, prefix: str
) -> None:
    """kopf may start a handler after the lease is revoked (it stops via the flag,
    seconds later). It must not lock with the revoked lease, nor block until a timeout,
    nor put a key without a lease (lease 0 = a lock key that never goes away)."""
    rec = Reconciler(dying)
    await rec.reconcile(body(1), trigger="create")
    await dying.stop()
    started = time.monotonic()
    with pytest.raises(RetryLater) as info:
        await rec.reconcile(body(2), trigger="update")
    assert time.monotonic() - started < 2.0
    assert isinstance(info.value.__cause__, SessionExpired)
    assert info.value.status.get("version") == 1
    # the deletion handler's path (finalize): refused before any key is written
    assert dying.locks is not None
    with pytest.raises(SessionExpired):
        async with dying.locks.hold(NS, NAME):
            pytest.fail("locked with a revoked lease")
    assert await lock_keys(client, prefix) == []
    assert await versions(client, prefix) == [(1, 1, "dying")]


async def test_acquire_sent_before_the_revoke_lands_after_it_leaves_no_key(
    dying: Runtime, client: EtcdClient, prefix: str
) -> None:
    """A handler passed ``session.check()`` and sent its acquiring transaction; it
    reaches etcd only after ``runtime.stop()`` revoked the lease. etcd refuses the put
    (lease not found): no key, the handler retries later, nothing is written."""
    rec = Reconciler(dying)
    await rec.reconcile(body(1), trigger="create")
    gate = Gate()
    real = dying.client.txn

    async def txn(compare: Any, success: Any, failure: Any = ()) -> Any:
        if any(isinstance(o, Put) and o.lease and b"/locks/" in o.key for o in success):
            await gate.pause()
        return await real(compare, success, failure)

    dying.client.txn = txn  # type: ignore[method-assign]
    handler = asyncio.create_task(rec.reconcile(body(2), trigger="update"))
    await asyncio.wait_for(gate.reached.wait(), 10)
    await dying.stop()
    gate.go.set()
    with pytest.raises(RetryLater):
        await asyncio.wait_for(handler, 10)
    assert await lock_keys(client, prefix) == []
    assert await versions(client, prefix) == [(1, 1, "dying")]


async def test_waiter_behind_another_holder_when_the_lease_is_revoked_never_gets_the_lock(
    dying: Runtime, survivor: Runtime, client: EtcdClient, prefix: str
) -> None:
    """The dying replica's handler waits behind the survivor's lock when the lease is
    revoked (its waiter key goes with it). When the survivor releases, the waiter must
    not believe it holds the lock: it re-reads its own key and gives up (LockLost)."""
    rec = Reconciler(dying)
    await rec.reconcile(body(1), trigger="create")
    assert survivor.locks is not None
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold_a_while() -> None:
        assert survivor.locks is not None
        async with survivor.locks.hold(NS, NAME):
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold_a_while())
    await asyncio.wait_for(held.wait(), 10)
    handler = asyncio.create_task(rec.reconcile(body(2), trigger="update"))

    async def queued() -> bool:
        return len(await lock_keys(client, prefix)) == 2

    await wait_for(queued, 10, "the dying replica's waiter key")
    await dying.stop()
    release.set()
    await holder
    with pytest.raises(RetryLater) as info:
        await asyncio.wait_for(handler, 15)
    assert isinstance(info.value.__cause__, LockLost | SessionExpired)
    assert await lock_keys(client, prefix) == []
    assert await versions(client, prefix) == [(1, 1, "dying")]


async def test_runtime_stop_twice_is_harmless(
    dying: Runtime, client: EtcdClient, prefix: str
) -> None:
    """``leave()`` runs ``runtime.stop()`` once, but the start-up failure path and
    tests call it again: a second (and a concurrent) stop must neither raise nor
    re-join."""
    await asyncio.gather(dying.stop(), dying.stop())
    await dying.stop()
    assert await member_key(client, prefix, "dying") is None
    assert dying.session is not None and not dying.session.alive
    assert {t.state for t in dying.supervisor.tasks.values()} == {TaskState.STOPPED}


class ApiObject:
    """The Config object as the API server keeps it: its status and resourceVersion."""

    def __init__(self) -> None:
        self.rv = 1
        self.generation = 1
        self.status: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        obj = body(self.generation)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        obj["status"] = dict(self.status)
        return obj

    def patch(self, status: dict[str, Any], resource_version: str | None = None) -> bool:
        if resource_version is not None and resource_version != str(self.rv):
            return False  # 409: the guarded patch of a stale copy is dropped
        self.status.update(status)
        self.rv += 1
        return True

    async def kopf_handles(self, rt: Runtime, reason: str) -> None:
        """kopf runs our ``reconcile`` handler (``handlers.build_registry``) on the object
        as it is now, then merge-patches what the handler put into ``patch.status``,
        WITHOUT a resourceVersion guard (as kopf does)."""
        fn = next(h.fn for h in build_registry(rt, Reconciler(rt))._changing.get_all_handlers())
        patch = kopf.Patch()
        with contextlib.suppress(kopf.TemporaryError):
            await fn(body=kopf.Body(self.get()), patch=patch, reason=reason, retry=0)
        if patch.get("status"):
            self.patch(dict(patch["status"]))


class ApiKube(FakeKube):
    def __init__(self, obj: ApiObject) -> None:
        super().__init__()
        self.obj = obj

    async def patch_status(
        self, ns: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> bool:
        return self.obj.patch(status, resource_version)


async def test_defect_late_status_of_the_departed_replica_overwrites_the_new_owners(
    dying: Runtime, survivor: Runtime, client: EtcdClient, prefix: str
) -> None:
    """Status, not the store (the store holds): a handler of the dying replica read the
    head (v1) before SIGTERM; ``runtime.stop()`` leaves at once, the survivor takes the
    Config over (its resync round on the membership change), records gen 2 as v2 and
    patches status (guarded by resourceVersion): Ready, version 2. Then the dying
    handler's lock attempt fails (SessionExpired) and kopf patches ITS status, unguarded:
    version 1, Ready False "SessionExpired … retrying in 1s" — a retry that never comes.

    Observed: the Config says version 1, not ready, while the head is v2 recorded by
    the survivor, until the survivor's next periodic resync (``resync_interval``, 60 s
    by default; the membership-change round has already run). Before the change the
    survivor only took over after this replica's kopf had stopped (handlers done or
    cancelled), so its round's status came last. Expected: after a takeover the status
    is the new owner's. Fix: a replica that is leaving hands kopf no status: set
    ``runtime.stopping`` first thing in ``Runtime.stop()`` and, in the ``reconcile``
    handler, skip ``_apply`` when it is set (still raise ``kopf.TemporaryError``)."""
    obj = ApiObject()
    dying.kube = ApiKube(obj)  # type: ignore[assignment]
    survivor.kube = ApiKube(obj)  # type: ignore[assignment]
    await obj.kopf_handles(dying, "create")
    assert obj.status["version"] == 1
    obj.generation = 2  # the user's edit
    assert dying.store is not None
    gate = Gate()
    real_head = dying.store.head

    async def head_then_gate(ns: str, name: str, **kw: Any) -> Any:
        head = await real_head(ns, name, **kw)
        if not gate.reached.is_set():
            await gate.pause()
        return head

    dying.store.head = head_then_gate  # type: ignore[method-assign]
    handler = asyncio.create_task(obj.kopf_handles(dying, "update"))
    await asyncio.wait_for(gate.reached.wait(), 10)
    await dying.stop()  # SIGTERM
    await Resync(survivor, Reconciler(survivor)).reconcile_one(obj.get())  # the takeover
    assert obj.status["version"] == 2
    gate.go.set()
    await asyncio.wait_for(handler, 10)
    assert await versions(client, prefix) == [(1, 1, "dying"), (2, 2, "survivor")]
    ready = next(c for c in obj.status["conditions"] if c["type"] == "Ready")
    assert (obj.status["version"], ready["status"]) == (2, "True"), (
        f"status regressed after the takeover: version {obj.status['version']}, "
        f"Ready {ready['status']} ({ready['reason']}: {ready['message']})"
    )


# =================================================================================================
# runtime.stop() racing with the session keeper
# =================================================================================================


async def test_keeper_cancelled_while_replacing_a_lost_session_does_not_rejoin(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease was lost just before SIGTERM; the keeper is in ``_new_session`` (the
    new lease granted, ``membership.join`` blocked) when ``runtime.stop()`` cancels it.
    It must not finish the join after the stop: no member key, no live lease."""
    rt, rt_client = await start_runtime(etcd_server.endpoint, prefix, "dying", lock_ttl=3)
    try:
        assert rt.session is not None and rt.membership is not None
        first = rt.session.lease_id
        gate = Gate()
        real_join = rt.membership.join
        joined: list[int] = []

        async def join_after_gate(session: Session) -> None:
            joined.append(session.lease_id)
            await gate.pause()
            await real_join(session)

        monkeypatch.setattr(rt.membership, "join", join_after_gate)
        await client.revoke(first)
        await asyncio.wait_for(gate.reached.wait(), 15)
        stopping = asyncio.create_task(rt.stop())
        await wait_for(lambda: rt.supervisor._stopping, 5, "the supervisor stopping")
        gate.go.set()
        await asyncio.wait_for(stopping, 20)
        assert await member_key(client, prefix, "dying") is None
        assert await client.time_to_live(joined[0]) == -1
        assert rt.supervisor.tasks["session-keeper"].state is TaskState.STOPPED
    finally:
        await rt.stop()
        await rt_client.close()


async def test_defect_keeper_swallows_the_stop_and_rejoins_after_leave(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Session.close()`` waits for its keep-alive task under
    ``contextlib.suppress(asyncio.CancelledError)``: a cancellation of the task that
    CALLS close() is swallowed there too.

    Interleaving: the lease is lost; the keeper starts a replacement session S2, whose
    ``membership.join`` fails (etcd hiccup: EtcdUnavailable), so ``_new_session`` closes
    S2 and, while close() waits for S2's keep-alive to end, SIGTERM's
    ``runtime.stop()`` cancels the keeper. (The hook only widens that window: the
    keep-alive takes a moment to end after its cancel; unhooked it is one loop turn, or
    a gRPC call's cancellation.) close() swallows the keeper's cancellation, the
    EtcdUnavailable goes on, the keeper backs off and starts session S3, joins again.

    Observed: ``supervisor.stop()`` times out (10 s, "did not stop when cancelled"),
    the keeper still runs after ``runtime.stop()`` returned and puts the member key of
    the dying replica back on a fresh lease (after leave() deleted it): the others hand
    its Configs back to it for a lease TTL after it exits (they stall: the lock holder
    is a dead process). Expected: the keeper ends with the stop; no re-join.
    Fix: do not swallow the caller's cancellation in ``Session.close()`` (and
    ``Membership.leave()``): ``await asyncio.wait({task})`` instead of
    ``suppress(CancelledError): await task``, with the revoke in a ``finally``."""
    rt, rt_client = await start_runtime(etcd_server.endpoint, prefix, "dying", lock_ttl=3)
    slow_end = asyncio.Event()
    in_close = asyncio.Event()
    real_keepalive = Session._keepalive
    wrapped: list[Session] = []

    async def keepalive(self: Session) -> None:
        try:
            await real_keepalive(self)
        except asyncio.CancelledError:
            if wrapped and self is wrapped[0] and not slow_end.is_set():
                slow_end.set()
                in_close.set()
                await asyncio.Event().wait()  # ends when cancelled again
            raise

    try:
        assert rt.session is not None and rt.membership is not None
        first = rt.session.lease_id
        real_join = rt.membership.join
        joins: list[int] = []

        async def join_fails_once(session: Session) -> None:
            joins.append(session.lease_id)
            if len(joins) == 1:
                wrapped.append(session)
                await client.get(b"/any")  # the join's round trip, then it fails
                raise EtcdUnavailable("injected: etcd hiccup during join")
            await real_join(session)

        monkeypatch.setattr(rt.membership, "join", join_fails_once)
        monkeypatch.setattr(Session, "_keepalive", keepalive)
        await client.revoke(first)
        await asyncio.wait_for(in_close.wait(), 15)  # the keeper waits in S2.close()
        await asyncio.wait_for(rt.stop(), 30)
        keeper = rt.supervisor.tasks["session-keeper"]
        assert keeper.runner is not None
        still_running = not keeper.runner.done()

        async def rejoined() -> bool:
            return await member_key(client, prefix, "dying") is not None

        with contextlib.suppress(AssertionError):
            await wait_for(rejoined, 3, "a re-join")
        kv = await member_key(client, prefix, "dying")
        assert not still_running and kv is None, (
            f"after runtime.stop() the keeper is still running ({still_running}) and the "
            f"dying replica is a member again: {kv and kv.value!r}"
        )
    finally:
        keeper_runner = rt.supervisor.tasks["session-keeper"].runner
        if keeper_runner is not None:
            await cancel(keeper_runner)
        if rt.session is not None:
            await rt.session.close()
        await rt_client.close()


# =================================================================================================
# main.run(): the signal handling itself
# =================================================================================================


class MainHarness:
    """``main.run()`` for real (its etcd client, Runtime, Reconciler, supervised tasks and
    signal handling), with the Kubernetes API, the HTTP server and kopf replaced.

    ``kopf.operator`` is replaced by what it does around our code, with kopf's own
    functions: ``kopf.operator()`` is ``spawn_tasks()`` + ``run_tasks(ignored=tasks that
    existed when it started)``; spawn_tasks installs kopf's signal handlers (they set
    its signal flag) and the startup activity sets the ready flag. ``run_tasks`` and
    ``stop_flag_checker`` are kopf's, unchanged: every task created after kopf started
    is a "hung" task at shutdown, waited for 5 s, then cancelled."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
        self.settings = settings
        self.kube = FakeKube()
        self.runtime: Runtime | None = None
        self.http_cleaned = False
        self.kopf_started = asyncio.Event()
        self.kopf_returned = asyncio.Event()
        self.before_ready: Callable[[], Awaitable[None]] | None = None
        self.while_running: Callable[[Runtime], Awaitable[None]] | None = None
        self.during_http: Callable[[Runtime], Awaitable[None]] | None = None
        self.stops = 0
        self.handlers: list[asyncio.Task[None]] = []
        harness = self

        def make_runtime(**kw: Any) -> Runtime:
            rt = Runtime(**kw, supervisor=Supervisor(initial_backoff=0.2))
            real_stop = rt.stop

            async def counted_stop() -> None:
                harness.stops += 1
                await real_stop()

            rt.stop = counted_stop  # type: ignore[method-assign]
            harness.runtime = rt
            return rt

        async def load_api_client(*_: Any, **__: Any) -> object:
            return object()

        class Runner:
            async def cleanup(self) -> None:
                harness.http_cleaned = True

        async def start_http(runtime: Runtime, *_: Any) -> Runner:
            if harness.during_http is not None:
                await harness.during_http(runtime)
            return Runner()

        monkeypatch.setattr(main_module, "Runtime", make_runtime)
        monkeypatch.setattr(main_module, "load_api_client", load_api_client)
        monkeypatch.setattr(main_module, "Kube", lambda api, component: self.kube)
        monkeypatch.setattr(main_module, "start_http", start_http)
        monkeypatch.setattr(main_module, "build_registry", lambda rt, rec: None)
        monkeypatch.setattr(main_module, "operator_settings", lambda rt: None)
        monkeypatch.setattr(main_module.kopf, "operator", self.operator)

    async def operator(
        self, *, ready_flag: asyncio.Event, stop_flag: asyncio.Event, **_: Any
    ) -> None:
        from kopf._cogs.aiokits import aiotasks
        from kopf._core.reactor import running

        existing = await aiotasks.all_tasks()
        loop = asyncio.get_running_loop()
        signal_flag: asyncio.Future[Any] = asyncio.Future()
        checker = asyncio.create_task(
            running.stop_flag_checker(signal_flag=signal_flag, stop_flag=stop_flag),
            name="stop-flag checker",
        )
        await asyncio.sleep(0)  # as spawn_tasks, before it installs its signal handlers
        loop.add_signal_handler(signal.SIGINT, signal_flag.set_result, signal.SIGINT)
        loop.add_signal_handler(signal.SIGTERM, signal_flag.set_result, signal.SIGTERM)
        self.kopf_started.set()
        assert self.runtime is not None
        rt = self.runtime

        async def startup_then_work() -> None:
            if self.before_ready is not None:
                await self.before_ready()
            ready_flag.set()
            if self.while_running is not None:
                # a handler (a worker's sub-task in kopf): runs on while kopf stops
                self.handlers.append(asyncio.create_task(self.while_running(rt), name="handler"))
            await asyncio.Event().wait()

        root = asyncio.create_task(startup_then_work(), name="startup/cleanup activities")
        try:
            await running.run_tasks([checker, root], ignored=existing)
        finally:
            self.kopf_returned.set()


def our_handler_installed(sig: signal.Signals) -> bool:
    handle = asyncio.get_running_loop()._signal_handlers.get(sig)  # type: ignore[attr-defined]
    return handle is not None and getattr(handle._callback, "__name__", "") == "on_signal"


async def send(sig: signal.Signals) -> None:
    """Deliver a real signal to this process, once a handler of the loop takes it."""
    assert sig in asyncio.get_running_loop()._signal_handlers  # type: ignore[attr-defined]
    os.kill(os.getpid(), sig)


async def test_sigterm_leaves_at_once_while_a_handler_holds_a_lock_and_it_writes_nothing(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change's intent, end to end in ``run()``: a handler holds the lock of a
    Config (about to commit) when SIGTERM arrives; the member key and the lease go at
    once, while kopf still runs; the handler then commits: refused (LockLost), nothing
    written. A second SIGTERM and a SIGINT change nothing: one stop, a clean return."""
    settings = settings_for(etcd_server.endpoint, prefix, "dying")
    h = MainHarness(monkeypatch, settings)
    gate = Gate()
    outcome: list[BaseException | dict[str, Any] | None] = []

    async def handler(rt: Runtime) -> None:
        rec = Reconciler(rt)
        await rec.reconcile(body(1), trigger="create")
        assert rt.store is not None
        real_commit = rt.store.commit

        async def commit_after_gate(change: Any, mutex: Any) -> Any:
            await gate.pause()
            return await real_commit(change, mutex)

        rt.store.commit = commit_after_gate  # type: ignore[method-assign]
        try:
            outcome.append(await rec.reconcile(body(2), trigger="update"))
        except (RetryLater, Exception) as exc:
            outcome.append(exc)

    h.while_running = handler
    run = asyncio.create_task(main_module.run(settings))
    try:
        await asyncio.wait_for(gate.reached.wait(), 15)
        await wait_for(lambda: our_handler_installed(signal.SIGTERM), 5, "our SIGTERM handler")
        assert h.runtime is not None and h.runtime.session is not None
        lease = h.runtime.session.lease_id
        await send(signal.SIGTERM)

        async def left() -> bool:
            return (
                await member_key(client, prefix, "dying") is None
                and await client.time_to_live(lease) == -1
            )

        await wait_for(left, 5, "the member key and the lease gone")
        assert not h.kopf_returned.is_set()  # at once: kopf is still stopping
        await send(signal.SIGTERM)
        await send(signal.SIGINT)
        gate.go.set()
        await asyncio.wait_for(run, 30)
    finally:
        gate.go.set()
        if not run.done():
            await cancel(run)
    assert h.stops == 1
    assert len(outcome) == 1 and isinstance(outcome[0], RetryLater), outcome
    assert isinstance(outcome[0].__cause__, LockLost)
    assert await versions(client, prefix) == [(1, 1, "dying")]
    assert await lock_keys(client, prefix) == []
    assert h.http_cleaned and h.kube.closed


async def test_sigterm_before_kopf_is_ready_still_stops_and_leaves(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while kopf starts (its own handlers installed, ours not yet back): kopf
    stops, ``run()`` leaves in its ``finally``: slower, but clean."""
    settings = settings_for(etcd_server.endpoint, prefix, "dying")
    h = MainHarness(monkeypatch, settings)
    hold = asyncio.Event()

    async def before_ready() -> None:
        await send(signal.SIGTERM)  # kopf's handler takes it
        await hold.wait()

    h.before_ready = before_ready
    run = asyncio.create_task(main_module.run(settings))
    try:
        await asyncio.wait_for(run, 30)
    finally:
        if not run.done():
            await cancel(run)
    assert h.stops == 1
    assert await member_key(client, prefix, "dying") is None
    assert h.http_cleaned and h.kube.closed


async def test_defect_sigterm_during_startup_crashes_run(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our handlers are installed before ``start_http()``; a SIGTERM during it starts
    ``leave()`` at once, whose ``supervisor.stop()`` marks the supervisor stopped; then
    ``run()`` goes on with ``runtime.supervisor.add("resync", …)``, which raises
    ``RuntimeError("the supervisor is stopped")`` — outside the try/finally.

    Observed: ``run()`` raises RuntimeError (``main()`` only catches StartupError:
    a traceback, exit code 1), the HTTP runner and the Kubernetes client are never
    closed, the leave task is not awaited (asyncio.run cancels it wherever it is:
    the lease may outlive the process by a TTL). Before the change the signal only set
    the stop flag and kopf stopped at once. Expected: a clean stop (return None),
    member key and lease gone, everything closed.
    Fix: open the try/finally right after ``runtime.start()`` succeeded (so that
    ``start_http``/``supervisor.add`` are inside it), and skip ``supervisor.add`` /
    ``kopf.operator`` when ``stop`` is already set."""
    settings = settings_for(etcd_server.endpoint, prefix, "dying")
    h = MainHarness(monkeypatch, settings)

    async def signal_during_http(rt: Runtime) -> None:
        assert our_handler_installed(signal.SIGTERM)
        await send(signal.SIGTERM)
        # start_http's own awaits (runner.setup, site.start) let the leave task run
        await wait_for(lambda: rt.supervisor._stopping, 5, "leave() started")

    h.during_http = signal_during_http
    run = asyncio.create_task(main_module.run(settings))
    try:
        done, _ = await asyncio.wait({run}, timeout=30)
        assert done, "run() did not return"
        error = run.exception()
        assert error is None, f"run() raised {type(error).__name__}: {error}"
        assert await member_key(client, prefix, "dying") is None
        assert h.http_cleaned and h.kube.closed
    finally:
        if not run.done():
            await cancel(run)
        crashed = run.cancelled() or run.exception() is not None
        if crashed and h.runtime is not None:
            with contextlib.suppress(Exception):
                await h.runtime.stop()  # what the crashed run() left running


async def test_defect_kopf_cancels_the_leave_task_when_etcd_is_slow(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leave task is created by the SIGTERM handler, i.e. after ``kopf.operator()``
    started: kopf's ``run_tasks`` counts it among the "hung" tasks of the operator,
    waits 5 s for them, then cancels them. ``runtime.stop()`` takes longer than that
    whenever etcd is slow or away (``membership.leave()`` and the revoke each wait up to
    ``etcd_timeout``, 5 s by default; ``supervisor.stop()`` up to 10 s).

    Interleaving: etcd unreachable (a partition: the proxy holds every byte), SIGTERM.
    Observed: kopf cancels the leave task; ``run()``'s ``finally`` does
    ``await leave()`` on the cancelled task, which raises CancelledError: the HTTP
    runner, the Kubernetes client and the etcd client are never closed and ``run()``
    (so ``asyncio.run`` in ``main()``) ends with CancelledError: a traceback and exit
    code 1 instead of 0. Before the change ``runtime.stop()`` ran after kopf returned
    and could not be cancelled by it. Expected: ``run()`` returns None, everything
    closed. Fix: create the leave task before ``kopf.operator()`` starts (so kopf
    ignores it), e.g. a task that waits for a "leave" event the signal handler sets;
    or await it shielded and tolerate its cancellation in the ``finally``."""
    host, port = etcd_server.endpoint.rsplit(":", 1)
    proxy = FaultProxy(host, int(port))
    try:
        settings = settings_for(proxy.endpoint, prefix, "dying", etcd_timeout=4.0)
        h = MainHarness(monkeypatch, settings)
        h.while_running = None
        run = asyncio.create_task(main_module.run(settings))
        try:
            await wait_for(lambda: our_handler_installed(signal.SIGTERM), 15, "kopf ready")
            proxy.blackhole()
            await send(signal.SIGTERM)
            done, _ = await asyncio.wait({run}, timeout=40)
            assert done, "run() did not return"
            error = None if run.cancelled() else run.exception()
            assert not run.cancelled() and error is None, "run() ended with " + (
                "CancelledError" if run.cancelled() else f"{type(error).__name__}: {error}"
            )
            assert h.http_cleaned and h.kube.closed
        finally:
            if not run.done():
                await cancel(run)
    finally:
        proxy.heal()
        proxy.close()
