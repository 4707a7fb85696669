"""The Helm chart against a real API server: lint, render for several value sets
(each accepted by `kubectl apply --dry-run=server`), install (every object exists),
least-privilege RBAC checked verb by verb, and the operator running with the
chart's ServiceAccount token recording a Config.

No kubelet runs in the test control plane, so pods never start: installs are
checked by the objects they create, and the operator runs as a local process
that authenticates exactly as the pod would (a token of the chart's ServiceAccount).
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import (
    ROOT,
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv import build
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

CHART = ROOT / "charts" / "etcdconfig"
CRD_FILE = ROOT / "crds" / "etcdconfig.io_configs.yaml"
FAKE_CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot checked\n").decode()


def helm(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """helm without a cluster (lint, template), with its caches in ``tmp_path``."""
    proc = subprocess.run(
        [str(build.ensure_helm()), *args],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
            "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
            "HELM_DATA_HOME": str(tmp_path / "helm-data"),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


IMAGE = {"repository": "registry.example/etcdconfig"}


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    """The values as a file; the image (which has no default) is added unless given."""
    path = tmp_path / f"values-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump({"image": IMAGE, **values}))
    return str(path)


def render(
    tmp_path: Path, values: dict[str, Any], *, release: str = "ec", namespace: str = "default"
) -> list[dict[str, Any]]:
    out = helm(
        tmp_path,
        "template",
        release,
        str(CHART),
        "-n",
        namespace,
        "-f",
        values_file(tmp_path, values),
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


EXTERNAL = {"etcd": {"endpoints": ["https://etcd-0.example:2379", "https://etcd-1.example:2379"]}}


# --- lint and render (no cluster) ---------------------------------------------------------


def test_helm_lint_passes_strict(tmp_path: Path) -> None:
    out = helm(tmp_path, "lint", "--strict", str(CHART), "-f", values_file(tmp_path, EXTERNAL))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


def test_helm_lint_of_the_bare_chart_prints_no_fail_line(tmp_path: Path) -> None:
    """`helm lint` renders with the chart's own defaults, which lack the site-specific
    values (image, etcd endpoints) on purpose: their checks run at install/template
    time, so lint has nothing to say about them (it used to print INFO "funcMap fail")."""
    out = helm(tmp_path, "lint", "--strict", "--debug", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout
    text = out.stdout + out.stderr
    assert "funcMap fail" not in text and "missing required" not in text, text


def test_etcd_endpoints_accept_a_string_from_set(tmp_path: Path) -> None:
    def endpoints(*args: str) -> str:
        out = helm(tmp_path, "template", "ec", str(CHART), "-f", values_file(tmp_path, {}), *args)
        (dep,) = by_kind([d for d in yaml.safe_load_all(out.stdout) if d], "Deployment")
        env = {
            e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        return str(env["ETCDCONFIG_ETCD_ENDPOINTS"])

    assert endpoints("--set", "etcd.endpoints=http://etcd:2379") == "http://etcd:2379"
    assert (
        endpoints("--set", "etcd.endpoints={https://a:2379,https://b:2379}")
        == "https://a:2379,https://b:2379"
    )
    assert (
        endpoints("--set-string", "etcd.endpoints=https://a:2379\\, https://b:2379")
        == "https://a:2379,https://b:2379"
    )


def test_rendered_crd_is_the_generated_crd_kept_on_uninstall(tmp_path: Path) -> None:
    (crd_doc,) = by_kind(render(tmp_path, EXTERNAL), "CustomResourceDefinition")
    generated = yaml.safe_load(CRD_FILE.read_text())
    assert crd_doc["spec"] == generated["spec"]
    assert crd_doc["metadata"]["name"] == generated["metadata"]["name"]
    assert crd_doc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    no_keep = render(tmp_path, {**EXTERNAL, "crds": {"keep": False}})
    assert "annotations" not in by_kind(no_keep, "CustomResourceDefinition")[0]["metadata"]
    assert (
        by_kind(
            render(tmp_path, {**EXTERNAL, "crds": {"enabled": False}}), "CustomResourceDefinition"
        )
        == []
    )


def test_default_install_renders_the_operator_with_its_safety_settings(tmp_path: Path) -> None:
    docs = render(tmp_path, EXTERNAL)
    assert kinds(docs) == [
        "APIService",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "RoleBinding",
        "Secret",
        "Secret",
        "Service",
        "Service",
        "Service",
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
    ]
    (dep,) = by_kind(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert dep["spec"]["replicas"] == 2
    assert spec["serviceAccountName"] == "ec-etcdconfig"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["ETCDCONFIG_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (
        env["ETCDCONFIG_ETCD_ENDPOINTS"]
        == "https://etcd-0.example:2379,https://etcd-1.example:2379"
    )
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert [p["name"] for p in c["ports"]] == ["http", "webhook", "history-api"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == dep["spec"]["selector"]["matchLabels"]
    )
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    history_svc, metrics_svc, webhook_svc = sorted(
        by_kind(docs, "Service"), key=lambda d: d["metadata"]["name"]
    )
    assert history_svc["spec"]["ports"][0]["targetPort"] == "history-api"
    assert metrics_svc["spec"]["ports"][0]["targetPort"] == "http"
    assert webhook_svc["spec"]["ports"][0]["targetPort"] == "webhook"


def test_webhook_is_on_by_default_fail_closed_for_configs_only(tmp_path: Path) -> None:
    """The safe default: the webhook runs with a certificate the chart makes, rejects
    invalid Configs (failurePolicy Fail), and is asked about nothing but Configs."""
    from cryptography import x509

    docs = render(tmp_path, EXTERNAL)
    (vwc,) = by_kind(docs, "ValidatingWebhookConfiguration")
    (hook,) = vwc["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["rules"] == [
        {
            "apiGroups": ["etcdconfig.io"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["configs"],
            "scope": "Namespaced",
        }
    ]
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    assert sorted(secrets) == ["ec-etcdconfig-history-api-tls", "ec-etcdconfig-webhook-tls"]
    secret = secrets["ec-etcdconfig-webhook-tls"]
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    # the pod webhook: pinned pods only, fail open, the same certificate
    (mwc,) = by_kind(docs, "MutatingWebhookConfiguration")
    (pin,) = mwc["webhooks"]
    assert (pin["failurePolicy"], pin["timeoutSeconds"], pin["sideEffects"]) == (
        "Ignore",
        5,
        "NoneOnDryRun",
    )
    assert pin["objectSelector"] == {"matchLabels": {"etcdconfig.io/pinned": "true"}}
    assert pin["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert pin["clientConfig"]["service"]["path"] == "/pin-pod"
    assert pin["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ec-etcdconfig-webhook.default.svc" in names.get_values_for_type(x509.DNSName)
    (dep,) = by_kind(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == "ec-etcdconfig-webhook-tls"


def test_etcd_tls_and_auth_come_from_secrets(tmp_path: Path) -> None:
    docs = render(
        tmp_path,
        {
            "etcd": {
                **EXTERNAL["etcd"],
                "tls": {"enabled": True, "secretName": "etcd-client"},
                "auth": {"enabled": True, "secretName": "etcd-user"},
            }
        },
    )
    (dep,) = by_kind(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in spec["containers"][0]["env"]}
    assert env["ETCDCONFIG_ETCD_CA_FILE"] == "/etc/etcdconfig/etcd-tls/ca.crt"
    assert env["ETCDCONFIG_ETCD_CERT_FILE"] == "/etc/etcdconfig/etcd-tls/tls.crt"
    assert env["ETCDCONFIG_ETCD_KEY_FILE"] == "/etc/etcdconfig/etcd-tls/tls.key"
    assert env["ETCDCONFIG_ETCD_USERNAME"] == {
        "secretKeyRef": {"name": "etcd-user", "key": "username"}
    }
    assert env["ETCDCONFIG_ETCD_PASSWORD"] == {
        "secretKeyRef": {"name": "etcd-user", "key": "password"}
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["etcd-tls"]["secret"]["secretName"] == "etcd-client"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "set etcd.endpoints (your etcd's client URLs) or etcd.bundled.enabled=true"),
        ({"etcd": {"endpoints": " , "}}, "set etcd.endpoints (your etcd's client URLs)"),
        (
            {**EXTERNAL, "image": {"repository": ""}},
            "set image.repository: no etcdconfig image is published; build one from the "
            "repository's Dockerfile",
        ),
        ({**EXTERNAL, "replicaCout": 3}, "additional properties 'replicaCout' not allowed"),
        (
            {**EXTERNAL, "etcd": {**EXTERNAL["etcd"], "tls": {"enabled": True}}},
            "etcd.tls.enabled needs etcd.tls.secretName",
        ),
        (
            {**EXTERNAL, "webhook": {"certificate": {"source": "secret"}}},
            "webhook.certificate.caBundle (base64 PEM of the CA) is required",
        ),
        (
            {
                **EXTERNAL,
                "webhook": {"certificate": {"source": "secret", "caBundle": FAKE_CA}},
            },
            "webhook.certificate.secretName is required",
        ),
        ({"etcd": {"bundled": {"enabled": True, "replicas": 2}}}, "replicas"),
    ],
)
def test_invalid_values_fail_with_a_message(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    proc = helm(
        tmp_path, "template", "ec", str(CHART), "-f", values_file(tmp_path, values), check=False
    )
    assert proc.returncode == 1
    assert message in proc.stderr


# --- against the API server ---------------------------------------------------------------

STUB_CRDS = [
    ("cert-manager.io", "certificates", "Certificate", "v1"),
    ("cert-manager.io", "issuers", "Issuer", "v1"),
    ("monitoring.coreos.com", "servicemonitors", "ServiceMonitor", "v1"),
]


@pytest.fixture(scope="module")
def stub_crds(control_plane: ControlPlane) -> None:
    """Schema-less stand-ins for cert-manager's and prometheus-operator's CRDs, so the
    API server accepts the optional objects the chart renders for them."""
    for group, plural, kind, version in STUB_CRDS:
        doc = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "kind": kind},
                "versions": [
                    {
                        "name": version,
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(doc))
    for _, plural, _, _ in STUB_CRDS:
        group = next(g for g, p, _, _ in STUB_CRDS if p == plural)
        control_plane.kubectl(
            "wait", "--for=condition=Established", f"crd/{plural}.{group}", "--timeout=60s"
        )


@pytest.fixture
def extra_namespaces(control_plane: ControlPlane) -> Iterator[list[str]]:
    names = [f"e2e-w-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for n in names:
        control_plane.kubectl("create", "namespace", n)
    yield names
    for n in names:
        control_plane.kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found")


def value_sets(watch: list[str]) -> dict[str, dict[str, Any]]:
    return {
        "external-etcd": EXTERNAL,
        "external-etcd-no-webhook": {**EXTERNAL, "webhook": {"enabled": False}},
        "bundled-1": {"etcd": {"bundled": {"enabled": True}}, "replicaCount": 1},
        "bundled-3-no-persistence": {
            "etcd": {"bundled": {"enabled": True, "replicas": 3, "persistence": {"enabled": False}}}
        },
        "namespaced-tls-auth-hard-anti-affinity": {
            "watchNamespaces": watch,
            "podAntiAffinity": "hard",
            "replicaCount": 3,
            "etcd": {
                **EXTERNAL["etcd"],
                "tls": {"enabled": True, "secretName": "etcd-client"},
                "auth": {"enabled": True, "secretName": "etcd-user"},
            },
        },
        "webhook-secret-servicemonitor": {
            **EXTERNAL,
            "webhook": {
                "enabled": True,
                "certificate": {
                    "source": "secret",
                    "secretName": "webhook-tls",
                    "caBundle": FAKE_CA,
                },
            },
            "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        },
        "webhook-cert-manager-namespaced": {
            **EXTERNAL,
            "watchNamespaces": watch[:1],
            "webhook": {"enabled": True, "certificate": {"source": "certManager"}},
        },
        "webhook-cert-manager-issuer-no-crds": {
            **EXTERNAL,
            "crds": {"enabled": False},
            "rbac": {"create": False},
            "serviceAccount": {"create": False, "name": "my-sa"},
            "webhook": {
                "enabled": True,
                "certificate": {
                    "source": "certManager",
                    "certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}},
                },
            },
        },
    }


def test_every_value_set_is_accepted_by_the_api_server(
    control_plane: ControlPlane,
    namespace: str,
    extra_namespaces: list[str],
    stub_crds: None,
    tmp_path: Path,
) -> None:
    rendered_kinds: dict[str, list[str]] = {}
    for name, values in value_sets(extra_namespaces).items():
        docs = render(tmp_path, values, namespace=namespace)
        rendered_kinds[name] = kinds(docs)
        proc = control_plane.kubectl(
            "apply",
            "--dry-run=server",
            "-f",
            "-",
            input="\n---\n".join(yaml.safe_dump(d) for d in docs),
            check=False,
        )
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        assert proc.stdout.count("(server dry run)") == len(docs), f"{name}: {proc.stdout}"
    assert rendered_kinds["bundled-3-no-persistence"].count("StatefulSet") == 1
    assert rendered_kinds["bundled-3-no-persistence"].count("PodDisruptionBudget") == 2
    assert "PodDisruptionBudget" not in rendered_kinds["bundled-1"]
    assert rendered_kinds["namespaced-tls-auth-hard-anti-affinity"].count("Role") == 2
    assert "ServiceMonitor" in rendered_kinds["webhook-secret-servicemonitor"]
    assert {"Certificate", "Issuer"} <= set(rendered_kinds["webhook-cert-manager-namespaced"])
    assert "Issuer" not in rendered_kinds["webhook-cert-manager-issuer-no-crds"]
    assert "ClusterRole" not in rendered_kinds["webhook-cert-manager-issuer-no-crds"]


def _manifest_objects(manifest: str) -> list[tuple[str, str, str | None]]:
    out = []
    for d in yaml.safe_load_all(manifest):
        if d:
            out.append((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")))
    return out


def test_install_creates_every_object_and_uninstall_keeps_the_crd(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    release = f"ec-{uuid.uuid4().hex[:6]}"
    values = {
        "etcd": {"bundled": {"enabled": True, "replicas": 3}},
        "webhook": {
            # the default certificate (made by the chart); nothing serves the webhook
            # (no kubelet): select no namespace at all
            "namespaceSelector": {"matchLabels": {f"etcdconfig-test/{release}": "never"}},
        },
    }
    # --take-ownership: other test modules may have applied crds/ already
    out = control_plane.helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--take-ownership",
        "-f",
        values_file(tmp_path, values),
    )
    assert "STATUS: deployed" in out.stdout
    assert "helm uninstall` keeps the Config CRD" in out.stdout  # NOTES.txt
    manifest = control_plane.helm("get", "manifest", release, "-n", namespace).stdout
    objects = _manifest_objects(manifest)
    assert sorted(k for k, _, _ in objects) == [
        "APIService",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "RoleBinding",
        "Secret",
        "Secret",
        "Service",
        "Service",
        "Service",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
        "ValidatingWebhookConfiguration",
    ]
    for kind, name, ns in objects:
        args = ["get", kind.lower(), name, "-o", "json"]
        if ns:
            args += ["-n", ns]
        obj = json.loads(control_plane.kubectl(*args).stdout)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == release, (kind, name)
    crd_obj = json.loads(
        control_plane.kubectl("get", "crd", "configs.etcdconfig.io", "-o", "json").stdout
    )
    assert crd_obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # an upgrade keeps the chart-made webhook and history API certificates (lookup), so
    # the CA bundles the API server trusts stay the ones the running pods serve with
    def webhook_ca() -> tuple[str, str]:
        secret = json.loads(
            control_plane.kubectl(
                "get", "secret", f"{release}-etcdconfig-webhook-tls", "-n", namespace, "-o", "json"
            ).stdout
        )
        vwc = json.loads(
            control_plane.kubectl(
                "get", "validatingwebhookconfiguration", f"{release}-etcdconfig", "-o", "json"
            ).stdout
        )
        assert vwc["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        return secret["data"]["ca.crt"], secret["data"]["tls.crt"]

    def history_api_ca() -> tuple[str, str]:
        secret = json.loads(
            control_plane.kubectl(
                "get", "secret", f"{release}-etcdconfig-history-api-tls", "-n", namespace,
                "-o", "json",
            ).stdout
        )  # fmt: skip
        api = json.loads(
            control_plane.kubectl(
                "get", "apiservice", "v1alpha1.history.etcdconfig.io", "-o", "json"
            ).stdout
        )
        assert api["spec"]["caBundle"] == secret["data"]["ca.crt"]
        return secret["data"]["ca.crt"], secret["data"]["tls.crt"]

    before = webhook_ca(), history_api_ca()
    control_plane.helm(
        "upgrade", release, str(CHART), "-n", namespace, "-f", values_file(tmp_path, values)
    )
    assert (webhook_ca(), history_api_ca()) == before

    control_plane.helm("uninstall", release, "-n", namespace)
    for kind, name, ns in objects:
        args = ["get", kind.lower(), name, "--ignore-not-found", "-o", "name"]
        if ns:
            args += ["-n", ns]
        left = control_plane.kubectl(*args).stdout.strip()
        if kind == "CustomResourceDefinition":
            assert left, "the CRD must survive helm uninstall (crds.keep)"
        else:
            assert left == "", f"{kind}/{name} left behind"


# --- least privilege ----------------------------------------------------------------------


def can_i(plane: ControlPlane, sa: str, verb: str, resource: str, *where: str) -> bool:
    proc = plane.kubectl("auth", "can-i", verb, resource, f"--as={sa}", *where, check=False)
    return proc.stdout.strip() == "yes"


OPERATOR_NEEDS = [
    ("get", "configs.etcdconfig.io"),
    ("list", "configs.etcdconfig.io"),
    ("watch", "configs.etcdconfig.io"),
    ("patch", "configs.etcdconfig.io"),
    ("patch", "configs.etcdconfig.io/status"),
    ("get", "configmaps"),
    ("create", "configmaps"),
    ("patch", "configmaps"),
    # the versioned ConfigMaps' collection, and what it looks at first
    ("list", "configmaps"),
    ("delete", "configmaps"),
    ("list", "pods"),
    ("list", "replicasets.apps"),
    ("list", "controllerrevisions.apps"),
    ("list", "deployments.apps"),
    ("list", "statefulsets.apps"),
    ("list", "daemonsets.apps"),
    ("list", "jobs.batch"),
    ("list", "cronjobs.batch"),
    # rollouts: server-side apply of the consuming workloads' pod-template pin
    ("patch", "deployments.apps"),
    ("patch", "statefulsets.apps"),
    ("patch", "daemonsets.apps"),
    ("create", "events"),
]
OPERATOR_MUST_NOT = [
    ("create", "configs.etcdconfig.io"),
    ("update", "configs.etcdconfig.io"),
    ("delete", "configs.etcdconfig.io"),
    ("update", "configs.etcdconfig.io/status"),
    ("update", "configmaps"),
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "pods"),
    ("get", "pods"),
    ("watch", "pods"),
    ("patch", "replicasets.apps"),
    ("update", "deployments.apps"),
    ("delete", "deployments.apps"),
    ("delete", "events"),
    ("create", "leases.coordination.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
]


def install(
    plane: ControlPlane, namespace: str, tmp_path: Path, values: dict[str, Any]
) -> tuple[str, str]:
    release = f"ec-{uuid.uuid4().hex[:6]}"
    plane.helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "-f",
        # nothing serves the webhook or the history API here (no kubelet, the operator
        # runs without them); an APIService nobody serves would also disturb discovery
        values_file(
            tmp_path,
            {
                "crds": {"enabled": False},
                "webhook": {"enabled": False},
                "historyApi": {"enabled": False},
                **values,
            },
        ),
    )
    return release, f"system:serviceaccount:{namespace}:{release}-etcdconfig"


def test_clusterwide_service_account_can_do_exactly_what_the_operator_needs(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    release, sa = install(control_plane, namespace, tmp_path, EXTERNAL)
    try:
        for verb, resource in OPERATOR_NEEDS:
            assert can_i(control_plane, sa, verb, resource, "-A"), (verb, resource)
        for verb, resource in (
            ("list", "customresourcedefinitions"),
            (
                "watch",
                "customresourcedefinitions",
            ),
        ):
            assert can_i(control_plane, sa, verb, resource), (verb, resource)
        for verb, resource in OPERATOR_MUST_NOT:
            assert not can_i(control_plane, sa, verb, resource, "-A"), (verb, resource)
        for verb, resource in (
            ("get", "customresourcedefinitions"),
            ("create", "customresourcedefinitions"),
            ("list", "namespaces"),  # kopf lists namespaces only when given a list of them
            ("create", "validatingwebhookconfigurations"),
        ):
            assert not can_i(control_plane, sa, verb, resource), (verb, resource)
    finally:
        control_plane.helm("uninstall", release, "-n", namespace)


def test_namespaced_service_account_is_confined_to_the_watched_namespaces(
    control_plane: ControlPlane, namespace: str, extra_namespaces: list[str], tmp_path: Path
) -> None:
    watched, other = extra_namespaces
    release, sa = install(
        control_plane, namespace, tmp_path, {**EXTERNAL, "watchNamespaces": [watched]}
    )
    try:
        for verb, resource in OPERATOR_NEEDS:
            assert can_i(control_plane, sa, verb, resource, "-n", watched), (verb, resource)
            assert not can_i(control_plane, sa, verb, resource, "-n", other), (verb, resource)
            assert not can_i(control_plane, sa, verb, resource, "-A"), (verb, resource)
        for verb, resource in OPERATOR_MUST_NOT:
            assert not can_i(control_plane, sa, verb, resource, "-n", watched), (verb, resource)
        # kopf follows the listed namespaces (cluster-scoped list/watch) and the CRDs
        for verb, resource in (
            ("list", "namespaces"),
            ("watch", "namespaces"),
            ("list", "customresourcedefinitions"),
            ("watch", "customresourcedefinitions"),
        ):
            assert can_i(control_plane, sa, verb, resource), (verb, resource)
        assert not can_i(control_plane, sa, "get", "namespaces")
    finally:
        control_plane.helm("uninstall", release, "-n", namespace)


# --- the operator with the chart's identity -------------------------------------------------


def service_account_kubeconfig(
    plane: ControlPlane, namespace: str, sa_name: str, path: Path
) -> Path:
    """A kubeconfig that authenticates with a token of the ServiceAccount, as the pod's
    mounted token would: the operator gets exactly the chart's RBAC, nothing more."""
    token = plane.kubectl(
        "create", "token", sa_name, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    ca = (plane.pki_dir / "ca.crt").read_bytes()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": plane.server,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": sa_name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": sa_name}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("mode", ["clusterwide", "namespaced"])
def test_operator_with_the_chart_service_account_records_a_config(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    namespace: str,
    tmp_path: Path,
    mode: str,
) -> None:
    watched = namespace
    release_ns = f"e2e-op-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", release_ns)
    values: dict[str, Any] = {"etcd": {"endpoints": [store_etcd.endpoint]}}
    if mode == "namespaced":
        values["watchNamespaces"] = [watched]
    release, _ = install(control_plane, release_ns, tmp_path, values)
    kubeconfig = service_account_kubeconfig(
        control_plane, release_ns, f"{release}-etcdconfig", tmp_path / "sa.kubeconfig"
    )
    extra = ["--kubeconfig", str(kubeconfig)]
    if mode == "namespaced":
        extra += ["--namespaces", watched]
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-chart-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path / "operator",
        replica_id=f"{release}-0",
        extra=tuple(extra),
    )
    op.start()
    try:
        op.wait_ready()
        m = config_manifest(
            "app", watched, {"replicas": 1}, publish={"configMap": {"name": "app-config"}}
        )
        apply(control_plane, m)
        obj = wait_observed(control_plane, watched, "app")
        assert obj["status"]["version"] == 1
        assert obj["metadata"]["finalizers"] == ["etcdconfig.io/finalizer"]
        cm = json.loads(
            control_plane.kubectl(
                "get", "configmap", "app-config", "-n", watched, "-o", "json"
            ).stdout
        )
        assert json.loads(cm["data"]["config.json"]) == {"replicas": 1}
        m["spec"]["data"] = {"replicas": 2}
        apply(control_plane, m)
        assert wait_observed(control_plane, watched, "app")["status"]["version"] == 2
        events = json.loads(
            control_plane.kubectl(
                "get",
                "events",
                "-n",
                watched,
                "-o",
                "json",
                "--field-selector",
                "involvedObject.name=app",
            ).stdout
        )["items"]
        assert {"Recorded", "Published"} <= {e["reason"] for e in events}
        # deletion runs the finalizer (patch of configs) with the same identity
        control_plane.kubectl("delete", "config", "app", "-n", watched, "--timeout=60s")
        log = op.log_text()
        assert "forbidden" not in log.lower(), op.log_tail()
        assert "Not enough permissions" not in log, op.log_tail()
    finally:
        op.stop()
        control_plane.helm("uninstall", release, "-n", release_ns)
        control_plane.kubectl("delete", "namespace", release_ns, "--wait=false")
    wait_until(lambda: op.proc is not None and op.proc.poll() is not None, 20, "operator exit")


