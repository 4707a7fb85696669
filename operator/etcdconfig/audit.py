"""Who made each change: the admission webhook's hand-over to the committing replica.

The API server tells only admission webhooks who sent a request (``userInfo``);
the version is recorded later by the replica that owns the Config, which may not be
the replica that served the webhook. So the webhook leaves a short-lived note in
etcd, keyed by what the committer can recompute from the object it records:

    {p}/authors/{ns}/{name}/{uid}/{sha256 of the RFC 8785 form of spec}
    -> {"user", "groups", "operation", "generation", "changeCauseSet", "notedAt"}

on a lease of ``AUTHOR_TTL`` seconds (a lease is reused for a while, so a note lives
between ``AUTHOR_TTL - LEASE_REUSE`` and ``AUTHOR_TTL`` seconds). The webhook writes a
note only for an admitted, non-dry-run CREATE, or an UPDATE that changes ``spec``
(an annotation-only update does not change what is recorded, so it never takes the
authorship of a change away from its author). When several requests produce the same
spec, the latest note wins: it describes the request that made the object what it is.

Audit fails open: a note that cannot be written is logged and the request admitted
(the version is then recorded with the field manager only, ``source: fieldManager``);
a note that cannot be read leaves the same. See docs/configs.md, "Audit: who, what, why
for every version".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from etcdconfig.canonical import canonical_json, sha256_of
from etcdconfig.models import CHANGE_CAUSE_ANNOTATION

if TYPE_CHECKING:
    from etcdconfig.etcd import EtcdClient

log = logging.getLogger(__name__)

AUTHOR_TTL = 6 * 3600  # a note outlives an operator outage of up to ~5 hours
LEASE_REUSE = 3600  # one lease per replica per hour, not one per request
NOTE_TIMEOUT = 3.0  # the webhook's budget for the note (the API server allows 10 s)
MAX_GROUPS = 50


def spec_digest(spec: Any) -> str:
    """What identifies a change for the hand-over: the hex SHA-256 of ``spec``'s RFC
    8785 form (the admitted object's spec is the stored one: defaulting and pruning
    happen before admission)."""
    return sha256_of(canonical_json(spec, "record")).split(":", 1)[1]


def author_key(prefix: str, namespace: str, name: str, uid: str, spec: Any) -> bytes:
    root = prefix.rstrip("/")
    return f"{root}/authors/{namespace}/{name}/{uid}/{spec_digest(spec)}".encode()


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
        key = author_key(self.prefix, namespace, name, uid, spec)
        lease = await self._lease_id()
        try:
            await self.client.put(key, json.dumps(note, sort_keys=True).encode(), lease=lease)
        except Exception:
            self._lease = None  # the lease may be gone (expired, revoked): grant a new one
            raise

    async def lookup(
        self, namespace: str, name: str, uid: str, spec: Any, generation: int
    ) -> dict[str, Any] | None:
        """The note for exactly this object state (None: no usable note)."""
        kv, _ = await self.client.get(author_key(self.prefix, namespace, name, uid, spec))
        if kv is None:
            return None
        try:
            note = json.loads(kv.value)
        except ValueError:
            return None
        if not isinstance(note, dict) or not isinstance(note.get("user"), str):
            return None
        # the generation the API server gave the request (it is set before validating
        # admission); a note from a request that produced this spec at another
        # generation (an earlier identical change, or one that failed after admission)
        # is not this change's
        if note.get("generation") not in (None, 0, generation):
            return None
        return note


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
