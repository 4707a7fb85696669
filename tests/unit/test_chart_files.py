"""The Helm chart's files agree with the code: the CRD copy, the values and their
schema, the documentation of every value, and the settings the Deployment sets.

Rendering and installing the chart are tested in tests/e2e/test_chart.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from etcdconfig.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "etcdconfig"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"


def _schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA.read_text()))


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load(VALUES.read_text()))


def test_chart_crd_is_a_copy_of_the_generated_crd() -> None:
    copy = CHART / "files" / "etcdconfig.io_configs.yaml"
    source = ROOT / "crds" / "etcdconfig.io_configs.yaml"
    assert copy.read_text() == source.read_text(), (
        "the chart's CRD drifted from crds/: "
        "cp crds/etcdconfig.io_configs.yaml charts/etcdconfig/files/"
    )


def test_default_values_satisfy_the_schema() -> None:
    jsonschema.Draft7Validator(_schema()).validate(_values())


def _objects(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node of a chart-defined object (one with ``properties``)."""
    found = [(path, node)] if "properties" in node else []
    for key, child in (node.get("properties") or {}).items():
        found.extend(_objects(child, f"{path}.{key}" if path else key))
    return found


def test_every_chart_defined_object_refuses_unknown_keys() -> None:
    loose = [p or "(root)" for p, n in _objects(_schema()) if n.get("additionalProperties")]
    assert loose == [], "set additionalProperties: false"


def test_schema_rejects_a_misspelled_value() -> None:
    values = _values()
    values["replicaCout"] = 3
    values["etcd"]["bundeld"] = {"enabled": True}
    errors = sorted(e.message for e in jsonschema.Draft7Validator(_schema()).iter_errors(values))
    assert errors == [
        "Additional properties are not allowed ('bundeld' was unexpected)",
        "Additional properties are not allowed ('replicaCout' was unexpected)",
    ]


