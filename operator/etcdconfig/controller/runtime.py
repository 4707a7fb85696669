"""Everything a replica holds while it runs: etcd client, session, locks, store,
membership, the Kubernetes API, the supervisor of its background tasks; and the
session keeper that replaces a lost lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etcdconfig import metrics
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.concurrency.membership import Membership
from etcdconfig.controller.rollouts import Rollouts
from etcdconfig.controller.space import Space, SpaceWatch
from etcdconfig.controller.supervisor import Supervisor
from etcdconfig.errors import EtcdError
from etcdconfig.store import VersionedStore
from etcdconfig.validation import Validator

if TYPE_CHECKING:
    from etcdconfig.etcd import EtcdClient
    from etcdconfig.kube import Kube
    from etcdconfig.settings import Settings
    from etcdconfig.store.records import Sizes

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    client: EtcdClient
    kube: Kube
    validator: Validator = field(default_factory=Validator)
    session: Session | None = None
    locks: ConfigLocks | None = None
    store: VersionedStore | None = None
    membership: Membership | None = None
    # background tasks: session-keeper and membership-watch (start), resync (main);
    # another is one line: runtime.supervisor.add("name", coroutine_factory)
    supervisor: Supervisor = field(default_factory=Supervisor)
    _loss_counted: Session | None = field(default=None, repr=False)
    # set when stop() begins: a replica that is leaving reports no status (the new owner does)
    stopping: bool = False
    # Config uid -> the Intact condition of this replica's last integrity scan of it: every
    # status built afterwards carries it (reconcile.with_intact), so a handler whose body
    # was read before the scan cannot erase a violation the scan found
    intact: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the rollouts of recorded versions to consuming workloads (controller/rollouts.py)
    rollouts: Rollouts | None = None
    # Config uid -> (version, message) of a rollout that failed: every status built for
    # that version carries it (Stalled, RolloutFailed) until a newer version is recorded
    rollout_failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    # etcd's space as the last check read it (controller/space.py): refusals quote it
    space: Space | None = None
    # Config uid -> (versions, bytes) the store retains for it, from its last commit or
    # integrity scan: the history gauges are their sums over the Configs this replica owns
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    _usage_totals: list[int] = field(default_factory=lambda: [0, 0])  # sums of usage
    # Config uids the next resync round must reconcile even if settled (a rollout that
    # failed on a transient error: controller/loops.py)
    recheck: set[str] = field(default_factory=set)

    def note_usage(self, uid: str, sizes: Sizes) -> None:
        """Every commit notes its Config's usage: the gauges' sums are kept by difference
        (a sum over every Config per commit cost ~1 ms at 10,000 Configs)."""
        versions, size = len(sizes.entries), sizes.total
        was_versions, was_size = self.usage.get(uid, (0, 0))
        self.usage[uid] = (versions, size)
        self._usage_totals[0] += versions - was_versions
        self._usage_totals[1] += size - was_size
        self._usage_gauges()

    def keep_usage(self, uids: set[str]) -> None:
        """Forget the usage and the integrity verdicts of Configs this replica no longer
        owns (deleted, handed over); the sums are recounted here, once a round."""
        for uid in [u for u in self.usage if u not in uids]:
            del self.usage[uid]
        for uid in [u for u in self.intact if u not in uids]:
            del self.intact[uid]
        self._usage_totals = [
            sum(v for v, _ in self.usage.values()),
            sum(b for _, b in self.usage.values()),
        ]
        self._usage_gauges()

    def _usage_gauges(self) -> None:
        metrics.HISTORY_VERSIONS.set(self._usage_totals[0])
        metrics.HISTORY_BYTES.set(self._usage_totals[1])

    async def start(self) -> None:
        s = self.settings
        self.store = VersionedStore(
            self.client,
            prefix=s.etcd_prefix,
            replica_id=s.replica_id,
            validator=self.validator,
            max_request_bytes=s.etcd_max_request_bytes,
        )
        self.rollouts = Rollouts(self)
        self.membership = Membership(self.client, s.etcd_prefix, s.replica_id, own_watch=False)
        await self._new_session()
        self.supervisor.add("session-keeper", self._keep_session)
        self.supervisor.add("membership-watch", self.membership.watch)
        self.supervisor.add("lock-sweeper", self._sweep_locks)
        self.supervisor.add("space-watch", SpaceWatch(self).run)

    async def _sweep_locks(self) -> None:
        """Delete this session's orphaned lock keys (:meth:`ConfigLocks.sweep`): every
        TTL, and within a second after a release could not delete its key. A key left
        on our long-lived lease would lock the other replicas out for as long as this
        replica is healthy."""
        interval = float(self.settings.lock_ttl)
        while True:
            # wake at once when a key is reported (a release that failed, an acquire
            # whose outcome is unknown), else at the next round; self.locks is read
            # again every second, since the keeper replaces it with a new session's
            waited = 0.0
            while waited < interval:
                locks = self.locks
                if locks is not None and locks.suspects:
                    # an acquire abandoned in flight may land a moment later: sweep
                    # shortly after the report (and again at the next round)
                    await asyncio.sleep(min(interval, 0.5))
                    break
                step = min(1.0, interval - waited)
                if locks is None:
                    await asyncio.sleep(step)  # no session yet: the keeper makes one
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(locks.suspects.reported.wait(), timeout=step)
                waited += step
            if self.locks is None:
                continue
            try:
                removed = await self.locks.sweep()
            except EtcdError as exc:
                log.warning("lock sweep failed; will retry", extra={"error": str(exc)})
                continue
            if removed:
                metrics.LOCK_KEYS_SWEPT.inc(removed)

    async def _new_session(self) -> None:
        s = self.settings
        session = await Session(self.client, ttl=s.lock_ttl).start()
        assert self.membership is not None
        try:
            await self.membership.join(session)
        except BaseException:
            # never leave a lease (and its keep-alive task) behind that nothing uses
            with contextlib.suppress(Exception):
                await session.close()
            raise
        locks = ConfigLocks(
            session,
            prefix=s.etcd_prefix,
            identity=s.replica_id,
            acquire_timeout=s.acquire_timeout,
            hold_timeout=s.hold_timeout,
        )
        self.session, self.locks = session, locks
        metrics.MEMBERS.set(len(self.membership.members))
        log.info("etcd session started", extra={"lease": f"{session.lease_id:x}"})

    async def _keep_session(self) -> None:
        """A lost lease means every lock is gone: start a new session (and re-join).
        Supervised: after a crash it runs again and picks up where it stopped."""
        delay = 0.5
        while True:
            assert self.session is not None
            lost = self.session
            await lost.done.wait()
            if self._loss_counted is not lost:  # once per lease, across restarts
                self._loss_counted = lost
                metrics.SESSION_LOST.inc()
                log.warning("etcd session lost; starting a new one")
                # (Session revoked the lease already if etcd might still hold it)
            while True:
                try:
                    await self._new_session()
                    delay = 0.5
                    break
                except EtcdError as exc:
                    log.warning("cannot start an etcd session yet", extra={"error": str(exc)})
                    await asyncio.sleep(delay)  # back off while etcd is away
                    delay = min(delay * 2, 10.0)

    @property
    def healthy(self) -> bool:
        return self.session is not None and self.session.alive

    async def stop(self) -> None:
        self.stopping = True
        if self.rollouts is not None:
            await self.rollouts.close()
        await self.supervisor.stop()
        if self.membership is not None:
            await self.membership.leave()
        if self.session is not None:
            await self.session.close()
