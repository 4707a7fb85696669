"""The background-task supervisor without I/O: restart after any failure, with
capped backoff; states, counters and metrics; readiness names the task; stop and
outside cancellation are never "restarted"; logs carry no error messages that
could quote configuration data."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from etcdconfig import metrics
from etcdconfig.controller.http import readiness_problems
from etcdconfig.controller.supervisor import SupervisedTask, Supervisor, TaskState
from etcdconfig.errors import LockTimeout
from etcdconfig.logs import JsonFormatter


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.005)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sample(name: str, labels: dict[str, str]) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Recorder:
    """Every state change of every task, with the supervisor's readiness at that moment."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.seen: list[tuple[str, str, bool, list[str]]] = []
        sup.on_change.append(self)

    def __call__(self, task: SupervisedTask) -> None:
        self.seen.append((task.name, task.state.value, self.sup.ready, self.sup.problems()))

    def states(self, name: str) -> list[str]:
        return [s for n, s, _, _ in self.seen if n == name]


async def test_a_crash_of_any_type_is_restarted_and_readiness_names_the_task_meanwhile() -> None:
    sup = Supervisor(initial_backoff=0.05, max_backoff=0.05)
    rec = Recorder(sup)
    runs = 0
    release = asyncio.Event()
    restarts_before = sample("etcdconfig_background_task_restarts_total", {"task": "u-crash"})

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise TimeoutError  # what a hold timeout raises out of the resync loop
        if runs == 2:
            raise LockTimeout("could not acquire lock ns/a within 30s")
        if runs == 3:
            raise KeyError("a bug")
        await release.wait()  # the fourth run keeps running

    task = sup.add("u-crash", loop)
    try:
        await wait_until(lambda: runs == 4, 5, "the fourth run")
        assert task.state is TaskState.RUNNING
        assert task.restarts == 3
        assert task.last_error == "KeyError"
        assert sup.ready and sup.problems() == []
        assert rec.states("u-crash") == ["running"] + ["restarting", "running"] * 3
        # while restarting, readiness failed and named the task and the error type
        restarting = [(r, p) for n, s, r, p in rec.seen if s == "restarting"]
        assert [r for r, _ in restarting] == [False, False, False]
        assert [p[0].split(" and restarts")[0] for _, p in restarting] == [
            "background task u-crash crashed (TimeoutError)",
            "background task u-crash crashed (LockTimeout)",
            "background task u-crash crashed (KeyError)",
        ]
        assert (
            sample("etcdconfig_background_task_restarts_total", {"task": "u-crash"})
            - restarts_before
            == 3
        )
        assert sample("etcdconfig_background_task_up", {"task": "u-crash"}) == 1
    finally:
        await sup.stop()
    assert task.state is TaskState.STOPPED
    assert sample("etcdconfig_background_task_up", {"task": "u-crash"}) == 0


async def test_backoff_doubles_up_to_the_cap() -> None:
    sup = Supervisor(initial_backoff=0.01, max_backoff=0.04, reset_after=60)
    delays: list[float] = []
    loop = asyncio.get_running_loop()
    sup.on_change.append(
        lambda t: (
            delays.append(round((t.retry_at or 0) - loop.time(), 3))
            if t.state is TaskState.RESTARTING
            else None
        )
    )

    async def always_fails() -> None:
        raise RuntimeError("bug")

    task = sup.add("u-backoff", always_fails)
    try:
        await wait_until(lambda: len(delays) >= 5, 5, "five crashes")
    finally:
        await sup.stop()
    assert [round(d, 2) for d in delays[:5]] == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert task.state is TaskState.STOPPED


async def test_a_task_that_returns_is_restarted_too() -> None:
    sup = Supervisor(initial_backoff=0.01)
    runs = 0
    forever = asyncio.Event()

    async def returns_once() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await forever.wait()

    task = sup.add("u-returns", returns_once)
    try:
        await wait_until(lambda: runs == 2, 5, "the second run")
        assert (task.restarts, task.last_error, task.state) == (1, "returned", TaskState.RUNNING)
    finally:
        await sup.stop()


async def test_a_cancelled_error_nobody_asked_for_is_restarted() -> None:
    """A coroutine that awaits a future someone else cancelled gets CancelledError
    without being asked to stop: the work stopped all the same, so restart it."""
    sup = Supervisor(initial_backoff=0.01)
    runs = 0
    forever = asyncio.Event()

    async def stray_cancel() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.cancel()
            await fut
        await forever.wait()

    task = sup.add("u-stray", stray_cancel)
    try:
        await wait_until(lambda: runs == 2, 5, "the second run")
        assert (task.restarts, task.last_error, task.state) == (
            1,
            "CancelledError",
            TaskState.RUNNING,
        )
    finally:
        await sup.stop()
    assert task.state is TaskState.STOPPED


