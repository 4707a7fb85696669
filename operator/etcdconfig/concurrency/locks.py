"""Per-Config locks: an in-process lock first, then the etcd ``Mutex``.

A lock key is per lease and one process has one lease, so two tasks of the same
process locking the same Config would both "hold" the etcd lock. The in-process
``asyncio.Lock`` makes them take turns before either touches etcd. Every locked
operation runs under a hold timeout: a stuck holder is cancelled and releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from etcdconfig.concurrency.mutex import Mutex
from etcdconfig.errors import LockTimeout

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from etcdconfig.concurrency.session import Session


def lock_prefix(prefix: str, namespace: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/locks/configs/{namespace}/{name}"


@dataclass
class _Local:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ConfigLocks:
    """Hand out per-Config mutexes for one session.

    ``acquire_timeout`` bounds the wait (in-process and etcd together);
    ``hold_timeout`` bounds the work done while holding (default 30 s).
    """

    def __init__(
        self,
        session: Session,
        *,
        prefix: str = "/etcdconfig",
        identity: str = "",
        acquire_timeout: float = 30.0,
        hold_timeout: float = 30.0,
    ) -> None:
        self.session = session
        self.prefix = prefix
        self.identity = identity
        self.acquire_timeout = acquire_timeout
        self.hold_timeout = hold_timeout
        self._local: dict[tuple[str, str], _Local] = {}
        self.on_acquired: list[Callable[[str, str, float], None]] = []

    @contextlib.asynccontextmanager
    async def hold(
        self, namespace: str, name: str, *, prefetch: tuple[bytes, ...] = ()
    ) -> AsyncIterator[Mutex]:
        key = (namespace, name)
        local = self._local.setdefault(key, _Local())
        local.users += 1
        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self.acquire_timeout):
                    await local.lock.acquire()
            except TimeoutError:
                raise LockTimeout(
                    f"could not acquire lock {namespace}/{name} within {self.acquire_timeout}s "
                    "(another task of this process holds it)"
                ) from None
            try:
                mutex = Mutex(
                    self.session, lock_prefix(self.prefix, namespace, name), identity=self.identity
                )
                remaining = max(0.0, self.acquire_timeout - (time.monotonic() - started))
                await mutex.acquire(remaining, prefetch=prefetch)
                waited = time.monotonic() - started
                for cb in self.on_acquired:
                    cb(namespace, name, waited)
                try:
                    async with asyncio.timeout(self.hold_timeout):
                        yield mutex
                finally:
                    await mutex.release()
            finally:
                local.lock.release()
        finally:
            local.users -= 1
            if local.users == 0:
                self._local.pop(key, None)
