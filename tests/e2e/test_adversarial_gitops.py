"""Adversarial review of the GitOps-aware rollback (``etcdconfig.gitops``,
``cmd_rollback``) and of the field managers the operator and the CLI now write under,
against a real kube-apiserver, a real etcd, the operator as a process and (where
named) real Flux.

Tests named ``test_defect_*`` FAIL on the code as reviewed: the docstring gives the
input or interleaving, what is observed and what is expected. The others are
hypotheses that held.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from tests.e2e.gitops_env import (
    FleetRepo,
    etcdconfig_cli,
    etcdconfig_run,
    flux,
    git_server,
    gitops_operator,
    records,
    to_yaml,
)
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    get,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.flux import Flux
from etcdconfig.devenv.gitserver import GitServer

__all__ = ["flux", "git_server", "gitops_operator"]  # fixtures used by name

SCHEMA = {
    "type": "object",
    "required": ["retries"],
    "properties": {"retries": {"type": "integer", "maximum": 10}},
}


def payments(namespace: str, retries: int, cause: str, **meta: Any) -> dict[str, Any]:
    m = config_manifest(
        "payments", namespace, {"currency": "EUR", "retries": retries}, schema=SCHEMA
    )
    m["metadata"]["annotations"] = {"etcdconfig.io/change-cause": cause}
    m["metadata"].update(meta)
    return m


def live(plane: ControlPlane, namespace: str, name: str = "payments") -> dict[str, Any]:
    out = plane.kubectl(
        "get", "configs.etcdconfig.io", name, "-n", namespace, "-o", "json", "--show-managed-fields"
    )
    return dict(json.loads(out.stdout))


def wait_versions(op: OperatorProcess, namespace: str, n: int) -> list[dict[str, Any]]:
    """The records (newest first) once there are ``n``."""
    return list(
        wait_until(
            lambda: (lambda r: r if len(r) >= n else None)(records(op, namespace, "payments")),
            60.0,
            f"{n} versions of {namespace}/payments",
        )
    )


def two_versions(plane: ControlPlane, namespace: str, **meta: Any) -> None:
    apply(plane, payments(namespace, 3, "initial", **meta))
    wait_observed(plane, namespace, "payments")
    apply(plane, payments(namespace, 7, "seven", **meta))
    obj = wait_observed(plane, namespace, "payments")
    assert obj["status"]["version"] == 2


# --- the rollback annotation outlives the rollback ----------------------------------------------


def test_defect_stale_rollback_annotation_marks_a_later_schema_change_as_a_rollback(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """``etcdconfig rollback --to 1`` records v3 with ``origin: rollback, fromVersion 1``
    (right). The ``etcdconfig.io/rollback`` annotation stays on the object. Then the
    user widens the schema (``kubectl patch`` of ``spec.schema``; ``spec.data`` is not
    touched): generation 4, recorded as v4 — a schema change, an apply.

    Observed: v4 ``origin: {kind: rollback, fromVersion: 1}``: ``origin_of`` only checks
    that the annotation's checksum names the current data, which it still does. Any
    later change that leaves the data alone (schema, ``history.maxVersions``,
    ``publish``, ``deletionPolicy``) is recorded as one more rollback to version 1.
    Expected: ``{kind: apply}``. Fix: a version is a rollback only when its data
    differs from the data of the version it chains on (``mine.checksum !=
    data_checksum``; a rollback that changes nothing makes no new generation anyway);
    or have the annotation name the generation it produced."""
    two_versions(control_plane, namespace)
    ref = f"{namespace}/payments"
    etcdconfig_cli(operator, "rollback", ref, "--to", "1")
    v3 = wait_versions(operator, namespace, 3)[0]
    assert (v3["version"], v3["origin"]) == (3, {"kind": "rollback", "fromVersion": 1})

    wider = {**SCHEMA, "properties": {"retries": {"type": "integer", "maximum": 20}}}
    control_plane.kubectl(
        "patch",
        "configs.etcdconfig.io",
        "payments",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"schema": wider}}),
    )
    v4 = wait_versions(operator, namespace, 4)[0]
    assert v4["version"] == 4 and v4["data"] == v3["data"]
    # managedFields times are whole seconds: a patch in the rollback's second may be
    # attributed to either (docs/configs.md); the origin is what this test is about
    if v4["author"]["time"] != v3["author"]["time"]:
        assert v4["author"]["manager"] == "kubectl-patch"
    assert v4["origin"] == {"kind": "apply"}, v4["origin"]


# --- detection against what the real API server records ----------------------------------------


def test_defect_recommended_instance_label_refuses_a_rollback_of_an_unmanaged_config(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """A Config applied by hand with the Kubernetes recommended labels
    (``app.kubernetes.io/instance`` among them); no GitOps tool anywhere: the API
    server's managedFields name only ``kubectl-client-side-apply`` (and the operator).

    Observed: ``etcdconfig rollback --to 1`` exits 1 "managed by Argo CD (Application
    payments-prod; label app.kubernetes.io/instance=payments-prod) ... Roll back in Git
    instead": there is no Git. Expected: the rollback goes through (exit 0, v3 with
    origin rollback). Fix: require Argo CD's field manager ``argocd-controller`` (it
    applies with that manager, client-side apply too) beside the instance label."""
    labels = {
        "app.kubernetes.io/name": "payments",
        "app.kubernetes.io/instance": "payments-prod",
        "app.kubernetes.io/part-of": "checkout",
    }
    two_versions(control_plane, namespace, labels=labels)
    managers = {e["manager"] for e in live(control_plane, namespace)["metadata"]["managedFields"]}
    assert "argocd-controller" not in managers, managers
    proc = etcdconfig_run(operator, "rollback", f"{namespace}/payments", "--to", "1")
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    v3 = wait_versions(operator, namespace, 3)[0]
    assert v3["origin"] == {"kind": "rollback", "fromVersion": 1}


def test_defect_argo_cd_client_side_adoption_with_custom_label_is_not_refused(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """Argo CD (label tracking, ``application.instanceLabelKey:
    argocd.argoproj.io/instance`` as in its docs' example) adopts an existing Config
    whose spec already equals Git's, with client-side apply: gitops-engine runs
    kubectl's apply with field manager ``argocd-controller``. Reproduced with
    ``kubectl apply --field-manager=argocd-controller`` (the same code path). The real
    API server gives an Update manager only the fields it changed: argocd-controller
    owns the label and the last-applied annotation, NOT spec (checked below).

    Observed: the live rollback is performed (exit 0) — Argo CD self-heal reverts it at
    its next sync, the outcome the refusal exists to prevent. Expected: refused (exit
    1, "managed by Argo CD"). Fix: count an ``argocd-controller`` managedFields entry
    whatever it owns (it is Argo CD's whether or not it changed spec), and labels or
    annotations under ``argocd.argoproj.io/``."""
    two_versions(control_plane, namespace)
    adopted = payments(namespace, 7, "seven", labels={"argocd.argoproj.io/instance": "payments"})
    apply(control_plane, adopted, "--field-manager=argocd-controller")
    obj = live(control_plane, namespace)
    argo = [e for e in obj["metadata"]["managedFields"] if e["manager"] == "argocd-controller"]
    assert len(argo) == 1 and "f:spec" not in argo[0]["fieldsV1"], argo  # the premise
    assert obj["metadata"]["generation"] == 2  # spec unchanged: no new generation

    proc = etcdconfig_run(operator, "rollback", f"{namespace}/payments", "--to", "1")
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "is managed by Argo CD" in proc.stderr


# --- the live rollback racing another write ------------------------------------------------------


def run_rollback_in_process(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    control_plane: ControlPlane,
    op: OperatorProcess,
    ref: str,
    version: int,
    meanwhile: Any,
    *extra: str,
) -> tuple[int, str, str]:
    """``etcdconfig rollback`` in this process; ``meanwhile()`` runs after the CLI has
    read the Config and before it patches it (the window of the race)."""
    from etcdconfig.cli.main import main
    from etcdconfig.kube import Kube

    for key, value in control_plane.client_env().items():
        if key != "PATH" and os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    real = Kube.get_config
    calls = {"n": 0}

    async def get_then_race(self: Kube, ns: str, name: str) -> Any:
        obj = await real(self, ns, name)
        calls["n"] += 1
        if calls["n"] == 1:
            meanwhile()
        return obj

    monkeypatch.setattr(Kube, "get_config", get_then_race)
    code = main(
        [
            "rollback",
            ref,
            "--to",
            str(version),
            "--etcd-endpoints",
            op.etcd_endpoint,
            "--prefix",
            op.prefix,
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_rollback_racing_a_kubectl_edit_loses_nothing(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ``kubectl patch`` of spec.data lands between the CLI's read and its patch: the
    resourceVersion ``test`` makes the rollback fail; the concurrent change stands and
    is recorded as an apply (held: nothing lost, nothing mislabelled)."""
    two_versions(control_plane, namespace)

    def edit() -> None:
        control_plane.kubectl(
            "patch",
            "configs.etcdconfig.io",
            "payments",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"data": {"currency": "USD", "retries": 9}}}),
        )

    code, out, err = run_rollback_in_process(
        monkeypatch, capsys, control_plane, operator, f"{namespace}/payments", 1, edit
    )
    assert code == 1 and out == "", (code, out, err)
    v3, v2 = wait_versions(operator, namespace, 3)[:2]
    assert v3["data"] == {"currency": "USD", "retries": 9}
    assert v3["origin"] == {"kind": "apply"}
    # managedFields times are whole seconds: in v2's second either manager may be named
    if v3["author"]["time"] != v2["author"]["time"]:
        assert v3["author"]["manager"] == "kubectl-patch"
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["spec"]["data"] == {"currency": "USD", "retries": 9}
    assert "etcdconfig.io/rollback" not in (obj["metadata"].get("annotations") or {})


