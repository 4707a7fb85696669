"""GitOps for real: Flux (source-controller + kustomize-controller, built from Go
modules) reconciles Configs from a Git repository served on loopback, and the
operator records what Flux applies.

Every wait has a deadline; Flux is nudged with ``reconcile.fluxcd.io/requestedAt``
(what ``flux reconcile`` does) after each commit, and its intervals are 5 s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.e2e.gitops_env import (
    FleetRepo,
    admission,
    etcdconfig_cli,
    etcdconfig_run,
    flux,
    git_server,
    gitops_operator,
    history,
    records,
    to_yaml,
)
from tests.e2e.operator_env import (
    OperatorProcess,
    condition,
    config_manifest,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.flux import Flux
from etcdconfig.devenv.gitserver import GitServer

__all__ = ["admission", "flux", "git_server", "gitops_operator"]  # fixtures used by name

SCHEMA = {
    "type": "object",
    "required": ["retries"],
    "properties": {"retries": {"type": "integer", "maximum": 10}},
}

#: Labels kustomize-controller puts on every object it applies.
FLUX_LABELS = ("kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace")


def payments(namespace: str, retries: int, cause: str) -> dict[str, Any]:
    m = config_manifest(
        "payments", namespace, {"currency": "EUR", "retries": retries}, schema=SCHEMA
    )
    m["metadata"]["annotations"] = {"etcdconfig.io/change-cause": cause}
    return m


def marker(namespace: str) -> dict[str, Any]:
    """A ConfigMap that keeps the directory in Git when the Configs are removed."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fleet-marker", "namespace": namespace},
        "data": {"purpose": "keeps deploy/ non-empty"},
    }


@pytest.fixture
def fleet(
    control_plane: ControlPlane,
    namespace: str,
    git_server: GitServer,
    flux: Flux,
    gitops_operator: OperatorProcess,
) -> Iterator[FleetRepo]:
    repo = FleetRepo(flux, git_server.repository(f"fleet-{namespace}"), namespace)
    yield repo
    repo.uninstall()


#: What the operator may own of a Config's status subresource: status only.
STATUS_FIELDS = {"f:status": ...}


def operator_fields(live: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """(manager, subresource) -> the fields it owns, for every manager but Flux's; a
    status entry is reduced to ``STATUS_FIELDS`` when it owns nothing outside status."""
    out: dict[tuple[str, str], Any] = {}
    for e in live["metadata"]["managedFields"]:
        if e["manager"] == "kustomize-controller":
            continue
        fields = e["fieldsV1"]
        if e.get("subresource") == "status" and set(fields) == {"f:status"}:
            fields = STATUS_FIELDS
        out[(e["manager"], e.get("subresource", ""))] = fields
    return out


def get_config(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    out = plane.kubectl(
        "get",
        "configs.etcdconfig.io",
        name,
        "-n",
        namespace,
        "-o",
        "json",
        "--ignore-not-found",
        "--show-managed-fields",
    )
    return dict(json.loads(out.stdout)) if out.stdout.strip() else None


def test_commit_is_applied_by_flux_and_recorded(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit(
        {
            "marker.yaml": to_yaml(marker(namespace)),
            "payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings")),
        },
        "add payments",
    )
    fleet.install()

    ks = fleet.wait_applied(sha)  # wait: true -> the Config is Ready (kstatus) first
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["status"]["version"] == 1
    inventory = [e["id"] for e in ks["status"]["inventory"]["entries"]]
    assert f"{namespace}_payments_etcdconfig.io_Config" in inventory

    # Who applied it: kustomize-controller's server-side apply, as the history says.
    doc = history(gitops_operator, namespace, "payments")
    (v1,) = doc["versions"]
    assert v1["version"] == 1
    assert v1["author"]["manager"] == "kustomize-controller"
    assert v1["author"]["operation"] == "Apply"
    assert v1["author"]["source"] == "fieldManager"
    assert v1["author"]["changeCause"] == "initial payments settings"

    # What Flux puts on the object: its ownership labels, and no Git revision.
    live = get_config(control_plane, namespace, "payments")
    assert live is not None
    labels = live["metadata"].get("labels") or {}
    annotations = live["metadata"].get("annotations") or {}
    assert labels[FLUX_LABELS[0]] == fleet.name
    assert labels[FLUX_LABELS[1]] == namespace
    on_object = " ".join([*labels.values(), *annotations.values()])
    assert sha not in on_object and sha[:7] not in on_object, (labels, annotations)
    assert set(labels) == set(FLUX_LABELS), labels  # Flux adds nothing else
    assert set(annotations) == {"etcdconfig.io/change-cause"}, annotations
    # the operator's managers (kopf's, and its own client's once it has written status
    # itself) own the finalizer and status, nothing else
    owned = operator_fields(live)
    assert owned[("kopf", "")] == {
        "f:metadata": {"f:finalizers": {".": {}, 'v:"etcdconfig.io/finalizer"': {}}}
    }, owned
    assert set(owned) <= {("kopf", ""), ("kopf", "status"), ("etcdconfig", "status")}, owned
    assert all(v == STATUS_FIELDS for (_, sub), v in owned.items() if sub == "status"), owned
    spec_owners = {
        e["manager"] for e in live["metadata"]["managedFields"] if "f:spec" in e["fieldsV1"]
    }
    assert spec_owners == {"kustomize-controller"}

    # A second commit: a new version, by the same manager, nothing else recorded.
    sha2 = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 5, "raise retries"))}, "raise retries"
    )
    fleet.wait_applied(sha2)
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["status"]["version"] == 2
    doc = history(gitops_operator, namespace, "payments")
    assert [v["version"] for v in doc["versions"]] == [2, 1]
    assert doc["versions"][0]["author"]["manager"] == "kustomize-controller"
    assert doc["versions"][0]["author"]["changeCause"] == "raise retries"


