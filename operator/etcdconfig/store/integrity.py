"""The check every read that serves or reuses a stored version makes (DESIGN §3).

A version record is safe to hand out (to an application, a ConfigMap, a rollback)
only if

- it is the version it is stored as (``version`` matches its key),
- its ``data`` hashes to its ``checksum`` (RFC 8785, SHA-256), and
- when the caller knows which record to expect (the head's ``recordChecksum``,
  or the next version's ``parentChecksum``), the stored bytes hash to it: records
  are stored canonical, so this covers every field, not only the data;
- when the caller knows only which data to expect (the head's ``checksum``), its
  ``checksum`` is that one: a record rewritten with other data *and* a matching
  ``checksum`` is refused, though edits of other fields are not seen this way.

What these checks cannot see: the oldest retained record's bytes are covered by
its successor's ``parentChecksum``, and a version with no retained successor is the
head's, covered by the head — but a successor is only as good as its own successor,
so a record rewritten consistently together with every record after it up to (not
including) the head shows only on a walk from the head (the reader's watch,
``etcdconfig verify``). A key above the head (nothing names it) gets only its own
data-vs-checksum check.

A record that fails raises :class:`~etcdconfig.errors.CorruptRecord` with one line
that names the Config and the version and says to run ``etcdconfig verify``, which
reports every problem of the history. This module is the one place these checks
live: the reader, the CLI and the store's own reads all call it.
"""

from __future__ import annotations

from etcdconfig.canonical import checksum, sha256_of
from etcdconfig.errors import CorruptRecord, EtcdConfigError
from etcdconfig.store.records import VersionRecord

__all__ = ["VERIFY_HINT", "check_record", "describe", "load_record"]

VERIFY_HINT = "run `etcdconfig verify`"


def describe(namespace: str, name: str, version: int) -> str:
    """How messages name a stored version: ``prod/payments version 3``."""
    return f"{namespace}/{name} version {version}"


def check_record(
    record: VersionRecord,
    raw: bytes,
    *,
    what: str,
    version: int,
    expected_record_checksum: str | None = None,
    expected_checksum: str | None = None,
) -> None:
    """Raise ``CorruptRecord`` unless ``record`` (parsed from the stored bytes ``raw``)
    is intact version ``version``.

    ``what`` names the record in messages (:func:`describe` makes it).
    ``expected_record_checksum`` is the record checksum the caller was pointed at (the
    head's ``recordChecksum``, a successor's ``parentChecksum``), or None when nothing
    points at this record: then only its data is checked against its ``checksum``.
    ``expected_checksum`` is the data checksum the caller was pointed at (the head's
    ``checksum``), when it knows no record checksum to hold the record to.
    """
    raw_obj = record.raw
    stored_version = raw_obj.get("version")
    if type(stored_version) is not int or stored_version != version:
        raise CorruptRecord(
            f"{what}: the record says version {stored_version!r}; it was written to the "
            f"wrong key or modified — {VERIFY_HINT}"
        )
    data = raw_obj.get("data")
    if not isinstance(data, dict):
        raise CorruptRecord(
            f"{what}: its data is a {type(data).__name__}, not an object — {VERIFY_HINT}"
        )
    try:
        computed = checksum(data)
    except EtcdConfigError as exc:
        raise CorruptRecord(f"{what}: its data cannot be hashed ({exc}) — {VERIFY_HINT}") from exc
    if computed != raw_obj.get("checksum"):
        raise CorruptRecord(
            f"{what}: data checksum mismatch (stored {raw_obj.get('checksum')}, computed "
            f"{computed}); the record was modified after it was written — {VERIFY_HINT}"
        )
    if expected_checksum is not None and computed != expected_checksum:
        raise CorruptRecord(
            f"{what}: data checksum mismatch (the head names {expected_checksum}, the "
            f"record holds data hashing to {computed}); the record was rewritten after it "
            f"was written — {VERIFY_HINT}"
        )
    if expected_record_checksum is not None:
        found = sha256_of(raw)
        if found != expected_record_checksum:
            raise CorruptRecord(
                f"{what}: record checksum mismatch (expected {expected_record_checksum}, "
                f"the stored record hashes to {found}); the record was modified after it "
                f"was written — {VERIFY_HINT}"
            )


def load_record(
    raw: bytes,
    *,
    what: str,
    version: int,
    expected_record_checksum: str | None = None,
    expected_checksum: str | None = None,
    mod_revision: int = 0,
) -> VersionRecord:
    """Parse the stored bytes of a version and :func:`check_record` them.

    A record that is not even a record (not JSON, fields missing) is corrupt too and
    carries the same hint; a ``format`` this etcdconfig does not know is not
    corruption and raises ``UnsupportedFormat`` unchanged.
    """
    try:
        record = VersionRecord.parse(raw, mod_revision=mod_revision, what=what)
    except CorruptRecord as exc:
        raise CorruptRecord(f"{exc} — {VERIFY_HINT}") from exc
    check_record(
        record,
        raw,
        what=what,
        version=version,
        expected_record_checksum=expected_record_checksum,
        expected_checksum=expected_checksum,
    )
    return record
