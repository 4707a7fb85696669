"""The chart's part of the history API (docs/history-api.md): the APIService
``v1alpha1.history.etcdconfig.io`` and the Service behind it, the serving certificate
(made by Helm, by cert-manager or given), the operator's settings, and the RBAC an
aggregated API server needs plus the reader ClusterRole users bind per namespace.

Rendered with the real ``helm template``; the value sets are checked by the API
server (``--dry-run=server``) and the permissions with ``kubectl auth can-i``. Nothing
serves the API here (no kubelet): installs that register the APIService are
uninstalled at once, since an APIService nobody answers disturbs discovery.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import wait_until
from tests.e2e.test_chart import (  # extra_namespaces, stub_crds: fixtures
    CHART,
    EXTERNAL,
    FAKE_CA,
    by_kind,
    can_i,
    extra_namespaces,
    helm,
    install,
    kinds,
    render,
    stub_crds,
    values_file,
)

from etcdconfig.devenv.controlplane import ControlPlane

SVC = "ec-etcdconfig-history-api"
SECRET = "ec-etcdconfig-history-api-tls"
API = "v1alpha1.history.etcdconfig.io"
READER = "etcdconfig-history-reader"
CERT_DIR = "/etc/etcdconfig/history-api"


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_kind(docs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


def history_objects(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every object that belongs to the history API (by name or component label)."""
    return sorted(
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if "history" in d["metadata"]["name"]
        or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "history-api"
        or d["metadata"]["name"].endswith(("-auth-delegator", "-auth-reader"))
    )


