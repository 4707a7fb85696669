"""The resync loop without I/O: one Config's failure of any kind never ends the
round for the others, and a failed round never ends the loop.

Against the loop before supervision (catching only ``EtcdConfigError``), the
first test fails: the hold timeout's ``TimeoutError`` escapes ``once()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

from etcdconfig import metrics
from etcdconfig.controller.loops import Resync, _spread
from etcdconfig.errors import LockTimeout
from etcdconfig.kube import KubeError
from etcdconfig.store.records import Sizes


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.005)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def errors(stage: str, error: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "etcdconfig_resync_errors_total", {"stage": stage, "error": error}
    )
    return 0.0 if value is None else value


def config(name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "generation": 2,
            "resourceVersion": "7",
            "finalizers": ["etcdconfig.io/finalizer"],  # the owner's kopf added it
        },
        "status": {"observedGeneration": 1},
    }


class FakeKube:
    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.list_failures: list[BaseException] = []
        self.patched: list[str] = []
        self.patch_fails_for: set[str] = set()
        self.list_calls = 0

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(namespace)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        self.list_calls += 1
        if self.list_failures:
            raise self.list_failures.pop(0)
        return [config(n) for n in self.names]

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], **_: Any
    ) -> bool:
        if name in self.patch_fails_for:
            raise KubeError(f"patch status of Config {namespace}/{name}: 409 Conflict")
        self.patched.append(name)
        return True

    async def get_config(self, namespace: str, name: str) -> dict[str, Any]:
        return config(name)


class FakeReconciler:
    """Fails per Config as told; returns a status that differs from the listed one."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        self.failures = failures
        self.calls: list[str] = []

    async def reconcile(self, body: dict[str, Any], *, trigger: str) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.calls.append(name)
        if name in self.failures:
            raise self.failures[name]
        return {"observedGeneration": 2}


class FakeStore:
    def __init__(self, fails_for: set[str]) -> None:
        self.fails_for = fails_for
        self.verified: list[str] = []

    async def verify(self, namespace: str, name: str) -> list[str]:
        self.verified.append(name)
        if name in self.fails_for:
            raise RuntimeError("a bug in verify")
        return []

    async def prune_rollouts(self, namespace: str, name: str) -> int:
        return 0

    async def usage(self, namespace: str, name: str) -> Sizes:
        return Sizes()


def runtime(kube: FakeKube, store: FakeStore, integrity_interval: float = 3600) -> Any:
    return SimpleNamespace(
        settings=SimpleNamespace(
            namespaces=[],
            resync_concurrency=2,
            resync_interval=3600.0,
            integrity_interval=integrity_interval,
        ),
        membership=SimpleNamespace(owns=lambda uid: True, changed=asyncio.Event(), members=("r",)),
        kube=kube,
        store=store,
        keep_usage=lambda uids: None,
        note_usage=lambda uid, sizes: None,
    )


async def test_one_configs_failure_of_any_kind_does_not_end_the_round() -> None:
    names = ["timeout", "lock", "bug", "ok-1", "patch-conflict", "ok-2"]
    kube = FakeKube(names)
    kube.patch_fails_for = {"patch-conflict"}
    reconciler = FakeReconciler(
        {
            "timeout": TimeoutError(),  # a hold timeout (asyncio.timeout around the yield)
            "lock": LockTimeout("could not acquire lock ns/lock within 30s"),
            "bug": KeyError("retries"),
        }
    )
    before = {
        k: errors("reconcile", k) for k in ("TimeoutError", "KeyError", "KubeError", "LockTimeout")
    }
    resync = Resync(cast("Any", runtime(kube, FakeStore(set()))), cast("Any", reconciler))

    await resync.once()

    assert sorted(reconciler.calls) == sorted(names)  # every Config was tried
    assert sorted(kube.patched) == ["ok-1", "ok-2"]  # and the good ones were finished
    assert resync.rounds == 1
    after = {k: errors("reconcile", k) - v for k, v in before.items()}
    # LockTimeout is an EtcdConfigError: reconcile_one handles it itself, as before
    assert after == {"TimeoutError": 1, "KeyError": 1, "KubeError": 1, "LockTimeout": 0}


async def test_a_failing_integrity_scan_of_one_config_does_not_stop_the_others() -> None:
    kube = FakeKube(["a", "b", "c"])
    store = FakeStore({"b"})
    resync = Resync(
        cast("Any", runtime(kube, store, integrity_interval=0)), cast("Any", FakeReconciler({}))
    )
    before = errors("integrity", "RuntimeError")
    await resync.once()
    assert sorted(store.verified) == ["a", "b", "c"]
    assert errors("integrity", "RuntimeError") - before == 1
    assert resync.rounds == 1


async def test_a_failed_round_is_followed_by_the_next_round() -> None:
    kube = FakeKube(["a"])
    kube.list_failures = [TimeoutError(), RuntimeError("bug listing")]
    rt = runtime(kube, FakeStore(set()))
    reconciler = FakeReconciler({})
    resync = Resync(cast("Any", rt), cast("Any", reconciler))
    before = errors("round", "TimeoutError"), errors("round", "RuntimeError")
    loop = asyncio.create_task(resync.run())
    try:
        for round_ in (1, 2, 3):
            rt.membership.changed.set()  # a membership change starts a round now
            await wait_until(lambda r=round_: kube.list_calls == r, 5, f"round {round_}")
        await wait_until(lambda: resync.rounds == 1, 5, "a completed round")
        assert not loop.done()
        assert reconciler.calls == ["a"]
        assert (errors("round", "TimeoutError"), errors("round", "RuntimeError")) == (
            before[0] + 1,
            before[1] + 1,
        )
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