async def test_cancelling_the_task_from_outside_leaves_it_dead_and_not_ready() -> None:
    sup = Supervisor(initial_backoff=0.01)
    forever = asyncio.Event()

    started = 0

    async def waits() -> None:
        nonlocal started
        started += 1
        await forever.wait()

    task = sup.add("u-dead", waits)
    other = sup.add("u-fine", waits)
    await wait_until(lambda: started == 2, 5, "both tasks started")
    assert task.runner is not None
    task.runner.cancel()
    await wait_until(lambda: task.state is TaskState.DEAD, 5, "the task dead")
    try:
        assert task.restarts == 0
        assert not sup.ready
        assert sup.problems() == ["background task u-dead is dead"]
        assert other.state is TaskState.RUNNING
        assert sample("etcdconfig_background_task_up", {"task": "u-dead"}) == 0
    finally:
        await sup.stop()


async def test_stop_is_not_undone_by_a_cleanup_that_raises() -> None:
    """A task whose cleanup raises while it is being cancelled must not be restarted:
    the supervisor would otherwise never stop (and shutdown would hang)."""
    sup = Supervisor(initial_backoff=0.01)
    runs = 0
    forever = asyncio.Event()

    async def bad_cleanup() -> None:
        nonlocal runs
        runs += 1
        try:
            await forever.wait()
        finally:
            raise RuntimeError("release failed")

    task = sup.add("u-cleanup", bad_cleanup)
    await wait_until(lambda: runs == 1, 5, "the task started")
    await asyncio.wait_for(sup.stop(), 5)
    assert (runs, task.restarts, task.state) == (1, 0, TaskState.STOPPED)


async def test_names_are_unique_and_a_stopped_supervisor_takes_no_new_task() -> None:
    sup = Supervisor()
    forever = asyncio.Event()

    async def waits() -> None:
        await forever.wait()

    sup.add("u-once", waits)
    with pytest.raises(ValueError, match="already supervised"):
        sup.add("u-once", waits)
    await sup.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        sup.add("u-later", waits)


async def test_readyz_lists_a_restarting_task_next_to_the_other_checks() -> None:
    sup = Supervisor(initial_backoff=30)

    async def crashes() -> None:
        raise RuntimeError("bug")

    task = sup.add("resync", crashes)
    runtime = cast("Any", SimpleNamespace(healthy=True, supervisor=sup))
    kopf_ready = asyncio.Event()
    kopf_ready.set()
    try:
        await wait_until(lambda: task.state is TaskState.RESTARTING, 5, "the crash")
        problems = readiness_problems(runtime, kopf_ready)
        assert problems == [
            "background task resync crashed (RuntimeError) and restarts in 30.0s (restart 1)"
        ]
    finally:
        await sup.stop()
    assert readiness_problems(runtime, kopf_ready) == ["background task resync is stopped"]


async def test_the_crash_log_has_the_task_and_error_type_but_no_foreign_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error that is not ours may quote configuration data (a KeyError of a data
    key, a library's message with the value): only its type and location are logged."""
    sup = Supervisor(initial_backoff=30)
    crashed = asyncio.Event()

    async def leaks() -> None:
        crashed.set()
        value = "".join(["hun", "ter2"])  # data at run time, not in the source line
        raise ValueError(f"password={value}")

    caplog.set_level(logging.ERROR, logger="etcdconfig.controller.supervisor")
    sup.add("u-log", leaks)
    try:
        await asyncio.wait_for(crashed.wait(), 5)
        await wait_until(lambda: sup.tasks["u-log"].state is TaskState.RESTARTING, 5, "crash")
    finally:
        await sup.stop()
    lines = [JsonFormatter().format(r) for r in caplog.records]
    crash = [json.loads(line) for line in lines if "restarting it after a backoff" in line]
    assert len(crash) == 1
    assert crash[0]["task"] == "u-log"
    assert crash[0]["error"] == "ValueError"
    assert crash[0]["where"].startswith("test_task_supervisor.py:")
    assert "detail" not in crash[0]
    assert not any("hunter2" in line for line in lines)


async def test_our_own_errors_keep_their_message() -> None:
    from etcdconfig.controller.supervisor import describe_error

    try:
        raise LockTimeout("could not acquire lock ns/a within 30s (held by r2)")
    except LockTimeout as exc:
        fields = describe_error(exc)
    assert fields["error"] == "LockTimeout"
    assert fields["detail"] == "could not acquire lock ns/a within 30s (held by r2)"