def test_defect_rollback_failing_on_a_concurrent_change_does_not_say_so(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same race as above. The one-line error the user gets is the API server's status
    code only, without the cause or what to do.

    Observed: ``error: patch Config NS/payments: HTTP 422 Unprocessable Entity`` (the
    JSON patch's resourceVersion ``test`` failed). Expected: a sentence naming the
    cause, e.g. "NS/payments changed since it was read (resourceVersion A, now B);
    nothing was changed: run the rollback again". Fix: catch the failed ``test``
    (422 whose message names the test operation / 409) in ``cmd_rollback`` and
    explain it."""
    two_versions(control_plane, namespace)

    def edit() -> None:
        control_plane.kubectl(
            "annotate", "configs.etcdconfig.io", "payments", "-n", namespace, "team=payments"
        )

    code, out, err = run_rollback_in_process(
        monkeypatch, capsys, control_plane, operator, f"{namespace}/payments", 1, edit
    )
    assert code == 1 and out == ""
    assert "changed since" in err and "run the rollback again" in err, err


def test_defect_rollback_fails_on_a_status_only_write_of_the_operator(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Between the CLI's read and its patch, only the Config's STATUS is written (the
    operator's resync round, its integrity scan, kopf's bookkeeping: each bumps
    resourceVersion). Nothing the rollback reads or replaces (spec, annotations)
    changed.

    Observed: the rollback fails (exit 1, HTTP 422) and nothing is rolled back.
    Expected: the rollback is performed (a status write is not a concurrent change of
    the Config; ``kubectl patch`` itself retries conflicts). Fix: on a failed ``test``,
    re-read and retry when spec and metadata.annotations/labels are unchanged (guard
    with ``metadata.generation`` plus the annotations read, or test
    ``/spec/data`` and the annotations instead of resourceVersion)."""
    two_versions(control_plane, namespace)

    def status_write() -> None:
        control_plane.kubectl(
            "patch",
            "configs.etcdconfig.io",
            "payments",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"recordedAt": "2026-12-07T00:00:00Z"}}),
        )

    code, out, err = run_rollback_in_process(
        monkeypatch, capsys, control_plane, operator, f"{namespace}/payments", 1, status_write
    )
    assert (code, err) == (0, ""), (code, out, err)
    v3 = wait_versions(operator, namespace, 3)[0]
    assert v3["origin"] == {"kind": "rollback", "fromVersion": 1}


