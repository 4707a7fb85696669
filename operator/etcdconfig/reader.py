"""Read Configs from the versioned store, for consumers (DESIGN §6).

A consumer (an application, a sidecar, a batch job) reads a consistent,
immutable snapshot straight from etcd: the current version, any retained
version, or a stream of new versions as they are recorded::

    async with ConfigReader(Settings()) as reader:        # ETCDCONFIG_* settings
        record = await reader.current("prod", "payments")
        print(record.version, record.data)
        async for record in reader.watch("prod", "payments"):
            apply(record.data)

Versions never change once written, so they are cached (LRU, bounded) by
``(namespace, name, version)``; ``hits``/``misses`` and the Prometheus counters
``etcdconfig_cache_{hits,misses}_total{cache="reader"}`` show how well. Every
record is verified when it is loaded from etcd: its data must hash to its
``checksum``, and, when read through the head, the stored record must hash to
the head's ``recordChecksum`` — a tampered record raises ``CorruptRecord``
instead of reaching the application.

The reader only reads: it needs read access to ``{prefix}/configs/`` and no
lock, lease or write permission.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from etcdconfig import metrics
from etcdconfig.canonical import checksum, sha256_of
from etcdconfig.errors import Compacted, CorruptRecord, EtcdConfigError, EtcdUnavailable, NotFound
from etcdconfig.etcd import EtcdClient
from etcdconfig.store.keys import Keys
from etcdconfig.store.records import Head, VersionRecord

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator
    from types import TracebackType

    from etcdconfig.settings import Settings

__all__ = ["ConfigReader"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 256
_RETRY_MAX = 10.0  # seconds between attempts to re-establish a broken watch, at most

_Key = tuple[str, str, int]


class ConfigReader:
    """Read-only access to Config versions in etcd, with a cache of immutable versions.

    ``source`` is an :class:`~etcdconfig.etcd.EtcdClient` the caller owns (and
    closes), or :class:`~etcdconfig.settings.Settings`, from which the reader makes
    and owns a client (``close()`` or ``async with`` closes it). ``prefix`` defaults
    to the settings' ``etcd_prefix``, or ``/etcdconfig`` with a client.
    """

    def __init__(
        self,
        source: EtcdClient | Settings,
        prefix: str | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        if isinstance(source, EtcdClient):
            self.client = source
            self._owns_client = False
            default_prefix = "/etcdconfig"
        else:
            self.client = EtcdClient(source.etcd())
            self._owns_client = True
            default_prefix = source.etcd_prefix
        self.keys = Keys(prefix if prefix is not None else default_prefix)
        self.cache_size = cache_size
        self._cache: OrderedDict[_Key, VersionRecord] = OrderedDict()
        self.hits = 0
        self.misses = 0

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> ConfigReader:
        if self._owns_client:
            await self.client.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client if the reader made it; a caller's client stays open."""
        if self._owns_client:
            await self.client.close()

    # --- reads --------------------------------------------------------------------------------

    async def head(self, namespace: str, name: str) -> Head | None:
        """The head pointer (linearizable read), or None if the store never saw the Config."""
        kv, _ = await self.client.get(self.keys.head(namespace, name))
        if kv is None:
            return None
        head = Head.parse(
            kv.value, mod_revision=kv.mod_revision, what=f"head of {namespace}/{name}"
        )
        self._check_incarnation(namespace, name, head)
        return head

    async def current(self, namespace: str, name: str) -> VersionRecord:
        """The head version: the Config's current data. ``NotFound`` if there is none
        (never recorded, or deleted: a tombstone is not a version to serve)."""
        head = await self.head(namespace, name)
        if head is None or head.version == 0:
            raise NotFound(f"{namespace}/{name} has no recorded version")
        if head.deleted:
            raise NotFound(f"{namespace}/{name} was deleted (its history is kept in the store)")
        return await self._load(namespace, name, head.version, head.record_checksum)

    async def version(self, namespace: str, name: str, version: int) -> VersionRecord:
        """Version ``version`` of the Config; ``NotFound`` if it was never written or
        retention pruned it."""
        if version < 1:
            raise NotFound(f"{namespace}/{name} has no version {version}: versions start at 1")
        return await self._load(namespace, name, version, None)

    def cached(self) -> int:
        """Number of versions in the cache."""
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- watch --------------------------------------------------------------------------------

    async def watch(
        self,
        namespace: str,
        name: str,
        *,
        after_version: int | None = None,
        start_revision: int = 0,
    ) -> AsyncGenerator[VersionRecord, None]:
        """Yield versions of the Config as they become its head, each once and in order.

        By default the current version (if any) comes first, then every new one.
        ``after_version=N`` yields only versions above N (what a consumer that already
        holds N wants). ``start_revision`` resumes from an etcd revision the consumer
        kept; if etcd compacted it, the reader re-reads the head and resumes from now,
        filling in the versions it missed from the history.

        Versions recorded while the watch was away are yielded in order if still
        retained; pruned ones are skipped. Tombstones (deletions) are not versions and
        are skipped; a Config re-created after ``deletionPolicy: Purge`` starts again at
        version 1, and so does the watch. The iterator never ends by itself: break out
        of the loop (or cancel the task) to stop it; a broken connection to etcd is
        retried with backoff.
        """
        head_key = self.keys.head(namespace, name)
        last = after_version
        revision = start_revision
        delay = 0.2
        while True:
            try:
                if revision == 0:
                    # (re)start: read the head, yield what is new, watch from just after it
                    kv, rev = await self.client.get(head_key)
                    if kv is not None:
                        head = Head.parse(kv.value, mod_revision=kv.mod_revision)
                        self._check_incarnation(namespace, name, head)
                        async for record in self._advance(namespace, name, head, last):
                            last = record.version
                            yield record
                        last = self._position(head, last)
                    elif last is None:
                        last = 0
                    revision = rev + 1
                async for rev, events in self.client.watch(head_key, start_revision=revision):
                    for ev in events:
                        if ev.type != "PUT":
                            continue  # the head is never deleted by etcdconfig; ignore
                        head = Head.parse(ev.kv.value, mod_revision=ev.kv.mod_revision)
                        self._check_incarnation(namespace, name, head)
                        async for record in self._advance(namespace, name, head, last):
                            last = record.version
                            yield record
                        last = self._position(head, last)
                    revision = rev + 1
                    delay = 0.2
            except Compacted as exc:
                log.info(
                    "watch revision was compacted; re-reading the head",
                    extra={"config": f"{namespace}/{name}", "compacted": exc.compact_revision},
                )
                revision = 0
            except EtcdUnavailable as exc:
                log.warning(
                    "watch broke; retrying",
                    extra={"config": f"{namespace}/{name}", "error": str(exc), "delay": delay},
                )
                await asyncio.sleep(delay)  # backoff while etcd is away
                delay = min(delay * 2, _RETRY_MAX)
                revision = 0

    @staticmethod
    def _position(head: Head, last: int | None) -> int:
        """Where the watch stands after seeing ``head``."""
        if last is None:
            return head.version
        if head.deleted and head.purged:
            return 0  # history removed: a re-created Config starts again at 1
        return max(last, head.version) if not head.deleted else last

    async def _advance(
        self, namespace: str, name: str, head: Head, last: int | None
    ) -> AsyncIterator[VersionRecord]:
        """The versions between what the consumer has (``last``) and ``head``."""
        if head.deleted or head.version == 0:
            return
        if last is None:
            # a first read: just the current version
            yield await self._load(namespace, name, head.version, head.record_checksum)
            return
        if head.version <= last:
            if head.version < last and head.version == 1:
                # re-created after a purge: numbering restarted
                yield await self._load(namespace, name, 1, head.record_checksum)
            return
        for v in range(last + 1, head.version):
            try:
                yield await self._load(namespace, name, v, None)
            except NotFound:
                continue  # pruned by retention before we saw it
        yield await self._load(namespace, name, head.version, head.record_checksum)

    # --- cache and verification -----------------------------------------------------------

    def _check_incarnation(self, namespace: str, name: str, head: Head) -> None:
        """After ``deletionPolicy: Purge`` and re-creation, version numbers restart, so a
        cached "version 1" may belong to the purged history: drop that Config's entries
        when the head says so (purged, or a cached head record that no longer matches)."""
        cached = self._cache.get((namespace, name, head.version))
        stale = head.purged or (
            cached is not None
            and head.record_checksum is not None
            and not head.deleted
            and _record_checksum(cached) != head.record_checksum
        )
        if stale:
            for key in [k for k in self._cache if k[0] == namespace and k[1] == name]:
                del self._cache[key]

    async def _load(
        self, namespace: str, name: str, version: int, expected_record_checksum: str | None
    ) -> VersionRecord:
        key = (namespace, name, version)
        record = self._cache.get(key)
        if record is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            metrics.CACHE_HITS.labels("reader").inc()
            return record
        self.misses += 1
        metrics.CACHE_MISSES.labels("reader").inc()
        what = f"{namespace}/{name} version {version}"
        kv, _ = await self.client.get(self.keys.version(namespace, name, version))
        if kv is None:
            raise NotFound(f"{namespace}/{name} has no version {version} in the store")
        record = VersionRecord.parse(kv.value, mod_revision=kv.mod_revision, what=what)
        _verify(record, what, version, sha256_of(kv.value), expected_record_checksum)
        if self.cache_size:
            self._cache[key] = record
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return record


def _record_checksum(record: VersionRecord) -> str:
    return record.record_checksum()


def _verify(
    record: VersionRecord, what: str, version: int, stored_hash: str, expected: str | None
) -> None:
    """The checks that make a record safe to hand to an application."""
    if record.version != version:
        raise CorruptRecord(f"{what}: the record says version {record.version}")
    try:
        computed = checksum(record.data)
    except EtcdConfigError as exc:
        raise CorruptRecord(f"{what}: its data cannot be hashed: {exc}") from exc
    if computed != record.checksum:
        raise CorruptRecord(
            f"{what}: data checksum mismatch (stored {record.checksum}, computed {computed}); "
            "the record was modified after it was written — run `etcdconfig verify`"
        )
    if expected is not None and stored_hash != expected:
        raise CorruptRecord(
            f"{what}: record checksum {stored_hash} does not match the head's {expected}; "
            "run `etcdconfig verify`"
        )
