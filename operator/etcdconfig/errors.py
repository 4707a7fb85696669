"""Errors, named after the condition. One flat hierarchy under ``EtcdConfigError``."""

from __future__ import annotations

from dataclasses import dataclass


class EtcdConfigError(Exception):
    """Base of every error this package raises on purpose."""


# --- etcd transport -------------------------------------------------------------------------


class EtcdError(EtcdConfigError):
    """etcd answered with an error, or could not be reached."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered in time. For a write, the outcome is unknown."""


class EtcdTLSError(EtcdUnavailable):
    """The TLS handshake with etcd failed: a CA that does not match etcd's server
    certificate, or a client certificate etcd refuses (missing, expired, untrusted)."""


class EtcdAuthError(EtcdError):
    """etcd refused our identity: wrong user/password, client certificate, or missing role."""


class EtcdPermissionDenied(EtcdAuthError):
    """The etcd user has no permission for this key range (etcd RBAC)."""


class RequestTooLarge(EtcdError):
    """A request exceeded etcd's ``--max-request-bytes``."""


class StoreFull(EtcdError):
    """etcd refused a write: its database reached ``--quota-backend-bytes`` and the
    NOSPACE alarm is raised. Nothing was written; reads still work. It clears only when
    an admin frees space and disarms the alarm (docs/operations.md#etcd-space)."""


class Compacted(EtcdError):
    """A read or watch asked for a revision etcd has already compacted."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseNotFound(EtcdError):
    """The lease expired or was revoked."""


# --- locks -----------------------------------------------------------------------------------


class LockError(EtcdConfigError):
    """Base for lock failures."""


class SessionExpired(LockError):
    """The replica's etcd lease is gone; every lock it held is lost."""


class LockTimeout(LockError):
    """The lock was not acquired within the acquire timeout (someone else holds it)."""


class LockLost(LockError):
    """The lock was lost while held (lease expired, key deleted): the fenced write was refused."""


# --- store -----------------------------------------------------------------------------------


class StoreError(EtcdConfigError):
    """The versioned store refused an operation."""


class Conflict(StoreError):
    """The head moved between read and commit (another writer won); retry from a fresh read."""


class NotFound(StoreError):
    """No such Config or version in the store."""


class UnsupportedFormat(StoreError):
    """A stored record has a ``format`` this version of etcdconfig does not know."""


class CorruptRecord(StoreError):
    """A stored record cannot be parsed or does not match its checksum."""


class StaleIncarnation(StoreError):
    """The uid's deletion was recorded (or another uid superseded it): it never writes again."""


class OwnerUnconfirmed(StoreError):
    """The store has not seen this uid: confirm with the API server, under the lock, that
    it owns the Config's name now, then commit again with ``owner_confirmed``."""


class HoldTimeout(LockError):
    """The work done under a lock exceeded the hold timeout; it was cancelled and the lock
    released."""


@dataclass(frozen=True)
class ValidationIssue:
    """One reason why data or a schema is invalid: where (a JSON path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidConfig(StoreError):
    """The data, schema or settings are invalid. Nothing was recorded."""

    def __init__(self, issues: list[ValidationIssue], *, reason: str = "InvalidData") -> None:
        self.issues = issues
        self.reason = reason
        shown = "; ".join(str(i) for i in issues[:10])
        more = f" (and {len(issues) - 10} more)" if len(issues) > 10 else ""
        super().__init__(f"{reason}: {shown}{more}")
