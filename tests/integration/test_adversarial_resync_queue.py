"""Adversarial review of the resync round's queue (``Resync.once``: skips decided for
the whole round up front, skipped Configs dropped unless the integrity scan is due,
``resync_concurrency`` workers draining a deque, ``rt.recheck`` consumed when a worker
takes a Config up, stray CancelledErrors as one Config's failure) against a REAL etcd:
the real Session, ConfigLocks/Mutex, Membership watch, store and ``Reconciler``.

The Kubernetes side is an in-memory API server for several Configs (a cluster-wide
resourceVersion moved by every write; a guarded status patch or finalizer update of a
stale copy is refused, as a 409 is). kopf's event-driven reconcile is the Reconciler
called on the object as the event carried it, its status merge-patched unguarded.
Interleavings are forced with gates on our own code; every wait polls a condition
under a deadline. ``test_review_*`` failed on the code as reviewed (fixed: a lock
waiter gives up with its session, ``Mutex._wait_delete``; mutant M104).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from etcdconfig.concurrency import Mutex, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.controller.loops import Resync, _spread
from etcdconfig.controller.reconciler import Reconciler, RetryLater
from etcdconfig.controller.runtime import Runtime
from etcdconfig.controller.supervisor import Supervisor
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end
from etcdconfig.models import FINALIZER
from etcdconfig.settings import Settings
from etcdconfig.store.keys import Keys

NS = "prod"
EVERY = 10


# --- an in-memory API server for several Configs ----------------------------------------------


class Obj:
    def __init__(self, api: Api, name: str, uid: str) -> None:
        self.api = api
        self.name = name
        self.uid = uid
        self.generation = 1
        self.rv = api.bump()
        self.status: dict[str, Any] = {}
        self.finalizers = [FINALIZER]

    def get(self) -> dict[str, Any]:
        return {
            "metadata": {
                "namespace": NS,
                "name": self.name,
                "uid": self.uid,
                "generation": self.generation,
                "resourceVersion": str(self.rv),
                "finalizers": list(self.finalizers),
            },
            "spec": {"data": {"retries": self.generation}},
            "status": json.loads(json.dumps(self.status)),
        }

    def change_spec(self) -> None:
        """``kubectl apply`` of new data: generation and resourceVersion move."""
        self.generation += 1
        self.rv = self.api.bump()


class Api:
    """The Configs as the API server keeps them; ``hooks`` pause our calls into it."""

    def __init__(self) -> None:
        self._rv = 100
        self.objs: dict[str, Obj] = {}
        self.patches: list[tuple[str, str, dict[str, Any]]] = []  # (who, name, status)
        self.refused: list[tuple[str, str]] = []  # (who, name) of 409s
        self.events: list[tuple[str, str, str]] = []  # (name, reason, message)
        self.lists = 0
        self.get_hook: Callable[[str], Awaitable[None]] | None = None

    def bump(self) -> int:
        self._rv += 1
        return self._rv

    def add(self, name: str, uid: str) -> Obj:
        obj = Obj(self, name, uid)
        self.objs[name] = obj
        return obj

    def patch(self, who: str, name: str, status: dict[str, Any], rv: str | None) -> bool:
        obj = self.objs.get(name)
        if obj is None:
            return False
        if rv is not None and rv != str(obj.rv):
            self.refused.append((who, name))
            return False
        obj.status.update(json.loads(json.dumps(status)))  # merge patch: lists replaced
        obj.rv = self.bump()
        self.patches.append((who, name, status))
        return True

    def recorded_events(self) -> list[str]:
        return sorted(n for n, reason, _ in self.events if reason == "Recorded")


class Kube:
    """The calls the resync loop and the Reconciler make, on an ``Api``."""

    def __init__(self, api: Api) -> None:
        self.obj = api
        self.api = None

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(namespace)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        self.obj.lists += 1
        return [o.get() for o in self.obj.objs.values()]

    async def get_config(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.obj.get_hook is not None:
            await self.obj.get_hook(name)
        o = self.obj.objs.get(name)
        return None if o is None else o.get()

    async def add_finalizer(self, obj: dict[str, Any], finalizer: str) -> str | None:
        o = self.obj.objs.get(obj["metadata"]["name"])
        if o is None or str(o.rv) != obj["metadata"]["resourceVersion"]:
            return None
        if finalizer not in o.finalizers:
            o.finalizers.append(finalizer)
            o.rv = self.obj.bump()
        return str(o.rv)

    async def patch_status(
        self, ns: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> bool:
        return self.obj.patch("resync", name, status, resource_version)

    def event_soon(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.obj.events.append((obj["metadata"]["name"], reason, message))

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.obj.events.append((obj["metadata"]["name"], reason, message))

    async def check_crd(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def kopf_reconciles(rt: Runtime, body: dict[str, Any]) -> None:
    """kopf's handler on an event's body: the Reconciler, then an unguarded merge-patch."""
    try:
        status = await Reconciler(rt).reconcile(body, trigger="kopf")
    except RetryLater as exc:
        status = exc.status
    if status:
        rt.kube.obj.patch("kopf", body["metadata"]["name"], status, None)  # type: ignore[attr-defined]


# --- helpers --------------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Gate:
    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()
        self.count = 0

    async def pause(self) -> None:
        self.count += 1
        self.reached.set()
        await self.go.wait()


class Counting(Reconciler):
    """The real Reconciler; counts its calls by Config; an optional gate before each."""

    def __init__(self, rt: Runtime, gate: Gate | None = None) -> None:
        super().__init__(rt)
        self.calls: list[str] = []
        self.gate = gate

    async def reconcile(self, body: dict[str, Any], *, trigger: str, retry: int = 0) -> Any:
        self.calls.append(body["metadata"]["name"])
        if self.gate is not None:
            await self.gate.pause()
        return await super().reconcile(body, trigger=trigger, retry=retry)


Factory = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def make_rt(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Factory]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(replica_id: str, api: Api, **overrides: Any) -> Runtime:
            values: dict[str, Any] = {
                "etcd_endpoints": [etcd_server.endpoint],
                "etcd_prefix": prefix,
                "replica_id": replica_id,
                "lock_ttl": 3,
                "acquire_timeout": 10,
                "hold_timeout": 20,
                "resync_interval": 300,
                "integrity_interval": 3600,
                "http_addr": "127.0.0.1",
                "http_port": 0,
            }
            values.update(overrides)
            settings = Settings(**values)
            client = EtcdClient(settings.etcd())
            await client.connect(write=True)
            stack.push_async_callback(client.close)
            runtime = Runtime(
                settings=settings,
                client=client,
                kube=Kube(api),  # type: ignore[arg-type]
                supervisor=Supervisor(initial_backoff=0.2),
            )
            await runtime.start()
            stack.push_async_callback(runtime.stop)
            return runtime

        yield make


@pytest.fixture
async def peer(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    """Another process's etcd client (a lock holder, a fake member's lease)."""
    c = EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await c.connect(write=True)
    try:
        yield c
    finally:
        await c.close()


async def versions(rt: Runtime, name: str) -> list[dict[str, Any]]:
    """Every stored version record of ``name``, oldest first."""
    base = Keys(rt.settings.etcd_prefix).versions(NS, name)
    res = await rt.client.range(base, prefix_end(base))
    records = [json.loads(kv.value) for kv in res.kvs]
    return sorted(records, key=lambda r: int(r["version"]))


def uid_owned_by(members: tuple[str, ...], owner: str, tag: str) -> str:
    uids = (f"uid-{tag}-{i}" for i in range(1000))
    return next(u for u in uids if rendezvous_owner(members, u) == owner)


async def settle(resync: Resync, names: list[str]) -> None:
    """Rounds until every named Config is settled (nothing left to change)."""
    api: Api = resync.rt.kube.obj  # type: ignore[attr-defined]
    uids = {api.objs[n].uid for n in names}
    for _ in range(4):
        await resync.once()
        if uids <= set(resync._settled):
            return
    raise AssertionError(f"not settled: {uids - set(resync._settled)}")


def lock_keys(rt: Runtime, name: str) -> tuple[bytes, bytes]:
    base = (lock_prefix(rt.settings.etcd_prefix, NS, name) + "/").encode()
    return base, prefix_end(base)


# --- 1. a session lost in the middle of a round ------------------------------------------------


async def test_review_a_lost_session_keeps_the_round_waiting_for_a_lock_it_can_never_get(
    make_rt: Factory, peer: EtcdClient
) -> None:
    """Interleaving: r0's round takes up Config ``blocked`` (generation 1 not recorded
    yet) and queues for its lock behind another lease's key (a peer replica mid-commit
    or frozen, a CLI rollback). r0's lease is lost (revoked here; an expiry does the
    same): its waiter key goes with it, so this waiter can never get the lock. The
    session keeper starts a new session and r0 re-joins; during the gap r0 owned nothing
    (its own member key was gone), so kopf's handler dropped the event of a change to
    Config ``changed`` (generation 2), and the membership change sets ``changed``: the
    loop is to run a round at once (README: "takes over Configs ... at once when
    membership changes").

    Observed: ``Mutex._wait_delete`` watches only the predecessor's key (the session is
    checked only on EtcdUnavailable), so the worker sits out the whole
    ``acquire_timeout`` (8 s here, 30 s by default); ``once()`` waits for it, and the
    round that records generation 2 of ``changed`` starts only then. Expected: a waiter
    whose session is gone gives up at once (SessionExpired), the round ends and the
    next one runs within a second or two of the re-join."""
    api = Api()
    rt = await make_rt("r0", api, acquire_timeout=8)
    membership = rt.membership
    assert membership is not None
    # a live peer replica r1 (its member key on its own lease), which holds the lock
    holder = await Session(peer, ttl=30).start()
    await peer.put(Keys(rt.settings.etcd_prefix).member("r1"), b"{}", lease=holder.lease_id)
    await wait_until(lambda: membership.members == ("r0", "r1"), 10, "r0 sees r1")
    pair = ("r0", "r1")
    resync = Resync(rt, Counting(rt))
    changed = api.add("changed", uid_owned_by(pair, "r0", "c"))
    await settle(resync, ["changed"])
    while (resync.rounds + _spread(changed.uid)) % EVERY == 0:
        await resync.once()  # on to a round where its full check is not due: skipped
    api.add("blocked", uid_owned_by(pair, "r0", "b"))  # generation 1, not recorded yet
    mutex = Mutex(holder, lock_prefix(rt.settings.etcd_prefix, NS, "blocked"), identity="r1")
    await mutex.acquire(5)
    loop_task = asyncio.create_task(resync.run())
    try:
        start, end = lock_keys(rt, "blocked")

        async def queued() -> bool:
            return len((await rt.client.range(start, end, keys_only=True)).kvs) == 2

        await wait_until(queued, 10, "r0's worker queued for the lock of `blocked`")
        rounds = resync.rounds
        old = rt.session
        assert old is not None
        await rt.client.revoke(old.lease_id)  # the session is lost
        await wait_until(lambda: "r0" not in membership.members, 10, "r0's member key gone")
        assert not membership.owns(changed.uid)  # in the gap r0 owns nothing
        changed.change_spec()  # so kopf's handler on r0 drops this event
        await wait_until(
            lambda: rt.session is not old and rt.healthy and "r0" in membership.members,
            10,
            "a new session and r0 re-joined",
        )
        rejoined = time.monotonic()

        async def recorded() -> bool:
            head = await rt.store.head(NS, "changed")  # type: ignore[union-attr]
            return head is not None and head.generation == 2

        with contextlib.suppress(AssertionError):
            await wait_until(recorded, 12, "generation 2 of `changed` recorded")
        took = time.monotonic() - rejoined
        head = await rt.store.head(NS, "changed")  # type: ignore[union-attr]
        assert head is not None and head.generation == 2, "never recorded"
        assert resync.rounds > rounds
        # nothing was recorded for `blocked` under the lost lease (the peer still holds)
        assert await versions(rt, "blocked") == []
        assert took < 3.0, (
            f"the round due at once on the re-join ran {took:.1f}s after it: the previous "
            "round waited out acquire_timeout for a lock its lost session could never get"
        )
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        await mutex.release()
        await holder.close()


async def test_a_session_lost_under_the_lock_records_nothing_and_the_next_round_records_once(
    make_rt: Factory,
) -> None:
    """A worker holds the lock of ``fresh`` (its first version: the store asks the API
    server, under the lock, whether this uid owns the name) when r0's lease is revoked.
    The fenced commit is refused (LockLost: pending status, not settled); the round ends
    without waiting out any timeout; the next round, on the new session, records
    generation 1 exactly once, and its recheck ask is honoured by that round."""
    api = Api()
    rt = await make_rt("r0", api)
    fresh = api.add("fresh", "uid-fresh")
    gate = Gate()

    async def hook(name: str) -> None:
        if name == "fresh" and gate.count == 0:
            await gate.pause()

    api.get_hook = hook
    resync = Resync(rt, Counting(rt))
    rt.recheck.add(fresh.uid)
    round_task = asyncio.create_task(resync.once())
    await asyncio.wait_for(gate.reached.wait(), 10)
    start, end = lock_keys(rt, "fresh")
    assert len((await rt.client.range(start, end, keys_only=True)).kvs) == 1  # held
    assert fresh.uid not in rt.recheck  # consumed by the worker that took it up
    old = rt.session
    assert old is not None
    await rt.client.revoke(old.lease_id)
    await wait_until(lambda: rt.session is not old and rt.healthy, 10, "a new session")
    gate.go.set()
    started = time.monotonic()
    await asyncio.wait_for(round_task, 5)
    assert time.monotonic() - started < 2.0
    assert await versions(rt, "fresh") == []  # refused: nothing under the lost lock
    assert fresh.uid not in resync._settled
    assert fresh.status["conditions"]  # the pending status was reported
    assert next(c for c in fresh.status["conditions"] if c["type"] == "Ready")["status"] == (
        "False"
    )

    await resync.once()

    records = await versions(rt, "fresh")
    assert [(r["version"], r["generation"]) for r in records] == [(1, 1)]
    assert fresh.status["version"] == 1 and fresh.status["observedGeneration"] == 1
    assert api.recorded_events() == ["fresh"]


# --- 2. rounds overlapping kopf's event-driven reconciles --------------------------------------


async def test_a_stale_listed_copy_never_overwrites_newer_status(make_rt: Factory) -> None:
    """The round lists ``cfg`` at generation 1 (settled); before its worker reconciles,
    the user applies generation 2 and kopf records it as version 2 and patches status.
    The worker then reconciles the listed generation-1 copy: its status (observed 1) is
    refused (409), nothing is recorded, and the Config is not marked settled."""
    api = Api()
    rt = await make_rt("r0", api, resync_full_every=1)
    cfg = api.add("cfg", "uid-cfg")
    plain = Resync(rt, Counting(rt))
    await settle(plain, ["cfg"])
    assert [(r["version"], r["generation"]) for r in await versions(rt, "cfg")] == [(1, 1)]

    gate = Gate()
    resync = Resync(rt, Counting(rt, gate))
    round_task = asyncio.create_task(resync.once())
    await asyncio.wait_for(gate.reached.wait(), 10)  # listed at generation 1
    cfg.change_spec()
    await kopf_reconciles(rt, cfg.get())
    assert cfg.status["version"] == 2
    newer = json.loads(json.dumps(cfg.status))
    rv = cfg.rv
    gate.go.set()
    await asyncio.wait_for(round_task, 10)

    assert cfg.status == newer and cfg.rv == rv
    assert ("resync", "cfg") in api.refused
    assert [(r["version"], r["generation"]) for r in await versions(rt, "cfg")] == [(1, 1), (2, 2)]
    assert cfg.uid not in resync._settled


async def test_a_listed_generation_overtaken_under_the_lock_is_not_recorded(
    make_rt: Factory,
) -> None:
    """The round lists ``cfg`` at generation 2 (not recorded: kopf's event was missed);
    its worker reads the head (generation 1) and is about to take the lock when the user
    applies generation 3 and kopf records it. The worker's commit, under the lock, finds
    generation 3 at the head: generation 2 is never recorded, and its status (observed
    2) is refused."""
    api = Api()
    rt = await make_rt("r0", api)
    cfg = api.add("cfg", "uid-cfg")
    await settle(Resync(rt, Counting(rt)), ["cfg"])
    cfg.change_spec()  # generation 2, its event missed

    gate = Gate()

    class Late(Counting):
        async def _record(self, change: Any, mine: Any = None, rejudge: Any = None) -> Any:
            await gate.pause()
            return await super()._record(change, mine, rejudge)

    resync = Resync(rt, Late(rt))
    round_task = asyncio.create_task(resync.once())
    await asyncio.wait_for(gate.reached.wait(), 10)
    cfg.change_spec()  # generation 3
    await kopf_reconciles(rt, cfg.get())
    newer = json.loads(json.dumps(cfg.status))
    assert newer["observedGeneration"] == 3
    gate.go.set()
    await asyncio.wait_for(round_task, 10)

    assert [(r["version"], r["generation"]) for r in await versions(rt, "cfg")] == [(1, 1), (2, 3)]
    assert cfg.status == newer
    assert ("resync", "cfg") in api.refused


# --- 3. membership changes during a round --------------------------------------------------------


async def test_two_replicas_rounds_over_the_same_configs_record_each_generation_once(
    make_rt: Factory,
) -> None:
    """r0 lists six unrecorded Configs while alone and its workers pause before
    reconciling; r1 joins, owns some of them and its round records them; then r0's
    (stale) round goes on over all six. Each generation is recorded exactly once, and
    every status ends at version 1 / observed 1."""
    api = Api()
    rt0 = await make_rt("r0", api)
    names = [f"c{i}" for i in range(6)]
    for n in names:
        api.add(n, f"uid-{n}")
    gate = Gate()
    r0 = Resync(rt0, Counting(rt0, gate))
    round0 = asyncio.create_task(r0.once())
    await wait_until(lambda: gate.count == 6, 10, "r0's six workers took their Configs up")

    rt1 = await make_rt("r1", api)
    assert rt0.membership is not None and rt1.membership is not None
    await wait_until(lambda: rt0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    mine1 = sorted(n for n in names if rt1.membership.owns(f"uid-{n}"))
    assert mine1 and len(mine1) < 6
    r1 = Resync(rt1, Counting(rt1))
    await r1.once()
    assert sorted(r1.reconciler.calls) == mine1  # type: ignore[attr-defined]
    gate.go.set()
    await asyncio.wait_for(round0, 20)

    for n in names:
        records = await versions(rt0, n)
        assert [(r["version"], r["generation"]) for r in records] == [(1, 1)], n
        assert api.objs[n].status["version"] == 1, n
        assert api.objs[n].status["observedGeneration"] == 1, n
    assert api.recorded_events() == names


async def test_a_hand_over_and_back_during_a_round_unsettles_the_skipped_config(
    make_rt: Factory, peer: EtcdClient
) -> None:
    """``quiet`` is settled and dropped from round N (its full check not due); while
    round N works on ``busy``, a replica that outranks r0 for ``quiet`` joins and leaves
    again. Round N+1 reconciles ``quiet`` in full, and the loop runs it at once."""
    api = Api()
    rt = await make_rt("r0", api)
    assert rt.membership is not None
    membership = rt.membership
    quiet = api.add("quiet", "uid-quiet")
    rec = Counting(rt)
    resync = Resync(rt, rec)
    await settle(resync, ["quiet"])
    while (resync.rounds + _spread(quiet.uid)) % EVERY == 0:
        await resync.once()
    other = next(
        f"x{i}" for i in range(100) if rendezvous_owner(("r0", f"x{i}"), quiet.uid) != "r0"
    )
    busy = api.add("busy", "uid-busy")  # unrecorded: the round works on it
    gate = Gate()

    async def hook(name: str) -> None:
        if name == "busy" and gate.count == 0:
            await gate.pause()

    api.get_hook = hook
    rec.calls.clear()
    loop_task = asyncio.create_task(resync.run())
    try:
        await asyncio.wait_for(gate.reached.wait(), 10)
        assert rec.calls == ["busy"]  # quiet was dropped from this round
        rounds = resync.rounds
        key = Keys(rt.settings.etcd_prefix).member(other)
        await peer.put(key, b"{}")
        await wait_until(lambda: other in membership.members, 10, "r0 sees the other")
        await peer.delete_range(key)
        await wait_until(lambda: membership.members == ("r0",), 10, "the other gone")
        gate.go.set()
        await wait_until(lambda: resync.rounds >= rounds + 2, 10, "the next round")
        assert rec.calls.count("quiet") == 1
        assert [(r["version"], r["generation"]) for r in await versions(rt, "busy")] == [(1, 1)]
        assert busy.status["version"] == 1
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


# --- 4. the integrity scan due in a round with skips ---------------------------------------------


async def test_the_integrity_scan_covers_skipped_configs_without_reconciling_them(
    make_rt: Factory,
) -> None:
    """Twelve settled Configs; the scan is due in a round in which only those whose
    full check falls on it are reconciled. Every Config is verified once; the skipped
    ones are not reconciled (and stay settled); a tampered skipped one is reported."""
    api = Api()
    rt = await make_rt("r0", api, resync_concurrency=3)
    names = sorted(f"s{i:02d}" for i in range(12))
    for n in names:
        api.add(n, f"uid-{n}")
    rec = Counting(rt)
    resync = Resync(rt, rec)
    await settle(resync, names)
    due = sorted(n for n in names if (resync.rounds + _spread(f"uid-{n}")) % EVERY == 0)
    skipped = sorted(set(names) - set(due))
    assert skipped
    victim = skipped[0]
    key = Keys(rt.settings.etcd_prefix).version(NS, victim, 1)
    kv, _ = await rt.client.get(key)
    assert kv is not None
    record = json.loads(kv.value)
    record["data"] = {"retries": 999}
    await rt.client.put(key, json.dumps(record).encode())

    verified: list[str] = []
    store = rt.store
    assert store is not None
    real_verify = store.verify

    async def counting_verify(ns: str, name: str) -> Any:
        verified.append(name)
        return await real_verify(ns, name)

    store.verify = counting_verify  # type: ignore[method-assign,assignment]
    rec.calls.clear()
    resync._last_integrity = time.monotonic() - 10 * rt.settings.integrity_interval

    await resync.once()

    assert sorted(verified) == names
    assert sorted(rec.calls) == due
    assert all(f"uid-{n}" in resync._settled for n in skipped)  # not reconciled: kept
    intact = next(c for c in api.objs[victim].status["conditions"] if c["type"] == "Intact")
    assert intact["status"] == "False"
    others = [n for n in names if n != victim]
    for n in others:
        c = next(c for c in api.objs[n].status["conditions"] if c["type"] == "Intact")
        assert c["status"] == "True", n


async def test_a_deletion_recorded_while_a_worker_holds_a_listed_copy_is_final(
    make_rt: Factory,
) -> None:
    """The round lists ``cfg`` at generation 2 (not recorded yet); its worker has read
    the head and is about to take the lock when the Config is deleted and kopf's
    finalizer records the deletion (under the lock) and the object goes. The worker's
    commit then writes nothing (StaleIncarnation) and patches no status."""
    api = Api()
    rt = await make_rt("r0", api)
    cfg = api.add("cfg", "uid-cfg")
    await settle(Resync(rt, Counting(rt)), ["cfg"])
    cfg.change_spec()
    gate = Gate()

    class Late(Counting):
        async def _record(self, change: Any, mine: Any = None, rejudge: Any = None) -> Any:
            await gate.pause()
            return await super()._record(change, mine, rejudge)

    resync = Resync(rt, Late(rt))
    round_task = asyncio.create_task(resync.once())
    await asyncio.wait_for(gate.reached.wait(), 10)
    assert rt.locks is not None and rt.store is not None
    async with rt.locks.hold(NS, "cfg") as mutex:
        await rt.store.delete(NS, "cfg", cfg.uid, mutex, purge=False)
    del api.objs["cfg"]
    patches = len(api.patches)
    gate.go.set()
    await asyncio.wait_for(round_task, 10)

    assert [(r["version"], r["generation"]) for r in await versions(rt, "cfg")] == [(1, 1)]
    head = await rt.store.head(NS, "cfg")
    assert head is not None and head.deleted and head.version == 1
    assert len(api.patches) == patches
    assert api.recorded_events() == ["cfg"]  # the first version only