def _documented_paths() -> dict[str, str]:
    """dotted path -> the comment block right above the key in values.yaml."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in VALUES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            comment = [] if not stripped else comment
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        out[path] = " ".join(comment)
        comment = []
    return out


def _value_paths(
    schema: dict[str, Any], values: dict[str, Any], prefix: str = ""
) -> tuple[list[str], list[str]]:
    """(paths of values the chart defines, those of them that are free-form maps or
    lists whose content is the user's): recurse only into chart-defined objects."""
    paths: list[str] = []
    opaque: list[str] = []
    for key, child in (schema.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.append(path)
        default = values.get(key)
        if "properties" in child and isinstance(default, dict) and default:
            sub, sub_opaque = _value_paths(child, default, path)
            paths.extend(sub)
            opaque.extend(sub_opaque)
        else:
            opaque.append(path)
    return paths, opaque


def test_every_value_is_documented_by_a_comment_starting_with_its_name() -> None:
    docs = _documented_paths()
    paths = [p for p in _value_paths(_schema(), _values())[0] if p != "global"]
    missing = [p for p in paths if p not in docs]
    assert missing == [], "in values.schema.json but not in values.yaml"
    undocumented = [p for p in paths if not docs[p].startswith(f"# {p} -- ")]
    assert undocumented == []


def test_values_yaml_has_nothing_the_schema_does_not_describe() -> None:
    paths, opaque = _value_paths(_schema(), _values())
    extra = [
        p
        for p in _documented_paths()
        if p not in paths and not any(p.startswith(f"{o}.") for o in opaque)
    ]
    assert extra == []


@pytest.mark.parametrize("template", ["deployment.yaml"])
def test_every_setting_the_chart_sets_exists_in_the_operator(template: str) -> None:
    text = (CHART / "templates" / template).read_text()
    names = set(re.findall(r"name: (ETCDCONFIG_[A-Z_]+)", text))
    fields = {f"ETCDCONFIG_{name.upper()}" for name in Settings.model_fields}
    assert names, "no ETCDCONFIG_* variables found"
    assert sorted(names - fields) == []
    # the operator's identity comes from the pod name (downward API)
    assert re.search(
        r"name: ETCDCONFIG_REPLICA_ID\n\s+valueFrom:\n\s+fieldRef:\n\s+fieldPath: metadata.name",
        text,
    )


def test_the_webhook_declares_its_side_effects_none_on_dry_run() -> None:
    """The webhook writes an author note to etcd for a real request and nothing for a
    dry run (``controller/handlers.py``), and the pod webhook may publish a collected
    version's ConfigMap again for a real pod only: ``NoneOnDryRun``, not ``None``."""
    text = (CHART / "templates" / "webhook.yaml").read_text()
    assert re.findall(r"^\s*sideEffects:\s*(\S+)\s*$", text, re.M) == ["NoneOnDryRun"] * 2


HISTORY_API_DOC = ROOT / "docs" / "history-api.md"


def test_schema_rejects_unknown_history_api_keys() -> None:
    """No insecureSkipTLSVerify: the APIService always checks the serving certificate."""
    values = _values()
    values["historyApi"]["insecureSkipTLSVerify"] = True
    values["historyApi"]["certificate"]["sorce"] = "helm"
    values["historyApi"]["certificate"]["certManager"]["isuerRef"] = {}
    errors = sorted(e.message for e in jsonschema.Draft7Validator(_schema()).iter_errors(values))
    assert errors == [
        "Additional properties are not allowed ('insecureSkipTLSVerify' was unexpected)",
        "Additional properties are not allowed ('isuerRef' was unexpected)",
        "Additional properties are not allowed ('sorce' was unexpected)",
    ]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("port",), 0),
        (("port",), 65536),
        (("authzCacheTTL",), -1),
        (("authzCacheTTL",), "10"),
        (("enabled",), "yes"),
        (("aggregateToView",), "true"),
        (("readerRoleName",), "Etcdconfig History"),
        (("certificate", "source"), "selfSigned"),
    ],
)
def test_schema_rejects_bad_history_api_values(path: tuple[str, ...], value: Any) -> None:
    values = _values()
    node = values["historyApi"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = list(jsonschema.Draft7Validator(_schema()).iter_errors(values))
    assert [list(e.absolute_path) for e in errors] == [["historyApi", *path]]


def test_history_api_defaults_are_the_documented_ones() -> None:
    """On by default, on the documented port and cache time, the reader role under the
    name docs/history-api.md tells users to bind, and the same certificate sources as
    the webhook."""
    history = _values()["historyApi"]
    assert history["enabled"] is True
    assert history["port"] == 8443
    assert history["authzCacheTTL"] == 10
    assert history["readerRoleName"] == "etcdconfig-history-reader"
    assert history["aggregateToView"] is False
    assert history["certificate"]["source"] == "helm"
    doc = HISTORY_API_DOC.read_text()
    assert "`etcdconfig-history-reader`" in doc
    schema = _schema()["properties"]
    assert (
        schema["historyApi"]["properties"]["certificate"]
        == schema["webhook"]["properties"]["certificate"]
    )


def test_the_chart_sets_only_documented_history_api_settings() -> None:
    """Every ETCDCONFIG_HISTORY_API_* variable the Deployment sets is in the settings
    table of docs/history-api.md (the contract with `etcdconfig run`)."""
    text = (CHART / "templates" / "deployment.yaml").read_text()
    names = set(re.findall(r"name: (ETCDCONFIG_HISTORY_API_[A-Z_]+)", text))
    assert names == {
        "ETCDCONFIG_HISTORY_API_ENABLED",
        "ETCDCONFIG_HISTORY_API_ADDR",
        "ETCDCONFIG_HISTORY_API_PORT",
        "ETCDCONFIG_HISTORY_API_CERT_FILE",
        "ETCDCONFIG_HISTORY_API_KEY_FILE",
        "ETCDCONFIG_HISTORY_API_AUTHZ_TTL",
    }
    doc = HISTORY_API_DOC.read_text()
    table = "\n".join(line for line in doc.splitlines() if line.startswith("| `--history-api"))
    documented = set(re.findall(r"`(ETCDCONFIG_HISTORY_API_[A-Z_]+)`", table))
    documented |= {f"ETCDCONFIG_HISTORY_API_{m}" for m in re.findall(r"`\.\.\._([A-Z_]+)`", table)}
    assert sorted(names - documented) == []


def test_the_api_service_never_skips_tls_verification() -> None:
    text = (CHART / "templates" / "history-api.yaml").read_text()
    assert "insecureSkipTLSVerify" not in text
    assert "caBundle: {{ $caBundle }}" in text
