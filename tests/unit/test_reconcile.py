"""Pure reconcile decisions: spec errors, authors, origins, kstatus conditions."""

from __future__ import annotations

import json

import pytest

from etcdconfig.errors import InvalidConfig, ValidationIssue
from etcdconfig.reconcile import (
    author_of,
    origin_of,
    parse_spec,
    status_invalid,
    status_recorded,
    validate_spec,
)
from etcdconfig.validation import Validator


def test_spec_errors_name_their_path() -> None:
    with pytest.raises(InvalidConfig) as err:
        parse_spec({"data": {}, "history": {"maxVersions": 0}, "deletionPolicy": "Keep"})
    paths = [i.path for i in err.value.issues]
    assert paths == ["spec.history.maxVersions", "spec.deletionPolicy"]
    assert err.value.reason == "InvalidSpec"


def test_data_too_large_is_refused_with_size_and_limit() -> None:
    spec = parse_spec({"data": {"blob": "x" * 600_000}})
    issues = validate_spec(spec, Validator())
    assert len(issues) == 1
    assert issues[0].path == "spec.data"
    assert "over the limit of 524288 bytes" in issues[0].message


def test_author_is_the_newest_spec_manager_plus_change_cause() -> None:
    meta = {
        "annotations": {"etcdconfig.io/change-cause": "raise limits"},
        "managedFields": [
            {
                "manager": "kubectl",
                "operation": "Apply",
                "time": "2026-01-01T00:00:00Z",
                "fieldsV1": {"f:spec": {}},
            },
            {
                "manager": "argocd",
                "operation": "Update",
                "time": "2026-01-02T00:00:00Z",
                "fieldsV1": {"f:spec": {}},
            },
            {
                "manager": "etcdconfig",
                "operation": "Update",
                "time": "2026-01-03T00:00:00Z",
                "subresource": "status",
                "fieldsV1": {"f:status": {}},
            },
        ],
    }
    assert author_of(meta) == {
        "manager": "argocd",
        "operation": "Update",
        "time": "2026-01-02T00:00:00Z",
        "source": "fieldManager",
        "changeCause": "raise limits",
    }


def test_rollback_origin_only_for_exactly_the_rolled_back_data() -> None:
    note = json.dumps({"fromVersion": 4, "checksum": "sha256:aa"})
    meta = {"annotations": {"etcdconfig.io/rollback": note}}
    assert origin_of(meta, "sha256:aa") == {"kind": "rollback", "fromVersion": 4}
    assert origin_of(meta, "sha256:bb") == {"kind": "apply"}
    assert origin_of({"annotations": {"etcdconfig.io/rollback": "garbage"}}, "sha256:aa") == {
        "kind": "apply"
    }
    # the data is the head's already (a schema-only change under a stale annotation)
    assert origin_of(meta, "sha256:aa", "sha256:aa") == {"kind": "apply"}
    assert origin_of(meta, "sha256:aa", "sha256:cc") == {"kind": "rollback", "fromVersion": 4}


def test_conditions_keep_transition_time_while_status_is_unchanged() -> None:
    first = status_recorded(
        1, [], version=1, checksum="sha256:abcdef0123456789", recorded_at="t", head_generation=1
    )
    ready = next(c for c in first["conditions"] if c["type"] == "Ready")
    second = status_recorded(
        2, first["conditions"], version=2, checksum="sha256:ff", recorded_at="t2", head_generation=2
    )
    ready2 = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert ready2["lastTransitionTime"] == ready["lastTransitionTime"]
    assert ready2["observedGeneration"] == 2
    assert first["shortChecksum"] == "abcdef012345"


def test_invalid_status_is_stalled_not_ready_and_keeps_the_head() -> None:
    st = status_invalid(
        3, [], [ValidationIssue("spec.data.a", "violates minimum 1")], (2, "sha256:x", "t")
    )
    by_type = {c["type"]: c for c in st["conditions"]}
    assert (
        by_type["Ready"]["status"],
        by_type["Valid"]["status"],
        by_type["Stalled"]["status"],
    ) == ("False", "False", "True")
    assert by_type["Valid"]["message"] == "spec.data.a: violates minimum 1"
    assert (st["version"], st["observedGeneration"]) == (2, 3)


def test_an_integrity_violation_found_by_the_scan_stalls_until_verified_again() -> None:
    """kstatus reads Stalled=True as Failed (a Flux health check fails, Argo CD says
    Degraded); Ready=False alone would be InProgress forever."""
    from etcdconfig.reconcile import status_integrity

    recorded = status_recorded(
        2,
        [],
        version=2,
        checksum="sha256:" + "a" * 64,
        recorded_at="2026-12-07T10:00:00Z",
        head_generation=2,
    )
    broken = status_integrity(recorded, 2, ["version 1: data checksum mismatch"])
    by_type = {c["type"]: c for c in broken["conditions"]}
    assert (by_type["Stalled"]["status"], by_type["Stalled"]["reason"]) == (
        "True",
        "IntegrityViolation",
    )
    assert by_type["Reconciling"]["status"] == "False"
    assert by_type["Ready"]["status"] == "False"
    repaired = status_integrity(broken, 2, [])
    by_type = {c["type"]: c for c in repaired["conditions"]}
    assert (by_type["Stalled"]["status"], by_type["Stalled"]["reason"]) == ("False", "Verified")
    assert by_type["Ready"]["status"] == "True"
