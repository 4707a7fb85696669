"""The CLI against the API server and a running operator (issue 11): rollback's
`--print` (the whole object), `-o json` with `--dry-run`, `--dry-run=server` and
`-o name`; deletions (Retain, Purge) and re-creations as the history shows them.
(`dev env`: test_cli_devenv.py, which must not share a module with another operator.)"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import yaml
from tests.e2e.operator_env import (
    BIN,
    OperatorProcess,
    apply,
    config_manifest,
    get,
    operator,
    wait_observed,
)

from etcdconfig.canonical import checksum
from etcdconfig.devenv.controlplane import ControlPlane


def run(op: OperatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "etcdconfig"), *args],
        env={
            **op.plane.client_env(),
            "ETCDCONFIG_ETCD_ENDPOINTS": op.etcd_endpoint,
            "ETCDCONFIG_ETCD_PREFIX": op.prefix,
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert (proc.returncode, proc.stderr) == (0, ""), (proc.returncode, proc.stderr)
    return proc.stdout


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane, operator: OperatorProcess) -> str:
    name = f"e2e-cli-life-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def two_versions(plane: ControlPlane, ns: str, name: str, **spec: object) -> dict[str, object]:
    m = config_manifest(name, ns, {"retries": 3, "currency": "EUR"}, **spec)
    m["metadata"]["labels"] = {"team": "payments"}
    m["metadata"]["annotations"] = {"owner": "alice"}
    apply(plane, m)
    wait_observed(plane, ns, name)
    m["spec"]["data"] = {"retries": 5, "currency": "EUR"}
    apply(plane, m)
    assert wait_observed(plane, ns, name)["status"]["version"] == 2
    return m


def test_rollback_print_is_the_whole_object(
    control_plane: ControlPlane, operator: OperatorProcess, ns: str
) -> None:
    m = two_versions(control_plane, ns, "printed", history={"maxVersions": 20})
    before = get(control_plane, ns, "printed")
    out = yaml.safe_load(ok(run(operator, "rollback", f"{ns}/printed", "--to", "1", "--print")))
    note = json.dumps(
        {"checksum": checksum({"retries": 3, "currency": "EUR"}), "fromVersion": 1},
        sort_keys=True,
    )
    assert out == {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {
            "name": "printed",
            "namespace": ns,
            "labels": {"team": "payments"},
            "annotations": {
                "owner": "alice",
                "etcdconfig.io/rollback": note,
                "etcdconfig.io/change-cause": "rollback to version 1",
            },
        },
        "spec": {**m["spec"], "data": {"retries": 3, "currency": "EUR"}},  # type: ignore[dict-item]
    }
    as_json = json.loads(
        ok(run(operator, "rollback", f"{ns}/printed", "--to", "1", "--print", "-o", "json"))
    )
    assert as_json == out
    # applying the printed manifest records version 3 as a rollback, with nothing else lost
    apply(control_plane, out)
    after = wait_observed(control_plane, ns, "printed")
    assert after["status"]["version"] == 3
    assert after["metadata"]["labels"] == {"team": "payments"}
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    doc = json.loads(ok(run(operator, "show", f"{ns}/printed", "--full", "-o", "json")))
    assert doc["origin"] == {"kind": "rollback", "fromVersion": 1}


def test_rollback_dry_runs_honour_output_and_change_nothing(
    control_plane: ControlPlane, operator: OperatorProcess, ns: str
) -> None:
    two_versions(control_plane, ns, "dry")
    before = get(control_plane, ns, "dry")
    ref = f"{ns}/dry"
    client = json.loads(ok(run(operator, "rollback", ref, "--to", "1", "--dry-run", "-o", "json")))
    server = json.loads(
        ok(run(operator, "rollback", "-o", "json", ref, "--to", "1", "--dry-run=server"))
    )
    for obj in (client, server):
        assert obj["spec"]["data"] == {"retries": 3, "currency": "EUR"}
        assert obj["metadata"]["annotations"]["etcdconfig.io/change-cause"] == (
            "rollback to version 1"
        )
        assert obj["metadata"]["labels"] == {"team": "payments"}
    # the server's answer is what it would store: the generation it would get
    assert server["metadata"]["generation"] == before["metadata"]["generation"] + 1
    text = ok(run(operator, "rollback", ref, "--to", "1", "--dry-run=server"))
    assert text.splitlines()[-1] == f"dry run (server): would roll {ref} back to version 1"
    assert "-retries: 5" in text and "+retries: 3" in text
    # nothing persisted (the operator may still update status: the generation says it)
    after = get(control_plane, ns, "dry")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert after["spec"] == before["spec"]
    # the real thing, -o name like kubectl
    assert ok(run(operator, "rollback", ref, "--to", "1", "-o", "name")) == (
        "config.etcdconfig.io/dry\n"
    )
    assert get(control_plane, ns, "dry")["spec"]["data"] == {"retries": 3, "currency": "EUR"}


def _uid(plane: ControlPlane, ns: str, name: str) -> str:
    return str(get(plane, ns, name)["metadata"]["uid"])


def test_history_shows_retain_deletion_and_re_creation(
    control_plane: ControlPlane, operator: OperatorProcess, ns: str
) -> None:
    ref = f"{ns}/kept"
    apply(control_plane, config_manifest("kept", ns, {"a": 1}, deletionPolicy="Retain"))
    wait_observed(control_plane, ns, "kept")
    first = _uid(control_plane, ns, "kept")
    control_plane.kubectl("delete", "configs.etcdconfig.io", "kept", "-n", ns, "--timeout=60s")

    lines = ok(run(operator, "history", ref)).splitlines()
    assert lines[1].split()[2:] == ["deleted", "(Retain)", "uid", first]
    assert lines[2].split()[:2] == ["1", "(deleted)"]
    show = run(operator, "show", ref)
    assert show.returncode == 0
    assert show.stdout.startswith(f"# {ref} was deleted (Retain) at ")
    assert yaml.safe_load(show.stdout) == {"a": 1}
    assert json.loads(ok(run(operator, "show", ref, "-o", "json")))["state"] == "deleted"

    apply(control_plane, config_manifest("kept", ns, {"a": 1}, deletionPolicy="Retain"))
    wait_observed(control_plane, ns, "kept")
    second = _uid(control_plane, ns, "kept")
    doc = json.loads(ok(run(operator, "history", ref, "-o", "json")))
    assert doc["state"] == "live"
    assert [(v["version"], v["uid"]) for v in doc["versions"]] == [(2, second), (1, first)]
    assert [(e["event"], e["uid"]) for e in doc["events"]] == [
        ("re-created", second),
        ("deleted", first),
    ]
    lines = ok(run(operator, "history", ref)).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["2", "-", "-", "1"]
    assert lines[2].split()[2:] == ["re-created", "uid", second]


def test_after_purge_history_says_so_and_show_exits_4(
    control_plane: ControlPlane, operator: OperatorProcess, ns: str
) -> None:
    ref = f"{ns}/gone"
    apply(control_plane, config_manifest("gone", ns, {"a": 1}, deletionPolicy="Purge"))
    wait_observed(control_plane, ns, "gone")
    uid = _uid(control_plane, ns, "gone")
    control_plane.kubectl("delete", "configs.etcdconfig.io", "gone", "-n", ns, "--timeout=60s")

    proc = run(operator, "history", ref)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{ref} was deleted (Purge) at ")
    assert proc.stdout.endswith(f", uid {uid}; no version remains\n")
    doc = json.loads(ok(run(operator, "history", ref, "-o", "json")))
    assert (doc["state"], doc["versions"]) == ("purged", [])
    show = run(operator, "show", ref)
    assert show.returncode == 4 and show.stdout == ""
    assert show.stderr.startswith(f"error: {ref} was deleted (Purge)")
    assert len(show.stderr.splitlines()) == 1


def test_a_schema_only_change_shows_in_diff_and_show_full(
    control_plane: ControlPlane, operator: OperatorProcess, ns: str
) -> None:
    ref = f"{ns}/schemed"
    loose = {"type": "object", "properties": {"retries": {"type": "integer"}}}
    strict = {"type": "object", "properties": {"retries": {"type": "integer", "maximum": 10}}}
    m = config_manifest("schemed", ns, {"retries": 3}, schema=loose)
    apply(control_plane, m)
    wait_observed(control_plane, ns, "schemed")
    m["spec"]["schema"] = strict  # the data stays the same
    apply(control_plane, m)
    assert wait_observed(control_plane, ns, "schemed")["status"]["version"] == 2

    full = json.loads(ok(run(operator, "show", ref, "--full", "-o", "json")))
    assert (full["schema"], full["schemaChecksum"]) == (strict, checksum(strict, "schema"))
    proc = run(operator, "diff", ref, "1", "2")
    assert (proc.returncode, proc.stderr) == (1, "")
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["schema:", f"--- {ref}@v1 schema", f"+++ {ref}@v2 schema"]
    assert "+    maximum: 10" in lines
    doc = json.loads(run(operator, "diff", ref, "1", "2", "-o", "json").stdout)
    assert (doc["equal"], doc["schemaEqual"], doc["diff"]) == (False, False, "")