def test_deleting_from_git_prunes_and_history_stays(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit(
        {
            "marker.yaml": to_yaml(marker(namespace)),
            "payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings")),
        },
        "add payments",
    )
    fleet.install()
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")

    sha2 = fleet.commit({"payments.yaml": None}, "remove payments")
    fleet.wait_applied(sha2)
    wait_until(
        lambda: get_config(control_plane, namespace, "payments") is None,
        60.0,
        "the pruned Config to be gone (the operator's finalizer released)",
    )
    doc = history(gitops_operator, namespace, "payments")
    assert [v["version"] for v in doc["versions"]] == [1]
    assert doc["versions"][0]["author"]["manager"] == "kustomize-controller"
    assert doc["head"]["deleted"] is True, doc["head"]
    marker_cm = control_plane.kubectl(
        "get", "configmap", "fleet-marker", "-n", namespace, "-o", "name"
    )
    assert marker_cm.stdout.strip() == "configmap/fleet-marker"


def test_health_check_waits_for_the_operator(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit({"marker.yaml": to_yaml(marker(namespace))}, "marker only")
    fleet.install()
    fleet.wait_applied(sha)
    gitops_operator.pause()
    try:
        sha2 = fleet.commit(
            {"payments.yaml": to_yaml(payments(namespace, 3, "while the operator is paused"))},
            "add payments",
        )
        with pytest.raises(AssertionError, match="timed out"):
            # a Config without status reads as observedGeneration 0 (the CRD's default):
            # kstatus says InProgress, so the Kustomization is not Ready (it was at once
            # before: no status at all is Current to kstatus)
            fleet.wait_applied(sha2, timeout=15.0)
    finally:
        gitops_operator.resume_if_paused()
    fleet.wait_applied(sha2)
    assert wait_observed(control_plane, namespace, "payments")["status"]["version"] == 1


def test_an_invalid_commit_is_refused_by_the_webhook_and_flux_shows_why(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
    admission: Callable[[str], None],
) -> None:
    admission(namespace)
    sha = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings"))}, "add"
    )
    fleet.install()
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")

    bad = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 50, "too many retries"))}, "break it"
    )
    ready = fleet.wait_failed(bad)
    assert ready["reason"] == "ReconciliationFailed", ready
    assert f"Config/{namespace}/payments dry-run failed" in ready["message"], ready
    assert (
        'admission webhook "validate.configs.etcdconfig.io" denied the request: '
        "InvalidData: spec.data.retries: violates maximum 10"
    ) in ready["message"], ready
    ks = fleet.kustomization()
    assert ks is not None and ks["status"]["lastAppliedRevision"] == fleet.revision(sha)

    # nothing reached the object or the store: v1 is still what runs
    live = get_config(control_plane, namespace, "payments")
    assert live is not None
    assert live["spec"]["data"] == {"currency": "EUR", "retries": 3}
    assert live["metadata"]["generation"] == 1
    assert live["status"]["version"] == 1
    doc = history(gitops_operator, namespace, "payments")
    assert [v["version"] for v in doc["versions"]] == [1]
    assert doc["head"]["version"] == 1

    fixed = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 4, "four retries"))}, "fix it"
    )
    fleet.wait_applied(fixed)
    assert wait_observed(control_plane, namespace, "payments")["status"]["version"] == 2
    doc = history(gitops_operator, namespace, "payments")
    assert [(v["version"], v["author"]["changeCause"]) for v in doc["versions"]] == [
        (2, "four retries"),
        (1, "initial payments settings"),
    ]


