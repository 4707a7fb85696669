"""The installed console scripts (``etcdconfig`` and the kubectl plugin
``kubectl-etcdconfig``) against a running operator's store: every read command in
every output format, exit codes (3 integrity, 4 not found, 2 usage, 1 error),
errors as one line without a traceback, and no command serving or rolling back to
a record that does not match its checksums."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import (
    BIN,
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    get,
    operator,
    wait_observed,
)

from etcdconfig import __version__
from etcdconfig.canonical import checksum, sha256_of
from etcdconfig.devenv import build
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings

SCRIPTS = ("etcdconfig", "kubectl-etcdconfig")


def run(
    op: OperatorProcess, *args: str, script: str = "etcdconfig", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / script), *args],
        env={
            **op.plane.client_env(),
            "ETCDCONFIG_ETCD_ENDPOINTS": op.etcd_endpoint,
            "ETCDCONFIG_ETCD_PREFIX": op.prefix,
            "COLUMNS": "200",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def recorded(control_plane: ControlPlane, operator: OperatorProcess) -> str:
    """A Config with two versions (v2 has a change cause); returns its namespace."""
    ns = "e2e-cli"
    control_plane.kubectl("create", "namespace", ns)
    m = config_manifest("app", ns, {"replicas": 1, "mode": "a"})
    apply(control_plane, m)
    wait_observed(control_plane, ns, "app")
    m["spec"]["data"] = {"replicas": 3, "mode": "a"}
    m["metadata"]["annotations"] = {"etcdconfig.io/change-cause": "scale up"}
    apply(control_plane, m)
    assert wait_observed(control_plane, ns, "app")["status"]["version"] == 2
    return ns


@pytest.fixture
async def etcd(operator: OperatorProcess) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(EtcdSettings(endpoints=[operator.etcd_endpoint]))
    yield client
    await client.close()


@pytest.mark.parametrize("script", SCRIPTS)
def test_history_in_every_format(operator: OperatorProcess, recorded: str, script: str) -> None:
    ref = f"{recorded}/app"
    doc = json.loads(ok(run(operator, "history", ref, "-o", "json", script=script)))
    assert doc["config"] == ref and doc["next"] is None
    assert [v["version"] for v in doc["versions"]] == [2, 1]
    assert "data" not in doc["versions"][0]
    assert doc["versions"][0]["author"]["changeCause"] == "scale up"
    assert doc["versions"][0]["recordedBy"] == operator.replica_id
    assert yaml.safe_load(ok(run(operator, "history", ref, "-o", "yaml", script=script))) == doc
    table = ok(run(operator, "history", ref, script=script)).splitlines()
    assert table[0].split() == [
        "VERSION",
        "GENERATION",
        "CHECKSUM",
        "RECORDED",
        "AUTHOR",
        "ORIGIN",
        "CAUSE",
    ]
    assert table[1].split()[:3] == ["2", "(head)", "2"]
    assert table[1].split()[-3:] == ["apply", "scale", "up"]
    assert table[2].split()[:2] == ["1", "1"]
    paged = json.loads(ok(run(operator, "history", ref, "--limit", "1", "-o", "json")))
    assert ([v["version"] for v in paged["versions"]], paged["next"]) == ([2], 2)


def test_show_head_given_version_and_full_record(operator: OperatorProcess, recorded: str) -> None:
    ref = f"{recorded}/app"
    v2 = {"replicas": 3, "mode": "a"}
    assert json.loads(ok(run(operator, "show", ref, "-o", "json"))) == {
        "version": 2,
        "checksum": checksum(v2),
        "data": v2,
        "state": "live",
    }
    assert yaml.safe_load(ok(run(operator, "show", ref))) == v2  # table: the data as YAML
    doc = yaml.safe_load(ok(run(operator, "show", ref, "--version", "1", "-o", "yaml")))
    assert (doc["version"], doc["data"]) == (1, {"replicas": 1, "mode": "a"})
    full = json.loads(ok(run(operator, "show", ref, "--version", "1", "--full", "-o", "json")))
    assert (full["format"], full["version"], full["parentChecksum"]) == (1, 1, None)
    assert full["origin"] == {"kind": "apply"}
    # -n NAMESPACE with a bare name, like kubectl
    assert json.loads(ok(run(operator, "show", "app", "-n", recorded, "-o", "json")))["data"] == v2


def differ(proc: subprocess.CompletedProcess[str]) -> str:
    """Like diff(1): exit 1 when the versions differ."""
    assert (proc.returncode, proc.stderr) == (1, ""), proc.stderr
    return proc.stdout


def test_diff_between_versions(operator: OperatorProcess, recorded: str) -> None:
    ref = f"{recorded}/app"
    out = differ(run(operator, "diff", ref, "1", "2"))
    assert out.splitlines() == [
        f"--- {ref}@v1",
        f"+++ {ref}@v2",
        "@@ -1,2 +1,2 @@",
        " mode: a",
        "-replicas: 1",
        "+replicas: 3",
    ]
    doc = json.loads(differ(run(operator, "diff", ref, "1", "2", "-o", "json")))
    assert (doc["from"], doc["to"], doc["equal"]) == (1, 2, False)
    same = yaml.safe_load(ok(run(operator, "diff", ref, "2", "2", "-o", "yaml")))
    assert (same["equal"], same["diff"]) == (True, "")
    assert ok(run(operator, "diff", ref, "2", "2")) == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_verify_intact_store(operator: OperatorProcess, recorded: str, script: str) -> None:
    ref = f"{recorded}/app"
    assert ok(run(operator, "verify", ref, script=script)) == "1 checked, 0 problem(s)\n"
    doc = json.loads(ok(run(operator, "verify", ref, "-o", "json", script=script)))
    assert doc == {"checked": 1, "intact": True, "problems": []}


def test_locks_and_members(operator: OperatorProcess, recorded: str) -> None:
    assert json.loads(ok(run(operator, "locks", "-o", "json"))) == {"locks": []}
    assert ok(run(operator, "locks")).split() == ["CONFIG", "HOLDER", "LEASE", "ROLE", "REVISION"]
    members = json.loads(ok(run(operator, "members", "-o", "json")))["members"]
    assert [m["replica"] for m in members] == [operator.replica_id]
    assert members[0]["pid"] == operator.proc.pid  # type: ignore[union-attr]
    assert yaml.safe_load(ok(run(operator, "members", "-o", "yaml")))["members"] == members
    table = ok(run(operator, "members")).splitlines()
    assert table[0].split() == ["REPLICA", "HOST", "PID", "LEASE"]
    assert table[1].split()[0] == operator.replica_id


@pytest.mark.parametrize("script", SCRIPTS)
def test_version_in_every_format(operator: OperatorProcess, script: str) -> None:
    assert json.loads(ok(run(operator, "version", "-o", "json", script=script))) == {
        "version": __version__
    }
    assert yaml.safe_load(ok(run(operator, "version", script=script))) == {"version": __version__}


def test_kubectl_finds_the_plugin(operator: OperatorProcess, recorded: str) -> None:
    env = {**operator.plane.client_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(build.ensure_kubectl()), "etcdconfig", "history", f"{recorded}/app", "-o", "json"],
        env={
            **env,
            "ETCDCONFIG_ETCD_ENDPOINTS": operator.etcd_endpoint,
            "ETCDCONFIG_ETCD_PREFIX": operator.prefix,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [v["version"] for v in json.loads(proc.stdout)["versions"]] == [2, 1]


def no_history(op: OperatorProcess, ref: str) -> str:
    return (
        f"error: {ref} has no history in the store (nothing under {op.prefix}/configs/{ref}/; "
        f"prefix {op.prefix}: check --prefix or ETCDCONFIG_ETCD_PREFIX)"
    )


NO_V99 = "error: e2e-cli/app has no version 99 in the store (retained: 1..2)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("history", "e2e-cli/nope"), "no-history"),
        (("show", "e2e-cli/nope"), "no-history"),
        (("verify", "e2e-cli/nope"), "no-history"),
        (("show", "e2e-cli/app", "--version", "99"), NO_V99),
        (("diff", "e2e-cli/app", "1", "99"), NO_V99),
    ],
)
@pytest.mark.parametrize("output", ["table", "json"])
def test_not_found_exits_4_with_one_line(
    operator: OperatorProcess, recorded: str, args: tuple[str, ...], message: str, output: str
) -> None:
    if message == "no-history":
        message = no_history(operator, args[1])
    assert one_line_error(run(operator, *args, "-o", output), 4) == message


def test_usage_errors_exit_2(operator: OperatorProcess) -> None:
    line = one_line_error(run(operator, "history", "ns/"), 2)
    assert line == "error: expected NAMESPACE/NAME or NAME with -n, got 'ns/'"
    assert one_line_error(run(operator, "verify"), 2) == (
        "error: name a Config (NAMESPACE/NAME) or pass --all"
    )
    proc = run(operator, "history")  # argparse: usage on stderr, exit 2
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_unreachable_etcd_is_one_line_error(operator: OperatorProcess) -> None:
    proc = run(
        operator,
        "history",
        "e2e-cli/app",
        env={"ETCDCONFIG_ETCD_ENDPOINTS": "127.0.0.1:1", "ETCDCONFIG_ETCD_TIMEOUT": "1"},
    )
    line = one_line_error(proc, 1)
    assert "cannot reach etcd at 127.0.0.1:1" in line
    assert line.endswith("[etcd endpoints 127.0.0.1:1: from ETCDCONFIG_ETCD_ENDPOINTS]")
    flag = run(
        operator,
        "history",
        "e2e-cli/app",
        "--etcd-endpoints",
        "127.0.0.1:1",
        env={"ETCDCONFIG_ETCD_TIMEOUT": "1"},
    )
    assert one_line_error(flag, 1).endswith("[etcd endpoints 127.0.0.1:1: from --etcd-endpoints]")


def test_no_endpoints_given_names_the_variable_and_the_flag(operator: OperatorProcess) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 2379)) == 0:
            pytest.skip("something listens on the default etcd port 127.0.0.1:2379")
    env = {k: v for k, v in operator.plane.client_env().items() if not k.startswith("ETCDCONFIG_")}
    proc = subprocess.run(
        # verify is an admin tool: etcd only (history reads the history API by default)
        [str(BIN / "etcdconfig"), "verify", "e2e-cli/app"],
        env={**env, "ETCDCONFIG_ETCD_TIMEOUT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert one_line_error(proc, 1).endswith(
        "[etcd endpoints 127.0.0.1:2379: the default: no ETCDCONFIG_ETCD_ENDPOINTS or "
        "--etcd-endpoints given; set ETCDCONFIG_ETCD_ENDPOINTS or pass --etcd-endpoints]"
    )


async def test_verify_finds_a_tampered_record_and_exits_3(
    control_plane: ControlPlane, operator: OperatorProcess, recorded: str, etcd: EtcdClient
) -> None:
    ns = recorded
    m = config_manifest("tampered", ns, {"limit": 10})
    apply(control_plane, m)
    wait_observed(control_plane, ns, "tampered")
    m["spec"]["data"] = {"limit": 20}
    apply(control_plane, m)
    wait_observed(control_plane, ns, "tampered")
    key = f"{operator.prefix}/configs/{ns}/tampered/versions/{1:020d}".encode()
    kv, _ = await etcd.get(key)
    assert kv is not None
    record: dict[str, Any] = json.loads(kv.value)
    record["data"] = {"limit": 1000}
    await etcd.put(key, json.dumps(record).encode())

    ref = f"{ns}/tampered"
    proc = run(operator, "verify", ref)
    assert proc.returncode == 3 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[-1] == "1 checked, 2 problem(s)"
    assert all(line.startswith(f"{ref} v") for line in lines[:-1])
    doc = json.loads(run(operator, "verify", ref, "-o", "json").stdout)
    assert (doc["checked"], doc["intact"]) == (1, False)
    assert sorted((p["version"], p["kind"]) for p in doc["problems"]) == [
        (1, "checksum-mismatch"),
        (2, "chain-broken"),
    ]
    every = run(operator, "verify", "--all", "-o", "yaml")
    assert every.returncode == 3
    assert yaml.safe_load(every.stdout)["checked"] >= 2


# --- tampered records: every read that serves or reuses a record verifies it ------------------

VERIFY_HINT = "the record was modified after it was written — run `etcdconfig verify`"


@pytest.fixture(scope="module")
def forged_config(control_plane: ControlPlane, operator: OperatorProcess, recorded: str) -> str:
    """``forged`` with versions 1 (limit 10) and 2 (limit 20), and ``relabelled`` with
    version 1; both recorded by the operator. Returns their namespace."""
    ns = recorded
    m = config_manifest("forged", ns, {"limit": 10})
    apply(control_plane, m)
    wait_observed(control_plane, ns, "forged")
    m["spec"]["data"] = {"limit": 20}
    apply(control_plane, m)
    assert wait_observed(control_plane, ns, "forged")["status"]["version"] == 2
    apply(control_plane, config_manifest("relabelled", ns, {"limit": 5}))
    wait_observed(control_plane, ns, "relabelled")
    return ns


async def _edit_record(
    etcd: EtcdClient, op: OperatorProcess, ns: str, name: str, version: int, **fields: Any
) -> bytes:
    """Overwrite fields of a stored record by hand (idempotent); returns the stored bytes."""
    key = f"{op.prefix}/configs/{ns}/{name}/versions/{version:020d}".encode()
    kv, _ = await etcd.get(key)
    assert kv is not None
    record: dict[str, Any] = json.loads(kv.value)
    record.update(fields)
    raw = json.dumps(record).encode()
    await etcd.put(key, raw)
    return raw


@pytest.fixture
async def forged(operator: OperatorProcess, forged_config: str, etcd: EtcdClient) -> str:
    """``NS/forged`` with version 1's data changed in etcd and its checksum left alone."""
    await _edit_record(etcd, operator, forged_config, "forged", 1, data={"limit": 1000})
    return f"{forged_config}/forged"


