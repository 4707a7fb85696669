"""Per-Config locks: an in-process lock first, then the etcd ``Mutex``.

A lock key is per lease and one process has one lease, so two tasks of the same
process locking the same Config would both "hold" the etcd lock. The in-process
``asyncio.Lock`` makes them take turns before either touches etcd. Every locked
operation runs under a hold timeout: a stuck holder is cancelled and releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from etcdconfig.concurrency.mutex import Mutex
from etcdconfig.errors import HoldTimeout, LockTimeout
from etcdconfig.etcd import Compare, DeleteRange, prefix_end

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from etcdconfig.concurrency.session import Session


log = logging.getLogger(__name__)

_clock = time.monotonic  # one name, so that a test can move this module's clock alone


def lock_prefix(prefix: str, namespace: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/locks/configs/{namespace}/{name}"


class Suspects(set[bytes]):
    """Lock keys whose delete failed or may still land: ``reported`` is set on each
    :meth:`add`, so a sweeper can wake at once instead of at its next round."""

    def __init__(self) -> None:
        super().__init__()
        self.reported = asyncio.Event()

    def add(self, key: bytes) -> None:
        super().add(key)
        self.reported.set()

    def clear(self) -> None:
        super().clear()
        self.reported.clear()

    def forget(self, keys: set[bytes]) -> None:
        """Drop ``keys`` (those a sweep has dealt with); keys reported meanwhile stay."""
        self.difference_update(keys)
        if not self:
            self.reported.clear()


@dataclass
class _Local:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ConfigLocks:
    """Hand out per-Config mutexes for one session.

    ``acquire_timeout`` bounds the wait (in-process and etcd together);
    ``hold_timeout`` bounds the work done while holding (default 30 s): past it the
    work is cancelled, the lock released and :class:`HoldTimeout` raised.

    A lock key that could not be deleted (every release attempt failed, or an
    acquire was abandoned while its transaction was in flight) would live as long
    as the session's lease, i.e. as long as this healthy process: :meth:`sweep`
    deletes this session's keys of locks nobody in the process holds or waits for.
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
        self.suspects = Suspects()  # keys whose delete failed or may land late: sweep soon
        self.swept = 0  # keys removed by sweep(), for tests and metrics

    @contextlib.asynccontextmanager
    async def hold(
        self, namespace: str, name: str, *, prefetch: tuple[bytes, ...] = ()
    ) -> AsyncIterator[Mutex]:
        key = (namespace, name)
        local = self._local.setdefault(key, _Local())
        local.users += 1
        started = _clock()
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
                remaining = self.acquire_timeout - (_clock() - started)
                if remaining <= 0:
                    # no budget left for etcd: do not send a transaction we would abandon
                    # while it is in flight
                    raise LockTimeout(
                        f"could not acquire lock {namespace}/{name} within "
                        f"{self.acquire_timeout}s (waited for another task of this process)"
                    )
                mutex = Mutex(
                    self.session, lock_prefix(self.prefix, namespace, name), identity=self.identity
                )
                mutex.on_orphan = self.suspects.add
                await mutex.acquire(remaining, prefetch=prefetch)
                waited = _clock() - started
                for cb in self.on_acquired:
                    cb(namespace, name, waited)
                try:
                    async with asyncio.timeout(self.hold_timeout) as deadline:
                        yield mutex
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    raise HoldTimeout(
                        f"work under lock {namespace}/{name} exceeded the hold timeout of "
                        f"{self.hold_timeout}s; cancelled and released"
                    ) from None
                finally:
                    await mutex.release()
            finally:
                local.lock.release()
        finally:
            local.users -= 1
            if local.users == 0:
                self._local.pop(key, None)

    async def sweep(self) -> int:
        """Delete this session's lock keys that no task of this process holds or waits
        for (orphans of failed releases or abandoned acquires). Returns how many."""
        if not self.session.alive:
            return 0
        # the keys reported before this sweep reads the locks: only those are settled by
        # it; one reported while it runs may have landed after the read
        settled = set(self.suspects)
        base = f"{self.prefix.rstrip('/')}/locks/configs/".encode()
        suffix = f"/{self.session.lease_id:x}".encode()
        res = await self.session.client.range(base, prefix_end(base), keys_only=True)
        removed = 0
        for kv in res.kvs:
            if not kv.key.endswith(suffix):
                continue
            parts = kv.key[len(base) : -len(suffix)].decode(errors="replace").split("/")
            if len(parts) != 2:
                continue
            ns, name = parts
            if (ns, name) in self._local:
                continue  # in use: its own release path deletes it
            # take the in-process lock so that no acquire of this Config starts meanwhile
            local = self._local.setdefault((ns, name), _Local())
            local.users += 1
            try:
                async with local.lock:
                    res_del = await self.session.client.txn(
                        [Compare.create_revision(kv.key, "=", kv.create_revision)],
                        [DeleteRange(kv.key)],
                    )
                    if res_del.succeeded:
                        removed += 1
                        log.info("removed an orphaned lock key", extra={"config": f"{ns}/{name}"})
            finally:
                local.users -= 1
                if local.users == 0:
                    self._local.pop((ns, name), None)
        self.suspects.forget(settled)
        self.swept += removed
        return removed
