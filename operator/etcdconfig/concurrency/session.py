"""One etcd lease per process, kept alive; ``done`` once it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from etcdconfig.errors import EtcdError, SessionExpired

if TYPE_CHECKING:
    from etcdconfig.etcd import EtcdClient

log = logging.getLogger(__name__)

MIN_TTL = 2  # etcd's minimum lease TTL is a little over the election timeout


class Session:
    """A lease that lives as long as the process: every lock key hangs off it.

    The keep-alive refreshes the lease every ``ttl / 3`` seconds. If etcd says the
    lease is gone, or no refresh succeeds for ``ttl`` seconds (after that long etcd
    has expired it), the session is lost: ``done`` is set and every lock held under
    it must be treated as gone. A frozen process stops refreshing too, so a paused
    holder loses its lease after the TTL — the fencing compare then refuses its writes.
    """

    def __init__(self, client: EtcdClient, *, ttl: int = 10) -> None:
        if ttl < MIN_TTL:
            raise ValueError(f"session TTL must be at least {MIN_TTL}s, got {ttl}")
        self.client = client
        self.ttl = ttl
        self.lease_id = 0
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._expires_at = 0.0

    async def start(self) -> Session:
        self.lease_id, granted = await self.client.grant(self.ttl)
        self._expires_at = time.monotonic() + granted
        self._task = asyncio.create_task(self._keepalive(), name=f"session-{self.lease_id:x}")
        return self

    @property
    def alive(self) -> bool:
        return self.lease_id != 0 and not self.done.is_set()

    def check(self) -> None:
        if not self.alive:
            raise SessionExpired(
                f"etcd session lease {self.lease_id:x} is lost (expired or revoked); "
                "locks held under it are gone"
            )

    async def _keepalive(self) -> None:
        stream = self.client.keepalive()
        delay = self.ttl / 3
        try:
            while True:
                # refresh at a third of the TTL; after a failed ping, retry soon
                await asyncio.sleep(delay)
                left = self._expires_at - time.monotonic()
                if left <= 0:
                    log.warning("etcd session lease expired", extra={"lease": f"{self.lease_id:x}"})
                    break
                try:
                    # A slow answer (a busy event loop, a leader election) is not a lost
                    # lease, but a lost answer must not use up the lease's whole life
                    # either: wait for one answer at most max(TTL/6, 1 s), then retry on
                    # a fresh stream (another endpoint) while the lease can still be alive
                    remaining = await stream.ping(
                        self.lease_id, max(0.1, min(left, max(self.ttl / 6, 1.0)))
                    )
                except EtcdError as exc:
                    log.warning(
                        "etcd session keep-alive failed; retrying",
                        extra={"lease": f"{self.lease_id:x}", "error": str(exc)},
                    )
                    delay = min(self.ttl / 10, 0.5)
                    continue
                if remaining <= 0:
                    log.warning("etcd session lease is gone", extra={"lease": f"{self.lease_id:x}"})
                    break
                self._expires_at = time.monotonic() + remaining
                delay = self.ttl / 3
        finally:
            stream.close()
            self.done.set()

    async def close(self) -> None:
        """Stop refreshing and revoke the lease (releases every lock at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.done.set()
        if self.lease_id:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self.lease_id)

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
