"""Read Configs from the versioned store, for consumers (DESIGN §6).

A consumer (an application, a sidecar, a batch job) reads a consistent,
immutable snapshot straight from etcd: the current version, any retained
version, or a stream of new versions as they are recorded::

    async with ConfigReader(Settings()) as reader:        # ETCDCONFIG_* settings
        record = await reader.current("prod", "payments")
        print(record.version, record.data)
        async for record in reader.watch("prod", "payments"):
            apply(record.data)

A version record never changes once written, so records are cached (LRU,
bounded); ``hits``/``misses`` and the Prometheus counters
``etcdconfig_cache_{hits,misses}_total{cache="reader"}`` show how well. A version
*number* is not a name for a record, though: after ``deletionPolicy: Purge`` a
later incarnation of the Config records new versions under the numbers the purged
one used. So the cache is keyed by the record checksum (SHA-256 of the stored
record): ``current()`` and the watch look a record up by the checksum the head (or
the next version's ``parentChecksum``) names, and ``version(n)`` reads the key and
serves the cached record only if the stored bytes are the same. A cache hit is
therefore always the exact record etcd holds or the head points at.

Every record is verified when it is loaded from etcd
(:func:`etcdconfig.store.integrity.check_record`): its data must hash to its
``checksum``, and, when read through the head (or a successor), the stored record
must hash to the head's ``recordChecksum`` (the successor's ``parentChecksum``) —
a tampered record raises ``CorruptRecord`` instead of reaching the application.

The reader only reads: it needs read access to ``{prefix}/configs/`` and no
lock, lease or write permission.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from etcdconfig import metrics
from etcdconfig.canonical import sha256_of
from etcdconfig.errors import Compacted, EtcdUnavailable, NotFound
from etcdconfig.etcd import EtcdClient
from etcdconfig.store.integrity import describe, load_record
from etcdconfig.store.keys import Keys
from etcdconfig.store.records import Head, VersionRecord

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from types import TracebackType

    from etcdconfig.settings import Settings

__all__ = ["ConfigReader"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 256
_RETRY_MAX = 10.0  # seconds between attempts to re-establish a broken watch, at most
_PINNED_READ_ATTEMPTS = 3  # a head and its version are read at one revision; compaction may race

# (namespace, name, version, record checksum): the record checksum makes an entry the one
# exact record; the version guards against the same bytes stored under another key
_Key = tuple[str, str, int, str]


class ConfigReader:
    """Read-only access to Config versions in etcd, with a cache of immutable records.

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
        head, _ = await self._read_head(namespace, name)
        return head

    async def current(self, namespace: str, name: str) -> VersionRecord:
        """The head version: the Config's current data. ``NotFound`` if there is none
        (never recorded, or deleted: a tombstone is not a version to serve)."""
        for attempt in range(1, _PINNED_READ_ATTEMPTS + 1):
            head, revision = await self._read_head(namespace, name)
            if head is None or head.version == 0:
                raise NotFound(f"{namespace}/{name} has no recorded version")
            if head.deleted:
                kept = "its versions were purged" if head.purged else "its history is kept"
                raise NotFound(f"{namespace}/{name} was deleted ({kept})")
            try:
                # the record the head names, as of the head's revision: a Purge and
                # re-create in between must not swap another record in
                return await self._load(
                    namespace, name, head.version, head.record_checksum, revision=revision
                )
            except Compacted:
                if attempt == _PINNED_READ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def version(self, namespace: str, name: str, version: int) -> VersionRecord:
        """Version ``version`` of the Config as stored now; ``NotFound`` if it was never
        written, retention pruned it, or a Purge removed it.

        The key is always read: a version number names a record only within one
        incarnation (a later one may reuse the numbers a purged one had). The cached
        record is served when the stored bytes are the same.

        The record is verified against what points at it, read at the same revision:
        the head's ``checksum`` when ``version`` is the head's version (a tombstone's
        too), else the next version's ``parentChecksum`` when that version is retained
        (checked against the head itself when it is the head's). So a record whose data
        *and* checksum were rewritten together raises ``CorruptRecord``, as
        ``current()`` does. What this cannot see: edits of the head's version that leave
        its data alone (``current()`` holds it to the head's ``recordChecksum``); a
        successor rewritten consistently along with its parent (only a walk from the
        head, as ``watch`` and ``etcdconfig verify`` do, shows that); and a key above the
        head, which nothing names (only its data is checked against its ``checksum``).
        """
        if version < 1:
            raise NotFound(f"{namespace}/{name} has no version {version}: versions start at 1")
        for attempt in range(1, _PINNED_READ_ATTEMPTS + 1):
            try:
                head, revision = await self._read_head(namespace, name)
                expected, data = await self._pointer_to(namespace, name, version, head, revision)
                return await self._load(
                    namespace,
                    name,
                    version,
                    expected,
                    revision=revision,
                    read_key=True,
                    expected_checksum=data,
                )
            except Compacted:
                if attempt == _PINNED_READ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _pointer_to(
        self, namespace: str, name: str, version: int, head: Head | None, revision: int
    ) -> tuple[str | None, str | None]:
        """What names version ``version`` as of ``revision``: (the record checksum, the
        data checksum). The head's ``checksum`` when ``version`` is the head's (its
        record is held to the head's ``recordChecksum`` by ``current()``), else the
        retained next version's ``parentChecksum``; (None, None) when nothing names it."""
        if head is None or version > head.version:
            return None, None
        if head.version == version:
            return None, head.checksum
        successor = version + 1
        kv, _ = await self.client.get(
            self.keys.version(namespace, name, successor), revision=revision
        )
        if kv is None:
            return None, None  # pruned or never written: nothing retained names the record
        # not counted as a lookup nor cached: the successor is only read for its pointer
        record = self._cache.get((namespace, name, successor, sha256_of(kv.value)))
        if record is None:
            record = load_record(
                kv.value,
                what=describe(namespace, name, successor),
                version=successor,
                expected_record_checksum=(
                    head.record_checksum if successor == head.version else None
                ),
                mod_revision=kv.mod_revision,
            )
        return record.parent_checksum, None

    def cached(self) -> int:
        """Number of records in the cache."""
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- watch --------------------------------------------------------------------------------

    async def watch(
        self,
        namespace: str,
        name: str,
        *,
        after: VersionRecord | None = None,
        after_record_checksum: str | None = None,
        after_version: int | None = None,
        start_revision: int = 0,
    ) -> AsyncGenerator[VersionRecord, None]:
        """Yield versions of the Config as they become its head, each once and in order.

        By default the current version (if any) comes first, then every new one.
        ``after=record`` (the record the consumer holds, e.g. from ``current()``)
        yields first the versions after it in the current history; if that record is
        no longer in the head's history (the Config was purged and re-created
        meanwhile, so its numbers were reused), the current incarnation's retained
        versions come first instead, so the consumer never stays on purged data.
        ``after_record_checksum=`` is the same with the record's checksum (give
        ``after_version`` too, the record's number, to bound the walk).
        ``after_version=N`` alone names the held record by number only: it yields the
        versions after N, or the current incarnation's versions if the head's number is
        below N (numbers reused after a Purge); a re-created Config that has already
        reached N again cannot be told apart by number, so pass ``after=`` when you can.
        ``start_revision=R`` resumes from an etcd revision the consumer kept (e.g. the
        ``mod_revision`` of the last record it applied, plus one): every version
        recorded at revision R or later is yielded, and ``after`` is not needed. If
        etcd compacted it, the reader re-reads the head and yields, in order, the
        retained versions of the head's history recorded since (also when the head is
        now a tombstone: the versions it points back to) — so a Config purged and
        re-created while the consumer was away is followed even though the new
        incarnation reuses version numbers the consumer has seen.

        What the watch tracks is the head's record (its ``recordChecksum``) and the
        etcd revision, never the version number alone: after ``deletionPolicy:
        Purge`` the next incarnation continues from the newest version that remains,
        so its numbers may be ones the purged incarnation used. Tombstones
        (deletions) are not versions and are skipped; versions pruned by retention
        before the watch saw them are skipped. The iterator never ends by itself:
        break out of the loop (or cancel the task) to stop it; a broken connection
        to etcd is retried with backoff.
        """
        if after is not None:
            after_version = after.version
            after_record_checksum = after.record_checksum()
        head_key = self.keys.head(namespace, name)
        # the etcd revision up to which the head's changes have been handled: a version
        # recorded at or before it is never yielded (again); None until the head is first
        # read, unless the consumer resumes from a revision it kept
        seen: int | None = start_revision - 1 if start_revision > 0 else None
        # the record checksum of the version the head pointed at when last handled (a
        # tombstone's too): a new version whose parentChecksum names it follows directly
        standing: str | None = None
        read_head = start_revision <= 0
        delay = 0.2
        while True:
            try:
                if read_head:
                    kv, revision = await self.client.get(head_key)
                    if kv is not None:
                        head = Head.parse(
                            kv.value,
                            mod_revision=kv.mod_revision,
                            what=f"head of {namespace}/{name}",
                        )
                        if seen is None and (
                            after_version is not None or after_record_checksum is not None
                        ):
                            unseen = await self._after(
                                namespace,
                                name,
                                head,
                                revision=revision,
                                after_version=after_version,
                                after_record_checksum=after_record_checksum,
                            )
                        else:
                            unseen = await self._unseen(
                                namespace,
                                name,
                                head,
                                revision=revision,
                                seen=seen,
                                standing=standing,
                            )
                        for record in unseen:
                            yield record
                        standing = head.record_checksum
                    seen = revision if seen is None else max(seen, revision)
                read_head = True  # from now on, every (re)start reads the head first
                assert seen is not None
                async for revision, events in self.client.watch(head_key, start_revision=seen + 1):
                    for ev in events:
                        if ev.type == "PUT":
                            head = Head.parse(
                                ev.kv.value,
                                mod_revision=ev.kv.mod_revision,
                                what=f"head of {namespace}/{name}",
                            )
                            unseen = await self._unseen(
                                namespace,
                                name,
                                head,
                                revision=ev.kv.mod_revision,
                                seen=seen,
                                standing=standing,
                            )
                            for record in unseen:
                                yield record
                            standing = head.record_checksum
                        # the head is never deleted by etcdconfig: a DELETE is only passed
                        seen = max(seen, ev.kv.mod_revision)
                    if not events:
                        # a progress notification: nothing up to ``revision`` is left. A
                        # response with events carries the store's current revision even
                        # when etcd (catching up, at most 1000 revisions per response) has
                        # more to send: only the events received count as handled
                        seen = max(seen, revision)
                    delay = 0.2
            except Compacted as exc:
                log.info(
                    "watch revision was compacted; re-reading the head",
                    extra={"config": f"{namespace}/{name}", "compacted": exc.compact_revision},
                )
            except EtcdUnavailable as exc:
                log.warning(
                    "watch broke; retrying",
                    extra={"config": f"{namespace}/{name}", "error": str(exc), "delay": delay},
                )
                await asyncio.sleep(delay)  # backoff while etcd is away
                delay = min(delay * 2, _RETRY_MAX)

    async def _unseen(
        self,
        namespace: str,
        name: str,
        head: Head,
        *,
        revision: int,
        seen: int | None,
        standing: str | None,
    ) -> list[VersionRecord]:
        """The versions of ``head``'s history the watch has not yielded, oldest first.

        Walks back from the head's record (a tombstone's: the version it points at)
        through ``parentChecksum`` (each record is verified against the checksum its
        successor names, as of ``revision``) and stops at the record the watch stands
        on, at one recorded at or before revision ``seen``, at a pruned one, or at the
        start of the history. Without a revision yet (the first read of a watch that
        did not resume): only the head version (none for a tombstone).
        """
        if head.version == 0 or (head.deleted and head.record_checksum is None):
            return []
        if standing is not None and head.record_checksum == standing:
            return []
        if seen is None and head.deleted:
            return []  # a first read: a tombstone is not a current version
        newest = await self._load(
            namespace, name, head.version, head.record_checksum, revision=revision
        )
        if seen is None:
            return [newest]  # a first read: just the current version
        if newest.mod_revision <= seen:
            return []
        out = [newest]
        while True:
            child = out[-1]
            parent, number = child.parent_checksum, child.version - 1
            if parent is None or parent == standing or number < 1:
                break
            try:
                record = await self._load(namespace, name, number, parent, revision=revision)
            except NotFound:
                break  # pruned by retention before the watch saw it (and so is all before)
            if record.mod_revision <= seen:
                break
            out.append(record)
        out.reverse()
        return out

    async def _after(
        self,
        namespace: str,
        name: str,
        head: Head,
        *,
        revision: int,
        after_version: int | None,
        after_record_checksum: str | None,
    ) -> list[VersionRecord]:
        """The first read of a watch whose consumer holds a record: the versions of
        ``head``'s history after it, oldest first.

        Walks back from the head (a tombstone's version too) through
        ``parentChecksum``. The held record is found when the walk reaches its record
        checksum (or, given only ``after_version``, its number): the versions above it
        are the answer. When the walk passes below the held number without meeting the
        held record, or the head's number is already below it, the held record is not
        in the head's history (a Purge and a re-create reused its number): the answer
        is the current incarnation's retained versions (the head's uid), the head's
        own at least, so the consumer moves off the purged data."""
        if head.version == 0 or (head.deleted and head.record_checksum is None):
            return []
        held, number_held = after_record_checksum, after_version
        if held is not None and head.record_checksum == held:
            return []
        if held is None and number_held is not None and head.version == number_held:
            return []  # the same number: the held record, as far as a number can tell
        newest = await self._load(
            namespace, name, head.version, head.record_checksum, revision=revision
        )
        out = [newest]
        # still looking for the held record further down the history? (False: it is not
        # in it, and only the current incarnation's versions are collected)
        searching = held is not None or (number_held is not None and head.version > number_held)
        found = False
        while True:
            child = out[-1]
            parent, number = child.parent_checksum, child.version - 1
            if parent is None or number < 1:
                break
            if searching and held is not None and parent == held:
                found = True
                break
            if searching and number_held is not None and number <= number_held:
                if held is None:
                    found = True  # by number: the versions after N
                    break
                searching = False  # the record numbered N is not the held one
            if not searching and child.uid != head.uid:
                break
            try:
                record = await self._load(namespace, name, number, parent, revision=revision)
            except NotFound:
                # pruned by retention (and so is all before): what is retained is newer
                found = searching
                break
            out.append(record)
        if not found:
            # the held record is not in the head's history: the current incarnation's
            # versions (a tombstone's version is not current: only retained ones of its uid)
            out = [r for r in out if r.uid == head.uid]
        out.reverse()
        return out

    # --- cache and verification -----------------------------------------------------------

    async def _read_head(self, namespace: str, name: str) -> tuple[Head | None, int]:
        kv, revision = await self.client.get(self.keys.head(namespace, name))
        if kv is None:
            return None, revision
        head = Head.parse(
            kv.value, mod_revision=kv.mod_revision, what=f"head of {namespace}/{name}"
        )
        return head, revision

    def _lookup(self, key: _Key) -> VersionRecord | None:
        record = self._cache.get(key)
        if record is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            metrics.CACHE_HITS.labels("reader").inc()
        return record

    async def _load(
        self,
        namespace: str,
        name: str,
        version: int,
        expected_record_checksum: str | None,
        *,
        revision: int = 0,
        read_key: bool = False,
        expected_checksum: str | None = None,
    ) -> VersionRecord:
        """Version ``version``, verified: the exact record ``expected_record_checksum``
        names (from the cache if it holds it), or, when None, whatever the key holds
        (as of ``revision``, 0 = now). ``read_key``: read the key even when the record
        named is cached, and refuse stored bytes that are not that record.
        ``expected_checksum``: the data checksum the record must have (the head's)."""
        if expected_record_checksum is not None and not read_key:
            hit = self._lookup((namespace, name, version, expected_record_checksum))
            if hit is not None:
                return hit
        kv, _ = await self.client.get(
            self.keys.version(namespace, name, version), revision=revision
        )
        found = sha256_of(kv.value) if kv is not None else ""
        if kv is not None and expected_record_checksum in (None, found):
            hit = self._lookup((namespace, name, version, found))
            if hit is not None and expected_checksum in (None, hit.checksum):
                return hit
        self.misses += 1
        metrics.CACHE_MISSES.labels("reader").inc()
        if kv is None:
            raise NotFound(f"{namespace}/{name} has no version {version} in the store")
        record = load_record(
            kv.value,
            what=describe(namespace, name, version),
            version=version,
            expected_record_checksum=expected_record_checksum,
            expected_checksum=expected_checksum,
            mod_revision=kv.mod_revision,
        )
        if self.cache_size:
            self._cache[(namespace, name, version, found)] = record
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return record
