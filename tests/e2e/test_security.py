"""Security and hostile input where Kubernetes is involved, end to end.

- The admission webhook serves TLS only and picks up rotated certificate files
  without a restart (a half-rotated pair keeps the previous one serving).
- Configuration values never reach the operator's logs, Events or conditions.
- Kubernetes itself refuses malformed manifests (duplicate YAML keys, data that is
  not an object, NaN, names over the limits); names at the limits work.
- Records written under the prefix by something else stall the Config with
  ``IntegrityViolation``; nothing is overwritten and the operator keeps running.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    crd,
    get,
    install_webhook,
    make_webhook_certs,
    operator,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.build import ensure_kubectl
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.pki import CertificateAuthority
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end
from etcdconfig.store import VersionedStore

MARKER = f"SECRET-{uuid.uuid4().hex}"  # a value that must never leave spec.data and etcd
SCHEMA = {
    "type": "object",
    "properties": {
        "replicas": {"type": "integer", "minimum": 1},
        "token": {"type": "string", "pattern": "^SECRET-[0-9a-f]+$"},
    },
}


@pytest.fixture
async def store(operator: OperatorProcess) -> AsyncIterator[VersionedStore]:
    client = EtcdClient(EtcdSettings(endpoints=[operator.etcd_endpoint]))
    yield VersionedStore(client, prefix=operator.prefix)
    await client.close()


def events(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    out = plane.kubectl("get", "events", "-n", namespace, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def kubectl_apply_text(
    plane: ControlPlane, text: str | bytes, *args: str
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(ensure_kubectl()), "apply", *args, "-f", "-"],
        input=text if isinstance(text, bytes) else text.encode(),
        env=plane.client_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


# --- the webhook's TLS --------------------------------------------------------------------


def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to the webhook is given."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we compare the certificate itself
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_webhook_serves_tls_only_and_reloads_rotated_certificates(
    control_plane: ControlPlane, namespace: str, store_etcd: Any, crd: Any, tmp_path: Path
) -> None:
    certs = make_webhook_certs(tmp_path / "pki")
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-rotate-{uuid.uuid4().hex[:6]}",
        workdir=tmp_path / "op",
        replica_id="rotate-op",
        webhook=certs,
    )
    op.start()
    try:
        op.wait_ready()
        install_webhook(
            control_plane, f"etcdconfig-{namespace}", op.webhook_port, certs, [namespace]
        )
        port = op.webhook_port
        assert served_certificate(port) == der_of(certs.cert_file)
        # plain HTTP is not served
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/validate-config", timeout=5)

        ca = CertificateAuthority.load_or_create(tmp_path / "pki", "webhook-ca")
        staged = ca.issue(
            tmp_path / "staged" / "webhook",
            common_name="etcdconfig-webhook-2",
            server=True,
            dns_names=("localhost",),
            ip_addresses=("127.0.0.1",),
        )
        # half-rotated: the new certificate next to the old key — must not load, and the
        # previous pair keeps serving
        shutil.copyfile(staged.cert_path, certs.cert_file)
        wait_until(
            lambda: "still serving the previous pair" in op.log_text(), 30, "a refused reload"
        )
        assert served_certificate(port) != der_of(staged.cert_path)
        # the key arrives: new connections get the new certificate, no restart
        shutil.copyfile(staged.key_path, certs.key_file)
        wait_until(
            lambda: served_certificate(port) == der_of(staged.cert_path),
            30,
            "the rotated certificate on new connections",
        )
        assert op.starts == 1 and op.proc is not None and op.proc.poll() is None
        # the API server (trusting the CA) still reaches the webhook
        bad = config_manifest("w", namespace, {"replicas": 0}, schema=SCHEMA)
        dry = apply(control_plane, bad, "--dry-run=server", check=False)
        assert "violates minimum 1" in dry.stderr
        good = config_manifest("w", namespace, {"replicas": 2}, schema=SCHEMA)
        assert apply(control_plane, good, "--dry-run=server").returncode == 0
    finally:
        control_plane.kubectl(
            "delete",
            "validatingwebhookconfiguration",
            f"etcdconfig-{namespace}",
            "--ignore-not-found",
        )
        op.stop()


# --- no configuration values outside spec.data --------------------------------------------


async def test_configuration_values_never_reach_logs_events_or_conditions(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, store: VersionedStore
) -> None:
    name = "secret-bearing"
    apply(
        control_plane,
        config_manifest(name, namespace, {"replicas": 1, "token": MARKER}, schema=SCHEMA),
    )
    wait_observed(control_plane, namespace, name)
    apply(
        control_plane,
        config_manifest(name, namespace, {"replicas": 2, "token": MARKER}, schema=SCHEMA),
    )
    wait_observed(control_plane, namespace, name)
    # invalid: the bad values contain the marker (a wrong type and a pattern mismatch)
    invalid = {"replicas": MARKER, "token": f"not-{MARKER}"}
    apply(control_plane, config_manifest(name, namespace, invalid, schema=SCHEMA))
    obj = wait_observed(control_plane, namespace, name, ready=False)
    valid = condition(obj, "Valid")
    assert valid is not None and valid["message"] == (
        "spec.data.replicas: must be of type 'integer', got string; "
        "spec.data.token: does not match pattern '^SECRET-[0-9a-f]+$'"
    )
    status_without_kopf = {k: v for k, v in obj["status"].items() if k != "kopf"}
    control_plane.kubectl("delete", "configs.etcdconfig.io", name, "-n", namespace, "--wait=true")

    # the data really was recorded (so the scenario exercised the paths that handle it)
    assert (await store.get_version(namespace, name, 2)).data["token"] == MARKER
    assert MARKER not in json.dumps(status_without_kopf)
    assert MARKER not in json.dumps(events(control_plane, namespace))
    assert MARKER not in operator.log_text()


# --- Kubernetes refuses malformed manifests; limits work ------------------------------------


def _config_yaml(namespace: str, name: str, data_block: str, extra: str = "") -> str:
    return (
        "apiVersion: etcdconfig.io/v1alpha1\nkind: Config\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n  data:\n{data_block}{extra}"
    )


@pytest.mark.parametrize(
    ("case", "data_block", "extra", "error"),
    [
        (
            "data-not-an-object",
            "    - 1\n    - 2\n",
            "",
            'spec.data: Invalid value: "array": spec.data in body must be of type object',
        ),
        ("nan", "    x: .nan\n", "", "json: unsupported value: NaN"),
        ("infinity", "    x: .inf\n", "", "json: unsupported value: +Inf"),
        (
            "max-versions-zero",
            "    a: 1\n",
            "  history:\n    maxVersions: 0\n",
            "spec.history.maxVersions: Invalid value: 0: spec.history.maxVersions in body "
            "should be greater than or equal to 1",
        ),
        (
            "max-versions-beyond-the-bound",
            "    a: 1\n",
            "  history:\n    maxVersions: 100001\n",
            "spec.history.maxVersions: Invalid value: 100001: spec.history.maxVersions in body "
            "should be less than or equal to 100000",
        ),
        (
            "unknown-deletion-policy",
            "    a: 1\n",
            "  deletionPolicy: Delete\n",
            'spec.deletionPolicy: Unsupported value: "Delete": supported values: "Retain", "Purge"',
        ),
    ],
)
def test_kubernetes_refuses_malformed_configs(
    control_plane: ControlPlane,
    namespace: str,
    crd: Any,
    case: str,
    data_block: str,
    extra: str,
    error: str,
) -> None:
    name = f"bad-{case}"
    proc = kubectl_apply_text(control_plane, _config_yaml(namespace, name, data_block, extra))
    assert proc.returncode != 0
    assert error in proc.stderr, proc.stderr
    missing = control_plane.kubectl(
        "get", "configs.etcdconfig.io", name, "-n", namespace, check=False
    )
    assert missing.returncode != 0


async def test_duplicate_yaml_keys_reach_kubernetes_as_the_last_value(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, store: VersionedStore
) -> None:
    """kubectl converts YAML to JSON before sending and keeps the last of duplicate keys
    without a word (not even with --validate=strict): the API server, and so the operator,
    never see the duplicate. What is recorded is exactly what Kubernetes stored."""
    text = _config_yaml(namespace, "dup", "    replicas: 1\n    replicas: 2\n")
    proc = kubectl_apply_text(control_plane, text, "--validate=strict")
    assert proc.returncode == 0, proc.stderr
    obj = wait_observed(control_plane, namespace, "dup")
    assert obj["spec"]["data"] == {"replicas": 2}
    assert (await store.current(namespace, "dup")).data == {"replicas": 2}


def test_1e400_is_refused_in_json_and_is_a_string_in_yaml(
    control_plane: ControlPlane, namespace: str, crd: Any
) -> None:
    manifest = config_manifest("big-json", namespace, {"x": 1})
    text = json.dumps(manifest).replace('{"x": 1}', '{"x": 1e400}')
    proc = kubectl_apply_text(control_plane, text)
    assert proc.returncode != 0
    assert "1e400" in proc.stderr, proc.stderr
    # YAML 1.1 reads 1.0e+400 as a float out of range, which Go's resolver keeps as text
    proc = kubectl_apply_text(
        control_plane, _config_yaml(namespace, "big-yaml", "    x: 1.0e+400\n")
    )
    assert proc.returncode == 0, proc.stderr
    obj = get(control_plane, namespace, "big-yaml")
    assert obj["spec"]["data"] == {"x": "1.0e+400"}


async def test_non_utf8_bytes_never_reach_the_store_as_invalid_utf8(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, store: VersionedStore
) -> None:
    """kubectl turns a byte that is not UTF-8 into U+FFFD before the API server sees
    it: the operator records valid UTF-8, and the checksum covers what was stored."""
    text = _config_yaml(namespace, "bad-bytes", '    x: "caf\\u00e9"\n').encode()
    text = text.replace(b"caf\\u00e9", b"caf\xe9")  # Latin-1 é: not UTF-8
    proc = kubectl_apply_text(control_plane, text)
    assert proc.returncode == 0, proc.stderr
    obj = wait_observed(control_plane, namespace, "bad-bytes")
    assert obj["spec"]["data"] == {"x": "caf\ufffd"}
    assert (await store.current(namespace, "bad-bytes")).data == {"x": "caf\ufffd"}


async def test_names_at_kubernetes_length_limits_are_recorded(
    control_plane: ControlPlane, operator: OperatorProcess, store: VersionedStore
) -> None:
    ns = ("lim-" + uuid.uuid4().hex * 2)[:63]  # a DNS label: at most 63 characters
    name = "c" * 253  # a DNS subdomain: at most 253
    control_plane.kubectl("create", "namespace", ns)
    try:
        too_long = apply(control_plane, config_manifest("c" * 254, ns, {"a": 1}), check=False)
        assert too_long.returncode != 0 and "must be no more than 253 characters" in too_long.stderr
        apply(control_plane, config_manifest(name, ns, {"a": 1}))
        obj = wait_observed(control_plane, ns, name)
        assert obj["status"]["version"] == 1
        assert (await store.current(ns, name)).data == {"a": 1}
        assert await store.verify(ns, name) == []
    finally:
        control_plane.kubectl("delete", "namespace", ns, "--wait=false")


# --- records written by something else --------------------------------------------------


async def test_corrupt_store_stalls_the_config_without_overwriting_and_operator_survives(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, store: VersionedStore
) -> None:
    client = store.client
    for name in ("corrupt-head", "foreign-version"):
        apply(control_plane, config_manifest(name, namespace, {"replicas": 1}))
        wait_observed(control_plane, namespace, name)
    keys = store.keys
    await client.put(keys.head(namespace, "corrupt-head"), b"garbage, not JSON")
    await client.put(keys.version(namespace, "foreign-version", 2), b'{"written": "by hand"}')

    async def snapshot(name: str) -> list[tuple[bytes, bytes, int]]:
        base = f"{keys.config(namespace, name)}/".encode()
        res = await client.range(base, prefix_end(base))
        return [(kv.key, kv.value, kv.mod_revision) for kv in res.kvs]

    before = {name: await snapshot(name) for name in ("corrupt-head", "foreign-version")}
    for name in ("corrupt-head", "foreign-version"):
        apply(control_plane, config_manifest(name, namespace, {"replicas": 2}))
    expected = {
        "corrupt-head": "head is not valid JSON",
        "foreign-version": "a version key exists beyond the head",
    }
    for name, message in expected.items():
        obj = wait_observed(control_plane, namespace, name, ready=False)
        ready, stalled, intact = (condition(obj, t) for t in ("Ready", "Stalled", "Intact"))
        assert ready is not None and ready["reason"] == "IntegrityViolation", ready
        assert message in ready["message"], ready
        assert stalled is not None and stalled["status"] == "True", stalled
        assert intact is not None and intact["status"] == "False", intact
    # a full resync round later the operator has retried both and still written nothing
    rounds = _resync_reconciles(operator)
    wait_until(lambda: _resync_reconciles(operator) >= rounds + 2, 60, "a resync round")
    for name in ("corrupt-head", "foreign-version"):
        assert await snapshot(name) == before[name]
    assert operator.ready()  # alive and serving
    warnings = [
        e for e in events(control_plane, namespace) if e.get("reason") == "IntegrityViolation"
    ]
    assert {e["involvedObject"]["name"] for e in warnings} == {"corrupt-head", "foreign-version"}
    # repaired by hand (the foreign key removed), the next change is recorded again
    await client.delete_range(keys.version(namespace, "foreign-version", 2))
    apply(control_plane, config_manifest("foreign-version", namespace, {"replicas": 3}))
    # Ready stays False (Intact=False) until the integrity scan verifies the store again
    obj = wait_observed(control_plane, namespace, "foreign-version", ready=None)
    recorded = condition(obj, "Recorded")
    assert recorded is not None and recorded["status"] == "True", recorded
    assert obj["status"]["version"] == 2
    assert (await store.current(namespace, "foreign-version")).data == {"replicas": 3}


def _resync_reconciles(op: OperatorProcess) -> float:
    prefix = 'etcdconfig_reconcile_duration_seconds_count{trigger="resync"}'
    for line in op.metrics().splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0
