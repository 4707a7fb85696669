"""``etcdconfig_config_state{namespace,name,state}``: one 0/1 series per state for each
owned Config, derived from the status the operator patches, kept while the Config stays
so (alerts do not clear on their own), removed on deletion or ownership hand-over."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from etcdconfig import metrics
from etcdconfig.controller.reconciler import Reconciler, RetryLater
from etcdconfig.errors import ValidationIssue
from etcdconfig.reconcile import (
    status_corrupt,
    status_integrity,
    status_invalid,
    status_not_published,
    status_pending,
    status_recorded,
)

HEAD = (3, "sha256:" + "a" * 64, "2026-11-29T00:00:00Z")


def recorded() -> dict[str, Any]:
    return status_recorded(
        2, [], version=3, checksum=HEAD[1], recorded_at=HEAD[2], head_generation=2
    )


def series(namespace: str, name: str) -> dict[str, float]:
    """The state series of one Config as the registry exposes them."""
    out: dict[str, float] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "etcdconfig_config_state":
            continue
        for s in family.samples:
            if s.labels["namespace"] == namespace and s.labels["name"] == name:
                out[s.labels["state"]] = s.value
    return out


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    metrics.retain_configs(set())
    yield
    metrics.retain_configs(set())


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (recorded(), "ready"),
        (status_invalid(2, [], [ValidationIssue("data.retries", "too big")], HEAD), "invalid"),
        (status_corrupt(2, [], "record does not hash to its checksum", HEAD), "corrupt"),
        (
            status_pending(2, [], "EtcdUnavailable", "etcd away; retrying in 1s", HEAD),
            "reconciling",
        ),
        (
            status_not_published(
                2,
                [],
                version=3,
                checksum=HEAD[1],
                recorded_at=HEAD[2],
                head_generation=2,
                reason="ConfigMapNotOwned",
                message="not ours",
                stalled=True,
            ),
            "stalled",
        ),
        (
            status_not_published(
                2,
                [],
                version=3,
                checksum=HEAD[1],
                recorded_at=HEAD[2],
                head_generation=2,
                reason="KubernetesAPIError",
                message="timeout",
                stalled=False,
            ),
            "reconciling",
        ),
        (status_integrity(recorded(), 2, ["version 2: checksum mismatch"]), "corrupt"),
        (status_integrity(recorded(), 2, []), "ready"),
        ({}, None),
    ],
)
def test_state_follows_the_status_builders(status: dict[str, Any], state: str | None) -> None:
    assert metrics.config_state_of(status) == state


def test_one_series_per_state_exactly_one_set() -> None:
    metrics.set_config_state("prod", "payments", recorded())
    assert series("prod", "payments") == {
        "ready": 1,
        "reconciling": 0,
        "invalid": 0,
        "stalled": 0,
        "corrupt": 0,
    }
    invalid = status_invalid(3, [], [ValidationIssue("data", "bad")], HEAD)
    metrics.set_config_state("prod", "payments", invalid)
    values = series("prod", "payments")
    assert values["invalid"] == 1
    assert sum(values.values()) == 1
    # a status that says nothing (no conditions) leaves the last state in place
    metrics.set_config_state("prod", "payments", {})
    metrics.set_config_state("prod", "payments", None)
    assert series("prod", "payments")["invalid"] == 1


def test_series_go_on_deletion_and_hand_over_only_for_those_configs() -> None:
    for name in ("a", "b", "c"):
        metrics.set_config_state("ns", name, recorded())
    metrics.forget_config("ns", "a")  # deleted
    assert series("ns", "a") == {}
    metrics.forget_config("ns", "a")  # twice is fine
    metrics.retain_configs({("ns", "b")})  # c moved to another replica
    assert series("ns", "c") == {}
    assert series("ns", "b")["ready"] == 1
    # a Config that comes back gets all its series again
    metrics.set_config_state("ns", "c", recorded())
    assert len(series("ns", "c")) == len(metrics.CONFIG_STATES)


class _Reconciler(Reconciler):
    """Reconciler.reconcile with the I/O part replaced: what it returns or raises."""

    def __init__(self, outcome: dict[str, Any] | RetryLater | None) -> None:
        self.outcome = outcome

    async def _reconcile(self, body: dict[str, Any], retry: int) -> dict[str, Any] | None:
        if isinstance(self.outcome, RetryLater):
            raise self.outcome
        return self.outcome


def body(deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "prod", "name": "payments", "uid": "u1"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    return {"metadata": meta, "spec": {"data": {}}}


async def test_reconcile_sets_the_state_it_returns_or_retries_with() -> None:
    await _Reconciler(recorded()).reconcile(body(), trigger="update")
    assert series("prod", "payments")["ready"] == 1

    pending = status_pending(2, [], "EtcdUnavailable", "etcd away", HEAD)
    with pytest.raises(RetryLater):
        await _Reconciler(RetryLater("etcd away", pending, 1.0)).reconcile(body(), trigger="resync")
    assert series("prod", "payments")["reconciling"] == 1

    # the object went away in the meantime (nothing to say): the state stays
    await _Reconciler(None).reconcile(body(), trigger="resync")
    assert series("prod", "payments")["reconciling"] == 1

    await _Reconciler(None).reconcile(body(deleting=True), trigger="update")
    assert series("prod", "payments") == {}