def forged_v1_error(ref: str) -> str:
    return (
        f"error: {ref} version 1: data checksum mismatch (stored {checksum({'limit': 10})}, "
        f"computed {checksum({'limit': 1000})}); {VERIFY_HINT}"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--version", "1"),
        ("--version", "1", "-o", "json"),
        ("--version", "1", "--full", "-o", "yaml"),
    ],
)
def test_show_refuses_a_tampered_version_and_exits_3(
    operator: OperatorProcess, forged: str, args: tuple[str, ...]
) -> None:
    assert one_line_error(run(operator, "show", forged, *args), 3) == forged_v1_error(forged)
    # the intact head is still shown
    assert yaml.safe_load(ok(run(operator, "show", forged))) == {"limit": 20}


async def test_show_refuses_a_head_record_that_does_not_match_the_heads_checksum(
    operator: OperatorProcess, forged_config: str, etcd: EtcdClient
) -> None:
    ref = f"{forged_config}/relabelled"
    head_kv, _ = await etcd.get(f"{operator.prefix}/configs/{ref}/head".encode())
    assert head_kv is not None
    expected = json.loads(head_kv.value)["recordChecksum"]
    # the data still matches its checksum; only the whole record's checksum shows the edit
    raw = await _edit_record(
        etcd, operator, forged_config, "relabelled", 1, author={"manager": "mallory"}
    )
    assert one_line_error(run(operator, "show", ref, "--full", "-o", "json"), 3) == (
        f"error: {ref} version 1: record checksum mismatch (expected {expected}, the stored "
        f"record hashes to {sha256_of(raw)}); {VERIFY_HINT}"
    )
    assert one_line_error(run(operator, "show", ref, "--version", "1"), 3).startswith(
        f"error: {ref} version 1: record checksum mismatch"
    )


