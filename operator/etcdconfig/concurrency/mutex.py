"""A fenced, FIFO lock on etcd keys: the semantics of etcd's ``concurrency.Mutex``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from etcdconfig.errors import Compacted, EtcdError, EtcdUnavailable, LockLost, LockTimeout
from etcdconfig.etcd import Compare, DeleteRange, KeyValue, Put, Range, prefix_end

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from etcdconfig.concurrency.session import Session

log = logging.getLogger(__name__)


class Mutex:
    """Waiters are keys ``{prefix}{leaseID:x}`` on the session's lease, ordered by
    create revision. A waiter watches only its immediate predecessor's key for
    deletion (no polling, no thundering herd). The holder's ownership is
    :meth:`is_owner`, a compare to put into every write made under the lock.
    """

    def __init__(self, session: Session, prefix: str, *, identity: str = "") -> None:
        self.session = session
        self.prefix = prefix.rstrip("/") + "/"
        self.identity = identity
        self.key = f"{self.prefix}{session.lease_id:x}".encode()
        self.revision = 0  # create revision of our key once acquired: the fencing token
        self.held = False
        self.contended = False  # had to wait behind another holder
        # keys read in the acquiring transaction (uncontended path only): a caller
        # saves a round trip by reading e.g. the head together with the lock
        self.prefetched: dict[bytes, KeyValue | None] = {}

    def is_owner(self) -> Compare:
        """Compare that holds only while this mutex still owns the lock."""
        if not self.revision:
            raise LockLost(f"lock {self.prefix} is not held")
        return Compare.create_revision(self.key, "=", self.revision)

    def take_prefetched(self, key: bytes) -> tuple[bool, KeyValue | None]:
        """``(True, kv-or-None)`` if ``key`` was read when the lock was taken (once)."""
        if key in self.prefetched:
            return True, self.prefetched.pop(key)
        return False, None

    async def acquire(
        self, timeout: float | None = None, *, prefetch: tuple[bytes, ...] = ()
    ) -> None:
        """Wait until this holder is first in line. On timeout (or cancellation)
        remove our waiter key and raise; never return without the lock."""
        self.session.check()
        try:
            async with asyncio.timeout(timeout):
                await self._acquire(prefetch)
        except TimeoutError:
            holder = await self._holder_name()
            await self._abandon()
            raise LockTimeout(
                f"could not acquire lock {self.prefix} within {timeout}s"
                + (f" (held by {holder})" if holder else "")
            ) from None
        except BaseException:
            await self._abandon()
            raise

    async def _acquire(self, prefetch: tuple[bytes, ...]) -> None:
        prefix = self.prefix.encode()
        end = prefix_end(prefix)
        # one round trip when uncontended: create our key (or find it) and read the
        # current owner (the oldest key) in the same transaction, as etcd's Mutex does
        owner = Range(prefix, end, limit=1, sort_by_create=True)
        reads = [Range(k) for k in prefetch]
        res = await self.session.client.txn(
            [Compare.create_revision(self.key, "=", 0)],
            [Put(self.key, self.identity.encode(), lease=self.session.lease_id), owner, *reads],
            [Range(self.key), owner, *reads],
        )
        if res.succeeded:
            self.revision = res.revision
        else:
            first = res.responses[0]
            assert first is not None
            assert first.kvs
            self.revision = first.kvs[0].create_revision
        owner_res = res.responses[1]
        if owner_res is not None and owner_res.kvs and owner_res.kvs[0].key == self.key:
            for key, r in zip(prefetch, res.responses[2:], strict=True):
                self.prefetched[key] = r.kvs[0] if r is not None and r.kvs else None
            self.held = True
            return
        # wait for every key created before ours to go away
        while True:
            self.session.check()
            pred = await self.session.client.range(
                prefix,
                end,
                max_create_revision=self.revision - 1,
                sort_by_create=True,
                descending=True,
                limit=1,
            )
            if not pred.kvs:
                break
            self.contended = True
            await self._wait_delete(pred.kvs[0].key, pred.revision)
        # our own key may have gone with an expired lease while we waited
        mine, _ = await self.session.client.get(self.key)
        if mine is None or mine.create_revision != self.revision:
            raise LockLost(f"lock {self.prefix}: our waiter key vanished (session lease expired?)")
        self.held = True

    async def _wait_delete(self, key: bytes, revision: int) -> None:
        start = revision + 1
        while True:
            try:
                async for _rev, events in self.session.client.watch(
                    key, start_revision=start, no_put=True
                ):
                    if any(e.type == "DELETE" for e in events):
                        return
            except Compacted:
                pass  # re-check existence below
            except EtcdUnavailable:
                self.session.check()
            kv, rev = await self.session.client.get(key)
            if kv is None:
                return
            start = rev + 1

    async def _holder_name(self) -> str:
        with contextlib.suppress(EtcdError):
            res = await self.session.client.range(
                self.prefix.encode(), prefix_end(self.prefix.encode()), sort_by_create=True, limit=1
            )
            if res.kvs:
                return res.kvs[0].value.decode(errors="replace")
        return ""

    async def _abandon(self) -> None:
        """Delete our waiter key (only ours: compare its create revision)."""
        rev, self.revision, self.held = self.revision, 0, False
        self.prefetched.clear()
        if rev:
            with contextlib.suppress(EtcdError):
                await asyncio.shield(
                    self.session.client.txn(
                        [Compare.create_revision(self.key, "=", rev)], [DeleteRange(self.key)]
                    )
                )

    async def release(self) -> None:
        await self._abandon()

    def released_by_commit(self) -> None:
        """The commit transaction deleted our key itself (release in the same txn)."""
        self.revision, self.held = 0, False
        self.prefetched.clear()

    @contextlib.asynccontextmanager
    async def hold(self, timeout: float | None = None) -> AsyncIterator[Mutex]:
        await self.acquire(timeout)
        try:
            yield self
        finally:
            await self.release()