def test_an_invalid_commit_without_the_webhook_stalls_and_fails_the_health_check(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings"))}, "add"
    )
    fleet.install()
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")

    bad = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 50, "too many retries"))}, "break it"
    )
    ready = fleet.wait_failed(bad)
    live = get_config(control_plane, namespace, "payments")
    assert live is not None
    stalled = condition(live, "Stalled")
    assert stalled is not None
    assert (stalled["status"], stalled["reason"], stalled["message"]) == (
        "True",
        "InvalidData",
        "fix spec to continue: spec.data.retries: violates maximum 10",
    ), stalled
    # Flux fails the health check at once (kstatus: Stalled is Failed), naming the Config;
    # it does not copy the object's message: the reason is in the Config's Stalled condition
    assert ready["reason"] == "HealthCheckFailed", ready
    assert ready["message"].startswith("health check failed after "), ready
    assert ready["message"].endswith(
        f"failed early due to stalled resources: [Config/{namespace}/payments status: 'Failed']"
    ), ready

    # applied (the API server cannot know the Config's own schema), not recorded
    assert live["metadata"]["generation"] == 2
    assert live["status"]["version"] == 1
    doc = history(gitops_operator, namespace, "payments")
    assert [v["version"] for v in doc["versions"]] == [1]


def test_no_drift_over_many_reconciles(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings"))}, "add"
    )
    fleet.install()
    fleet.wait_applied(sha)
    obj = wait_observed(control_plane, namespace, "payments")
    ref = f"Config/{namespace}/payments"
    assert fleet.flux.applied(namespace, fleet.name)[0] == {ref: "created"}

    for _ in range(6):  # six more applies of the same commit, each waited for
        fleet.reconcile()
    applied = fleet.flux.applied(namespace, fleet.name)
    assert len(applied) >= 7, applied
    assert applied[1:] == [{ref: "unchanged"}] * (len(applied) - 1)  # never any drift
    live = get_config(control_plane, namespace, "payments")
    assert live is not None
    assert live["metadata"]["generation"] == 1
    assert live["status"]["version"] == 1
    assert live["spec"] == obj["spec"]
    spec_owners = {
        e["manager"] for e in live["metadata"]["managedFields"] if "f:spec" in e["fieldsV1"]
    }
    assert spec_owners == {"kustomize-controller"}
    assert [v["version"] for v in history(gitops_operator, namespace, "payments")["versions"]] == [
        1
    ]


def test_rollback_the_gitops_way(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    ref = f"{namespace}/payments"
    sha = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings"))}, "add"
    )
    fleet.install()
    fleet.wait_applied(sha)
    sha = fleet.commit({"payments.yaml": to_yaml(payments(namespace, 7, "seven"))}, "seven")
    fleet.wait_applied(sha)
    before = wait_observed(control_plane, namespace, "payments")
    assert before["status"]["version"] == 2

    # live: refused, nothing sent
    refused = etcdconfig_run(gitops_operator, "rollback", ref, "--to", "1")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"error: Config {ref} is managed by Flux (Kustomization {namespace}/fleet; label "
        "kustomize.toolkit.fluxcd.io/name=fleet, field manager kustomize-controller): Flux "
        "would revert a live rollback at its next sync, recording Git's data again as a new "
        f"version. Roll back in Git instead: etcdconfig rollback {ref} --to 1 --print > "
        "<file in the repository>, then commit and push; --force rolls back live anyway "
        "(e.g. with the Flux sync suspended)\n"
    )
    live = get_config(control_plane, namespace, "payments")
    assert live is not None
    assert live["metadata"]["generation"] == before["metadata"]["generation"]
    assert live["spec"] == before["spec"]
    assert not any(e["manager"] == "etcdconfig-cli" for e in live["metadata"]["managedFields"])

    # the GitOps way: the printed manifest committed
    printed = etcdconfig_cli(gitops_operator, "rollback", ref, "--to", "1", "--print").stdout
    sha = fleet.commit({"payments.yaml": printed}, "roll payments back to v1")
    fleet.wait_applied(sha)
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["status"]["version"] == 3
    v3 = records(gitops_operator, namespace, "payments")[0]
    assert v3["version"] == 3
    assert v3["data"] == {"currency": "EUR", "retries": 3}
    assert v3["origin"] == {"kind": "rollback", "fromVersion": 1}
    assert v3["author"]["manager"] == "kustomize-controller"
    assert v3["author"]["changeCause"] == "rollback to version 1"

    # --force: rolled back live, and Flux puts Git's data back at its next sync
    forced = etcdconfig_cli(gitops_operator, "rollback", ref, "--to", "2", "--force")
    assert forced.stdout.startswith(f"{ref} rolled back to the data of version 2")
    wait_until(
        lambda: len(records(gitops_operator, namespace, "payments")) >= 4,
        60.0,
        "the forced rollback recorded",
    )
    fleet.reconcile()
    obj = wait_observed(control_plane, namespace, "payments")
    assert [
        (v["version"], v["data"]["retries"], v["author"]["manager"])
        for v in records(gitops_operator, namespace, "payments")
    ] == [
        (5, 3, "kustomize-controller"),  # reverted by Flux, as the refusal said
        (4, 7, "etcdconfig-cli"),
        (3, 3, "kustomize-controller"),
        (2, 7, "kustomize-controller"),
        (1, 3, "kustomize-controller"),
    ]
    assert obj["status"]["version"] == 5


