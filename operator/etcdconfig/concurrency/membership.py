"""Replica membership and Config ownership by rendezvous hashing.

Each replica registers ``{p}/members/{replicaID}`` under its session lease, so a
dead or frozen replica leaves the set within the lease TTL. A Config is owned by
the live member with the highest ``sha256(member + uid)``: when a member joins
or leaves, only about 1/N of the Configs move. Ownership decides who does the
work; the per-Config lock and the fenced commit keep hand-over windows safe.

The member set is kept current by a watch (:meth:`Membership.watch`). A watch
that dies freezes ownership — a departed member's Configs would never be taken
over — so it survives every exception: etcd errors and compaction are handled
inside it (back off, re-list, resume); anything else ends ``watch()`` and is
handled by whoever runs it: the operator's supervisor (which logs, backs off and
runs it again: a re-list), or, by default, the membership's own task, which does
the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import traceback
from typing import TYPE_CHECKING

from etcdconfig.errors import Compacted, EtcdError
from etcdconfig.etcd import EtcdClient, Put, prefix_end

if TYPE_CHECKING:
    from etcdconfig.concurrency.session import Session

log = logging.getLogger(__name__)


def rendezvous_owner(members: tuple[str, ...] | list[str], uid: str) -> str | None:
    best: tuple[int, str] | None = None
    for m in members:
        score = int.from_bytes(hashlib.sha256(f"{m}\0{uid}".encode()).digest()[:8], "big")
        if best is None or (score, m) > best:
            best = (score, m)
    return best[1] if best else None


class Membership:
    """``own_watch=False``: :meth:`join` does not start the watch; the caller runs
    :meth:`watch` (the operator runs it under its supervisor)."""

    INITIAL_BACKOFF = 0.5
    MAX_BACKOFF = 10.0

    def __init__(
        self, client: EtcdClient, prefix: str, replica_id: str, *, own_watch: bool = True
    ) -> None:
        self.client = client
        self.base = f"{prefix.rstrip('/')}/members/".encode()
        self.replica_id = replica_id
        self.members: tuple[str, ...] = ()
        self.changed = asyncio.Event()
        #: how many times the members changed (a resync round compares it with the last
        #: round's: a change and its undoing in between still count)
        self.generation = 0
        self.own_watch = own_watch
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> bytes:
        return self.base + self.replica_id.encode()

    async def join(self, session: Session) -> None:
        value = json.dumps(
            {
                "replica": self.replica_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "lease": f"{session.lease_id:x}",
            }
        ).encode()
        await self.client.txn([], [Put(self.key, value, lease=session.lease_id)])
        await self._refresh()
        if self.own_watch and self._task is None:
            self._task = asyncio.create_task(self._watch_forever(), name="membership-watch")

    async def _refresh(self) -> int:
        res = await self.client.range(self.base, prefix_end(self.base), keys_only=True)
        members = tuple(sorted(kv.key[len(self.base) :].decode() for kv in res.kvs))
        self._set(members)
        return res.revision

    def _set(self, members: tuple[str, ...]) -> None:
        if members != self.members:
            log.info("members changed", extra={"members": ",".join(members)})
            self.members = members
            self.generation += 1  # every change counts, also one undone before it was seen
            self.changed.set()

    async def watch(self) -> None:
        """Keep ``members`` current until cancelled: list, then watch from the listed
        revision. etcd errors and compaction: back off, re-list, resume. Any other
        exception propagates (the caller logs it and runs ``watch()`` again)."""
        delay = self.INITIAL_BACKOFF
        while True:
            started = time.monotonic()
            try:
                rev = await self._refresh()
                async for _rev, events in self.client.watch(
                    self.base, prefix_end(self.base), start_revision=rev + 1
                ):
                    current = set(self.members)
                    for ev in events:
                        name = ev.kv.key[len(self.base) :].decode()
                        if ev.type == "PUT":
                            current.add(name)
                        else:
                            current.discard(name)
                    self._set(tuple(sorted(current)))
            except (Compacted, EtcdError) as exc:
                if time.monotonic() - started >= self.MAX_BACKOFF:
                    delay = self.INITIAL_BACKOFF
                log.warning(
                    "membership watch interrupted; re-reading",
                    extra={"error": type(exc).__name__, "detail": str(exc), "backoff": delay},
                )
                await asyncio.sleep(delay)  # back off before re-listing
                delay = min(delay * 2, self.MAX_BACKOFF)

    async def _watch_forever(self) -> None:
        """``watch()`` for a membership nobody supervises: survive anything but
        cancellation (log the error's type, never its message; back off; re-list)."""
        delay = self.INITIAL_BACKOFF
        while True:
            started = time.monotonic()
            try:
                await self.watch()
            except Exception as exc:
                if time.monotonic() - started >= self.MAX_BACKOFF:
                    delay = self.INITIAL_BACKOFF
                tb = traceback.extract_tb(exc.__traceback__)
                where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
                log.error(
                    "membership watch failed; restarting it",
                    extra={"error": type(exc).__name__, "where": where, "backoff": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.MAX_BACKOFF)

    def owner_of(self, uid: str) -> str | None:
        members = self.members or (self.replica_id,)
        return rendezvous_owner(members, uid)

    def owns(self, uid: str) -> bool:
        return self.owner_of(uid) == self.replica_id

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # a cancellation of our caller still propagates
            self._task = None
        with contextlib.suppress(EtcdError):
            await self.client.delete_range(self.key)
