"""ConfigMaps a Config published to before its target changed (or publish was removed)
are kept in step with the head while they are the Config's, found again after a restart
(the target's ``etcdconfig.io/supersedes`` annotation, the ``Published`` condition), and
forgotten once deleted or no longer the Config's. Fakes as in test_adversarial_publish."""

from __future__ import annotations

import asyncio
import copy
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
    publish._targets.clear()
    publish._warned.clear()
    yield
    publish._targets.clear()


def body(target: str | None, fmt: str = "json", status: dict[str, Any] | None = None) -> Any:
    spec: dict[str, Any] = {"data": {}}
    if target is not None:
        spec["publish"] = {"configMap": {"name": target, "format": fmt}}
    b: dict[str, Any] = {
        "metadata": {"namespace": NS, "name": NAME, "uid": UID, "generation": 1},
        "spec": spec,
    }
    if status is not None:
        b["status"] = status
    return b


def run(rt: FakeRuntime, b: dict[str, Any], head: Head) -> publish.Failure | None:
    return asyncio.run(publish.publish(rt, b, parse_spec(b["spec"]), head))  # type: ignore[arg-type]


def version_of(kube: NamedKube, name: str) -> str | None:
    cm = kube.cms[name].cm
    return None if cm is None else cm["metadata"]["annotations"][publish.VERSION_ANNOTATION]


def published_condition(name: str) -> dict[str, Any]:
    return {
        "conditions": [
            {
                "type": "Published",
                "status": "True",
                "reason": "Published",
                "message": f"version 1 is in ConfigMap {name}",
            }
        ]
    }


def test_retarget_keeps_the_earlier_config_map_in_step_and_records_it_on_the_new_one() -> None:
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    assert run(rt, body("old-cm"), store.record(1, {"limit": 1})) is None
    assert run(rt, body("new-cm"), store.record(2, {"limit": 2})) is None
    new = kube.cms["new-cm"].cm
    assert new is not None
    assert new["metadata"]["annotations"][publish.SUPERSEDES_ANNOTATION] == "old-cm"
    assert version_of(kube, "old-cm") == "2"
    assert '"limit": 2' in kube.cms["old-cm"].cm["data"]["config.json"]  # type: ignore[index]
    assert any(r == "PublishedToEarlierConfigMap" for r, _ in kube.events)
    # in step: a further reconcile of the same head writes nothing
    writes = len(kube.cms["old-cm"].writes) + len(kube.cms["new-cm"].writes)
    assert run(rt, body("new-cm"), store.head_) is None  # type: ignore[arg-type]
    assert len(kube.cms["old-cm"].writes) + len(kube.cms["new-cm"].writes) == writes


def test_after_a_restart_the_target_annotation_names_the_earlier_config_map() -> None:
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    run(rt, body("old-cm"), store.record(1, {"limit": 1}))
    run(rt, body("new-cm"), store.record(2, {"limit": 2}))
    publish._targets.clear()  # the operator restarted
    assert run(rt, body("new-cm"), store.record(3, {"limit": 3})) is None
    assert (version_of(kube, "old-cm"), version_of(kube, "new-cm")) == ("3", "3")


def test_the_published_condition_names_the_earlier_target_after_a_restart() -> None:
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    run(rt, body("old-cm"), store.record(1, {"limit": 1}))
    publish._targets.clear()  # restarted; then the target changed
    moved = body("new-cm", status=published_condition("old-cm"))
    assert run(rt, moved, store.record(2, {"limit": 2})) is None
    assert (version_of(kube, "old-cm"), version_of(kube, "new-cm")) == ("2", "2")


def test_removing_publish_keeps_the_earlier_config_map_in_step_in_its_flat_form() -> None:
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    run(rt, body("env-cm", "flat"), store.record(1, {"A": "1", "B": "x"}))
    assert run(rt, body(None), store.record(2, {"A": "2"})) is None
    cm = kube.cms["env-cm"].cm
    assert cm is not None and cm["data"] == {"A": "2"}
    assert version_of(kube, "env-cm") == "2"


def test_a_deleted_earlier_config_map_is_forgotten_and_not_recreated() -> None:
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    run(rt, body("old-cm"), store.record(1, {"limit": 1}))
    run(rt, body("new-cm"), store.record(2, {"limit": 2}))
    kube.cms["old-cm"].cm = None  # the user deleted it
    assert run(rt, body("new-cm"), store.record(3, {"limit": 3})) is None
    assert kube.cms["old-cm"].cm is None
    new = kube.cms["new-cm"].cm
    assert new is not None
    assert new["metadata"]["annotations"].get(publish.SUPERSEDES_ANNOTATION) in (None, "")
    assert UID not in publish._targets or "old-cm" not in publish._targets[UID]


def test_an_earlier_config_map_no_longer_ours_is_never_written() -> None:
    store, kube = FakeStore(), NamedKube()
    rt = FakeRuntime(kube, store)
    run(rt, body("old-cm"), store.record(1, {"limit": 1}))
    old = kube.cms["old-cm"].cm
    assert old is not None
    # someone replaced it with a ConfigMap of their own
    foreign = copy.deepcopy(old)
    foreign["metadata"]["labels"] = {}
    foreign["metadata"]["ownerReferences"] = []
    kube.cms["old-cm"].cm = foreign
    writes = len(kube.cms["old-cm"].writes)
    assert run(rt, body("new-cm"), store.record(2, {"limit": 2})) is None
    assert len(kube.cms["old-cm"].writes) == writes
    assert version_of(kube, "old-cm") == "1"
