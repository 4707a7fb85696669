"""Independent review of 30f89f9 (``Resync.once``: the skip of settled Configs is decided
for every Config before any reconcile, skipped Configs leave the round at once unless
the integrity scan is due, and ``resync_concurrency`` workers drain a deque).

Loop logic only: Kubernetes, the reconciler and the store are fakes. The first three
tests were defects (they failed on 30f89f9 and passed on its parent, checked by loading
the parent's loops.py in place of the module), fixed since; the others are probes that
held. Mutants M99-M101 undo each part of the fix.

The defects share one cause: ``_skip`` *consumes* ``Runtime.recheck`` (the ask of a
rollout that failed on a transient error) in the pre-pass, for every Config of the
round at once, but the reconcile it promises happens only when a worker reaches the
Config. Whatever ends the round before that — every worker dying on a CancelledError
nobody asked for (the supervisor restarts the loop on exactly that), or the round
being cancelled — drops the ask: the next round finds the Config settled and skips
it, up to ``resync_full_every`` rounds. Before, ``_skip`` ran just before the
reconcile, so an ask was consumed only by the reconcile that honoured it.

``test_review_orphaned_workers_of_a_dead_round_overlap_the_next_round`` failed on the
parent as well (pre-existing); it is here because one fix covers both: a worker that
treats a CancelledError its own task did not ask for (``current_task().cancelling()
== 0``) as that Config's failure, like ``_guarded`` does for an Exception, and a round
that hands the rechecks of the Configs it never reached back to ``rt.recheck`` when it
ends early (or consumes a recheck only when a worker takes the Config).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from tests.unit.test_adversarial_resync_units import wait_until

from etcdconfig import metrics
from etcdconfig.controller.loops import Resync, _spread
from etcdconfig.controller.supervisor import TEST_FAULT_ENV, Supervisor, TaskState
from etcdconfig.store.records import Sizes

EVERY = 10


async def eventually(predicate: Callable[[], object], timeout: float) -> bool:
    """Whether ``predicate`` came true within ``timeout`` (a bound, not a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)  # poll interval of a deadline-bounded wait
    return False


def skipped_total() -> float:
    return metrics.REGISTRY.get_sample_value("etcdconfig_resync_skipped_total") or 0.0


class Kube:
    """Configs whose status already says what the fake reconcile returns."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.versions = dict.fromkeys(names, "7")
        self.observed = dict.fromkeys(names, 2)  # status.observedGeneration (generation 2)
        self.patched: list[str] = []
        self.list_failures: list[BaseException] = []

    def obj(self, name: str) -> dict[str, Any]:
        return {
            "metadata": {
                "namespace": "ns",
                "name": name,
                "uid": f"uid-{name}",
                "generation": 2,
                "resourceVersion": self.versions[name],
                "finalizers": ["etcdconfig.io/finalizer"],
            },
            "status": {"observedGeneration": self.observed[name]},
        }

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(namespace)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if self.list_failures:
            raise self.list_failures.pop(0)
        return [self.obj(n) for n in self.names]

    async def patch_status(self, namespace: str, name: str, status: Any, **_: Any) -> bool:
        self.patched.append(name)
        return True

    async def get_config(self, namespace: str, name: str) -> dict[str, Any]:
        return self.obj(name)


class Reconciler:
    """Records every call, what is in flight at once, and runs a per-Config hook."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.in_flight: set[str] = set()
        self.max_in_flight = 0
        self.overlaps: list[str] = []  # a Config reconciled while already in flight
        self.hooks: dict[str, Callable[[], Awaitable[object]]] = {}

    async def reconcile(self, body: dict[str, Any], *, trigger: str) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.calls.append(name)
        if name in self.in_flight:
            self.overlaps.append(name)
        self.in_flight.add(name)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        try:
            hook = self.hooks.get(name)
            if hook is not None:
                await hook()
            else:
                await asyncio.sleep(0)  # a real reconcile awaits: let the others interleave
            return {"observedGeneration": 2}
        finally:
            self.in_flight.discard(name)


class Store:
    def __init__(self) -> None:
        self.verified: list[str] = []

    async def verify(self, namespace: str, name: str) -> list[str]:
        self.verified.append(name)
        await asyncio.sleep(0)
        return []

    async def prune_rollouts(self, namespace: str, name: str) -> int:
        return 0

    async def usage(self, namespace: str, name: str) -> Sizes:
        return Sizes()


class Members:
    def __init__(self) -> None:
        self.members: tuple[str, ...] = ("r",)
        self.changed = asyncio.Event()
        self.generation = 0

    def owns(self, uid: str) -> bool:
        return True