def rendered_notes(tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` leaves it out)."""
    out = helm(
        tmp_path, "install", "ec", str(CHART), "--dry-run=client", "-n", "team",
        "-f", values_file(tmp_path, values),
    )  # fmt: skip
    return out.stdout[out.stdout.index("NOTES:") :]


def allowed(plane: ControlPlane, user: str, verb: str, resource: str, namespace: str = "") -> bool:
    """A SubjectAccessReview, as the operator asks for each request. Not `kubectl auth
    can-i`: nothing serves the group here, so kubectl cannot discover it and would send
    "configversions.history.etcdconfig.io" as a resource of the core group."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:authenticated"],
            "resourceAttributes": {
                "group": "history.etcdconfig.io",
                "version": "v1alpha1",
                "resource": resource,
                "verb": verb,
                "namespace": namespace,
            },
        },
    }
    out = plane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout
    return bool(json.loads(out)["status"].get("allowed"))


# --- render (no cluster) -------------------------------------------------------------------


def test_the_api_service_trusts_the_ca_that_signed_the_serving_certificate(
    tmp_path: Path,
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    docs = render(tmp_path, EXTERNAL, namespace="etcdconfig")
    api = one(docs, "APIService", API)
    assert api["apiVersion"] == "apiregistration.k8s.io/v1"
    assert "annotations" not in api["metadata"]
    secret = one(docs, "Secret", SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    assert api["spec"] == {
        "group": "history.etcdconfig.io",
        "version": "v1alpha1",
        "groupPriorityMinimum": 1000,
        "versionPriority": 15,
        "service": {"name": SVC, "namespace": "etcdconfig", "port": 443},
        "caBundle": secret["data"]["ca.crt"],
    }
    assert "insecureSkipTLSVerify" not in api["spec"]

    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"{SVC}.etcdconfig.svc"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(
        [
            SVC,
            f"{SVC}.etcdconfig",
            f"{SVC}.etcdconfig.svc",
            f"{SVC}.etcdconfig.svc.cluster.local",
        ]
    )
    # a certificate of its own: not the webhook's
    webhook = one(docs, "Secret", "ec-etcdconfig-webhook-tls")
    assert webhook["data"]["ca.crt"] != secret["data"]["ca.crt"]


def test_the_service_sends_port_443_to_the_operator_pods_history_api_port(
    tmp_path: Path,
) -> None:
    docs = render(tmp_path, EXTERNAL)
    svc = one(docs, "Service", SVC)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "history-api", "protocol": "TCP"}
    ]
    (dep,) = by_kind(docs, "Deployment")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p for p in container(docs)["ports"]}
    assert ports["history-api"] == {
        "name": "history-api",
        "containerPort": 8443,
        "protocol": "TCP",
    }


def test_the_operator_serves_the_api_with_the_mounted_certificate(tmp_path: Path) -> None:
    docs = render(tmp_path, EXTERNAL)
    env = env_of(docs)
    assert {k: v for k, v in env.items() if k.startswith("ETCDCONFIG_HISTORY_API_")} == {
        "ETCDCONFIG_HISTORY_API_ENABLED": "true",
        "ETCDCONFIG_HISTORY_API_ADDR": "0.0.0.0",
        "ETCDCONFIG_HISTORY_API_PORT": "8443",
        "ETCDCONFIG_HISTORY_API_CERT_FILE": f"{CERT_DIR}/tls.crt",
        "ETCDCONFIG_HISTORY_API_KEY_FILE": f"{CERT_DIR}/tls.key",
        "ETCDCONFIG_HISTORY_API_AUTHZ_TTL": "10",
    }
    c = container(docs)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["history-api-tls"] == {
        "name": "history-api-tls",
        "mountPath": CERT_DIR,
        "readOnly": True,
    }
    (dep,) = by_kind(docs, "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["history-api-tls"]["secret"] == {"secretName": SECRET, "defaultMode": 0o440}

    custom = render(tmp_path, {**EXTERNAL, "historyApi": {"port": 9444, "authzCacheTTL": 2.5}})
    env = env_of(custom)
    assert env["ETCDCONFIG_HISTORY_API_PORT"] == "9444"
    assert env["ETCDCONFIG_HISTORY_API_AUTHZ_TTL"] == "2.5"
    ports = {p["name"]: p["containerPort"] for p in container(custom)["ports"]}
    assert ports["history-api"] == 9444


def test_rbac_delegates_authentication_and_authorization_and_offers_the_reader_role(
    tmp_path: Path,
) -> None:
    docs = render(tmp_path, EXTERNAL, namespace="etcdconfig")
    subject = [{"kind": "ServiceAccount", "name": "ec-etcdconfig", "namespace": "etcdconfig"}]
    delegator = one(docs, "ClusterRoleBinding", "ec-etcdconfig-auth-delegator")
    assert delegator["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    assert delegator["subjects"] == subject
    reader_binding = one(docs, "RoleBinding", "ec-etcdconfig-auth-reader")
    assert reader_binding["metadata"]["namespace"] == "kube-system"
    assert reader_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "extension-apiserver-authentication-reader",
    }
    assert reader_binding["subjects"] == subject
    reader = one(docs, "ClusterRole", READER)
    assert reader["rules"] == [
        {
            "apiGroups": ["history.etcdconfig.io"],
            "resources": ["configversions", "confighistories"],
            "verbs": ["get", "list"],
        }
    ]
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in reader["metadata"]["labels"]
    # the operator's own ClusterRole is unchanged: nothing of the history group
    operator_role = one(docs, "ClusterRole", "ec-etcdconfig")
    assert all("history.etcdconfig.io" not in r["apiGroups"] for r in operator_role["rules"])

    view = render(tmp_path, {**EXTERNAL, "historyApi": {"aggregateToView": True}})
    labels = one(view, "ClusterRole", READER)["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true"

    renamed = render(tmp_path, {**EXTERNAL, "historyApi": {"readerRoleName": "team-history"}})
    assert one(renamed, "ClusterRole", "team-history")["rules"] == reader["rules"]
    assert by_kind(renamed, "ClusterRole") and not [
        d for d in by_kind(renamed, "ClusterRole") if d["metadata"]["name"] == READER
    ]
    # no RBAC at all with rbac.create=false, as for the operator's own
    no_rbac = render(tmp_path, {**EXTERNAL, "rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "RoleBinding"} & set(kinds(no_rbac))


def test_disabled_renders_none_of_it(tmp_path: Path) -> None:
    on = render(tmp_path, EXTERNAL)
    assert history_objects(on) == [
        ("APIService", API),
        ("ClusterRole", READER),
        ("ClusterRoleBinding", "ec-etcdconfig-auth-delegator"),
        ("RoleBinding", "ec-etcdconfig-auth-reader"),
        ("Secret", SECRET),
        ("Service", SVC),
    ]
    off = render(tmp_path, {**EXTERNAL, "historyApi": {"enabled": False}})
    assert history_objects(off) == []
    assert len(off) == len(on) - 6
    assert not [k for k in env_of(off) if k.startswith("ETCDCONFIG_HISTORY_API")]
    c = container(off)
    assert [p["name"] for p in c["ports"]] == ["http", "webhook"]
    assert "history-api-tls" not in {m["name"] for m in c["volumeMounts"]}
    (dep,) = by_kind(off, "Deployment")
    assert "history-api-tls" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    notes = rendered_notes(tmp_path, {**EXTERNAL, "historyApi": {"enabled": False}})
    assert "configversions" not in notes and "historyApi.enabled=false" in notes


def test_cert_manager_issues_the_certificate_and_injects_the_ca(tmp_path: Path) -> None:
    docs = render(
        tmp_path,
        {**EXTERNAL, "historyApi": {"certificate": {"source": "certManager"}}},
        namespace="etcdconfig",
    )
    api = one(docs, "APIService", API)
    assert api["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"etcdconfig/{SVC}"}
    assert "caBundle" not in api["spec"]
    assert [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == SECRET] == []
    cert = one(docs, "Certificate", SVC)
    assert cert["spec"]["secretName"] == SECRET
    assert cert["spec"]["duration"] == "2160h"
    assert cert["spec"]["dnsNames"] == [
        f"{SVC}.etcdconfig.svc",
        f"{SVC}.etcdconfig.svc.cluster.local",
    ]
    assert cert["spec"]["issuerRef"] == {"name": "ec-etcdconfig-selfsigned", "kind": "Issuer"}
    assert [i["metadata"]["name"] for i in by_kind(docs, "Issuer")] == ["ec-etcdconfig-selfsigned"]
    (dep,) = by_kind(docs, "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["history-api-tls"]["secret"]["secretName"] == SECRET

    # with the webhook also on cert-manager's self-signed Issuer: one Issuer, not two
    both = render(
        tmp_path,
        {
            **EXTERNAL,
            "webhook": {"certificate": {"source": "certManager"}},
            "historyApi": {"certificate": {"source": "certManager"}},
        },
    )
    assert [i["metadata"]["name"] for i in by_kind(both, "Issuer")] == ["ec-etcdconfig-selfsigned"]
    assert len(by_kind(both, "Certificate")) == 2

    issuer = {"name": "ca", "kind": "ClusterIssuer"}
    given = render(
        tmp_path,
        {
            **EXTERNAL,
            "historyApi": {
                "certificate": {
                    "source": "certManager",
                    "certManager": {"issuerRef": issuer, "duration": "720h"},
                }
            },
        },
    )
    assert by_kind(given, "Issuer") == []
    cert = one(given, "Certificate", SVC)
    assert cert["spec"]["issuerRef"] == issuer
    assert cert["spec"]["duration"] == "720h"


def test_a_given_secret_and_ca_bundle(tmp_path: Path) -> None:
    docs = render(
        tmp_path,
        {
            **EXTERNAL,
            "historyApi": {
                "certificate": {"source": "secret", "secretName": "mine", "caBundle": FAKE_CA}
            },
        },
    )
    assert [d for d in by_kind(docs, "Secret") if "history" in d["metadata"]["name"]] == []
    assert one(docs, "APIService", API)["spec"]["caBundle"] == FAKE_CA
    (dep,) = by_kind(docs, "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["history-api-tls"]["secret"]["secretName"] == "mine"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"historyApi": {"insecureSkipTLSVerify": True}},
            "additional properties 'insecureSkipTLSVerify' not allowed",
        ),
        (
            {"historyApi": {"certificate": {"sorce": "helm"}}},
            "additional properties 'sorce' not allowed",
        ),
        (
            {"historyApi": {"certificate": {"source": "selfSigned"}}},
            "at '/historyApi/certificate/source'",
        ),
        ({"historyApi": {"port": 0}}, "at '/historyApi/port'"),
        ({"historyApi": {"authzCacheTTL": -1}}, "at '/historyApi/authzCacheTTL'"),
        (
            {"historyApi": {"certificate": {"source": "secret"}}},
            "historyApi.certificate.caBundle (base64 PEM of the CA) is required",
        ),
        (
            {"historyApi": {"certificate": {"source": "secret", "caBundle": FAKE_CA}}},
            "historyApi.certificate.secretName is required",
        ),
        ({"historyApi": {"port": 9443}}, "historyApi.port must differ from webhook.port"),
        ({"historyApi": {"port": 8080}}, "historyApi.port must differ from operator.httpPort"),
    ],
)
def test_invalid_history_api_values_fail_with_a_message(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    proc = helm(
        tmp_path,
        "template",
        "ec",
        str(CHART),
        "-f",
        values_file(tmp_path, {**EXTERNAL, **values}),
        check=False,
    )
    assert proc.returncode == 1
    assert message in proc.stderr, proc.stderr


def test_the_webhook_port_is_free_for_the_history_api_when_the_webhook_is_off(
    tmp_path: Path,
) -> None:
    docs = render(
        tmp_path, {**EXTERNAL, "webhook": {"enabled": False}, "historyApi": {"port": 9443}}
    )
    assert env_of(docs)["ETCDCONFIG_HISTORY_API_PORT"] == "9443"


def test_notes_show_the_kubeconfig_path_first_and_etcd_only_for_admins(tmp_path: Path) -> None:
    notes = rendered_notes(tmp_path, EXTERNAL)
    kubectl_path = notes.index("kubectl get configversions -n default")
    assert "kubectl etcdconfig history hello -n default" in notes
    assert f"--clusterrole={READER}" in notes
    admin_path = notes.index("--etcd-endpoints")
    assert kubectl_path < admin_path
    assert "Administrators only" in notes[kubectl_path:admin_path]
    # no in-cluster etcd address to read history from
    assert "etcd-0.example" not in notes[notes.index("3. Read the history") :]


# --- against the API server ----------------------------------------------------------------

VALUE_SETS: dict[str, dict[str, Any]] = {
    "helm": EXTERNAL,
    "cert-manager": {**EXTERNAL, "historyApi": {"certificate": {"source": "certManager"}}},
    "cert-manager-both-self-signed-view": {
        **EXTERNAL,
        "webhook": {"certificate": {"source": "certManager"}},
        "historyApi": {"aggregateToView": True, "certificate": {"source": "certManager"}},
    },
    "secret-renamed-reader": {
        **EXTERNAL,
        "historyApi": {
            "readerRoleName": "team-history",
            "certificate": {"source": "secret", "secretName": "mine", "caBundle": FAKE_CA},
        },
    },
}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_api_server_accepts_every_history_api_value_set(
    control_plane: ControlPlane, namespace: str, stub_crds: None, tmp_path: Path, name: str
) -> None:
    docs = render(tmp_path, VALUE_SETS[name], namespace=namespace)
    assert by_kind(docs, "APIService")
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


def test_the_operator_may_delegate_and_users_read_history_where_bound(
    control_plane: ControlPlane, namespace: str, extra_namespaces: list[str], tmp_path: Path
) -> None:
    bound, other = extra_namespaces
    # watching one namespace: the operator then has no ConfigMap rights of its own in
    # kube-system, so what it may read there is the history API's binding alone
    release, sa = install(
        control_plane,
        namespace,
        tmp_path,
        {**EXTERNAL, "watchNamespaces": [bound], "historyApi": {"enabled": True}},
    )
    user = f"alice-{uuid.uuid4().hex[:6]}"
    try:
        # the operator: SubjectAccessReviews (auth-delegator) and the front-proxy ConfigMap
        assert can_i(control_plane, sa, "create", "subjectaccessreviews.authorization.k8s.io")
        assert can_i(control_plane, sa, "create", "tokenreviews.authentication.k8s.io")
        assert can_i(
            control_plane, sa, "get", "configmaps/extension-apiserver-authentication",
            "-n", "kube-system",
        )  # fmt: skip
        assert not can_i(control_plane, sa, "get", "configmaps/kube-proxy", "-n", "kube-system")
        assert not can_i(control_plane, sa, "list", "secrets", "-n", "kube-system")
        # the operator needs no permission on the group it serves
        assert not allowed(control_plane, sa, "list", "configversions")

        # a user bound to the reader role in one namespace reads there, only there
        for verb in ("get", "list"):
            for resource in ("configversions", "confighistories"):
                assert not allowed(control_plane, user, verb, resource, bound), (verb, resource)
        control_plane.kubectl(
            "create", "rolebinding", "history", f"--clusterrole={READER}", f"--user={user}",
            "-n", bound,
        )  # fmt: skip
        wait_until(  # the API server's RBAC cache takes the new binding in shortly
            lambda: allowed(control_plane, user, "list", "configversions", bound),
            30,
            "the reader binding in effect",
        )
        for verb in ("get", "list"):
            for resource in ("configversions", "confighistories"):
                assert allowed(control_plane, user, verb, resource, bound), (verb, resource)
                assert not allowed(control_plane, user, verb, resource, other), (verb, resource)
                assert not allowed(control_plane, user, verb, resource), (verb, resource)
        for verb in ("watch", "create", "update", "delete"):
            assert not allowed(control_plane, user, verb, "configversions", bound), verb
        assert not can_i(control_plane, user, "get", "configs.etcdconfig.io", "-n", bound)
    finally:
        control_plane.helm("uninstall", release, "-n", namespace)
    assert (
        control_plane.kubectl(
            "get", "apiservice", API, "--ignore-not-found", "-o", "name"
        ).stdout.strip()
        == ""
    )
    assert (
        control_plane.kubectl(
            "get", "clusterrole", READER, "--ignore-not-found", "-o", "name"
        ).stdout.strip()
        == ""
    )
