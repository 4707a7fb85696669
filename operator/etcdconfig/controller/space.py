"""etcd's space (docs/operations.md#etcd-space).

etcd refuses every write once its database file reaches ``--quota-backend-bytes``: it
raises the NOSPACE alarm, and until an admin frees space (compaction, defragmentation)
and disarms it, every put and transaction fails with ``mvcc: database space exceeded``.
Reads keep working. A commit is one transaction (and the lock's put before it), so a
refused commit records nothing, partially or otherwise.

:class:`SpaceWatch` (a supervised task of every replica) reads the database's size,
the bytes in use, the quota (etcd 3.6+ reports it) and the alarms every
``space_check_interval`` seconds; exports them as metrics; logs one line with the
sizes when the database crosses ``space_warn_ratio`` of the quota, when the alarm is
raised, and when it clears. The Configs a refused commit concerns say so themselves
(``Stalled``, reason ``StoreFull``, an Event: :mod:`etcdconfig.controller.reconciler`)
and are retried with backoff: once the alarm is disarmed the next retry records them,
and the resync loop catches any left over.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etcdconfig import metrics
from etcdconfig.errors import EtcdError

if TYPE_CHECKING:
    from etcdconfig.controller.runtime import Runtime

log = logging.getLogger(__name__)


def human(n: int) -> str:
    """Bytes as people read them: ``512 B``, ``16.0 MiB``, ``2.0 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Space:
    db_size: int
    in_use: int
    quota: int  # 0: not reported (etcd before 3.6)
    nospace: bool

    def text(self) -> str:
        """``database 2.0 GiB (1.9 GiB in use) of quota 2.0 GiB``."""
        out = f"database {human(self.db_size)} ({human(self.in_use)} in use)"
        return out + (f" of quota {human(self.quota)}" if self.quota else "")

    def near(self, ratio: float) -> bool:
        return bool(self.quota) and self.db_size >= ratio * self.quota


async def read_space(rt: Runtime) -> Space:
    status = await rt.client.status()
    alarms = await rt.client.alarms()
    return Space(
        db_size=status["db_size"],
        in_use=status["db_size_in_use"],
        quota=status["db_size_quota"],
        nospace="NOSPACE" in alarms,
    )


class SpaceWatch:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last: Space | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except EtcdError as exc:
                log.warning("etcd space check failed; will retry", extra={"error": str(exc)})
            await asyncio.sleep(self.rt.settings.space_check_interval)  # a period, not a sync

    async def check(self) -> Space:
        space = await read_space(self.rt)
        metrics.ETCD_DB_SIZE.set(space.db_size)
        metrics.ETCD_DB_SIZE_IN_USE.set(space.in_use)
        metrics.ETCD_DB_QUOTA.set(space.quota)
        metrics.ETCD_NOSPACE.set(1 if space.nospace else 0)
        before, self.last = self.last, space
        self.rt.space = space
        sizes = {
            "dbSize": space.db_size,
            "dbSizeInUse": space.in_use,
            "quota": space.quota,
        }
        ratio = self.rt.settings.space_warn_ratio
        if space.nospace and not (before and before.nospace):
            log.error(
                "etcd is out of space: its NOSPACE alarm is raised and nothing can be "
                "recorded until an admin frees space (compact, defragment, `etcdctl alarm "
                "disarm`: docs/operations.md#etcd-space); reads keep working",
                extra=sizes,
            )
        elif before is not None and before.nospace and not space.nospace:
            log.info("etcd has space again: the NOSPACE alarm is disarmed", extra=sizes)
        elif space.near(ratio) and not (before and before.near(ratio)) and not space.nospace:
            log.warning(
                f"etcd's database nears its quota ({space.text()}): writes stop at the "
                "quota; compact and defragment, or raise --quota-backend-bytes "
                "(docs/operations.md#etcd-space)",
                extra=sizes,
            )
        return space
