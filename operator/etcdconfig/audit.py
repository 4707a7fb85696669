"""Who made each change: the admission webhook's hand-over to the committing replica.

The API server tells only admission webhooks who sent a request (``userInfo``);
the version is recorded later by the replica that owns the Config, which may not be
the replica that served the webhook. So the webhook leaves a short-lived note in
etcd, keyed by what the committer can recompute from the object it records:

    {p}/authors/{ns}/{name}/{uid}/{sha256 of the RFC 8785 form of spec}
    -> {"requests": [{"user", "groups", "operation", "generation", "stamp",
                      "changeCauseSet", "notedAt"}, ...], "ambiguous": [generation, ...]}

on a lease of ``AUTHOR_TTL`` seconds (a lease is reused for a while, so a note lives
between ``AUTHOR_TTL - LEASE_REUSE`` and ``AUTHOR_TTL`` seconds). The webhook notes
only an admitted, non-dry-run CREATE, or an UPDATE that changes ``spec`` (an
annotation-only update does not change what is recorded, so it never takes the
authorship of a change away from its author).

A note names a *request*, not only the state it would produce: an admitted request
may still be denied by another admission plugin or lose the storage
compare-and-swap to an identical request, so "a note exists for this state" does not
say who made it. Each request is kept beside the others for the same state (the key
is written compare-and-swap: created only when absent, otherwise merged at the
revision read, never overwritten blindly), with its ``stamp``: a digest of the
object's ``managedFields`` entries that touch ``spec`` (manager, operation, time).
The API server sets those before admission, and the stored object carries exactly
the admitted one's, so the committer computes the stamp of the object it records
and accepts only the requests with that stamp and that generation. When they
disagree about who (two users' requests in the same second through the same field
manager) — or when the list overflowed — nobody is named. An object whose stamp
cannot be computed (no ``managedFields`` time on ``spec``) is never attributed.

Audit fails open: a note that cannot be written is logged and the request admitted
(the version is then recorded with the field manager only, ``source: fieldManager``);
a note that cannot be read, or is malformed, leaves the same. See docs/configs.md,
"Audit: who, what, why for every version".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from etcdconfig.canonical import canonical_json, sha256_of
from etcdconfig.errors import Conflict
from etcdconfig.etcd import Compare, Put, Range
from etcdconfig.models import CHANGE_CAUSE_ANNOTATION

if TYPE_CHECKING:
    from etcdconfig.etcd import EtcdClient

log = logging.getLogger(__name__)

AUTHOR_TTL = 6 * 3600  # a note outlives an operator outage of up to ~5 hours
LEASE_REUSE = 3600  # one lease per replica per hour, not one per request
NOTE_TIMEOUT = 3.0  # the webhook's budget for the note (the API server allows 10 s)
MAX_GROUPS = 50
MAX_REQUESTS = 16  # requests kept per (uid, spec); beyond, the oldest generations go
NOTE_ATTEMPTS = 8  # compare-and-swap rounds: each lost round means another note landed
_IDENTITY = ("user", "groups", "operation", "generation", "stamp", "changeCauseSet")


def spec_digest(spec: Any) -> str:
    """What identifies a change for the hand-over: the hex SHA-256 of ``spec``'s RFC
    8785 form (the admitted object's spec is the stored one: defaulting and pruning
    happen before admission)."""
    return sha256_of(canonical_json(spec, "record")).split(":", 1)[1]


def author_key(prefix: str, namespace: str, name: str, uid: str, spec: Any) -> bytes:
    root = prefix.rstrip("/")
    return f"{root}/authors/{namespace}/{name}/{uid}/{spec_digest(spec)}".encode()


def request_stamp(meta: Any) -> str | None:
    """What ties an admission request to the object it stored: a digest of the
    ``managedFields`` entries that touch ``spec`` (manager, operation, time; the
    request's own entry is among them, its time set by the API server before
    admission). None when no such entry has a time (the object cannot be tied to a
    request). The same function serves the webhook (admitted object) and the
    committer (stored object)."""
    entries = (meta or {}).get("managedFields") if isinstance(meta, dict) else None
    if not isinstance(entries, list):
        return None
    touched = sorted(
        (str(e.get("manager", "")), str(e.get("operation", "")), str(e["time"]))
        for e in entries
        if isinstance(e, dict)
        and not e.get("subresource")
        and e.get("time")
        and isinstance(e.get("fieldsV1"), dict)
        and "f:spec" in e["fieldsV1"]
    )
    if not touched:
        return None
    return hashlib.sha256(json.dumps(touched).encode()).hexdigest()[:32]


def _cause(meta: Any) -> str | None:
    annotations = (meta or {}).get("annotations") or {}
    value = annotations.get(CHANGE_CAUSE_ANNOTATION)
    return None if value is None else str(value)


def admission_note(
    operation: str,
    userinfo: Any,
    body: dict[str, Any],
    old: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """The note to leave for an admission request (None: nothing to note).

    ``changeCauseSet``: the request itself set or changed the change-cause
    annotation (a CREATE carrying it, or an UPDATE whose old object had another
    value), so the cause belongs to this change.
    """
    if operation not in ("CREATE", "UPDATE"):
        return None
    if operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec"):
        return None  # metadata only: not a change that is recorded
    info = userinfo if isinstance(userinfo, dict) else {}
    meta = body.get("metadata") or {}
    cause = _cause(meta)
    old_cause = _cause((old or {}).get("metadata")) if operation == "UPDATE" else None
    groups = [str(g) for g in info.get("groups") or []][:MAX_GROUPS]
    return {
        "user": str(info.get("username", "")),
        "groups": groups,
        "operation": operation,
        "generation": int(meta.get("generation") or 0),
        "stamp": request_stamp(meta),
        "changeCauseSet": cause is not None and cause != old_cause,
        "notedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class AuthorBook:
    """Writes (webhook) and reads (committer) the notes, on a reused lease."""

    def __init__(self, client: EtcdClient, prefix: str, *, ttl: int = AUTHOR_TTL) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._lease: tuple[int, float] | None = None  # (id, monotonic time it is replaced)
        self._granting = asyncio.Lock()

    async def _lease_id(self) -> int:
        async with self._granting:
            now = time.monotonic()
            if self._lease is None or now >= self._lease[1]:
                lease_id, _ = await self.client.grant(self.ttl)
                self._lease = (lease_id, now + min(LEASE_REUSE, self.ttl / 2))
            return self._lease[0]

    async def note(
        self, namespace: str, name: str, uid: str, spec: Any, note: dict[str, Any]
    ) -> None:
        """Add the request ``note`` to the notes of this state: created when absent,
        otherwise merged compare-and-swap at the revision read (a concurrent note for
        the same state is never overwritten)."""
        key = author_key(self.prefix, namespace, name, uid, spec)
        lease = await self._lease_id()
        try:
            compare = Compare.create_revision(key, "=", 0)
            current: bytes | None = None
            for _ in range(NOTE_ATTEMPTS):
                merged = _merge(current, note)
                if merged is None:
                    return  # this very request is noted already (a retried call)
                res = await self.client.txn(
                    [compare], [Put(key, merged, lease=lease)], [Range(key)]
                )
                if res.succeeded:
                    return
                got = res.responses[0] if res.responses else None
                kv = got.kvs[0] if got is not None and got.kvs else None
                current = kv.value if kv is not None else None
                compare = (
                    Compare.mod_revision(key, "=", kv.mod_revision)
                    if kv is not None
                    else Compare.create_revision(key, "=", 0)
                )
        except Exception:
            self._lease = None  # the lease may be gone (expired, revoked): grant a new one
            raise
        raise Conflict(f"the author note of {namespace}/{name} kept changing; not noted")

    async def lookup(
        self,
        namespace: str,
        name: str,
        uid: str,
        spec: Any,
        generation: int,
        *,
        stamp: str | None = None,
    ) -> dict[str, Any] | None:
        """The request that made exactly this object state (None: no usable note).

        ``stamp``: ``request_stamp`` of the object being recorded. Only a request
        noted with that stamp and that generation counts (a request that produced this
        spec at another generation, or from another object state — one denied after
        our webhook admitted it — is not this change's); when those disagree about
        the user, none does."""
        if stamp is None:
            return None
        kv, _ = await self.client.get(author_key(self.prefix, namespace, name, uid, spec))
        if kv is None:
            return None
        requests, ambiguous = _parse(kv.value)
        if generation in ambiguous:
            return None
        matching = [
            r for r in requests if r.get("generation") == generation and r.get("stamp") == stamp
        ]
        if not matching:
            return None
        who = {(r["user"], tuple(r["groups"]), bool(r.get("changeCauseSet"))) for r in matching}
        if len(who) != 1:
            return None  # two requests could have made this state: name nobody
        return matching[0]


def _valid_request(r: Any) -> bool:
    return (
        isinstance(r, dict)
        and isinstance(r.get("user"), str)
        and isinstance(r.get("groups"), list)
        and all(isinstance(g, str) for g in r["groups"])
        and isinstance(r.get("generation"), int)
        and not isinstance(r.get("generation"), bool)
        and isinstance(r.get("stamp"), str)
    )


def _parse(raw: bytes | None) -> tuple[list[dict[str, Any]], set[int]]:
    """The well-formed requests of a stored note, and its ambiguous generations. A
    malformed note (or one of the earlier format, which named no request) has none."""
    if raw is None:
        return [], set()
    try:
        value = json.loads(raw)
    except ValueError:
        return [], set()
    if not isinstance(value, dict):
        return [], set()
    requests = value.get("requests")
    ambiguous = value.get("ambiguous")
    return (
        [r for r in requests if _valid_request(r)] if isinstance(requests, list) else [],
        {g for g in ambiguous if isinstance(g, int)} if isinstance(ambiguous, list) else set(),
    )


def _merge(raw: bytes | None, note: dict[str, Any]) -> bytes | None:
    """The stored note with request ``note`` added (None: it is there already)."""
    requests, ambiguous = _parse(raw)
    ident = tuple(note.get(k) for k in _IDENTITY)
    if any(tuple(r.get(k) for k in _IDENTITY) == ident for r in requests):
        return None
    requests.append(note)
    while len(requests) > MAX_REQUESTS:
        oldest = min(requests, key=lambda r: int(r.get("generation") or 0))
        requests.remove(oldest)
        # a request of a generation still noted is forgotten: that generation can no
        # longer be told apart, so it names nobody
        ambiguous.add(int(oldest.get("generation") or 0))
    ambiguous = {g for g in ambiguous if any(r.get("generation") == g for r in requests)}
    value = {"requests": requests, "ambiguous": sorted(ambiguous)}
    return json.dumps(value, sort_keys=True).encode()


async def note_admission(
    book: AuthorBook,
    *,
    operation: str,
    userinfo: Any,
    body: dict[str, Any],
    old: dict[str, Any] | None,
    timeout: float = NOTE_TIMEOUT,
) -> bool:
    """Leave the note for an admitted request; never raises (audit fails open).
    True when a note was written."""
    meta = body.get("metadata") or {}
    ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    try:
        note = admission_note(operation, userinfo, body, old)
        if note is None:
            return False
        uid = str(meta.get("uid") or "")
        if not uid:
            log.warning("admission request without a uid; author not noted", extra={"config": ref})
            return False
        await asyncio.wait_for(
            book.note(
                str(meta.get("namespace", "")),
                str(meta.get("name", "")),
                uid,
                body.get("spec"),
                note,
            ),
            timeout,
        )
        return True
    except Exception as exc:  # audit must never fail an admission
        log.warning(
            "cannot note the author of an admitted change; it will be recorded with its "
            "field manager only",
            extra={"config": ref, "error": f"{type(exc).__name__}: {exc}"},
        )
        return False
