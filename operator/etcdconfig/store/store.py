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
import contextlib
import dataclasses
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
    OwnerUnconfirmed,
    StaleIncarnation,
    StoreError,
    ValidationIssue,
)
from etcdconfig.etcd import Compare, DeleteRange, EtcdClient, KeyValue, Put, Range
from etcdconfig.rollout import Outcome, outcomes
from etcdconfig.store.integrity import describe, load_record
from etcdconfig.store.keys import Keys
from etcdconfig.store.records import (
    FORMAT,
    Head,
    Incarnation,
    Sizes,
    VersionRecord,
    dump,
    record_checksum,
)
from etcdconfig.validation import Validator

if TYPE_CHECKING:
    from collections.abc import Callable

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
    # retention by bytes: the retained version records' total stays within it (the new
    # version is kept whatever its size); None: by count alone
    max_bytes: int | None = None
    # the caller checked with Kubernetes that `uid` is the object that owns the name now
    owner_confirmed: bool = False


@dataclass(frozen=True)
class CommitResult:
    head: Head
    recorded: bool  # True: this call wrote the version; False: it was already recorded
    record: VersionRecord | None = None
    attempts: int = 1
    # the retained versions' record sizes after the commit (None: not known, e.g. when
    # the version was recorded already)
    sizes: Sizes | None = None

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

    async def get_version(
        self,
        namespace: str,
        name: str,
        version: int,
        *,
        expected_record_checksum: str | None = None,
        revision: int = 0,
    ) -> VersionRecord:
        """Version ``version``, verified: its data must hash to its checksum (and the
        stored record to ``expected_record_checksum`` when given); a tampered record
        raises ``CorruptRecord`` instead of being served or reused."""
        kv, _ = await self.client.get(
            self.keys.version(namespace, name, version), revision=revision
        )
        if kv is None:
            raise NotFound(f"{namespace}/{name} has no version {version} in the store")
        return load_record(
            kv.value,
            what=describe(namespace, name, version),
            version=version,
            expected_record_checksum=expected_record_checksum,
            mod_revision=kv.mod_revision,
        )

    async def current(self, namespace: str, name: str) -> VersionRecord:
        """The head's version, as of the head's own revision and matching its record
        checksum (a Purge and re-create in between cannot swap another record in)."""
        head_kv, revision = await self.client.get(self.keys.head(namespace, name))
        head = Head.parse(head_kv.value, mod_revision=head_kv.mod_revision) if head_kv else None
        if head is None or head.version == 0:
            raise NotFound(f"{namespace}/{name} has no recorded version")
        return await self.get_version(
            namespace,
            name,
            head.version,
            expected_record_checksum=head.record_checksum,
            revision=revision,
        )

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

    async def rollouts(self, namespace: str, name: str) -> list[Outcome]:
        """The rollout records of every incarnation of ``namespace/name``, oldest version
        first (docs/rollouts.md); records that do not parse are skipped."""
        prefix = self.keys.rollouts(namespace, name)
        res = await self.client.range(prefix, self.keys.end(prefix))
        return outcomes(kv.value for kv in res.kvs)

    async def prune_rollouts(self, namespace: str, name: str) -> int:
        """Delete the rollout records, of any incarnation, of versions below the oldest
        one retained: a later incarnation's retention prunes an earlier one's versions
        but only its own records. Run by the integrity scan; returns how many went."""
        ns = namespace
        start = self.keys.versions(ns, name)
        low = await self.client.range(start, self.keys.end(start), limit=1, keys_only=True)
        if not low.kvs:
            return 0  # nothing retained: the records stay with the history (Retain)
        oldest = int(low.kvs[0].key.decode().rsplit("/", 1)[1])
        prefix = self.keys.rollouts(ns, name)
        found = await self.client.range(prefix, self.keys.end(prefix), keys_only=True)
        stale: dict[str, int] = {}
        for kv in found.kvs:
            uid, _, number = kv.key[len(prefix) :].decode(errors="replace").partition("/")
            if number.isdigit() and int(number) < oldest:
                stale[uid] = stale.get(uid, 0) + 1
        if not stale:
            return 0
        await self.client.txn(
            [],
            [
                DeleteRange(
                    self.keys.rollouts_of(ns, name, uid), self.keys.rollout(ns, name, uid, oldest)
                )
                for uid in sorted(stale)
            ],
        )
        return sum(stale.values())

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

    def lock_prefetch(self, namespace: str, name: str, uid: str) -> tuple[bytes, ...]:
        """The keys a commit or deletion reads first: read them in the lock's own
        transaction (one round trip less when the lock is free)."""
        return (
            self.keys.head(namespace, name),
            self.keys.incarnation(namespace, name, uid),
            self.keys.sizes(namespace, name),
        )

    async def record(self, change: ChangeRequest, locks: ConfigLocks) -> CommitResult:
        """Lock the Config, commit, release (the commit releases in its own transaction)."""
        prefetch = self.lock_prefetch(change.namespace, change.name, change.uid)
        async with locks.hold(change.namespace, change.name, prefetch=prefetch) as mutex:
            return await self.commit(change, mutex)

    async def commit(self, change: ChangeRequest, mutex: Mutex) -> CommitResult:
        """Record ``change`` under ``mutex``; retries an unknown outcome idempotently.

        Every attempt that was sent is remembered as the head it would make: the
        record is unique to this attempt (it carries the fencing revision, the replica
        and the time), so "did my write land?" is answered by finding that exact
        record, never by (uid, generation), which another writer may also have stored.
        """
        sent: list[Head] = []
        unknown = False
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self._commit_once(change, mutex, attempt, sent, after_unknown=unknown)
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

    async def _read_state(
        self, mutex: Mutex, keys: tuple[bytes, ...], *, fresh: bool
    ) -> list[KeyValue | None]:
        """``keys`` as read with the lock (prefetched) or, when ``fresh`` or not all
        prefetched, as of now in one round trip."""
        if not fresh:
            got = [mutex.take_prefetched(k) for k in keys]
            if all(found for found, _ in got):
                return [kv for _, kv in got]
        res = await self.client.txn([], [Range(k) for k in keys])
        return [r.kvs[0] if r is not None and r.kvs else None for r in res.responses]

    async def _commit_once(
        self,
        change: ChangeRequest,
        mutex: Mutex,
        attempt: int,
        sent: list[Head],
        *,
        after_unknown: bool,
    ) -> CommitResult:
        ns, name, uid = change.namespace, change.name, change.uid
        head_key = self.keys.head(ns, name)
        inc_key = self.keys.incarnation(ns, name, uid)
        sizes_key = self.keys.sizes(ns, name)
        # the head as read in the lock's own transaction saves a round trip; after an
        # unknown outcome or a retry, always read it afresh
        head_kv, inc_kv, sizes_kv = await self._read_state(
            mutex, (head_key, inc_key, sizes_key), fresh=attempt > 1 or after_unknown
        )
        head = (
            Head.parse(
                head_kv.value, mod_revision=head_kv.mod_revision, what=f"head of {ns}/{name}"
            )
            if head_kv
            else None
        )
        inc = (
            Incarnation.parse(
                inc_kv.value,
                mod_revision=inc_kv.mod_revision,
                what=f"incarnation {uid} of {ns}/{name}",
            )
            if inc_kv
            else None
        )
        # a previous attempt whose outcome was unknown may have landed: find its record
        if sent and head is not None:
            ours = await self._landed(ns, name, head, sent)
            if ours is not None:
                mutex.released_by_commit()  # the landed transaction deleted the lock key
                self.stats["commits"] += 1
                return CommitResult(head=_newest(head, ours), recorded=True, attempts=attempt)
        # a uid whose deletion was ever recorded never writes again, whatever the head
        # holds now (another incarnation's tombstone included)
        if (inc is not None and inc.deleted) or (
            head is not None and head.uid == uid and head.deleted
        ):
            raise StaleIncarnation(
                f"{ns}/{name} uid {uid} was deleted; its late events write nothing"
            )
        if head is not None and head.uid == uid and head.generation >= change.generation:
            self.stats["already_recorded"] += 1
            return CommitResult(head=head, recorded=False, attempts=attempt)
        # a uid the head does not name: only the object that owns the name now may write
        # (a stale copy of a deleted object must not), which only the API server knows
        if (head is None or head.uid != uid) and not change.owner_confirmed:
            raise OwnerUnconfirmed(
                f"{ns}/{name}: the store has no live record of uid {uid}; "
                "confirm with the API server that it owns the name before recording"
            )

        # the data is canonicalised once: hashed, validated by checksum, spliced into the record
        data_raw = canonical_json(change.data) if isinstance(change.data, dict) else None
        data_checksum = sha256_of(data_raw) if data_raw is not None else None
        self.validator.require_valid(change.data, change.schema, data_checksum=data_checksum)
        assert data_checksum is not None
        assert data_raw is not None
        # numbering continues from whatever the head points at (a tombstone included)
        continues = head is not None and head.version > 0
        version = head.version + 1 if head is not None and continues else 1
        parent = head.record_checksum if head is not None and continues else None
        recorded_at = now_rfc3339()
        record: dict[str, Any] = {
            "format": FORMAT,
            "version": version,
            "uid": uid,
            "generation": change.generation,
            "checksum": data_checksum,
            "parentChecksum": parent,
            "data": change.data,
            "recordedAt": recorded_at,
            "recordedBy": self.replica_id,
            "author": change.author,
            "origin": change.origin,
            "schema": change.schema,
            "schemaChecksum": None if change.schema is None else checksum(change.schema, "schema"),
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
            uid=uid,
            generation=change.generation,
            checksum=data_checksum,
            record_checksum=rc,
            recorded_at=recorded_at,
        )
        head_raw = dump(new_head.to_json())
        # retention: by count, and by bytes (the usage index says each retained record's
        # size); never the new version
        held = await self._sizes(ns, name, head if continues else None, sizes_kv)
        kept = [e for e in held.entries if e[0] < version] + [(version, len(record_raw))]
        oldest_kept = version - change.max_versions + 1
        if change.max_bytes is not None:
            total = 0
            for v, size in reversed(kept):
                total += size
                if total > change.max_bytes and v != version:
                    oldest_kept = max(oldest_kept, v + 1)
                    break
        sizes = Sizes(tuple(e for e in kept if e[0] >= oldest_kept), head=rc)
        sizes_raw = sizes.raw()
        self._check_size(change, record_raw, head_raw)
        # the index never costs the data its room: one that would push the request over
        # etcd's limit is dropped (the next commit measures the records)
        keep_index = (
            len(record_raw) + len(head_raw) + len(sizes_raw) + _REQUEST_OVERHEAD
            <= self.max_request_bytes
        )

        version_key = self.keys.version(ns, name, version)
        success: list[Put | DeleteRange | Range] = [
            Put(version_key, record_raw),
            Put(head_key, head_raw),
        ]
        compares = [
            *self.fencing_compares(mutex),
            Compare.mod_revision(head_key, "=", head_kv.mod_revision if head_kv else 0),
            Compare.create_revision(version_key, "=", 0),
            # the uid's incarnation record is as read: above all, not deleted since
            Compare.mod_revision(inc_key, "=", inc_kv.mod_revision if inc_kv else 0),
        ]
        if head is None or head.uid != uid:
            # this uid's first version: remember it for good (its deletion will mark it)
            first = Incarnation(uid=uid, first_version=version, recorded_at=recorded_at)
            success.append(Put(inc_key, dump(first.to_json())))
        if head is not None and head.uid != uid and not head.deleted:
            # the head's uid vanished without a tombstone (deleted before the finalizer,
            # or the finalizer removed by hand): it ends here, and never writes again
            success_op, compare = await self._supersede(ns, name, head, uid, recorded_at)
            success.append(success_op)
            compares.append(compare)
        success.append(DeleteRange(mutex.key))  # release the lock in the same transaction
        success.append(Put(sizes_key, sizes_raw) if keep_index else DeleteRange(sizes_key))
        if oldest_kept > 1:
            success.append(
                DeleteRange(self.keys.versions(ns, name), self.keys.version(ns, name, oldest_kept))
            )
            # and the outcomes of rolling them out: nothing can roll back to them now
            success.append(
                DeleteRange(
                    self.keys.rollouts_of(ns, name, uid),
                    self.keys.rollout(ns, name, uid, oldest_kept),
                )
            )
        # read the version back inside the same transaction: etcd applies the ops in
        # order, so this returns what it stored (post-update integrity, no extra round trip)
        success.append(Range(version_key))
        sent.append(new_head)
        res = await self.client.txn(
            compares, success, [Range(head_key), Range(mutex.key), Range(version_key)]
        )
        if not res.succeeded:
            self.stats["failed_cas"] += 1
            return await self._classify_failure(
                change, mutex, res.responses, head_kv, sent, attempt
            )
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
            head=new_head,
            recorded=True,
            record=VersionRecord(raw=record),
            attempts=attempt,
            sizes=sizes,
        )

    async def _sizes(self, ns: str, name: str, head: Head | None, kv: KeyValue | None) -> Sizes:
        """The usage index as stored when it matches the head (its newest entry is the
        version the head points at), else measured from the version records: an index
        from before it existed, one a replica of an earlier release left behind, or one
        that does not parse."""
        if head is None:
            return Sizes()
        found = Sizes.parse(kv.value, self.max_request_bytes) if kv is not None else None
        if (
            found is not None
            and found.newest == head.version
            and found.head == head.record_checksum
        ):
            return found
        return dataclasses.replace(await self.measure(ns, name), head=head.record_checksum)

    async def measure(self, namespace: str, name: str) -> Sizes:
        """Each retained version record's stored size, read from the records (paged)."""
        start = self.keys.versions(namespace, name)
        end = Keys.end(start)
        entries: list[tuple[int, int]] = []
        key = start
        while True:
            res = await self.client.range(key, end, limit=16)
            for kv in res.kvs:
                number = kv.key.decode(errors="replace").rsplit("/", 1)[1]
                if number.isdigit():
                    entries.append((int(number), len(kv.value)))
            if not res.more or not res.kvs:
                return Sizes(tuple(entries))
            key = res.kvs[-1].key + b"\0"

    async def usage(self, namespace: str, name: str) -> Sizes:
        """The retained versions' record sizes (the index; measured when it is stale)."""
        head = await self.head(namespace, name)
        kv, _ = await self.client.get(self.keys.sizes(namespace, name))
        return await self._sizes(namespace, name, head, kv)

    async def _supersede(
        self, ns: str, name: str, head: Head, uid: str, recorded_at: str
    ) -> tuple[Put, Compare]:
        """The op (and its compare) that ends the head's incarnation for a newer uid."""
        key = self.keys.incarnation(ns, name, head.uid)
        kv, _ = await self.client.get(key)
        old = Incarnation.parse(kv.value) if kv else Incarnation(uid=head.uid)
        ended = dataclasses.replace(
            old,
            last_version=head.version,
            deleted=True,
            superseded_by=uid,
            recorded_at=recorded_at,
        )
        return (
            Put(key, dump(ended.to_json())),
            Compare.mod_revision(key, "=", kv.mod_revision if kv else 0),
        )

    async def _landed(self, ns: str, name: str, head: Head, sent: list[Head]) -> Head | None:
        """Which of the attempts ``sent`` landed, if any (the head it made). Only that
        exact record counts (its recordChecksum): the same (uid, generation) written by
        another holder does not."""
        for ours in sent:
            version, rc = ours.version, ours.record_checksum
            if head.record_checksum == rc:
                return ours
            if version > head.version:
                continue  # the head never reached it (or a Purge removed it)
            kv, _ = await self.client.get(self.keys.version(ns, name, version))
            if kv is not None:
                if sha256_of(kv.value) == rc:
                    return ours
                continue
            # pruned by retention since: its successor names it as parent
            nxt, _ = await self.client.get(self.keys.version(ns, name, version + 1))
            if nxt is not None:
                with contextlib.suppress(StoreError):
                    if VersionRecord.parse(nxt.value).parent_checksum == rc:
                        return ours
        return None

    async def _classify_failure(
        self,
        change: ChangeRequest,
        mutex: Mutex,
        responses: tuple[Any, ...],
        old_head_kv: Any,
        sent: list[Head],
        attempt: int,
    ) -> CommitResult:
        """Say why a commit transaction failed, by what the head says first: an earlier
        attempt of ours may have landed (and released the lock) in the meantime."""
        ns, name = change.namespace, change.name
        head_res, lock_res, version_res = responses
        head_kvs = head_res.kvs if head_res else ()
        now = (
            Head.parse(head_kvs[0].value, mod_revision=head_kvs[0].mod_revision)
            if head_kvs
            else None
        )
        # the attempt that just failed did not land; an earlier one with an unknown
        # outcome may have
        ours = await self._landed(ns, name, now, sent[:-1]) if now is not None else None
        if now is not None and ours is not None:
            mutex.released_by_commit()
            self.stats["commits"] += 1
            return CommitResult(head=_newest(now, ours), recorded=True, attempts=attempt)
        if (
            now is not None
            and now.uid == change.uid
            and not now.deleted
            and now.generation >= change.generation
        ):
            self.stats["already_recorded"] += 1
            return CommitResult(head=now, recorded=False, attempts=attempt)
        lock_kvs = lock_res.kvs if lock_res else ()
        if not lock_kvs or lock_kvs[0].create_revision != mutex.revision:
            self.stats["lost_locks"] += 1
            mutex.released_by_commit()
            raise LockLost(
                f"{ns}/{name}: the lock was lost before the commit (session lease expired?); "
                "nothing was written"
            )
        moved = (head_kvs[0].mod_revision if head_kvs else 0) != (
            old_head_kv.mod_revision if old_head_kv else 0
        )
        if not moved and version_res and version_res.kvs:
            raise CorruptRecord(
                f"{ns}/{name}: a version key exists beyond the head (written by something "
                "else?); refusing to overwrite it — run `etcdconfig verify`"
            )
        self.stats["conflicts"] += 1
        raise Conflict(f"{ns}/{name}: the head or the incarnation moved during the commit; retry")

    # --- deletion -----------------------------------------------------------------------------

    async def delete(
        self, namespace: str, name: str, uid: str, mutex: Mutex, *, purge: bool
    ) -> Head | None:
        """Record the deletion of incarnation ``uid``: its incarnation record says deleted
        (for good), and the head becomes a tombstone unless another uid's live head
        holds the name.

        Retain keeps every version. Purge removes the versions this uid recorded, and
        only those: history an earlier incarnation kept under Retain survives, and the
        tombstone then points at the newest remaining version, from which a re-created
        Config continues the numbering (at 1 when nothing remains).
        """
        ns = namespace
        head_key = self.keys.head(ns, name)
        inc_key = self.keys.incarnation(ns, name, uid)
        sizes_key = self.keys.sizes(ns, name)
        head_kv, inc_kv, sizes_kv = await self._read_state(
            mutex, (head_key, inc_key, sizes_key), fresh=True
        )
        head = Head.parse(head_kv.value, what=f"head of {ns}/{name}") if head_kv else None
        inc = (
            Incarnation.parse(inc_kv.value, what=f"incarnation {uid} of {ns}/{name}")
            if inc_kv
            else None
        )
        owns_head = head is not None and head.uid == uid
        if inc is not None and inc.deleted and (inc.purged or not purge):
            return head  # already recorded
        legacy_tomb = inc is None and owns_head and head is not None and head.deleted
        if legacy_tomb and head is not None and (head.purged or not purge):
            return head  # recorded by an earlier release (no incarnation record yet)
        now = now_rfc3339()
        # the versions this uid recorded: a contiguous run ending at its last version
        last = (
            head.version
            if owns_head and head is not None
            else (inc.last_version if inc is not None else None)
        )
        first = inc.first_version if inc is not None else None
        own: list[KeyValue] = []
        if last and (first is not None or inc is None):
            own = await self._own_versions(ns, name, uid, first, last)
        # Purge removes the uid's run only where nothing chains on it: the head (this
        # uid's, or a tombstone) must point at the run's last version. Once a later
        # incarnation recorded on top of it (it superseded this uid, whose finalizer
        # runs late), removing the run would break the chain: it is kept.
        purging = bool(
            purge
            and own
            and last
            and head is not None
            and (owns_head or head.deleted)
            and head.version == last
        )
        if purge and own and not purging:
            log.warning(
                "Purge keeps this incarnation's versions: a later one's history chains on them",
                extra={"config": f"{ns}/{name}", "uid": uid},
            )
        if inc is not None and inc.deleted and not purging:
            return head  # the deletion is recorded; there is nothing (more) to purge
        # "purged": none of this uid's versions remain (none kept because of chaining)
        purged = purging or (purge and not own)
        ops: list[Put | DeleteRange | Range] = []
        tomb: Head | None = None
        if purging and last:
            low = VersionRecord.parse(own[-1].value).version
            ops.append(
                DeleteRange(self.keys.version(ns, name, low), self.keys.version(ns, name, last + 1))
            )
        if purged:  # the outcomes of this uid's rollouts go with its versions
            rollouts = self.keys.rollouts_of(ns, name, uid)
            ops.append(DeleteRange(rollouts, self.keys.end(rollouts)))
        if head is None or head.deleted or owns_head:
            pointer: tuple[int, str | None, str | None] = (
                (head.version, head.checksum, head.record_checksum) if head else (0, None, None)
            )
            if purging:
                # the tombstone points at the newest version that remains
                pointer = await self._remaining_below(ns, name, own[-1])
            tomb = Head(
                version=pointer[0],
                uid=uid,
                generation=head.generation if owns_head and head is not None else 0,
                checksum=pointer[1],
                record_checksum=pointer[2],
                recorded_at=now,
                deleted=True,
                purged=purged,
            )
            ops.append(Put(head_key, dump(tomb.to_json())))
        if purging and last:
            # the usage index loses the purged run, and names the tombstone's pointer; one
            # that does not parse or describes another head goes (the next commit measures)
            limit = self.max_request_bytes
            index = Sizes.parse(sizes_kv.value, limit) if sizes_kv is not None else None
            if index is None or head is None or index.head != head.record_checksum:
                ops.append(DeleteRange(sizes_key))
            else:
                remaining = Sizes(
                    tuple(e for e in index.entries if e[0] < low),
                    head=tomb.record_checksum if tomb is not None else None,
                )
                ops.append(Put(sizes_key, remaining.raw()))
        ended = Incarnation(
            uid=uid,
            first_version=first
            if first is not None
            else (VersionRecord.parse(own[-1].value).version if own else None),
            last_version=last if own else (inc.last_version if inc is not None else None),
            deleted=True,
            purged=purged,
            superseded_by=inc.superseded_by if inc is not None else None,
            recorded_at=now,
        )
        ops.append(Put(inc_key, dump(ended.to_json())))
        ops.append(DeleteRange(mutex.key))
        res = await self.client.txn(
            [
                *self.fencing_compares(mutex),
                Compare.mod_revision(head_key, "=", head_kv.mod_revision if head_kv else 0),
                Compare.mod_revision(inc_key, "=", inc_kv.mod_revision if inc_kv else 0),
            ],
            ops,
        )
        if not res.succeeded:
            raise Conflict(f"{ns}/{name}: lock lost or head moved during deletion; retry")
        mutex.released_by_commit()
        return tomb if tomb is not None else head

    async def _own_versions(
        self, ns: str, name: str, uid: str, first: int | None, last: int
    ) -> list[KeyValue]:
        """The retained records of ``uid``, newest first: scanning down from ``last``
        while the records are this uid's (and not below ``first`` when known)."""
        start = self.keys.version(ns, name, first) if first else self.keys.versions(ns, name)
        end = self.keys.version(ns, name, last + 1)
        out: list[KeyValue] = []
        while True:
            res = await self.client.range(start, end, limit=100, descending=True)
            for kv in res.kvs:
                rec = VersionRecord.parse(kv.value, what=f"{ns}/{name} {kv.key.decode()}")
                if rec.uid != uid:
                    return out
                out.append(kv)
            if not res.more or not res.kvs:
                return out
            end = res.kvs[-1].key

    async def _remaining_below(
        self, ns: str, name: str, oldest_own: KeyValue
    ) -> tuple[int, str | None, str | None]:
        """(version, checksum, recordChecksum) of the newest version below ``oldest_own``
        that stays after a Purge, or (0, None, None) if none does."""
        rec = VersionRecord.parse(oldest_own.value)
        if rec.version <= 1:
            return 0, None, None
        kv, _ = await self.client.get(self.keys.version(ns, name, rec.version - 1))
        if kv is None:
            return 0, None, None  # retention pruned it: nothing remains below
        below = VersionRecord.parse(kv.value)
        return below.version, below.checksum, sha256_of(kv.value)

    # --- integrity ----------------------------------------------------------------------------

    async def _incarnations(
        self, namespace: str, name: str, revision: int, add: Callable[[int | None, str, str], None]
    ) -> dict[str, Incarnation]:
        start = self.keys.incarnations(namespace, name)
        res = await self.client.range(start, Keys.end(start), revision=revision)
        out: dict[str, Incarnation] = {}
        for kv in res.kvs:
            try:
                inc = Incarnation.parse(kv.value, mod_revision=kv.mod_revision)
            except StoreError as exc:
                add(None, "corrupt-incarnation", f"{kv.key.decode(errors='replace')}: {exc}")
                continue
            out[inc.uid] = inc
        return out

    async def incarnations(self, namespace: str, name: str) -> list[Incarnation]:
        """Every incarnation (uid) the store has recorded for the Config, oldest first."""
        start = self.keys.incarnations(namespace, name)
        res = await self.client.range(start, Keys.end(start))
        incs = [Incarnation.parse(kv.value, mod_revision=kv.mod_revision) for kv in res.kvs]
        return sorted(incs, key=lambda i: (i.first_version or 0, i.mod_revision))

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
        incarnations = await self._incarnations(namespace, name, snapshot, add)
        for rec in records:
            ended = incarnations.get(rec.uid)
            if ended is not None and ended.deleted and rec.mod_revision > ended.mod_revision:
                add(
                    rec.version,
                    "written-after-deletion",
                    f"recorded for uid {rec.uid} after its deletion was recorded",
                )
        if head is None:
            if records and head_kv is None:
                add(None, "missing-head", f"{len(records)} version(s) stored but no head")
            return problems
        for rec in records:
            if rec.version > head.version:
                add(
                    rec.version,
                    "beyond-head",
                    f"stored after the head's version {head.version} (written by something else?)",
                )
        records = [r for r in records if r.version <= head.version]
        newest = records[-1] if records else None
        ended = incarnations.get(head.uid)
        if ended is not None and ended.deleted != head.deleted:
            add(
                None,
                "head-mismatch",
                f"head says uid {head.uid} is {'deleted' if head.deleted else 'live'}, its "
                f"incarnation record says {'deleted' if ended.deleted else 'live'}",
            )
        if head.version == 0:
            if not head.deleted:
                add(None, "head-mismatch", "a live head with version 0")
            return problems
        if newest is None or newest.version != head.version:
            add(
                head.version,
                "head-mismatch",
                f"head points to version {head.version}, newest stored is "
                f"{newest.version if newest else 'none'}",
            )
            return problems
        if head.record_checksum != newest.record_checksum():
            add(
                head.version,
                "head-mismatch",
                f"head recordChecksum {head.record_checksum} != {newest.record_checksum()}",
            )
        if head.checksum != newest.checksum:
            add(head.version, "head-mismatch", "head checksum differs from the record's")
        if not head.deleted:
            # the head is what decides "already recorded": a raised generation or another
            # uid there would silently drop every later change
            if head.uid != newest.uid:
                add(
                    head.version,
                    "head-mismatch",
                    f"head says uid {head.uid}, version {newest.version} was recorded for "
                    f"uid {newest.uid}",
                )
            if head.generation != newest.generation:
                add(
                    head.version,
                    "head-mismatch",
                    f"head says generation {head.generation}, version {newest.version} "
                    f"records generation {newest.generation}",
                )
        return problems


def _newest(head: Head, ours: Head) -> Head:
    """The head to report for a commit that landed: the current one if it is still this
    uid's live head (a later generation may have followed), else the one ours made (the
    name may since be a tombstone or another incarnation's)."""
    return head if head.uid == ours.uid and not head.deleted else ours


__all__ = [
    "ChangeRequest",
    "CommitResult",
    "Problem",
    "VersionedStore",
    "canonical_json",
    "record_checksum",
]
