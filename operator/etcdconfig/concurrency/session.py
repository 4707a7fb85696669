"""One etcd lease per process, kept alive; ``done`` once it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from etcdconfig.errors import EtcdError, LeaseNotFound, SessionExpired

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
        failed = 0  # pings failed since the last answer
        endpoints = max(1, len(self.client.settings.endpoints))
        try:
            while True:
                # refresh at a third of the TTL; after a failed ping, retry soon
                await asyncio.sleep(delay)
                left = self._expires_at - time.monotonic()
                if left <= 0:
                    log.warning("etcd session lease expired", extra={"lease": f"{self.lease_id:x}"})
                    await self._give_up()
                    break
                try:
                    # A lost answer must not use up the lease's whole life: a ping waits
                    # at most max(TTL/6, 1 s), then the retry goes on a fresh stream to the
                    # next endpoint, until each endpoint has failed once. A slow answer (a
                    # busy event loop, a leader election) is not a lost lease either: from
                    # then on a ping waits for as long as the lease can still be alive.
                    short = min(left, max(self.ttl / 6, 1.0))
                    wait = left if failed >= endpoints else short
                    remaining = await stream.ping(self.lease_id, max(0.1, wait))
                except EtcdError as exc:
                    log.warning(
                        "etcd session keep-alive failed; retrying",
                        extra={"lease": f"{self.lease_id:x}", "error": str(exc)},
                    )
                    failed += 1
                    delay = min(self.ttl / 10, 0.5)
                    continue
                if remaining <= 0:
                    log.warning("etcd session lease is gone", extra={"lease": f"{self.lease_id:x}"})
                    break
                self._expires_at = time.monotonic() + remaining
                failed = 0
                delay = self.ttl / 3
        finally:
            stream.close()
            self.done.set()

    async def _give_up(self) -> None:
        """No answer told us the lease lives, yet etcd may still hold it (every ping may
        have renewed it while the answers were lost): revoke it, best effort and
        briefly, so that none of its lock or member keys outlives our decision."""
        deadline = time.monotonic() + max(2.0, self.ttl / 2)
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await self.client.revoke(self.lease_id)
                return
            except LeaseNotFound:
                return
            except (EtcdError, TimeoutError):
                await asyncio.sleep(0.1)  # backoff before the next revoke attempt
        log.warning(
            "could not revoke the lost session lease; it expires by itself",
            extra={"lease": f"{self.lease_id:x}"},
        )

    async def close(self) -> None:
        """Stop refreshing and revoke the lease (releases every lock at once)."""
        try:
            if self._task is not None:
                self._task.cancel()
                # wait for it to end; a cancellation of our caller is not swallowed
                await asyncio.wait({self._task})
        finally:
            self.done.set()
            if self.lease_id:
                with contextlib.suppress(EtcdError):
                    await self.client.revoke(self.lease_id)

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
