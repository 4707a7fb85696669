"""A fenced, FIFO lock on etcd keys: the semantics of etcd's ``concurrency.Mutex``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from etcdconfig.errors import (
    Compacted,
    EtcdError,
    EtcdUnavailable,
    LeaseNotFound,
    LockLost,
    LockTimeout,
)
from etcdconfig.etcd import Compare, DeleteRange, KeyValue, Put, Range, prefix_end

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from etcdconfig.concurrency.session import Session

log = logging.getLogger(__name__)

RELEASE_ATTEMPTS = 4  # deletes of our own key before leaving it to the sweep


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
        self.orphaned = False  # our key may still exist: every delete of it failed
        # our key may exist in etcd: from the moment the acquiring transaction is sent
        # until a transaction that deletes it succeeds (a release, or the commit)
        self.key_may_exist = False
        self.on_orphan: Callable[[bytes], None] | None = None

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
        """Wait until this holder is first in line. On timeout, cancellation or any
        error, remove our waiter key and raise; never return without the lock.

        The acquiring transaction may have created our key even when we never heard
        back (a reply lost, a deadline hit while it was in flight): so every failure
        path deletes the key by its name, not only when its revision is known.
        """
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
        self.key_may_exist = True
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
            await self._wait_delete(pred.kvs[0].key, pred.kvs[0].create_revision, pred.revision)
        # our own key may have gone with an expired lease while we waited
        mine, _ = await self.session.client.get(self.key)
        if mine is None or mine.create_revision != self.revision:
            raise LockLost(f"lock {self.prefix}: our waiter key vanished (session lease expired?)")
        self.held = True

    async def _wait_delete(self, key: bytes, create_revision: int, revision: int) -> None:
        """Wait until the predecessor's key is gone, or give up as soon as our session
        is: our own waiter key went with its lease, so the lock can never be ours, and
        a waiter that went on waiting for the predecessor (a peer mid-commit, a frozen
        holder) would hold up its caller — a resync round, a handler — for the whole
        acquire timeout after the replica has re-joined (``SessionExpired`` instead)."""
        gone = asyncio.ensure_future(self._watch_delete(key, create_revision, revision))
        lost = asyncio.ensure_future(self.session.done.wait())
        try:
            await asyncio.wait((gone, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (gone, lost):
                task.cancel()
            await asyncio.gather(gone, lost, return_exceptions=True)
        if lost.done() and not lost.cancelled():
            self.session.check()  # raises SessionExpired
        gone.result()

    async def _watch_delete(self, key: bytes, create_revision: int, revision: int) -> None:
        """Until the predecessor's key (as created at ``create_revision``) is gone.

        After a compaction the watch cannot resume, so the key is read again: if it
        exists with another create revision, it was deleted and re-created by the same
        lease (released, then queued again): that new key waits behind us, not ahead.
        """
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
            if kv is None or kv.create_revision != create_revision:
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
        """Delete our waiter key, retrying transient errors; cancellation cannot stop it.

        Every delete compares the key's create revision, so a delete that lands late
        can never remove a key this lease created afterwards (the next hold of the same
        lock by this process). When the acquiring transaction's outcome is unknown (a
        reply lost, a deadline hit in flight), the key is read first to learn its
        revision; if it is not there yet it may still land, so it is left to the
        periodic sweep (``on_orphan``), which deletes it the same guarded way. If
        every try fails, ``orphaned`` is set and ``on_orphan`` is told too.
        """
        rev, self.revision, self.held = self.revision, 0, False
        self.prefetched.clear()
        if self.key_may_exist:
            await asyncio.shield(self._delete_own_key(rev))

    async def _delete_own_key(self, rev: int) -> None:
        delay = 0.05
        unknown = rev == 0
        for attempt in range(1, RELEASE_ATTEMPTS + 1):
            try:
                if rev == 0:
                    kv, _ = await self.session.client.get(self.key)
                    if kv is None:
                        break  # not there (yet?): the sweep deletes it if it lands late
                    rev = kv.create_revision
                await self.session.client.txn(
                    [Compare.create_revision(self.key, "=", rev)], [DeleteRange(self.key)]
                )
                self.key_may_exist = False
                if not unknown:
                    return
                break  # an acquire with an unknown outcome may still land: sweep later
            except LeaseNotFound:
                self.key_may_exist = False
                return
            except EtcdError as exc:
                if attempt == RELEASE_ATTEMPTS:
                    log.warning(
                        "could not delete our lock key; the sweep will",
                        extra={"key": self.key.decode(errors="replace"), "error": str(exc)},
                    )
                    self.orphaned = True
                    break
                await asyncio.sleep(delay)  # backoff between release attempts
                delay = min(delay * 4, 1.0)
        if self.on_orphan is not None:
            self.on_orphan(self.key)

    async def release(self) -> None:
        await self._abandon()

    def released_by_commit(self) -> None:
        """The commit transaction deleted our key itself (release in the same txn)."""
        self.revision, self.held, self.key_may_exist = 0, False, False
        self.prefetched.clear()

    @contextlib.asynccontextmanager
    async def hold(self, timeout: float | None = None) -> AsyncIterator[Mutex]:
        await self.acquire(timeout)
        try:
            yield self
        finally:
            await self.release()