@pytest.mark.parametrize("versions", [("1", "2"), ("2", "1")])
@pytest.mark.parametrize("output", ["table", "json"])
def test_diff_refuses_a_tampered_version_and_exits_3(
    operator: OperatorProcess, forged: str, versions: tuple[str, str], output: str
) -> None:
    proc = run(operator, "diff", forged, *versions, "-o", output)
    assert one_line_error(proc, 3) == forged_v1_error(forged)


@pytest.mark.parametrize("mode", [(), ("--dry-run",), ("--print",)])
def test_rollback_to_a_tampered_version_is_refused_and_changes_nothing(
    control_plane: ControlPlane, operator: OperatorProcess, forged: str, mode: tuple[str, ...]
) -> None:
    ns, name = forged.split("/")
    before = get(control_plane, ns, name)
    history = json.loads(ok(run(operator, "history", forged, "-o", "json")))

    proc = run(operator, "rollback", forged, "--to", "1", *mode)

    assert one_line_error(proc, 3) == forged_v1_error(forged)
    after = get(control_plane, ns, name)
    # what a rollback would change: spec (so the generation) and the change-cause
    # annotation; status is the operator's and may be patched meanwhile (a resync round)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    assert after["spec"] == before["spec"]
    assert after["spec"]["data"] == {"limit": 20}
    assert json.loads(ok(run(operator, "history", forged, "-o", "json"))) == history
    assert [v["version"] for v in history["versions"]] == [2, 1]
