"""Adversarial review of e2cb23a (the resync skips *settled* Configs) against a real
etcd: the real ``Membership`` watch, store, locks and ``Reconciler``; the Kubernetes
side is the in-memory API object of ``test_adversarial_integrity_status`` (its
resourceVersion moves on every write, a guarded status patch of a stale copy 409s).
No sleeps: waits poll a condition under a deadline. Tests named ``test_review_*``
proved a defect of the code as reviewed (fixed: Membership.generation; mutant M92).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.integration.test_adversarial_integrity_status import NAME, NS, UID, ApiKube, ApiObject

from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.controller.loops import Resync, _spread
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.controller.runtime import Runtime
from etcdconfig.controller.supervisor import Supervisor
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, Put, prefix_end
from etcdconfig.settings import Settings
from etcdconfig.store.keys import Keys

EVERY = 10


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
async def rt(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Runtime]:
    settings = Settings(
        etcd_endpoints=[etcd_server.endpoint],
        etcd_prefix=prefix,
        replica_id="r0",
        lock_ttl=5,
        acquire_timeout=10,
        hold_timeout=20,
        http_addr="127.0.0.1",
        http_port=0,
    )
    assert settings.resync_full_every == EVERY  # the product's default
    client = EtcdClient(settings.etcd())
    await client.connect(write=True)
    runtime = Runtime(
        settings=settings,
        client=client,
        kube=ApiKube(ApiObject()),  # type: ignore[arg-type]
        supervisor=Supervisor(initial_backoff=0.2),
    )
    await runtime.start()  # membership joined, its watch running under the supervisor
    try:
        yield runtime
    finally:
        await runtime.stop()
        await client.close()


def api(rt: Runtime) -> ApiObject:
    return rt.kube.obj  # type: ignore[attr-defined,no-any-return]


class Counting(Reconciler):
    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.calls = 0

    async def reconcile(self, body: dict[str, Any], *, trigger: str, retry: int = 0) -> Any:
        self.calls += 1
        return await super().reconcile(body, trigger=trigger, retry=retry)


async def settled(rt: Runtime) -> tuple[Resync, Counting]:
    """v1 recorded by kopf's handler; resync rounds until the Config is settled, then
    on to a round in which its full check is not due."""
    await api(rt).kopf_handles(rt, "create")
    rec = Counting(rt)
    resync = Resync(rt, rec)
    for _ in range(3):
        await resync.once()
        if UID in resync._settled:
            break
    assert UID in resync._settled, api(rt).status
    while (resync.rounds + _spread(UID)) % EVERY == 0:
        await resync.once()
    rec.calls = 0
    return resync, rec


async def test_review_a_hand_over_and_back_between_rounds_leaves_the_config_skipped(
    rt: Runtime,
) -> None:
    """Real membership on a real etcd. The Config is settled on r0. Replica ``other``
    (which outranks r0 for this uid) registers and goes away again between two rounds
    of r0 — a new pod that crash-loops, or another replica's lease expiring and it
    re-joining under the same replica id; r0's watch sees both, ``owns(uid)`` is
    False meanwhile (r0's rollout watcher for it exits at its next poll, a debounce
    timer firing now rolls nothing out), and the loop is woken for a round.

    Observed: the next round compares the member tuple with the previous round's,
    finds it equal and skips the Config (its resourceVersion did not move: ``other``
    found nothing to patch). Nothing re-schedules its rollout until its full check,
    up to ``resync_full_every`` rounds later. Expected (loops.py docstring, and
    docs/rollouts.md "the next owner's resync attaches a new watcher"): every Config
    is reconciled after any change of membership. Fix: count membership changes
    (``Membership._set``) and clear the marks when the count moved since the previous
    round, not when the sorted member tuple differs."""
    resync, rec = await settled(rt)
    assert rt.membership is not None
    other = next(
        f"other-{i}" for i in range(100) if rendezvous_owner(("r0", f"other-{i}"), UID) != "r0"
    )
    key = Keys(rt.settings.etcd_prefix).member(other)
    await rt.client.put(key, b"{}")
    await wait_until(lambda: other in rt.membership.members, 10, "r0 sees the other replica")  # type: ignore[union-attr]
    assert not rt.membership.owns(UID)  # handed over: r0's in-process work for it stops
    await rt.client.delete_range(key)
    await wait_until(lambda: rt.membership.members == ("r0",), 10, "the other one gone")  # type: ignore[union-attr]
    assert rt.membership.owns(UID)
    assert rt.membership.changed.is_set()  # the loop would start a round at once

    await resync.once()

    assert rec.calls == 1, "the Config was skipped in the first round after a hand-over"


async def test_held_an_in_place_store_restore_is_re_recorded_within_full_every_rounds(
    rt: Runtime,
) -> None:
    """etcd restored under a running operator to a copy taken before generation 2 was
    recorded (docs/operations.md asks to scale to 0 first, which restarts the rounds;
    this is the case where it was not): the store's head is v1/generation 1 while the
    Config says version 2, observedGeneration 2, and nothing moves its resourceVersion.
    Held within the documented bound only: the settled Config is skipped until its full
    check (before e2cb23a: the next round), then generation 2 is recorded again."""
    obj = api(rt)
    await obj.kopf_handles(rt, "create")
    root = Keys(rt.settings.etcd_prefix).configs()
    backup = await rt.client.range(root, prefix_end(root))
    obj.generation = 2
    obj.rv += 1
    await obj.kopf_handles(rt, "update")
    assert obj.status["version"] == 2
    rec = Counting(rt)
    resync = Resync(rt, rec)
    for _ in range(3):
        await resync.once()
    assert UID in resync._settled

    await rt.client.delete_range(root, prefix_end(root))  # the restore
    await rt.client.txn([], [Put(kv.key, kv.value) for kv in backup.kvs])
    assert rt.store is not None
    head = await rt.store.head(NS, NAME)
    assert head is not None and head.generation == 1

    took = 0
    for took in range(1, EVERY + 1):  # noqa: B007 (reported after the loop)
        due = (resync.rounds + _spread(UID)) % EVERY == 0
        await resync.once()
        head = await rt.store.head(NS, NAME)
        assert head is not None
        if head.generation == 2:
            assert due  # only its full check noticed
            break
    assert head.generation == 2, "not re-recorded within resync_full_every rounds"
    assert obj.status["version"] == head.version
    print(f"generation 2 recorded again after {took} round(s)")
