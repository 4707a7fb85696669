"""Third adversarial review round, pure logic (fakes as in test_adversarial_publish):
the publisher keeping an earlier ConfigMap in step.

Tests named ``test_defect_*`` FAIL on the code as reviewed: each docstring gives the
interleaving, what is observed and what the promise requires. The others are
hypotheses that held.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from tests.unit.test_adversarial_publish import UID, FakeRuntime, FakeStore, NamedKube

from etcdconfig.controller import publish
from etcdconfig.reconcile import parse_spec
from etcdconfig.store import Head

NS, NAME = "prod", "payments"


@pytest.fixture(autouse=True)
def fresh_memory() -> Iterator[None]:
    publish._warned.clear()
    yield
    publish._warned.clear()


def body(
    target: str | None,
    fmt: str = "json",
    uid: str = UID,
    status: dict[str, Any] | None = None,
) -> Any:
    spec: dict[str, Any] = {"data": {}}
    if target is not None:
        spec["publish"] = {"configMap": {"name": target, "format": fmt}}
    b: dict[str, Any] = {
        "metadata": {"namespace": NS, "name": NAME, "uid": uid, "generation": 1},
        "spec": spec,
    }
    if status is not None:
        b["status"] = status
    return b


def run(rt: FakeRuntime, b: dict[str, Any], head: Head) -> publish.Failure | None:
    return asyncio.run(publish.publish(rt, b, parse_spec(b["spec"]), head))  # type: ignore[arg-type]


# =================================================================================================
# DEFECTS
# =================================================================================================


@pytest.mark.parametrize("fmt", ["flat", "json"])
def test_an_earlier_config_map_is_never_written_after_the_target_changes(fmt: str) -> None:
    """The third review found that keeping an earlier target "in step" had to guess
    its format from its content and rewrote a flat ConfigMap as json (and a json one
    as flat), and forgot it after a restart. That behaviour is gone: after
    ``spec.publish`` is removed or retargeted, the earlier ConfigMap is left exactly
    as it was (documented; deleting it needs ``delete`` on ConfigMaps)."""
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    assert run(rt, body("env-cm", fmt), store.record(1, {"db": {"host": "a"}})) is None
    before = kube.cms["env-cm"].cm
    assert before is not None
    snapshot = json.loads(json.dumps(before))
    assert run(rt, body(None), store.record(2, {"db": {"host": "b"}})) is None
    assert run(rt, body("other-cm", fmt), store.record(3, {"db": {"host": "c"}})) is None
    assert kube.cms["env-cm"].cm == snapshot


def test_an_earlier_config_map_now_owned_by_another_config_is_never_written() -> None:
    """Config A published to ``shared``; A retargets to ``a-new``; ``shared`` is deleted
    by the user and re-created by Config B's publish (owned by B). A's process memory
    and ``a-new``'s supersedes annotation still name ``shared``: it is never written
    by A."""
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    assert run(rt, body("shared"), store.record(1, {"limit": 1})) is None
    assert run(rt, body("a-new"), store.record(2, {"limit": 2})) is None
    # the user deletes `shared`; Config B (another uid, another name) publishes there
    b_store = FakeStore()
    b_rt = FakeRuntime(kube, b_store)
    kube.cms["shared"].cm = None
    b_body = copy.deepcopy(body("shared", uid="uid-b"))
    b_body["metadata"]["name"] = "other"
    assert run(b_rt, b_body, b_store.record(1, {"b": True}, uid="uid-b")) is None
    writes = len(kube.cms["shared"].writes)
    assert run(rt, body("a-new"), store.record(3, {"limit": 3})) is None
    assert len(kube.cms["shared"].writes) == writes
    shared = kube.cms["shared"].cm
    assert shared is not None
    assert json.loads(shared["data"]["config.json"]) == {"b": True}


def test_an_object_without_spec_managed_fields_is_never_attributed() -> None:
    """Audit stamps when ``managedFields`` are absent (a client that cleared them with
    ``managedFields: [{}]``, an object written before field management) or carry no
    spec entry with a time: no stamp, so no note can name anyone (the webhook writes
    a note with ``stamp: None``, which the committer's parse drops)."""
    from etcdconfig.audit import _merge, _parse, admission_note, request_stamp

    assert request_stamp({}) is None
    assert request_stamp({"managedFields": []}) is None
    assert request_stamp({"managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]}) is None
    status_only = {
        "managedFields": [
            {"manager": "kopf", "time": "t", "subresource": "status", "fieldsV1": {"f:spec": {}}}
        ]
    }
    assert request_stamp(status_only) is None
    obj = {"metadata": {"generation": 2, "annotations": {}}, "spec": {"data": {"v": 2}}}
    note = admission_note("UPDATE", {"username": "alice"}, obj, {"spec": {"data": {"v": 1}}})
    assert note is not None and note["stamp"] is None
    merged = _merge(None, note)
    assert merged is not None
    requests, _ = _parse(merged)
    assert requests == []  # a stamp-less request can never match
