"""Supervised background tasks: the resync loop, the membership watch, the
session keeper — anything that must run for the life of the process.

A task is named and started from a coroutine *factory* (called again for each
restart). The coroutine must run until cancelled. When it raises anything but a
requested cancellation — ``TimeoutError`` from a hold timeout, a ``KubeError``,
a bug — or returns, the supervisor logs it (the task's name and the error's
type; never the message of an error that is not ours, since it could quote
configuration data) and starts it again after a capped exponential backoff.
While a task is in that backoff, or dead, ``/readyz`` fails and names it.

Adding a task is one line: ``runtime.supervisor.add("lock-sweeper", factory)``.

States: ``running``; ``restarting`` (it crashed and waits out its backoff);
``dead`` (cancelled by someone other than :meth:`Supervisor.stop`: it is not
restarted); ``stopped`` (the supervisor stopped it at shutdown).

Test-only fault injection: ``ETCDCONFIG_TEST_TASK_FAULT=<task>=<path>`` makes the
named task raise :class:`InjectedFault` whenever the file at ``<path>`` exists
(checked on every start and every 0.1 s while it runs). It exists so end-to-end
tests can crash a task of a real operator process; never set it in production.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcdconfig import metrics
from etcdconfig.errors import EtcdConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

log = logging.getLogger(__name__)

TEST_FAULT_ENV = "ETCDCONFIG_TEST_TASK_FAULT"


class TaskState(enum.StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"
    DEAD = "dead"
    STOPPED = "stopped"


class InjectedFault(RuntimeError):
    """Raised by the test-only fault hook (see the module docstring)."""


def describe_error(exc: BaseException) -> dict[str, str]:
    """Log fields for an error: its type, where it was raised, and its message only
    if it is one of ours (those never quote configuration values; a ``KeyError`` or
    a library's error might) or a network/OS error (host, port, errno)."""
    tb = traceback.extract_tb(exc.__traceback__)
    fields = {"error": type(exc).__name__}
    if tb:
        last = tb[-1]
        fields["where"] = f"{Path(last.filename).name}:{last.lineno} in {last.name}"
        # frames only (file, line, function, source line): no exception message, no locals
        fields["stack"] = "".join(tb.format())
    if isinstance(exc, EtcdConfigError | OSError) and str(exc):
        fields["detail"] = str(exc)
    return fields


@dataclass
class SupervisedTask:
    name: str
    factory: Callable[[], Coroutine[Any, Any, None]]
    state: TaskState = TaskState.RUNNING
    restarts: int = 0  # times the factory was called again after a crash
    last_error: str | None = None  # type of the last crash
    retry_at: float | None = None  # loop time of the next start while restarting
    runner: asyncio.Task[None] | None = field(default=None, repr=False)

    def problem(self, now: float) -> str | None:
        """Why this task makes the replica not ready (None: it is running)."""
        if self.state is TaskState.RUNNING:
            return None
        if self.state is TaskState.RESTARTING:
            wait = max(0.0, (self.retry_at or now) - now)
            return (
                f"background task {self.name} crashed ({self.last_error}) and restarts "
                f"in {wait:.1f}s (restart {self.restarts + 1})"
            )
        return f"background task {self.name} is {self.state.value}"


class Supervisor:
    """Run named background tasks and restart them when they fail.

    ``initial_backoff`` doubles after each crash up to ``max_backoff``; a task that
    ran for ``reset_after`` seconds before crashing starts again from
    ``initial_backoff``. ``on_change`` callbacks see every state change.
    """

    def __init__(
        self,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        reset_after: float = 60.0,
    ) -> None:
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.reset_after = reset_after
        self.tasks: dict[str, SupervisedTask] = {}
        self.on_change: list[Callable[[SupervisedTask], None]] = []
        self._stopping = False

    def add(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> SupervisedTask:
        """Start ``factory()`` now as the supervised task ``name`` (call it from the
        event loop)."""
        if name in self.tasks:
            raise ValueError(f"a background task named {name!r} is already supervised")
        if self._stopping:
            raise RuntimeError("the supervisor is stopped")
        task = SupervisedTask(name, _with_test_fault(name, factory))
        self.tasks[name] = task
        metrics.BACKGROUND_TASK_RESTARTS.labels(name).inc(0)  # the series exists from the start
        self._set(task, TaskState.RUNNING)
        task.runner = asyncio.create_task(self._supervise(task), name=f"supervised:{name}")
        return task

    def problems(self) -> list[str]:
        """One line per task that is not running; empty when all are."""
        now = asyncio.get_running_loop().time()
        return [p for t in self.tasks.values() if (p := t.problem(now)) is not None]

    @property
    def ready(self) -> bool:
        return all(t.state is TaskState.RUNNING for t in self.tasks.values())

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel every task and wait (at most ``timeout`` seconds) for them to end."""
        self._stopping = True
        runners = {t.runner for t in self.tasks.values() if t.runner is not None}
        for r in runners:
            r.cancel()
        if not runners:
            return
        _, pending = await asyncio.wait(runners, timeout=timeout)
        for r in pending:
            log.error("background task did not stop when cancelled", extra={"task": r.get_name()})

    def _set(self, task: SupervisedTask, state: TaskState) -> None:
        task.state = state
        if state is not TaskState.RESTARTING:
            task.retry_at = None
        metrics.BACKGROUND_TASK_UP.labels(task.name).set(1 if state is TaskState.RUNNING else 0)
        for cb in self.on_change:
            try:
                cb(task)
            except Exception:  # an observer must not stop supervision
                log.exception("background task observer failed", extra={"task": task.name})

    async def _supervise(self, task: SupervisedTask) -> None:
        try:
            await self._run(task)
        except asyncio.CancelledError:
            if self._stopping:
                self._set(task, TaskState.STOPPED)
            else:
                log.error(
                    "background task was cancelled; it will not be restarted",
                    extra={"task": task.name},
                )
                self._set(task, TaskState.DEAD)
            raise
        except BaseException as exc:  # the supervisor's own failure, or SystemExit & co.
            log.critical(
                "background task supervision failed",
                extra={"task": task.name, **describe_error(exc)},
            )
            self._set(task, TaskState.DEAD)
            raise

    async def _run(self, task: SupervisedTask) -> None:
        loop = asyncio.get_running_loop()
        delay = self.initial_backoff
        me = asyncio.current_task()
        assert me is not None
        while True:
            started = loop.time()
            try:
                await task.factory()
            except asyncio.CancelledError as exc:
                if me.cancelling():
                    raise  # requested (stop, or someone cancelled the task): do not restart
                # a CancelledError nobody asked for (a cancelled future awaited inside):
                # the task stopped working all the same
                outcome: dict[str, str] = describe_error(exc)
            except Exception as exc:
                outcome = describe_error(exc)
            else:
                outcome = {"error": "returned"}
            if me.cancelling():
                # stop was requested while the task was failing (a cleanup that raised
                # instead of letting the cancellation through): never restart then
                raise asyncio.CancelledError
            if loop.time() - started >= self.reset_after:
                delay = self.initial_backoff
            task.last_error = outcome["error"]
            log.error(
                "background task failed; restarting it after a backoff",
                extra={
                    "task": task.name,
                    "restarts": task.restarts,
                    "backoff": delay,
                    **outcome,
                },
            )
            task.retry_at = loop.time() + delay
            self._set(task, TaskState.RESTARTING)
            await asyncio.sleep(delay)  # the backoff, not synchronisation
            delay = min(delay * 2, self.max_backoff)
            task.restarts += 1
            metrics.BACKGROUND_TASK_RESTARTS.labels(task.name).inc()
            log.info(
                "background task restarted", extra={"task": task.name, "restarts": task.restarts}
            )
            self._set(task, TaskState.RUNNING)


def _with_test_fault(
    name: str, factory: Callable[[], Coroutine[Any, Any, None]]
) -> Callable[[], Coroutine[Any, Any, None]]:
    """The test-only fault hook (see the module docstring); the factory itself otherwise."""
    spec = os.environ.get(TEST_FAULT_ENV, "")
    task_name, _, path = spec.partition("=")
    if not spec or task_name != name or not path:
        return factory
    log.warning("test-only fault injection is on", extra={"task": name, "trigger": path})

    async def faulty() -> None:
        if os.path.exists(path):  # noqa: ASYNC240 - test-only
            # before any await: a task that crashes on start is never seen running
            raise InjectedFault(f"test-only fault injected into {name}")
        inner = asyncio.ensure_future(factory())
        try:
            while not os.path.exists(path):  # noqa: ASYNC240 - test-only; one stat per 0.1 s
                done, _ = await asyncio.wait({inner}, timeout=0.1)
                if done:
                    inner.result()  # re-raises what the real task raised
                    return
            raise InjectedFault(f"test-only fault injected into {name}")
        finally:
            if not inner.done():
                inner.cancel()
                await asyncio.wait({inner})

    return faulty