def setup(
    names: list[str], *, concurrency: int = 4, integrity_interval: float = 3600.0
) -> tuple[Resync, Any, Kube, Reconciler, Store]:
    kube, rec, store = Kube(names), Reconciler(), Store()
    rt = SimpleNamespace(
        settings=SimpleNamespace(
            namespaces=[],
            resync_concurrency=concurrency,
            resync_interval=3600.0,
            integrity_interval=integrity_interval,
            resync_full_every=EVERY,
        ),
        membership=Members(),
        kube=kube,
        store=store,
        keep_usage=lambda uids: None,
        note_usage=lambda uid, sizes: None,
        recheck=set(),
        intact={},
    )
    return Resync(cast("Any", rt), cast("Any", rec)), rt, kube, rec, store


def not_due(count: int, round_: int) -> list[str]:
    """``count`` Config names whose full check is not due at ``round_``."""
    names = [n for n in (f"c{i}" for i in range(200)) if (round_ + _spread(f"uid-{n}")) % EVERY]
    return names[:count]


# --- defects (fixed) ---------------------------------------------------------------------


async def test_review_a_recheck_is_lost_when_the_workers_die_on_a_stray_cancellation() -> None:
    """The real loop under the real supervisor. Round 1 has three Configs to work on:
    ``a`` and ``b`` (changed since they settled) and ``wanted`` (settled, not due, but a
    failed rollout asked for it: ``rt.recheck``). resync_concurrency=2: both workers
    take ``a`` and ``b``, whose reconciles await one shared future (an etcd/HTTP call
    whose future is cancelled under them — the supervisor's "a CancelledError nobody
    asked for (a cancelled future awaited inside)"). Both workers die; ``once`` raises
    CancelledError; the supervisor restarts ``run``; the next round runs.

    Observed: ``wanted`` is reconciled neither in round 1 nor in the round after the
    restart — the pre-pass consumed its recheck, the worker that would have
    reconciled it is gone, and the next round finds it settled and skips it (until its
    full check is due, up to ``resync_full_every`` rounds). Expected (the parent
    commit): the Configs the dead workers never reached are still reconciled — there
    each Config had its task; ``wanted``'s consumed the recheck only as it reconciled.
    """
    a, b, wanted = not_due(3, 1)
    resync, rt, kube, rec, _ = setup([a, b, wanted], concurrency=2)
    sup = Supervisor(initial_backoff=0.01, max_backoff=0.01)
    task = sup.add("resync", resync.run)
    try:
        rt.membership.changed.set()
        await wait_until(lambda: resync.rounds == 1, 5, "round 0")
        assert len(resync._settled) == 3
        rec.calls.clear()

        kube.versions[a] = kube.versions[b] = "8"
        rt.recheck.add(f"uid-{wanted}")
        shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rec.hooks[a] = rec.hooks[b] = lambda: shared
        rt.membership.changed.set()
        await wait_until(lambda: rec.in_flight == {a, b}, 5, "a and b in flight")
        shared.cancel()  # the future both in-flight reconciles await is cancelled
        rec.hooks.clear()
        rt.membership.changed.set()  # a next round (after the supervisor's restart, here)
        await wait_until(lambda: resync.rounds >= 2, 5, "a round to end")
        assert task.restarts <= 1
        assert wanted in rec.calls, (
            f"recheck of {wanted} consumed by a round that never reached it and not "
            f"honoured by the next: calls {rec.calls}, recheck {rt.recheck}"
        )
    finally:
        await sup.stop()


