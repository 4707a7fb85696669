"""The versioned store: the fenced commit of DESIGN §4 and everything that reads.

Every write of a version is one etcd transaction that succeeds only if

- the writer still holds the Config's lock (``create_revision(lock key)`` equals
  the revision at which it was acquired: the fencing token),
- the head has not moved since it was read (``mod_revision(head)``), and
- the version key does not exist yet (a version is never overwritten),

and the same transaction writes the version and the head, prunes history beyond
``maxVersions`` and releases the lock. A commit whose outcome is unknown is
retried: the retry re-reads the head and finds the first attempt if it landed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etcdconfig.canonical import canonical_json, canonical_object, checksum, sha256_of
from etcdconfig.errors import (
    Conflict,
    CorruptRecord,
    EtcdConfigError,
    EtcdUnavailable,
    InvalidConfig,
    LockLost,
    NotFound,
    StaleIncarnation,
    StoreError,
    ValidationIssue,
)
from etcdconfig.etcd import Compare, DeleteRange, EtcdClient, Put, Range
from etcdconfig.store.keys import Keys
from etcdconfig.store.records import FORMAT, Head, VersionRecord, dump, record_checksum
from etcdconfig.validation import Validator

if TYPE_CHECKING:
    from etcdconfig.concurrency import ConfigLocks, Mutex

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1572864  # etcd's default --max-request-bytes (1.5 MiB)
_REQUEST_OVERHEAD = 4096  # keys, compares and framing of the commit transaction


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ChangeRequest:
    """One observed state of a Config to record."""

    namespace: str
    name: str
    uid: str
    generation: int
    data: Any
    schema: Any | None = None
    author: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=lambda: {"kind": "apply"})
    max_versions: int = 100
    # the caller checked with Kubernetes that `uid` is the object that owns the name now
    owner_confirmed: bool = False


@dataclass(frozen=True)
class CommitResult:
    head: Head
    recorded: bool  # True: this call wrote the version; False: it was already recorded
    record: VersionRecord | None = None
    attempts: int = 1

    @property
    def version(self) -> int:
        return self.head.version

    @property
    def checksum(self) -> str | None:
        return self.head.checksum


@dataclass(frozen=True)
class Problem:
    """One integrity finding of ``verify``: where, what kind, and what exactly."""

    namespace: str
    name: str
    version: int | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" + (f" v{self.version}" if self.version else "")
        return f"{where}: {self.kind}: {self.message}"


class VersionedStore:
    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: str = "/etcdconfig",
        replica_id: str = "",
        validator: Validator | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_attempts: int = 5,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.replica_id = replica_id
        self.validator = validator or Validator()
        self.max_request_bytes = max_request_bytes
        self.max_attempts = max_attempts
        # counters for metrics and benchmarks
        self.stats: dict[str, int] = {
            "commits": 0,
            "already_recorded": 0,
            "conflicts": 0,
            "lost_locks": 0,
            "unknown_outcomes": 0,
            "failed_cas": 0,
        }

    # --- reads ------------------------------------------------------------------------------

    async def head(self, namespace: str, name: str, *, revision: int = 0) -> Head | None:
        kv, _ = await self.client.get(self.keys.head(namespace, name), revision=revision)
        if kv is None:
            return None
        return Head.parse(
            kv.value, mod_revision=kv.mod_revision, what=f"head of {namespace}/{name}"
        )

    async def get_version(self, namespace: str, name: str, version: int) -> VersionRecord:
        kv, _ = await self.client.get(self.keys.version(namespace, name, version))
        if kv is None:
            raise NotFound(f"{namespace}/{name} has no version {version} in the store")
        return VersionRecord.parse(
            kv.value, mod_revision=kv.mod_revision, what=f"{namespace}/{name} version {version}"
        )

    async def current(self, namespace: str, name: str) -> VersionRecord:
        head = await self.head(namespace, name)
        if head is None or head.version == 0:
            raise NotFound(f"{namespace}/{name} has no recorded version")
        return await self.get_version(namespace, name, head.version)

    async def history(
        self, namespace: str, name: str, *, limit: int = 50, before: int | None = None
    ) -> tuple[list[VersionRecord], int | None]:
        """Versions newest first; returns ``(page, cursor)`` where ``cursor`` is the
        ``before`` argument for the next page, or None at the end."""
        start = self.keys.versions(namespace, name)
        end = self.keys.version(namespace, name, before) if before else Keys.end(start)
        res = await self.client.range(start, end, limit=limit, descending=True)
        page = [
            VersionRecord.parse(
                kv.value, mod_revision=kv.mod_revision, what=f"{namespace}/{name} {kv.key.decode()}"
            )
            for kv in res.kvs
        ]
        cursor = page[-1].version if res.more and page else None
        return page, cursor

    async def list_configs(self) -> list[tuple[str, str]]:
        """Every (namespace, name) with a head in the store, sorted."""
        start = self.keys.configs()
        out: list[tuple[str, str]] = []
        key = start
        end = Keys.end(start)
        while True:
            res = await self.client.range(key, end, keys_only=True, limit=1000)
            for kv in res.kvs:
                parsed = self.keys.parse_head_key(kv.key)
                if parsed:
                    out.append(parsed)
            if not res.more or not res.kvs:
                return sorted(out)
            key = res.kvs[-1].key + b"\0"

    # --- the commit ---------------------------------------------------------------------------

    def fencing_compares(self, mutex: Mutex) -> list[Compare]:
        """The compare that makes a write count only while the lock is held."""
        return [mutex.is_owner()]

    async def record(self, change: ChangeRequest, locks: ConfigLocks) -> CommitResult:
        """Lock the Config, commit, release (the commit releases in its own transaction)."""
        head_key = self.keys.head(change.namespace, change.name)
        async with locks.hold(change.namespace, change.name, prefetch=(head_key,)) as mutex:
            return await self.commit(change, mutex)

    async def commit(self, change: ChangeRequest, mutex: Mutex) -> CommitResult:
        """Record ``change`` under ``mutex``; retries an unknown outcome idempotently."""
        unknown = False
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self._commit_once(change, mutex, attempt, after_unknown=unknown)
            except EtcdUnavailable:
                if attempt == self.max_attempts:
                    raise
                unknown = True
                self.stats["unknown_outcomes"] += 1
                log.warning(
                    "commit outcome unknown; re-reading head",
                    extra={"config": f"{change.namespace}/{change.name}", "attempt": attempt},
                )
                await asyncio.sleep(min(1.0, 0.1 * 2**attempt))  # retry pacing
        raise AssertionError("unreachable")

    def _check_size(self, change: ChangeRequest, record_raw: bytes, head_raw: bytes) -> None:
        size = len(record_raw) + len(head_raw) + _REQUEST_OVERHEAD
        if size > self.max_request_bytes:
            raise InvalidConfig(
                [
                    ValidationIssue(
                        "data",
                        f"the version record would be {size} bytes, over etcd's request "
                        f"limit of {self.max_request_bytes} bytes; make spec.data smaller",
                    )
                ],
                reason="TooLarge",
            )

    async def _commit_once(
        self, change: ChangeRequest, mutex: Mutex, attempt: int, *, after_unknown: bool
    ) -> CommitResult:
        ns, name = change.namespace, change.name
        head_key = self.keys.head(ns, name)
        # the head as read in the lock's own transaction saves a round trip; after an
        # unknown outcome or a retry, always read it afresh
        found, head_kv = mutex.take_prefetched(head_key)
        if not found or attempt > 1 or after_unknown:
            head_kv, _ = await self.client.get(head_key)
        head = (
            Head.parse(
                head_kv.value, mod_revision=head_kv.mod_revision, what=f"head of {ns}/{name}"
            )
            if head_kv
            else None
        )
        # the data is canonicalised once: hashed, validated by checksum, spliced into the record
        data_raw = canonical_json(change.data) if isinstance(change.data, dict) else None
        data_checksum = sha256_of(data_raw) if data_raw is not None else None
        if head is not None and head.uid == change.uid and not head.deleted:
            if head.generation >= change.generation:
                landed = (
                    after_unknown
                    and head.generation == change.generation
                    and head.checksum == data_checksum
                )
                if landed:
                    mutex.released_by_commit()
                    self.stats["commits"] += 1
                else:
                    self.stats["already_recorded"] += 1
                return CommitResult(head=head, recorded=landed, attempts=attempt)
        elif head is not None and head.uid == change.uid and head.deleted:
            raise StaleIncarnation(
                f"{ns}/{name} uid {change.uid} was deleted; its late events write nothing"
            )
        elif head is not None and not head.deleted and not change.owner_confirmed:
            raise StaleIncarnation(
                f"{ns}/{name}: the store's head belongs to uid {head.uid}, not {change.uid}; "
                "confirm which object owns the name before recording"
            )

        self.validator.require_valid(change.data, change.schema, data_checksum=data_checksum)
        assert data_checksum is not None
        assert data_raw is not None
        continues = head is not None and not head.purged and head.version > 0
        version = head.version + 1 if head is not None and continues else 1
        parent = head.record_checksum if head is not None and continues else None
        recorded_at = now_rfc3339()
        record: dict[str, Any] = {
            "format": FORMAT,
            "version": version,
            "uid": change.uid,
            "generation": change.generation,
            "checksum": data_checksum,
            "parentChecksum": parent,
            "data": change.data,
            "recordedAt": recorded_at,
            "recordedBy": self.replica_id,
            "author": change.author,
            "origin": change.origin,
            "fencingRevision": mutex.revision,
        }
        record_raw = canonical_object(
            {
                k: (data_raw if k == "data" else canonical_json(v, "record"))
                for k, v in record.items()
            }
        )
        rc = sha256_of(record_raw)
        new_head = Head(
            version=version,
            uid=change.uid,
            generation=change.generation,
            checksum=data_checksum,
            record_checksum=rc,
            recorded_at=recorded_at,
        )
        head_raw = dump(new_head.to_json())
        self._check_size(change, record_raw, head_raw)

        version_key = self.keys.version(ns, name, version)
        success: list[Put | DeleteRange | Range] = [
            Put(version_key, record_raw),
            Put(head_key, head_raw),
            DeleteRange(mutex.key),
        ]
        oldest_kept = version - change.max_versions + 1
        if oldest_kept > 1:
            success.append(
                DeleteRange(self.keys.versions(ns, name), self.keys.version(ns, name, oldest_kept))
            )
        compares = [
            *self.fencing_compares(mutex),
            Compare.mod_revision(head_key, "=", head_kv.mod_revision if head_kv else 0),
            Compare.create_revision(version_key, "=", 0),
        ]
        # read the version back inside the same transaction: etcd applies the ops in
        # order, so this returns what it stored (post-update integrity, no extra round trip)
        success.append(Range(version_key))
        res = await self.client.txn(
            compares, success, [Range(head_key), Range(mutex.key), Range(version_key)]
        )
        if not res.succeeded:
            self.stats["failed_cas"] += 1
            return self._classify_failure(change, mutex, res.responses, head_kv, attempt)
        mutex.released_by_commit()
        self.stats["commits"] += 1
        # records are stored canonical: the bytes read back must hash to recordChecksum
        readback = res.responses[-1]
        stored = readback.kvs[0] if readback is not None and readback.kvs else None
        if stored is None or sha256_of(stored.value) != rc:
            found_rc = sha256_of(stored.value) if stored else "missing"
            raise CorruptRecord(
                f"{ns}/{name} version {version} did not read back as written "
                f"(record checksum {found_rc} != {rc})"
            )
        return CommitResult(
            head=new_head, recorded=True, record=VersionRecord(raw=record), attempts=attempt
        )

    def _classify_failure(
        self,
        change: ChangeRequest,
        mutex: Mutex,
        responses: tuple[Any, ...],
        old_head_kv: Any,
        attempt: int,
    ) -> CommitResult:
        ns, name = change.namespace, change.name
        head_res, lock_res, version_res = responses
        lock_kvs = lock_res.kvs if lock_res else ()
        if not lock_kvs or lock_kvs[0].create_revision != mutex.revision:
            self.stats["lost_locks"] += 1
            mutex.released_by_commit()
            raise LockLost(
                f"{ns}/{name}: the lock was lost before the commit (session lease expired?); "
                "nothing was written"
            )
        head_kvs = head_res.kvs if head_res else ()
        if head_kvs:
            now = Head.parse(head_kvs[0].value, mod_revision=head_kvs[0].mod_revision)
            if now.uid == change.uid and not now.deleted and now.generation >= change.generation:
                self.stats["already_recorded"] += 1
                return CommitResult(head=now, recorded=False, attempts=attempt)
        moved = (head_kvs[0].mod_revision if head_kvs else 0) != (
            old_head_kv.mod_revision if old_head_kv else 0
        )
        if not moved and version_res and version_res.kvs:
            raise CorruptRecord(
                f"{ns}/{name}: a version key exists beyond the head (written by something "
                "else?); refusing to overwrite it — run `etcdconfig verify`"
            )
        self.stats["conflicts"] += 1
        raise Conflict(f"{ns}/{name}: the head moved during the commit; retry")

    # --- deletion -----------------------------------------------------------------------------

    async def delete(
        self, namespace: str, name: str, uid: str, mutex: Mutex, *, purge: bool
    ) -> Head | None:
        """Tombstone the head (Retain) or remove history and leave a tombstone (Purge).

        The tombstone stops late events of the deleted object from writing; a
        re-created Config (new uid) continues the numbering after Retain.
        """
        head_key = self.keys.head(namespace, name)
        head_kv, _ = await self.client.get(head_key)
        head = Head.parse(head_kv.value) if head_kv else None
        if head is not None and head.uid != uid and not head.deleted:
            log.info(
                "head belongs to another incarnation; nothing to delete",
                extra={"config": f"{namespace}/{name}"},
            )
            return head
        if head is not None and head.uid == uid and head.deleted and head.purged == purge:
            return head
        tomb = Head(
            version=0 if purge or head is None else head.version,
            uid=uid,
            generation=head.generation if head else 0,
            checksum=None if purge or head is None else head.checksum,
            record_checksum=None if purge or head is None else head.record_checksum,
            recorded_at=now_rfc3339(),
            deleted=True,
            purged=purge,
        )
        ops: list[Put | DeleteRange | Range] = [
            Put(head_key, dump(tomb.to_json())),
            DeleteRange(mutex.key),
        ]
        if purge:
            versions = self.keys.versions(namespace, name)
            ops.insert(0, DeleteRange(versions, Keys.end(versions)))
        res = await self.client.txn(
            [
                *self.fencing_compares(mutex),
                Compare.mod_revision(head_key, "=", head_kv.mod_revision if head_kv else 0),
            ],
            ops,
        )
        if not res.succeeded:
            raise Conflict(f"{namespace}/{name}: lock lost or head moved during deletion; retry")
        mutex.released_by_commit()
        return tomb

    # --- integrity ----------------------------------------------------------------------------

    async def verify(self, namespace: str, name: str) -> list[Problem]:
        """Re-hash every retained version and the checksum chain; [] when intact."""
        problems: list[Problem] = []

        def add(version: int | None, kind: str, message: str) -> None:
            problems.append(Problem(namespace, name, version, kind, message))

        # one snapshot: the head and every version as of the same revision, so a
        # commit landing in between is never mistaken for a version beyond the head
        head_kv, snapshot = await self.client.get(self.keys.head(namespace, name))
        head: Head | None = None
        if head_kv is not None:
            try:
                head = Head.parse(head_kv.value, mod_revision=head_kv.mod_revision)
            except EtcdConfigError as exc:
                add(None, "corrupt-head", str(exc))
        records: list[VersionRecord] = []
        start = self.keys.versions(namespace, name)
        end = Keys.end(start)
        key = start
        while True:
            res = await self.client.range(key, end, limit=100, revision=snapshot)
            for kv in res.kvs:
                key_text = kv.key.decode(errors="replace")
                try:
                    key_version = int(key_text.rsplit("/", 1)[1])
                except ValueError:
                    add(None, "unexpected-key", f"unexpected key {key_text!r} under versions/")
                    continue
                try:
                    rec = VersionRecord.parse(kv.value, mod_revision=kv.mod_revision)
                except StoreError as exc:
                    add(key_version, "corrupt-record", str(exc))
                    continue
                if rec.version != key_version:
                    add(key_version, "wrong-version", f"record says version {rec.version}")
                    continue
                try:
                    computed = checksum(rec.data)
                except (EtcdConfigError, AssertionError) as exc:
                    add(key_version, "corrupt-record", f"data cannot be hashed: {exc}")
                    continue
                if computed != rec.checksum:
                    add(
                        key_version,
                        "checksum-mismatch",
                        f"data hashes to {computed}, record says {rec.checksum}",
                    )
                records.append(rec)
            if not res.more or not res.kvs:
                break
            key = res.kvs[-1].key + b"\0"

        prev: VersionRecord | None = None
        for rec in records:
            if prev is None:
                if rec.version == 1 and rec.parent_checksum is not None:
                    add(1, "chain-broken", "version 1 has a parentChecksum")
            elif rec.version != prev.version + 1:
                add(
                    rec.version,
                    "missing-versions",
                    f"versions {prev.version + 1}..{rec.version - 1} are missing",
                )
            elif rec.parent_checksum != prev.record_checksum():
                add(
                    rec.version,
                    "chain-broken",
                    f"parentChecksum {rec.parent_checksum} != recordChecksum of version "
                    f"{prev.version} ({prev.record_checksum()})",
                )
            prev = rec
        if head is not None:
            for rec in records:
                if rec.version > head.version:
                    add(
                        rec.version,
                        "beyond-head",
                        f"stored after the head's version {head.version} "
                        "(written by something else?)",
                    )
            records = [r for r in records if r.version <= head.version]
            prev = records[-1] if records else None
        if head is not None and not head.purged and head.version > 0:
            if prev is None or prev.version != head.version:
                add(
                    head.version,
                    "head-mismatch",
                    f"head points to version {head.version}, newest stored is "
                    f"{prev.version if prev else 'none'}",
                )
            else:
                if head.record_checksum != prev.record_checksum():
                    add(
                        head.version,
                        "head-mismatch",
                        f"head recordChecksum {head.record_checksum} != {prev.record_checksum()}",
                    )
                if head.checksum != prev.checksum:
                    add(head.version, "head-mismatch", "head checksum differs from the record's")
        return problems


__all__ = [
    "ChangeRequest",
    "CommitResult",
    "Problem",
    "VersionedStore",
    "canonical_json",
    "record_checksum",
]