class SettledKube(FakeKube):
    """Configs whose status already says what a reconcile returns; resourceVersions as set."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.versions = dict.fromkeys(names, "7")

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(namespace)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        out = []
        for n in self.names:
            obj = config(n)
            obj["metadata"]["resourceVersion"] = self.versions[n]
            obj["status"] = {"observedGeneration": 2}
            out.append(obj)
        return out


async def test_a_settled_config_is_skipped_until_it_changes_its_turn_comes_or_members_change() -> (
    None
):
    names = [f"c{i}" for i in range(30)]
    kube = SettledKube(names)
    reconciler = FakeReconciler({})
    rt = runtime(kube, FakeStore(set()))
    rt.settings.resync_full_every = 10
    resync = Resync(cast("Any", rt), cast("Any", reconciler))

    await resync.once()  # nothing settled yet: every Config, none patched (nothing differs)
    assert sorted(reconciler.calls) == sorted(names) and kube.patched == []

    def due(round_: int) -> set[str]:
        return {n for n in names if (round_ + _spread(f"uid-{n}")) % 10 == 0}

    reconciler.calls.clear()
    skipped = metrics.REGISTRY.get_sample_value("etcdconfig_resync_skipped_total") or 0
    kube.versions["c3"] = "8"  # c3 changed since
    await resync.once()  # round 1: the changed one and those whose full check is due
    assert set(reconciler.calls) == due(1) | {"c3"}
    assert 0 < len(due(1)) < 10  # a share of them, not all
    after = metrics.REGISTRY.get_sample_value("etcdconfig_resync_skipped_total") or 0
    assert after - skipped == len(names) - len(due(1) | {"c3"})

    # over every_ rounds each Config gets its full check once
    seen: set[str] = set()
    for round_ in range(2, 12):
        reconciler.calls.clear()
        await resync.once()
        assert set(reconciler.calls) == due(round_)
        seen |= set(reconciler.calls)
    assert seen == set(names)

    # a hand-over (the members changed): every Config once
    rt.membership.members = ("r", "r2")
    reconciler.calls.clear()
    await resync.once()
    assert sorted(reconciler.calls) == sorted(names)


async def test_a_config_not_settled_is_reconciled_every_round() -> None:
    """Status that differs (patched), a RetryLater, an unobserved generation: never settled."""
    kube = FakeKube(["a", "b"])  # listed status observedGeneration 1 < generation 2
    reconciler = FakeReconciler({})
    rt = runtime(kube, FakeStore(set()))
    rt.settings.resync_full_every = 10
    resync = Resync(cast("Any", rt), cast("Any", reconciler))
    for _ in range(3):
        reconciler.calls.clear()
        await resync.once()
        assert sorted(reconciler.calls) == ["a", "b"]


async def test_a_config_a_failed_rollout_asks_for_is_reconciled_though_settled() -> None:
    """``Runtime.recheck``: a rollout that failed on a transient error asks the next
    round for its Config, settled or not, once."""
    names = [f"c{i}" for i in range(10)]
    kube = SettledKube(names)
    reconciler = FakeReconciler({})
    rt = runtime(kube, FakeStore(set()))
    rt.settings.resync_full_every = 10
    rt.recheck = set()
    resync = Resync(cast("Any", rt), cast("Any", reconciler))
    await resync.once()  # every Config settles
    wanted = next(n for n in names if (1 + _spread(f"uid-{n}")) % 10 != 0)  # not due
    rt.recheck.add(f"uid-{wanted}")
    reconciler.calls.clear()
    await resync.once()
    assert wanted in reconciler.calls and rt.recheck == set()
    reconciler.calls.clear()
    await resync.once()
    assert wanted not in reconciler.calls or (2 + _spread(f"uid-{wanted}")) % 10 == 0


async def test_each_round_logs_its_duration_and_counts_and_observes_the_histogram(
    caplog: Any,
) -> None:
    """An operator's user sees what a round over N Configs costs: one line when it starts,
    one when it is done (seconds, owned, reconciled, skipped, handover, integrity), and
    ``etcdconfig_resync_round_duration_seconds``."""
    names = [f"c{i}" for i in range(20)]
    kube = SettledKube(names)
    rt = runtime(kube, FakeStore(set()))
    rt.settings.resync_full_every = 10
    resync = Resync(cast("Any", rt), cast("Any", FakeReconciler({})))
    count = "etcdconfig_resync_round_duration_seconds_count"
    before = metrics.REGISTRY.get_sample_value(count) or 0
    with caplog.at_level("INFO", logger="etcdconfig.controller.loops"):
        await resync.once()  # the first round: a hand-over, everything reconciled
        await resync.once()  # then only the changed and the due
    done = [r for r in caplog.records if r.getMessage() == "resync round done"]
    started = [r for r in caplog.records if r.getMessage() == "resync round started"]
    assert [r.__dict__["round"] for r in started] == [1, 2]
    assert [r.__dict__["round"] for r in done] == [1, 2]
    first, second = (r.__dict__ for r in done)
    assert (first["owned"], first["reconciled"], first["skipped"], first["handover"]) == (
        20,
        20,
        0,
        True,
    )
    due = {n for n in names if (1 + _spread(f"uid-{n}")) % 10 == 0}
    assert (second["owned"], second["reconciled"], second["skipped"], second["handover"]) == (
        20,
        len(due),
        20 - len(due),
        False,
    )
    assert all(d["seconds"] >= 0 and d["integrity"] is False for d in (first, second))
    assert (metrics.REGISTRY.get_sample_value(count) or 0) - before == 2