# --- field managers: who is recorded ------------------------------------------------------------


def test_cli_rollback_is_attributed_to_the_cli_and_the_operator_never_owns_spec(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """After create, apply, a live rollback and the operator's status/finalizer writes:
    v3's author is ``etcdconfig-cli`` (Update), the operator's own entries
    (``etcdconfig``) own status or metadata only, and no metadata-only write of the
    operator makes a version (held)."""
    two_versions(control_plane, namespace)
    ref = f"{namespace}/payments"
    out = etcdconfig_cli(operator, "rollback", ref, "--to", "1").stdout
    assert out.startswith(f"{ref} rolled back to the data of version 1 (generation 3)")
    v3, v2 = wait_versions(operator, namespace, 3)[:2]
    if v3["author"]["time"] != v2["author"]["time"]:  # whole seconds (docs/configs.md)
        assert (v3["author"]["manager"], v3["author"]["operation"]) == (
            "etcdconfig-cli",
            "Update",
        )
    assert v3["author"]["changeCause"] == "rollback to version 1"
    obj = wait_observed(control_plane, namespace, "payments")
    for e in (
        obj["metadata"].get("managedFields")
        or live(control_plane, namespace)["metadata"]["managedFields"]
    ):
        if e["manager"] in ("etcdconfig", "kopf"):
            assert "f:spec" not in e["fieldsV1"] or e.get("subresource") == "status", e
    assert len(records(operator, namespace, "payments")) == 3
    ready = condition(get(control_plane, namespace, "payments"), "Ready")
    assert ready is not None and ready["status"] == "True"


def test_dry_runs_of_a_managed_config_warn_and_change_nothing(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """``--dry-run`` and ``--dry-run=server`` of a Flux-labelled Config: a warning, the
    diff, exit 0; no generation, no version (held)."""
    labels = {
        "kustomize.toolkit.fluxcd.io/name": "fleet",
        "kustomize.toolkit.fluxcd.io/namespace": namespace,
    }
    two_versions(control_plane, namespace, labels=labels)
    ref = f"{namespace}/payments"
    for mode in ("--dry-run", "--dry-run=server"):
        proc = etcdconfig_run(operator, "rollback", ref, "--to", "1", mode)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith(f"warning: Config {ref} is managed by Flux"), proc.stderr
        assert "-retries: 7\n+retries: 3\n" in proc.stdout, proc.stdout
        kind = "server" if mode.endswith("server") else "client"
        assert proc.stdout.endswith(f"dry run ({kind}): would roll {ref} back to version 1\n")
    obj = get(control_plane, namespace, "payments")
    assert obj["metadata"]["generation"] == 2
    assert len(records(operator, namespace, "payments")) == 2


def test_defect_rollback_to_the_current_data_claims_a_new_version_and_leaves_a_stale_mark(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """``etcdconfig rollback --to 2`` while version 2 is the head (or any version whose
    data equals the current data): the JSON patch replaces ``spec.data`` with the same
    value, so only the two annotations change — no new generation, nothing recorded.

    Observed: exit 0 and "rolled back to the data of version 2 (generation 2); the
    operator records it as a new version" — no version is ever recorded — and the
    ``etcdconfig.io/rollback`` annotation, now naming the current data, is left on the
    object (the next non-data change is then recorded as a rollback to version 2).
    Expected: nothing patched, and a message that the Config already holds the data of
    version 2 (exit 0). Fix: compare ``checksum(target.data)`` with the current
    ``spec.data`` before patching (for ``--print`` too: say so on stderr)."""
    two_versions(control_plane, namespace)
    ref = f"{namespace}/payments"
    before = live(control_plane, namespace)
    proc = etcdconfig_run(operator, "rollback", ref, "--to", "2")
    after = live(control_plane, namespace)
    assert after["metadata"]["generation"] == 2  # nothing to record
    assert "operator records it as a new version" not in proc.stdout, proc.stdout
    assert (after["metadata"].get("annotations") or {}) == (
        before["metadata"].get("annotations") or {}
    )


# --- with real Flux (last: its operator watches every namespace until the module ends, and
# would write the status of the Configs the tests above give to `operator`) ---


@pytest.fixture
def fleet(
    control_plane: ControlPlane,
    namespace: str,
    git_server: GitServer,
    flux: Flux,
    gitops_operator: OperatorProcess,
) -> Iterator[FleetRepo]:
    repo = FleetRepo(flux, git_server.repository(f"adv-{namespace}"), namespace)
    yield repo
    repo.uninstall()


def test_defect_printed_rollback_kept_in_git_marks_the_next_schema_commit_as_a_rollback(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    """The GitOps way: ``rollback --to 1 --print`` committed, Flux applies it, v3 is
    ``origin: rollback, fromVersion 1`` (right). The manifest now lives in Git with the
    ``etcdconfig.io/rollback`` annotation — nobody removes it. The next commit only
    widens the schema (maximum 10 -> 20), with its own change cause.

    Observed: v4 (kustomize-controller, the schema change) is recorded with ``origin:
    {kind: rollback, fromVersion: 1}``; so is every later commit that leaves
    ``spec.data`` as it is. Expected: ``{kind: apply}``. Fix: as for the kubectl case
    (origin rollback only when the data changed to the annotation's checksum)."""
    ref = f"{namespace}/payments"
    sha = fleet.commit({"payments.yaml": to_yaml(payments(namespace, 3, "initial"))}, "add")
    fleet.install()
    fleet.wait_applied(sha)
    sha = fleet.commit({"payments.yaml": to_yaml(payments(namespace, 7, "seven"))}, "seven")
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")

    printed = etcdconfig_cli(gitops_operator, "rollback", ref, "--to", "1", "--print").stdout
    sha = fleet.commit({"payments.yaml": printed}, "roll back to v1")
    fleet.wait_applied(sha)
    v3 = wait_versions(gitops_operator, namespace, 3)[0]
    assert v3["origin"] == {"kind": "rollback", "fromVersion": 1}

    import yaml

    manifest = yaml.safe_load(printed)
    manifest["spec"]["schema"]["properties"]["retries"]["maximum"] = 20
    manifest["metadata"]["annotations"]["etcdconfig.io/change-cause"] = "allow 20 retries"
    sha = fleet.commit({"payments.yaml": to_yaml(manifest)}, "allow 20 retries")
    fleet.wait_applied(sha)
    v4 = wait_versions(gitops_operator, namespace, 4)[0]
    assert v4["data"] == v3["data"]
    assert v4["author"]["manager"] == "kustomize-controller"
    assert v4["author"]["changeCause"] == "allow 20 retries"
    assert v4["origin"] == {"kind": "apply"}, v4["origin"]


def test_forced_rollback_under_flux_then_revert_is_recorded_in_order(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    """--force under Flux: the live rollback is recorded as a rollback by the CLI; Flux's
    revert is an apply by kustomize-controller (Git holds plain manifests here, no
    rollback annotation), and the CLI's rollback annotation left on the object does not
    mislabel it (held)."""
    ref = f"{namespace}/payments"
    sha = fleet.commit({"payments.yaml": to_yaml(payments(namespace, 3, "initial"))}, "add")
    fleet.install()
    fleet.wait_applied(sha)
    sha = fleet.commit({"payments.yaml": to_yaml(payments(namespace, 7, "seven"))}, "seven")
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")
    etcdconfig_cli(gitops_operator, "rollback", ref, "--to", "1", "--force")
    wait_versions(gitops_operator, namespace, 3)
    fleet.reconcile()
    got = wait_versions(gitops_operator, namespace, 4)
    assert [
        (v["version"], v["data"]["retries"], v["author"]["manager"], v["origin"]["kind"])
        for v in got
    ] == [
        (4, 7, "kustomize-controller", "apply"),
        (3, 3, "etcdconfig-cli", "rollback"),
        (2, 7, "kustomize-controller", "apply"),
        (1, 3, "kustomize-controller", "apply"),
    ]


def test_defect_flux_reconcile_disabled_config_is_refused_though_flux_never_reverts(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    """Flux's own per-object opt-out: ``kustomize.toolkit.fluxcd.io/reconcile:
    disabled`` on the in-cluster object makes kustomize-controller stop applying it
    (fluxcd/kustomize-controller#484) — exactly the "sync suspended" the refusal
    suggests, for one object. The Flux labels stay.

    Observed: ``rollback --to 1`` is refused (exit 1, "managed by Flux ... would revert a
    live rollback"); with ``--force`` it is performed and, as checked below, Flux does
    NOT revert it (a further Flux reconcile leaves retries 3, no new version).
    Expected: no refusal for an object Flux will not apply (exit 0). Fix: in
    ``management``, treat Flux labels with annotation/label
    ``kustomize.toolkit.fluxcd.io/reconcile: disabled`` (and
    ``kustomize.toolkit.fluxcd.io/ssa: IfNotPresent``/``Ignore``) as not reverting."""
    ref = f"{namespace}/payments"
    sha = fleet.commit({"payments.yaml": to_yaml(payments(namespace, 3, "initial"))}, "add")
    fleet.install()
    fleet.wait_applied(sha)
    sha = fleet.commit({"payments.yaml": to_yaml(payments(namespace, 7, "seven"))}, "seven")
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")
    control_plane.kubectl(
        "annotate",
        "configs.etcdconfig.io",
        "payments",
        "-n",
        namespace,
        "kustomize.toolkit.fluxcd.io/reconcile=disabled",
    )
    plain = etcdconfig_run(gitops_operator, "rollback", ref, "--to", "1")
    if plain.returncode != 0:  # refused: do it anyway, to see what Flux does
        etcdconfig_cli(gitops_operator, "rollback", ref, "--to", "1", "--force")
    wait_versions(gitops_operator, namespace, 3)
    fleet.reconcile()
    fleet.reconcile()
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["spec"]["data"]["retries"] == 3  # Flux left the rollback alone
    assert len(records(gitops_operator, namespace, "payments")) == 3
    assert (plain.returncode, plain.stderr) == (0, ""), plain.stderr
