"""Adversarial review of the paged resync round (``Resync.once`` consuming
``Kube.config_pages`` a page at a time: ownership and the skip decided per page, so
across awaits; the membership snapshot taken at the round's start; skipped Configs
kept as ``{"metadata": {namespace, name, uid}}`` stubs when the integrity scan is
due; OWNED, ``keep_usage``, ``retain_configs`` and the ``_settled`` pruning after the
listing) against a REAL etcd: the real Session, Membership watch, locks, store and
``Reconciler``.

The Kubernetes side is the in-memory API server of ``test_adversarial_resync_queue``
with a ``config_pages`` that really pages: ``limit`` Configs by name, the continue
token the last name of the page, each page read from the live state when it is asked
for (so a Config created behind the token is in no page of that listing); a hook runs
before each page after the first, where membership changes and object updates are
injected. Every wait polls a condition under a deadline. ``test_review_*`` failed on
the code as reviewed (fixed: no pruning after a listing that saw the membership
change; mutant M107).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.integration.test_adversarial_resync_queue import (
    NS,
    Api,
    Counting,
    Kube,
    kopf_reconciles,
    uid_owned_by,
    versions,
    wait_until,
)

from etcdconfig import metrics
from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.controller.loops import Resync, _spread
from etcdconfig.controller.runtime import Runtime
from etcdconfig.controller.supervisor import Supervisor
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.kube import KubeError
from etcdconfig.settings import Settings
from etcdconfig.store.keys import Keys

Hook = Callable[[int], Awaitable[None]]


class PagedKube(Kube):
    """``config_pages`` as the API server pages a list: ``limit`` at a time."""

    def __init__(self, api: Api, limit: int = 2) -> None:
        super().__init__(api)
        self.limit = limit
        self.between: Hook | None = None  # awaited before page N (N >= 1) is read
        self.fail_at: int | None = None  # page N answers an error (a 500, an expired token)
        self.pages = 0

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        self.obj.lists += 1
        token: str | None = None
        index = 0
        while True:
            if index and self.between is not None:
                await self.between(index)
            if self.fail_at == index:
                raise KubeError("list Configs: HTTP 500 Internal Server Error")
            await asyncio.sleep(0)  # the request: control goes back to the loop
            names = sorted(n for n in self.obj.objs if token is None or n > token)
            chunk = names[: self.limit]
            page = [self.obj.objs[n].get() for n in chunk]
            self.pages += 1
            index += 1
            yield page
            if len(names) <= self.limit:
                return
            token = chunk[-1]


Factory = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def make_rt(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Factory]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(replica_id: str, api: Api, limit: int = 2, **overrides: Any) -> Runtime:
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
                kube=PagedKube(api, limit),  # type: ignore[arg-type]
                supervisor=Supervisor(initial_backoff=0.2),
            )
            await runtime.start()
            stack.push_async_callback(runtime.stop)
            return runtime

        yield make


@pytest.fixture
async def peer(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    c = EtcdClient(EtcdSettings(endpoints=[etcd_server.endpoint]))
    await c.connect(write=True)
    try:
        yield c
    finally:
        await c.close()


def kube_of(rt: Runtime) -> PagedKube:
    kube = rt.kube
    assert isinstance(kube, PagedKube)
    return kube


async def settle_all(resync: Resync, names: list[str]) -> None:
    api: Api = resync.rt.kube.obj  # type: ignore[attr-defined]
    uids = {api.objs[n].uid for n in names}
    for _ in range(4):
        await resync.once()
        if uids <= set(resync._settled):
            return
    raise AssertionError(f"not settled: {uids - set(resync._settled)}")


async def to_a_round_skipping(resync: Resync, uids: list[str]) -> None:
    """Rounds until one in which none of ``uids`` has its full check due."""
    every = resync.rt.settings.resync_full_every
    while any((resync.rounds + _spread(u)) % every == 0 for u in uids):
        await resync.once()


async def stored_size(rt: Runtime, name: str, version: int) -> int:
    kv, _ = await rt.client.get(Keys(rt.settings.etcd_prefix).version(NS, name, version))
    assert kv is not None
    return len(kv.value)


# --- 1. a membership change between pages -------------------------------------------------------


async def test_review_usage_of_a_config_taken_over_between_pages_is_dropped(
    make_rt: Factory, peer: EtcdClient
) -> None:
    """Interleaving: members (r0, x); Config ``a-taken`` (page 1) is x's, ``b-mine``
    (page 2) r0's. r0's round reads page 1 and leaves ``a-taken`` out (x owns it).
    Before page 2 is read, x leaves: r0 owns ``a-taken`` now, and its kopf handler
    records generation 1 of it (a commit: ``note_usage``). The round ends with
    ``keep_usage(owned)``, owned decided for page 1 under the old membership: the usage
    of ``a-taken`` — owned by r0, its last commit r0's — is dropped. The next round
    (at once, full) reconciles it and finds nothing to record, so nothing notes its
    usage again until the integrity scan (``integrity_interval`` later).

    Expected (docs/metrics.md: etcdconfig_history_bytes covers "the Configs this replica
    owns ... as of each one's last commit"): r0's usage of ``a-taken`` is (1, its
    record's size) after both rounds. The old code decided ownership and kept usage in
    one step with no await between, so no commit could fall between them."""
    api = Api()
    rt = await make_rt("r0", api, limit=1)
    membership = rt.membership
    assert membership is not None
    pair = ("r0", "x")
    taken = api.add("a-taken", uid_owned_by(pair, "x", "t"))
    api.add("b-mine", uid_owned_by(pair, "r0", "m"))
    key = Keys(rt.settings.etcd_prefix).member("x")
    await peer.put(key, b"{}")
    await wait_until(lambda: membership.members == pair, 10, "r0 sees x")
    resync = Resync(rt, Counting(rt))
    await resync.once()  # x owns a-taken: r0 leaves it alone
    assert await versions(rt, "a-taken") == []

    async def x_leaves(index: int) -> None:
        if index != 1:
            return
        await peer.delete_range(key)
        await wait_until(lambda: membership.members == ("r0",), 10, "x gone")
        assert membership.owns(taken.uid)
        await kopf_reconciles(rt, taken.get())  # the owner's event-driven reconcile
        assert taken.uid in rt.usage

    kube_of(rt).between = x_leaves
    await resync.once()
    kube_of(rt).between = None
    await resync.once()  # the round the membership change makes due at once

    assert [(r["version"], r["generation"]) for r in await versions(rt, "a-taken")] == [(1, 1)]
    assert membership.owns(taken.uid)
    size = await stored_size(rt, "a-taken", 1)
    assert rt.usage.get(taken.uid) == (1, size), (
        "the usage of a Config r0 owns (and recorded) was dropped by keep_usage with an "
        "ownership decided under the membership of an earlier page"
    )


async def test_a_hand_over_and_back_between_pages_makes_the_next_round_full_and_immediate(
    make_rt: Factory, peer: EtcdClient
) -> None:
    """Six settled Configs on three pages, none due this round. Before page 2 is read
    a member that outranks r0 for some of them joins and leaves. The round skips all
    six (page 1 decided before the change, pages 2-3 after it was undone); the loop
    runs the next round at once (resync_interval 300 s) and it reconciles all six, each
    once, and OWNED says six."""
    api = Api()
    rt = await make_rt("r0", api)
    membership = rt.membership
    assert membership is not None
    names = [f"p{i}" for i in range(6)]
    for n in names:
        api.add(n, f"uid-{n}")
    rec = Counting(rt)
    resync = Resync(rt, rec)
    await settle_all(resync, names)
    await to_a_round_skipping(resync, [f"uid-{n}" for n in names])
    other = next(
        f"x{i}" for i in range(100) if any(rendezvous_wins(f"x{i}", f"uid-{n}") for n in names[2:])
    )
    key = Keys(rt.settings.etcd_prefix).member(other)
    fired: list[int] = []

    async def join_and_leave(index: int) -> None:
        if fired or index != 1:
            return
        fired.append(resync.rounds)
        await peer.put(key, b"{}")
        await wait_until(lambda: other in membership.members, 10, "r0 sees the other")
        await peer.delete_range(key)
        await wait_until(lambda: membership.members == ("r0",), 10, "the other gone")

    kube_of(rt).between = join_and_leave
    rec.calls.clear()
    start = resync.rounds
    loop_task = asyncio.create_task(resync.run())
    try:
        await wait_until(lambda: resync.rounds >= start + 2, 10, "two rounds")
        assert fired == [start]
        assert sorted(rec.calls) == names
        assert metrics.OWNED._value.get() == 6
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


def rendezvous_wins(member: str, uid: str) -> bool:
    return rendezvous_owner(("r0", member), uid) == member


async def test_two_replicas_record_each_generation_once_when_ownership_moves_between_pages(
    make_rt: Factory,
) -> None:
    """r0, alone, reads page 1 (c0, c1: both its own then); before page 2, r1 joins and
    runs a whole round over its share; r0's round goes on with pages 2-3 under the new
    membership. r0 reconciles c0, c1 and its share of c2..c5; r1 its share; every
    generation is recorded exactly once and every status ends at version 1."""
    api = Api()
    rt0 = await make_rt("r0", api)
    names = [f"c{i}" for i in range(6)]
    for n in names:
        api.add(n, f"uid-{n}")
    r0 = Resync(rt0, Counting(rt0))
    box: list[Resync] = []

    async def r1_joins(index: int) -> None:
        if index != 1 or box:
            return
        rt1 = await make_rt("r1", api)
        await wait_until(
            lambda: rt0.membership.members == ("r0", "r1"),  # type: ignore[union-attr]
            10,
            "r0 sees r1",
        )
        r1 = Resync(rt1, Counting(rt1))
        box.append(r1)
        await r1.once()

    kube_of(rt0).between = r1_joins
    await r0.once()

    assert box
    rt1 = box[0].rt
    assert rt1.membership is not None
    mine1 = sorted(n for n in names if rt1.membership.owns(f"uid-{n}"))
    assert mine1 and len(mine1) < 6
    assert sorted(box[0].reconciler.calls) == mine1  # type: ignore[attr-defined]
    expect0 = sorted({"c0", "c1"} | {n for n in names[2:] if n not in mine1})
    assert sorted(r0.reconciler.calls) == expect0  # type: ignore[attr-defined]
    for n in names:
        records = await versions(rt0, n)
        assert [(r["version"], r["generation"]) for r in records] == [(1, 1)], n
        assert api.objs[n].status["version"] == 1, n
        assert api.objs[n].status["observedGeneration"] == 1, n
    assert api.recorded_events() == names


# --- 2. a listing that fails midway; a Config in no page -----------------------------------------


async def test_a_listing_failing_on_page_3_keeps_settled_state_usage_and_series(
    make_rt: Factory,
) -> None:
    """Six settled Configs (names of their own for the process-wide series), three
    pages; page 3 answers an error. The round fails: nothing is reconciled, the round
    is not counted, and the settled state, usage and state series of every Config (the
    unlisted page's too) are untouched; the next round, listing all, skips all six."""
    api = Api()
    rt = await make_rt("r0", api)
    names = [f"fail-{i}" for i in range(6)]
    for n in names:
        api.add(n, f"uid-{n}")
    rec = Counting(rt)
    resync = Resync(rt, rec)
    await settle_all(resync, names)
    await to_a_round_skipping(resync, [f"uid-{n}" for n in names])
    settled = dict(resync._settled)
    usage = dict(rt.usage)
    assert set(usage) == {f"uid-{n}" for n in names}
    states = {(NS, n): metrics._config_states.get((NS, n)) for n in names}
    assert all(s is not None for s in states.values())
    rounds = resync.rounds
    rec.calls.clear()
    kube_of(rt).fail_at = 2

    with pytest.raises(KubeError):
        await resync.once()

    assert rec.calls == []
    assert resync.rounds == rounds
    assert resync._settled == settled
    assert rt.usage == usage
    assert {(NS, n): metrics._config_states.get((NS, n)) for n in names} == states

    kube_of(rt).fail_at = None
    await resync.once()
    assert rec.calls == []  # all six still settled and skipped
    assert resync.rounds == rounds + 1
    assert resync._settled == settled
    assert rt.usage == usage


async def test_a_config_created_behind_the_continue_token_is_recorded_by_the_next_round(
    make_rt: Factory,
) -> None:
    """``a-late`` is created (its event missed) while the round lists, behind the
    continue token: it is in no page of that listing. The round records nothing for
    it; the next round does, exactly once."""
    api = Api()
    rt = await make_rt("r0", api)
    names = [f"b{i}" for i in range(6)]
    for n in names:
        api.add(n, f"uid-{n}")
    resync = Resync(rt, Counting(rt))
    await settle_all(resync, names)

    async def create(index: int) -> None:
        if index == 2 and "a-late" not in api.objs:
            api.add("a-late", "uid-a-late")

    kube_of(rt).between = create
    await resync.once()
    assert "a-late" in api.objs
    assert await versions(rt, "a-late") == []
    kube_of(rt).between = None
    await resync.once()
    assert [(r["version"], r["generation"]) for r in await versions(rt, "a-late")] == [(1, 1)]
    assert api.objs["a-late"].status["version"] == 1
    assert api.recorded_events().count("a-late") == 1


# --- 3. the integrity stub ---------------------------------------------------------------------


async def test_integrity_stubs_are_verified_afresh_after_the_pending_config(
    make_rt: Factory,
) -> None:
    """Six settled Configs on three pages, none due; ``z-pending`` (generation 1 not
    recorded) on the last page; the integrity scan is due; one worker. While the round
    lists, ``s0`` (page 1, already stubbed) is updated (its resourceVersion moves).
    The pending Config is reconciled first; then every Config is verified, in listing
    order; the stubs are not reconciled and stay settled; ``s0``'s clean verdict is
    patched onto its current version (no 409)."""
    api = Api()
    rt = await make_rt("r0", api, resync_concurrency=1)
    names = [f"s{i}" for i in range(6)]
    for n in names:
        api.add(n, f"uid-{n}")
    order: list[tuple[str, str]] = []

    class Ordered(Counting):
        async def reconcile(self, body: dict[str, Any], *, trigger: str, retry: int = 0) -> Any:
            order.append(("reconcile", body["metadata"]["name"]))
            return await super().reconcile(body, trigger=trigger, retry=retry)

    resync = Resync(rt, Ordered(rt))
    await settle_all(resync, names)
    await to_a_round_skipping(resync, [f"uid-{n}" for n in names])
    pending = api.add("z-pending", "uid-z-pending")
    store = rt.store
    assert store is not None
    real_verify = store.verify

    async def ordered_verify(ns: str, name: str) -> Any:
        order.append(("verify", name))
        return await real_verify(ns, name)

    store.verify = ordered_verify  # type: ignore[method-assign,assignment]

    async def touch(index: int) -> None:
        if index == 1:
            api.objs["s0"].rv = api.bump()  # a label change: the listed copy is stale

    kube_of(rt).between = touch
    settled = dict(resync._settled)
    refused = list(api.refused)
    order.clear()
    resync._last_integrity = time.monotonic() - 10 * rt.settings.integrity_interval

    await resync.once()

    assert order == [
        ("reconcile", "z-pending"),
        ("verify", "z-pending"),
        *[("verify", n) for n in names],
    ]
    assert api.refused == refused
    for n in names:
        assert resync._settled[f"uid-{n}"] == settled[f"uid-{n}"], n
        intact = next(c for c in api.objs[n].status["conditions"] if c["type"] == "Intact")
        assert intact["status"] == "True", n
    assert pending.status["version"] == 1
    assert [(r["version"], r["generation"]) for r in await versions(rt, "z-pending")] == [(1, 1)]