async def test_review_a_round_cancelled_midway_drops_the_rechecks_it_never_reached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The supervisor's test-only fault hook crashes the running resync task: it
    cancels the loop — here in round 1, while its single worker reconciles ``a`` — and
    the supervisor starts it again. ``wanted``'s recheck was consumed by the pre-pass;
    its reconcile never started.

    Observed: the round after the restart skips ``wanted`` (settled, not due): the ask
    is gone until its full check is due. Expected (the parent commit, where a Config's
    task cancelled before its turn had not consumed anything): the ask survives a round
    that never reconciled the Config, and the next round honours it."""
    trigger = tmp_path / "crash-resync"
    monkeypatch.setenv(TEST_FAULT_ENV, f"resync={trigger}")
    a, wanted = not_due(2, 1)
    resync, rt, kube, rec, _ = setup([a, wanted], concurrency=1)
    sup = Supervisor(initial_backoff=0.2, max_backoff=0.2)
    task = sup.add("resync", resync.run)
    try:
        rt.membership.changed.set()
        await wait_until(lambda: resync.rounds == 1, 5, "round 0")
        rec.calls.clear()

        kube.versions[a] = "8"
        rt.recheck.add(f"uid-{wanted}")
        hold = asyncio.Event()
        rec.hooks[a] = hold.wait
        rt.membership.changed.set()
        await wait_until(lambda: a in rec.in_flight, 5, "a in flight")
        trigger.touch()  # the task crashes mid-round
        await wait_until(lambda: task.last_error == "InjectedFault", 5, "the crash")
        trigger.unlink()
        rec.hooks.clear()
        await wait_until(
            lambda: task.restarts >= 1 and task.state is TaskState.RUNNING, 5, "the restart"
        )

        rt.membership.changed.set()  # the next round
        await wait_until(lambda: resync.rounds >= 2, 5, "the next round")
        assert wanted in rec.calls, (
            f"recheck of {wanted} lost with the crashed round: calls {rec.calls}, "
            f"recheck {rt.recheck}"
        )
    finally:
        await sup.stop()


async def test_review_orphaned_workers_of_a_dead_round_overlap_the_next_round() -> None:
    """Pre-existing (the parent's orphaned per-Config tasks do the same), listed because
    the fix of the first defect fixes it too. One worker dies on a stray
    CancelledError: ``gather`` raises at once but does not cancel the other worker,
    which goes on reconciling ``y`` (a long reconcile) outside any round. The
    supervisor restarts the loop; its next round reconciles ``y`` again.

    Observed: ``y`` is reconciled twice at once (the per-Config lock serialises the
    store's writes, but two resync reconciles of one Config run concurrently and
    the round bookkeeping of two rounds interleaves). Expected: a round ends only
    when its workers have, so no Config is in two rounds' hands at once."""
    x, y = not_due(2, 1)
    resync, rt, kube, rec, _ = setup([x, y], concurrency=2)
    sup = Supervisor(initial_backoff=0.01, max_backoff=0.01)
    sup.add("resync", resync.run)
    hold = asyncio.Event()
    try:
        rt.membership.changed.set()
        await wait_until(lambda: resync.rounds == 1, 5, "round 0")
        rec.calls.clear()
        kube.versions[x] = kube.versions[y] = "8"
        shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rec.hooks[x] = lambda: shared
        rec.hooks[y] = hold.wait
        rt.membership.changed.set()
        await wait_until(lambda: rec.in_flight == {x, y}, 5, "x and y in flight")
        shared.cancel()
        del rec.hooks[x]
        rt.membership.changed.set()  # a next round is asked for (after the restart, here)
        # the next round's reconcile of y while the dead round's is still held; a loop
        # whose round waits for its workers never gets there: the deadline just passes
        await eventually(lambda: rec.calls.count(y) >= 2, 3)
        hold.set()
        await wait_until(lambda: resync.rounds >= 2, 5, "a round after the stray cancellation")
        assert rec.overlaps == [], f"reconciled while already in flight: {rec.overlaps}"
    finally:
        hold.set()
        await sup.stop()


# --- probes that held ---------------------------------------------------------------------------


async def test_review_a_recheck_asked_during_a_round_is_honoured_by_the_next() -> None:
    """The ask arrives after the pre-pass, while the round works on another Config that
    comes before the asked one: that round skips it, the next reconciles it (once).
    (The parent honoured it in the same round; the next one is the documented bound.)"""
    first, wanted = not_due(2, 1)
    assert (2 + _spread(f"uid-{wanted}")) % EVERY  # not due at round 2 either
    resync, rt, kube, rec, _ = setup([first, wanted], concurrency=1)
    await resync.once()
    rec.calls.clear()
    kube.versions[first] = "8"

    async def ask() -> None:
        rt.recheck.add(f"uid-{wanted}")

    rec.hooks[first] = ask
    await resync.once()
    assert rec.calls == [first] and rt.recheck == {f"uid-{wanted}"}
    rec.hooks.clear()
    rec.calls.clear()
    await resync.once()
    assert rec.calls == [wanted] and rt.recheck == set()
    rec.calls.clear()
    await resync.once()
    assert rec.calls == []


async def test_review_each_config_once_per_round_never_twice_at_once_within_the_bound() -> None:
    """Integrity due: every Config verified exactly once, the settled ones not
    reconciled, nothing in flight twice, never more than resync_concurrency at once."""
    names = [f"c{i}" for i in range(60)]
    resync, rt, kube, rec, store = setup(names, concurrency=3)
    await resync.once()
    assert sorted(rec.calls) == sorted(names) and rec.max_in_flight == 3
    rec.calls.clear()
    rt.settings.integrity_interval = 0  # the scan is due from now on
    kube.versions["c7"] = "8"
    before = skipped_total()
    await resync.once()
    due = {n for n in names if (1 + _spread(f"uid-{n}")) % EVERY == 0}
    assert sorted(rec.calls) == sorted(due | {"c7"})
    assert sorted(store.verified) == sorted(names)
    assert skipped_total() - before == len(names) - len(due | {"c7"})
    assert rec.overlaps == [] and rec.max_in_flight <= 3
    assert resync.rounds == 2


async def test_review_unobserved_configs_go_first_even_with_the_scan_due() -> None:
    names = [f"c{i}" for i in range(20)]
    resync, _, kube, rec, store = setup(names, concurrency=1, integrity_interval=0)
    await resync.once()
    rec.calls.clear()
    store.verified.clear()
    kube.observed["c15"] = kube.observed["c3"] = 1  # a missed event, a departed owner
    await resync.once()
    assert rec.calls[:2] == ["c3", "c15"]
    assert store.verified[:2] == ["c3", "c15"]


async def test_review_a_stuck_config_does_not_hold_up_the_rest_of_the_round() -> None:
    names = [f"c{i}" for i in range(12)]
    resync, _, _, rec, _ = setup(names, concurrency=2)
    hold = asyncio.Event()
    rec.hooks["c0"] = hold.wait
    round_ = asyncio.create_task(resync.once())
    try:
        await wait_until(lambda: len(rec.calls) == len(names), 5, "every other Config")
        assert not round_.done() and resync.rounds == 0  # the round waits for c0 only
        hold.set()
        await asyncio.wait_for(round_, 5)
        assert resync.rounds == 1 and rec.overlaps == []
    finally:
        hold.set()
        await asyncio.gather(round_, return_exceptions=True)


async def test_review_a_failed_listing_counts_no_round_and_no_skip() -> None:
    names = [f"c{i}" for i in range(10)]
    resync, _, kube, _, _ = setup(names)
    await resync.once()
    before = skipped_total()
    kube.list_failures = [RuntimeError("list failed")]
    with pytest.raises(RuntimeError):
        await resync.once()
    assert resync.rounds == 1 and skipped_total() == before


async def test_review_no_config_and_no_concurrency_still_end_the_round() -> None:
    """An empty round ends; resync_concurrency 0 (the parent's Semaphore(0) hung the
    round for ever) now gets one worker."""
    resync, _, _, _, _ = setup([])
    await asyncio.wait_for(resync.once(), 5)
    assert resync.rounds == 1
    resync, _, _, rec, _ = setup(["a", "b"], concurrency=0)
    await asyncio.wait_for(resync.once(), 5)
    assert sorted(rec.calls) == ["a", "b"] and resync.rounds == 1


async def test_review_a_hand_over_reconciles_every_config_the_next_round() -> None:
    names = [f"c{i}" for i in range(30)]
    resync, rt, _, rec, _ = setup(names)
    await resync.once()
    rec.calls.clear()
    rt.membership.members = ("r", "r2")
    rt.membership.generation += 1
    await resync.once()
    assert sorted(rec.calls) == sorted(names)


# --- each part of the fix on its own (M100, M101) ---------------------------------------------


async def test_a_stray_cancellation_in_one_step_fails_that_config_and_the_round_goes_on() -> None:
    """A cancelled future awaited inside one Config's reconcile (not a cancellation of the
    round) is that Config's failure: counted, and the worker goes on to the Configs behind
    it in the same round, which ends normally."""
    resync, _rt, _kube, rec, _store = setup(["a", "b", "c"], concurrency=1)

    async def stray() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    rec.hooks["a"] = stray
    errors = "etcdconfig_resync_errors_total{stage=reconcile,error=RuntimeError}"
    before = metrics.REGISTRY.get_sample_value(
        "etcdconfig_resync_errors_total", {"stage": "reconcile", "error": "RuntimeError"}
    )
    await asyncio.wait_for(resync.once(), 10)
    assert sorted(rec.calls) == ["a", "b", "c"]
    assert resync.rounds == 1
    after = metrics.REGISTRY.get_sample_value(
        "etcdconfig_resync_errors_total", {"stage": "reconcile", "error": "RuntimeError"}
    )
    assert (after or 0) - (before or 0) == 1, errors


class Escaped(BaseException):
    """Not an Exception: the per-Config guard lets it through."""


async def test_no_worker_outlives_a_round_that_ends_early() -> None:
    """A worker that dies of something the per-Config guard does not catch (a
    BaseException that is not an Exception) ends the round; the other workers are
    cancelled with it instead of reconciling on beside the next round."""
    resync, _rt, _kube, rec, _store = setup(["a", "b"], concurrency=2)
    b_started = asyncio.Event()
    b_cancelled = asyncio.Event()

    async def interrupt() -> None:
        await b_started.wait()
        raise Escaped

    async def slow() -> None:
        b_started.set()
        try:
            await asyncio.sleep(30)  # stands for a long reconcile; must be cancelled
        except asyncio.CancelledError:
            b_cancelled.set()
            raise

    rec.hooks["a"], rec.hooks["b"] = interrupt, slow
    with pytest.raises(Escaped):
        await asyncio.wait_for(resync.once(), 10)
    assert b_cancelled.is_set()
    assert rec.in_flight == set()