def test_deleting_a_purge_config_from_git_removes_its_history(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    manifest = payments(namespace, 3, "initial payments settings")
    manifest["spec"]["deletionPolicy"] = "Purge"
    sha = fleet.commit(
        {"marker.yaml": to_yaml(marker(namespace)), "payments.yaml": to_yaml(manifest)}, "add"
    )
    fleet.install()
    fleet.wait_applied(sha)
    uid = wait_observed(control_plane, namespace, "payments")["metadata"]["uid"]

    sha = fleet.commit({"payments.yaml": None}, "remove payments")
    fleet.wait_applied(sha)
    wait_until(
        lambda: get_config(control_plane, namespace, "payments") is None,
        60.0,
        "the pruned Config to be gone (the operator's finalizer released)",
    )
    doc = history(gitops_operator, namespace, "payments")
    assert (doc["state"], doc["versions"]) == ("purged", [])
    assert doc["head"]["uid"] == uid


def test_suspended_then_resumed_applies_only_the_last_of_many_commits(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    def build(n: int) -> dict[str, Any]:
        m = payments(namespace, 3, f"build {n}")
        m["spec"]["data"]["build"] = n
        return m

    sha = fleet.commit({"payments.yaml": to_yaml(build(0))}, "build 0")
    fleet.install()
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")

    fleet.flux.suspend("kustomization", namespace, fleet.name)
    for n in range(1, 21):
        sha = fleet.repo.commit({f"{fleet.path}/payments.yaml": to_yaml(build(n))}, f"build {n}")
    fleet.flux.reconcile_now("gitrepository", namespace, fleet.name)
    want = fleet.revision(sha)
    wait_until(
        lambda: (
            ((fleet.flux.get("gitrepository", namespace, fleet.name) or {}).get("status") or {})
            .get("artifact", {})
            .get("revision")
            == want
        ),
        60.0,
        "the source at the last commit",
    )
    live = get_config(control_plane, namespace, "payments")
    assert live is not None and live["spec"]["data"]["build"] == 0  # suspended: not applied

    fleet.flux.suspend("kustomization", namespace, fleet.name, False)
    fleet.wait_applied(sha)
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["status"]["version"] == 2
    assert [
        (v["version"], v["data"]["build"]) for v in records(gitops_operator, namespace, "payments")
    ] == [(2, 20), (1, 0)]


def test_a_burst_of_twenty_commits_records_the_last_once(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    def build(n: int) -> dict[str, Any]:
        m = payments(namespace, 3, f"build {n}")
        m["spec"]["data"]["build"] = n
        return m

    sha = fleet.commit({"payments.yaml": to_yaml(build(0))}, "build 0")
    fleet.install()
    fleet.wait_applied(sha)
    for n in range(1, 21):  # Flux fetches whichever it sees: some, or only the last
        sha = fleet.commit({"payments.yaml": to_yaml(build(n))}, f"build {n}")
    fleet.wait_applied(sha)
    obj = wait_observed(control_plane, namespace, "payments")
    versions = list(reversed(records(gitops_operator, namespace, "payments")))
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))  # no gap
    builds = [v["data"]["build"] for v in versions]
    assert builds == sorted(set(builds)), builds  # in order, none recorded twice
    assert builds[0] == 0 and builds[-1] == 20
    assert [v["generation"] for v in versions] == sorted({v["generation"] for v in versions})
    assert obj["status"]["version"] == len(versions)
    assert obj["metadata"]["generation"] == versions[-1]["generation"]
    for v in versions:
        assert v["author"]["changeCause"] == f"build {v['data']['build']}"