def test_crd_applied_by_hand_needs_crds_enabled_false_as_documented(
    control_plane: ControlPlane, crd: Path, namespace: str, tmp_path: Path
) -> None:
    """The CRD applied with kubectl (as the demo does) is not the release's: `helm
    install` refuses it with "invalid ownership metadata", and the documented fix
    (`--set crds.enabled=false`) installs."""
    release = f"ec-{uuid.uuid4().hex[:6]}"
    values = {**EXTERNAL, "webhook": {"enabled": False}, "historyApi": {"enabled": False}}
    proc = control_plane.helm(
        "install", release, str(CHART), "-n", namespace, "-f", values_file(tmp_path, values),
        check=False,
    )  # fmt: skip
    if proc.returncode == 0:  # another test's release left its labels on the shared CRD
        control_plane.helm("uninstall", release, "-n", namespace)
        pytest.skip("the shared CRD carries Helm ownership metadata already")
    assert "cannot be imported into the current release: invalid ownership metadata" in (
        proc.stderr
    )
    readme = (CHART / "README.md").read_text()
    assert "invalid ownership" in readme and "--set crds.enabled=false" in readme
    out = control_plane.helm(
        "install", release, str(CHART), "-n", namespace, "--set", "crds.enabled=false",
        "-f", values_file(tmp_path, values),
    )  # fmt: skip
    assert "STATUS: deployed" in out.stdout
    control_plane.helm("uninstall", release, "-n", namespace)
