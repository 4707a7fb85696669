"""The CRD in crds/ is generated from the pydantic models and must not drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from etcdconfig import crd, models
from etcdconfig.reconcile import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "etcdconfig.io_configs.yaml"


def test_crds_folder_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd.render(), (
        "crds/ drifted from etcdconfig/models.py: run "
        "`python -m etcdconfig.crd > crds/etcdconfig.io_configs.yaml`"
    )


def test_schema_is_structural_and_keeps_kopf_state() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    version = doc["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text
    spec = schema["properties"]["spec"]
    # no defaults in spec (the API server would add fields GitOps tools see as drift);
    # in status exactly two: an unobserved Config reads as observedGeneration 0, which
    # kstatus calls InProgress (no status at all would be Current)
    assert "default:" not in yaml.safe_dump(spec)
    status = schema["properties"]["status"]
    assert status["default"] == {}
    assert status["properties"]["observedGeneration"]["default"] == 0
    assert yaml.safe_dump(status).count("default:") == 2
    assert spec["required"] == ["data"]
    assert spec["properties"]["data"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["schema"]["x-kubernetes-preserve-unknown-fields"] is True
    hist = spec["properties"]["history"]["properties"]["maxVersions"]
    assert (hist["minimum"], hist["maximum"]) == (1, models.MAX_VERSIONS_LIMIT)
    assert spec["properties"]["deletionPolicy"]["enum"] == ["Retain", "Purge"]
    assert schema["properties"]["status"]["properties"]["kopf"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["shortNames"] == ["cfg"]
    columns = version["additionalPrinterColumns"]
    # `kubectl get cfg`: what and whether, and why not (the Ready condition's message)
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Version",
        "Checksum",
        "Ready",
        "Age",
        "Message",
    ]
    # `kubectl get cfg -o wide` adds the reason, the generations, the recording time and
    # the rollout (`Deployment/web 3/3 on v7`)
    assert [c["name"] for c in columns if c.get("priority") == 1] == [
        "Reason",
        "Generation",
        "Observed",
        "Recorded",
        "Rollout",
    ]
    assert {c["name"]: c["jsonPath"] for c in columns}["Rollout"] == ".status.rollout.summary"
    paths = {c["name"]: c["jsonPath"] for c in columns}
    assert paths["Message"] == '.status.conditions[?(@.type=="Ready")].message'
    assert paths["Reason"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert paths["Observed"] == ".status.observedGeneration"


def _described(node: dict[str, Any], path: str) -> list[str]:
    """Paths of schema nodes without a description (kubectl explain shows them empty)."""
    missing = [] if node.get("description") else [path]
    for key, child in (node.get("properties") or {}).items():
        missing.extend(_described(child, f"{path}.{key}"))
    return missing


def test_kubectl_explain_describes_every_spec_field_and_states_its_default() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert _described(spec, "spec") == []
    assert "\n" not in spec["description"]
    # defaults are stated in words, never as schema defaults: the API server would write
    # a schema default into every stored object (drift for kubectl diff / Argo CD / Flux)
    fields = {
        "history.maxVersions": spec["properties"]["history"]["properties"]["maxVersions"],
        "deletionPolicy": spec["properties"]["deletionPolicy"],
        "publish.configMap.key": spec["properties"]["publish"]["properties"]["configMap"][
            "properties"
        ]["key"],
        "publish.configMap.format": spec["properties"]["publish"]["properties"]["configMap"][
            "properties"
        ]["format"],
    }
    parsed = parse_spec({"data": {}, "publish": {"configMap": {"name": "x"}}})
    assert parsed.publish is not None and parsed.publish.config_map is not None
    actual = {
        "history.maxVersions": parsed.history.max_versions,
        "deletionPolicy": parsed.deletion_policy,
        "publish.configMap.key": parsed.publish.config_map.key,
        "publish.configMap.format": parsed.publish.config_map.format,
    }
    for name, node in fields.items():
        assert "default" not in node
        assert f"Default: {actual[name]}." in node["description"], name


def test_model_and_crd_agree_on_every_spec_field() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    props = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]
    aliases = {f.alias or n for n, f in models.ConfigSpec.model_fields.items()}
    assert set(props) == aliases
    parsed = parse_spec({"data": {"a": 1}})
    assert (parsed.history.max_versions, parsed.deletion_policy) == (100, "Retain")
