"""The one check every read of a stored version makes before serving or reusing it
(store/integrity.py): the version it is stored as, its data against its checksum,
the whole stored record against the checksum that points at it, and a message
that names the record and says to run `etcdconfig verify`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from etcdconfig.canonical import checksum, sha256_of
from etcdconfig.errors import CorruptRecord, UnsupportedFormat
from etcdconfig.store.integrity import VERIFY_HINT, check_record, describe, load_record
from etcdconfig.store.records import VersionRecord, dump

WHAT = describe("prod", "payments", 3)


def stored(**overrides: Any) -> bytes:
    data = {"retries": 5}
    record: dict[str, Any] = {
        "format": 1,
        "version": 3,
        "uid": "uid-1",
        "generation": 7,
        "checksum": checksum(data),
        "parentChecksum": "sha256:" + "0" * 64,
        "data": data,
        "recordedAt": "2026-11-28T02:35:19.288Z",
        "recordedBy": "op-0",
        "author": {"manager": "kubectl"},
        "origin": {"kind": "apply"},
        "fencingRevision": 42,
    }
    record.update(overrides)
    return dump(record)


def check(raw: bytes, *, version: int = 3, expected: str | None = None) -> None:
    record = VersionRecord.parse(raw, what=WHAT)
    check_record(record, raw, what=WHAT, version=version, expected_record_checksum=expected)


def test_describe_names_the_config_and_the_version() -> None:
    assert WHAT == "prod/payments version 3"


def test_an_intact_record_passes_with_and_without_the_checksum_that_points_at_it() -> None:
    raw = stored()
    check(raw)
    check(raw, expected=sha256_of(raw))
    record = load_record(raw, what=WHAT, version=3, expected_record_checksum=sha256_of(raw))
    assert (record.version, record.data) == (3, {"retries": 5})


def test_data_changed_after_it_was_hashed_is_refused_with_both_checksums_and_the_hint() -> None:
    raw = stored(data={"retries": 500})
    with pytest.raises(CorruptRecord) as err:
        check(raw)
    assert str(err.value) == (
        f"prod/payments version 3: data checksum mismatch (stored {checksum({'retries': 5})}, "
        f"computed {checksum({'retries': 500})}); the record was modified after it was "
        "written — run `etcdconfig verify`"
    )


def test_any_other_field_changed_is_refused_when_a_checksum_points_at_the_record() -> None:
    intact = stored()
    edited = stored(author={"manager": "mallory"})
    check(edited)  # nothing points at it: only the data is checked, and it is intact
    with pytest.raises(CorruptRecord) as err:
        check(edited, expected=sha256_of(intact))
    assert str(err.value) == (
        f"prod/payments version 3: record checksum mismatch (expected {sha256_of(intact)}, "
        f"the stored record hashes to {sha256_of(edited)}); the record was modified after it "
        "was written — run `etcdconfig verify`"
    )


def test_the_same_content_stored_in_another_form_does_not_match_the_checksum() -> None:
    # records are stored canonical: what is hashed is what is stored, byte for byte
    raw = stored()
    loose = json.dumps(json.loads(raw), indent=1).encode()
    with pytest.raises(CorruptRecord, match="record checksum mismatch"):
        check(loose, expected=sha256_of(raw))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"version": 4}, "the record says version 4; it was written to the wrong key"),
        ({"version": "3"}, "the record says version '3'"),
        ({"version": True}, "the record says version True"),
        ({"data": ["retries", 5]}, "its data is a list, not an object"),
        ({"data": {"x": float("nan")}}, "its data cannot be hashed"),
        ({"checksum": None}, "data checksum mismatch (stored None"),
    ],
)
def test_a_record_that_is_not_what_its_key_says_is_refused_not_crashed_on(
    overrides: dict[str, Any], message: str
) -> None:
    raw = json.dumps({**json.loads(stored()), **overrides}).encode()
    with pytest.raises(CorruptRecord) as err:
        check(raw)
    assert str(err.value).startswith(f"prod/payments version 3: {message}")
    assert str(err.value).endswith(VERIFY_HINT)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "prod/payments version 3 is not valid JSON"),
        (b"[1, 2]", "prod/payments version 3 is not a JSON object"),
        (b'{"format": 1, "version": 3}', "prod/payments version 3 lacks the field 'uid'"),
    ],
)
def test_bytes_that_are_not_a_record_are_corrupt_with_the_hint(raw: bytes, message: str) -> None:
    with pytest.raises(CorruptRecord) as err:
        load_record(raw, what=WHAT, version=3)
    assert str(err.value).startswith(message)
    assert str(err.value).endswith(f" — {VERIFY_HINT}")


def test_an_unknown_format_is_not_called_corruption() -> None:
    with pytest.raises(UnsupportedFormat, match="format 2"):
        load_record(stored(format=2), what=WHAT, version=3)
