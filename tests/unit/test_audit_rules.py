"""Audit records (issue 11), without I/O: who (the admission note), why (a change
cause only for the change that set it), the admission note itself, the webhook's
fail-open bookkeeping, and the messages users read (anyOf, enum, RBAC refusals)."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from etcdconfig.audit import (
    _merge,
    _parse,
    admission_note,
    author_key,
    note_admission,
    request_stamp,
    spec_digest,
)
from etcdconfig.canonical import canonical_json, checksum, sha256_of
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.errors import EtcdPermissionDenied, EtcdUnavailable
from etcdconfig.kube import _explain
from etcdconfig.reconcile import author_of
from etcdconfig.store.records import Head, VersionRecord
from etcdconfig.validation import Validator, check_schema

CAUSE = "etcdconfig.io/change-cause"
PATCH = [
    {
        "manager": "kubectl-patch",
        "operation": "Update",
        "time": "2026-01-02T00:00:00Z",
        "fieldsV1": {"f:spec": {}},
    }
]
ALICE = {"user": "alice", "groups": ["dev", "system:authenticated"], "changeCauseSet": False}


def meta(cause: str | None = None, **annotations: str) -> dict[str, Any]:
    notes = dict(annotations)
    if cause is not None:
        notes[CAUSE] = cause
    return {"managedFields": PATCH, "annotations": notes}


# --- the change cause belongs to the change that set it ------------------------------------


def test_a_cause_left_over_from_the_previous_version_is_marked_inherited() -> None:
    first = author_of(meta("raise retries"))  # the uid's first version: its own cause
    assert first["changeCause"] == "raise retries"
    later = author_of(meta("raise retries"), previous=first)
    assert "changeCause" not in later
    assert later["inheritedChangeCause"] == "raise retries"
    # and it stays inherited for every later change until the annotation changes
    again = author_of(meta("raise retries"), previous=later)
    assert (again.get("changeCause"), again["inheritedChangeCause"]) == (None, "raise retries")
    # a record written before inheritance existed (the cause stuck as changeCause)
    old_style = {"manager": "kubectl-edit", "changeCause": "raise retries"}
    assert "changeCause" not in author_of(meta("raise retries"), previous=old_style)


def test_a_new_annotation_value_is_the_cause_of_the_change_that_follows_it() -> None:
    previous = author_of(meta("raise retries"))
    now = author_of(meta("roll back the holiday change"), previous=previous)
    assert now["changeCause"] == "roll back the holiday change"
    assert "inheritedChangeCause" not in now
    assert "changeCause" not in author_of(meta(), previous=previous)  # annotation removed


def test_the_webhook_saying_the_request_set_the_cause_wins_over_an_equal_value() -> None:
    previous = author_of(meta("scale up"))
    set_now = {**ALICE, "changeCauseSet": True}
    assert author_of(meta("scale up"), note=set_now, previous=previous)["changeCause"] == "scale up"


def test_a_repeated_rollback_to_the_same_version_has_its_cause() -> None:
    rollback = {"kind": "rollback", "fromVersion": 7}
    r1 = author_of(meta("rollback to version 7"), origin=rollback)
    edit = author_of(
        meta("rollback to version 7"),
        previous=r1,
        origin={"kind": "apply"},
        previous_origin=rollback,
    )
    assert edit["inheritedChangeCause"] == "rollback to version 7"
    r2 = author_of(
        meta("rollback to version 7"),
        previous=edit,
        origin=rollback,
        previous_origin={"kind": "apply"},
    )
    assert r2["changeCause"] == "rollback to version 7"
    # a later spec change that keeps the rolled-back data is the same rollback: inherited
    same = author_of(
        meta("rollback to version 7"), previous=r2, origin=rollback, previous_origin=rollback
    )
    assert "changeCause" not in same


# --- the user --------------------------------------------------------------------------------


def test_author_names_the_user_from_the_admission_note_else_says_field_manager() -> None:
    assert author_of(meta(), note=ALICE) == {
        "manager": "kubectl-patch",
        "operation": "Update",
        "time": "2026-01-02T00:00:00Z",
        "user": "alice",
        "groups": ["dev", "system:authenticated"],
        "source": "admission",
    }
    assert author_of(meta()) == {
        "manager": "kubectl-patch",
        "operation": "Update",
        "time": "2026-01-02T00:00:00Z",
        "source": "fieldManager",
    }


def body(spec: dict[str, Any], cause: str | None = None, generation: int = 2) -> dict[str, Any]:
    annotations = {} if cause is None else {CAUSE: cause}
    return {
        "metadata": {
            "namespace": "ns",
            "name": "pay",
            "uid": "u-1",
            "generation": generation,
            "annotations": annotations,
            "managedFields": PATCH,
        },
        "spec": spec,
    }


STAMP = request_stamp({"managedFields": PATCH})


USER = {"username": "alice", "uid": "x", "groups": ["dev", "system:authenticated"]}


def test_admission_note_only_for_changes_that_are_recorded() -> None:
    old = body({"data": {"a": 1}})
    # an annotation-only update (kubectl annotate) never takes over a change's authorship
    assert admission_note("UPDATE", USER, body({"data": {"a": 1}}, cause="x"), old) is None
    assert admission_note("DELETE", USER, old, None) is None
    note = admission_note("UPDATE", USER, body({"data": {"a": 2}}, generation=3), old)
    assert note is not None
    assert {k: v for k, v in note.items() if k != "notedAt"} == {
        "user": "alice",
        "groups": ["dev", "system:authenticated"],
        "operation": "UPDATE",
        "generation": 3,
        "stamp": STAMP,
        "changeCauseSet": False,
    }
    created = admission_note("CREATE", USER, body({"data": {}}, cause="first"), None)
    assert created is not None and created["changeCauseSet"] is True
    same_cause = admission_note(
        "UPDATE", USER, body({"data": {"a": 2}}, cause="c"), body({"data": {"a": 1}}, cause="c")
    )
    assert same_cause is not None and same_cause["changeCauseSet"] is False
    new_cause = admission_note(
        "UPDATE", USER, body({"data": {"a": 2}}, cause="d"), body({"data": {"a": 1}}, cause="c")
    )
    assert new_cause is not None and new_cause["changeCauseSet"] is True


def test_the_note_key_is_the_uid_and_the_digest_of_the_canonical_spec() -> None:
    spec = {"data": {"b": 1, "a": 2.0}, "schema": {"type": "object"}}
    digest = sha256_of(canonical_json({"schema": {"type": "object"}, "data": {"a": 2, "b": 1}}))
    assert spec_digest(spec) == digest.split(":", 1)[1]
    assert (
        author_key("/p/", "ns", "pay", "u-1", spec)
        == f"/p/authors/ns/pay/u-1/{spec_digest(spec)}".encode()
    )


class _FailingBook:
    def __init__(self, error: BaseException | None = None, delay: float = 0.0) -> None:
        self.error, self.delay, self.calls = error, delay, 0

    async def note(self, *args: Any) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    "book",
    [_FailingBook(RuntimeError("etcd is away")), _FailingBook(delay=5.0)],
    ids=["error", "timeout"],
)
async def test_the_webhook_admits_whatever_happens_to_the_note(
    book: _FailingBook, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        wrote = await note_admission(
            book,  # type: ignore[arg-type]
            operation="UPDATE",
            userinfo=USER,
            body=body({"data": {"a": 2}}),
            old=body({"data": {"a": 1}}),
            timeout=0.2,
        )
    assert (wrote, book.calls) == (False, 1)
    assert "recorded with its field manager only" in caplog.text


async def test_a_note_is_written_for_an_admitted_change() -> None:
    book = _FailingBook()
    assert await note_admission(
        book,  # type: ignore[arg-type]
        operation="CREATE",
        userinfo=USER,
        body=body({"data": {}}),
        old=None,
    )


# --- the schema in the record ------------------------------------------------------------------


def test_record_exposes_schema_and_its_checksum() -> None:
    schema = {"type": "object"}
    raw = {
        "version": 1,
        "uid": "u",
        "generation": 1,
        "checksum": checksum({}),
        "data": {},
        "schema": schema,
        "schemaChecksum": checksum(schema, "schema"),
    }
    rec = VersionRecord(raw=raw)
    assert (rec.schema, rec.schema_checksum, rec.has_schema) == (
        schema,
        checksum(schema, "schema"),
        True,
    )
    old = VersionRecord(raw={k: v for k, v in raw.items() if not k.startswith("schema")})
    assert (old.schema, old.schema_checksum, old.has_schema) == (None, None, False)


# --- messages --------------------------------------------------------------------------------


def test_a_misspelt_type_says_what_is_allowed() -> None:
    assert [str(i) for i in check_schema({"type": "objekt"})] == [
        'schema.type: is not a JSON Schema type: use one of "array", "boolean", "integer", '
        '"null", "number", "object", "string", or an array of them'
    ]


def test_enum_failures_list_json_values() -> None:
    issues = Validator().validate(
        {"mode": "SECRET"}, {"properties": {"mode": {"enum": ["a", None, 2, True, "ü"]}}}
    )
    assert [str(i) for i in issues] == ['data.mode: must be one of "a", null, 2, true, "ü"']
    assert "SECRET" not in str(issues)


def test_any_of_failures_say_what_each_alternative_needs() -> None:
    schema = {
        "properties": {"port": {"anyOf": [{"type": "integer", "minimum": 1}, {"enum": ["auto"]}]}}
    }
    issues = Validator().validate({"port": "SECRET"}, schema)
    assert [str(i) for i in issues] == [
        "data.port: does not satisfy anyOf (any of: (1) must be of type 'integer', got string; "
        '(2) must be one of "auto")'
    ]


def forbidden(message: str | None) -> ApiException:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = None if message is None else json.dumps({"kind": "Status", "message": message})
    return exc


def test_rbac_refusals_name_the_user_and_the_verb() -> None:
    exc = forbidden(
        'configs.etcdconfig.io "pay" is forbidden: User "alice" cannot patch resource '
        '"configs" in API group "etcdconfig.io" in the namespace "prod"'
    )
    assert str(_explain(exc, "patch Config prod/pay")) == (
        'patch Config prod/pay: forbidden by RBAC: user "alice" may not patch '
        'configs.etcdconfig.io in namespace "prod" (grant the verb with a Role/RoleBinding, '
        "or check with `kubectl auth can-i patch configs.etcdconfig.io -n prod --as alice`)"
    )
    cluster = forbidden(
        'configs.etcdconfig.io is forbidden: User "system:serviceaccount:x:y" cannot list '
        'resource "configs" in API group "etcdconfig.io" at the cluster scope'
    )
    assert (
        'user "system:serviceaccount:x:y" may not list configs.etcdconfig.io cluster-wide'
        in str(_explain(cluster, "list Configs"))
    )
    # no Status body: as before
    assert (
        str(_explain(forbidden(None), "list Configs"))
        == "list Configs: forbidden by RBAC (Forbidden)"
    )


# --- the committer's side (controller.reconciler._author), with fakes -------------------------


class _Client:
    def __init__(self, note: dict[str, Any] | None = None, error: Exception | None = None) -> None:
        self.note, self.error, self.keys = note, error, []

    async def get(self, key: bytes, *, revision: int = 0) -> tuple[Any, int]:
        self.keys.append(key)
        if self.error is not None:
            raise self.error
        if self.note is None:
            return None, 1
        return SimpleNamespace(value=json.dumps(self.note).encode()), 1


def _stored(*requests: dict[str, Any]) -> dict[str, Any]:
    """A stored note holding ``requests`` (each of the object's stamp unless given)."""
    return {"requests": [{"operation": "UPDATE", "stamp": STAMP, **r} for r in requests]}


class _Store:
    def __init__(self, author: dict[str, Any]) -> None:
        self.author = author
        self.reads: list[int] = []

    async def get_version(self, ns: str, name: str, version: int, **_: Any) -> Any:
        self.reads.append(version)
        return SimpleNamespace(author=self.author, origin={"kind": "apply"})


def _reconciler(client: _Client, store: _Store) -> Reconciler:
    rt = SimpleNamespace(client=client, store=store, settings=SimpleNamespace(etcd_prefix="/p"))
    return Reconciler(rt)  # type: ignore[arg-type]


HEAD = Head(version=3, uid="u-1", generation=2, checksum=None, record_checksum=None, recorded_at="")


async def test_the_committer_uses_the_note_for_exactly_this_state() -> None:
    client = _Client(note=_stored({**ALICE, "generation": 4}))
    b = body({"data": {"a": 2}}, cause="scale up", generation=4)
    author = await _reconciler(client, _Store({"changeCause": "scale up"}))._author(
        b, HEAD, 4, {"kind": "apply"}
    )
    assert client.keys == [author_key("/p", "ns", "pay", "u-1", {"data": {"a": 2}})]
    assert (author["user"], author["source"]) == ("alice", "admission")
    assert author["inheritedChangeCause"] == "scale up"  # same cause as version 3
    # a note of another generation (an earlier change to the same spec) is not this one's
    stale = await _reconciler(
        _Client(note=_stored({**ALICE, "generation": 2})), _Store({})
    )._author(b, HEAD, 4, {"kind": "apply"})
    assert stale["source"] == "fieldManager" and "user" not in stale


async def test_a_note_the_operator_may_not_read_fails_open_etcd_away_retries() -> None:
    b = body({"data": {"a": 2}}, generation=4)
    denied = _Client(error=EtcdPermissionDenied("no read on /p/authors/"))
    author = await _reconciler(denied, _Store({}))._author(b, HEAD, 4, {"kind": "apply"})
    assert author["source"] == "fieldManager"
    away = _Client(error=EtcdUnavailable("etcd is away"))
    with pytest.raises(EtcdUnavailable):  # the commit needs etcd too: retried, not guessed
        await _reconciler(away, _Store({}))._author(b, HEAD, 4, {"kind": "apply"})


# --- the note names a request, not only a state ----------------------------------------------


def test_the_stamp_is_what_the_api_server_set_on_spec_before_admission() -> None:
    assert STAMP is not None
    later = [{**PATCH[0], "time": "2026-01-02T00:00:01Z"}]
    other = [{**PATCH[0], "manager": "argocd"}]
    assert (
        len(
            {
                STAMP,
                request_stamp({"managedFields": later}),
                request_stamp({"managedFields": other}),
            }
        )
        == 3
    )
    # entries that do not touch spec (annotations, status) do not count
    annotate = {
        "manager": "kubectl-annotate",
        "operation": "Update",
        "time": "2026-01-03T00:00:00Z",
        "fieldsV1": {"f:metadata": {}},
    }
    status = {**PATCH[0], "subresource": "status", "time": "2026-01-04T00:00:00Z"}
    assert request_stamp({"managedFields": [*PATCH, annotate, status]}) == STAMP
    assert request_stamp({}) is None
    assert request_stamp({"managedFields": [annotate]}) is None
    assert request_stamp({"managedFields": "junk"}) is None


def test_notes_for_one_state_are_merged_never_overwritten() -> None:
    alice = {**ALICE, "operation": "UPDATE", "generation": 2, "stamp": "a"}
    bob = {**alice, "user": "bob", "stamp": "b"}
    once = _merge(None, alice)
    assert once is not None
    assert _merge(once, {**alice, "notedAt": "later"}) is None  # a retried call: already noted
    both = _merge(once, bob)
    assert both is not None
    assert [r["user"] for r in _parse(both)[0]] == ["alice", "bob"]


def test_an_overflowing_note_names_nobody_for_a_generation_it_forgot() -> None:
    raw: bytes | None = None
    for i in range(20):
        raw = _merge(raw, {**ALICE, "operation": "UPDATE", "generation": 2, "stamp": f"s{i}"})
    requests, ambiguous = _parse(raw)
    assert len(requests) <= 16 and ambiguous == {2}


async def test_the_committer_names_nobody_when_requests_for_the_state_disagree() -> None:
    b = body({"data": {"a": 2}}, generation=4)
    bob = {**ALICE, "user": "bob", "generation": 4}
    two = _Client(note=_stored({**ALICE, "generation": 4}, bob))
    author = await _reconciler(two, _Store({}))._author(b, HEAD, 4, {"kind": "apply"})
    assert author["source"] == "fieldManager" and "user" not in author
    # the request of another object state (denied after our webhook admitted it) is not it
    other = _Client(
        note=_stored(
            {**ALICE, "generation": 4, "stamp": "another"},
        )
    )
    author = await _reconciler(other, _Store({}))._author(b, HEAD, 4, {"kind": "apply"})
    assert author["source"] == "fieldManager" and "user" not in author
    # only one request with this object's stamp: it is the author
    one = _Client(note=_stored({**ALICE, "generation": 4}, {**bob, "stamp": "another"}))
    author = await _reconciler(one, _Store({}))._author(b, HEAD, 4, {"kind": "apply"})
    assert (author["user"], author["source"]) == ("alice", "admission")


@pytest.mark.parametrize(
    "stored",
    [
        {"requests": [{**ALICE, "generation": 4, "stamp": STAMP, "groups": 5}]},
        {"requests": [{**ALICE, "generation": 4, "stamp": STAMP, "user": 7}]},
        {"requests": "junk"},
        {**ALICE, "generation": 4},  # the earlier format named no request
        [1, 2],
    ],
)
async def test_a_malformed_note_fails_open(stored: Any) -> None:
    b = body({"data": {"a": 2}}, generation=4)
    author = await _reconciler(_Client(note=stored), _Store({}))._author(
        b, HEAD, 4, {"kind": "apply"}
    )
    assert author["source"] == "fieldManager" and "user" not in author


def test_author_of_survives_a_malformed_note() -> None:
    author = author_of(meta(), note={"user": "alice", "groups": 5})
    assert author["groups"] == [] and author["user"] == "alice"


async def test_a_damaged_previous_record_does_not_block_the_judgement() -> None:
    from etcdconfig.errors import CorruptRecord, NotFound

    class _Damaged(_Store):
        def __init__(self, exc: Exception) -> None:
            super().__init__({})
            self.exc = exc

        async def get_version(self, ns: str, name: str, version: int, **_: Any) -> Any:
            raise self.exc

    b = body({"data": {"a": 2}}, cause="scale up", generation=4)
    for exc in (CorruptRecord("bad"), NotFound("gone")):
        author = await _reconciler(_Client(), _Damaged(exc))._author(b, HEAD, 4, {"kind": "apply"})
        assert author["changeCause"] == "scale up"  # judged without the previous author
