"""The CRD in crds/ is generated from the pydantic models and must not drift."""

from __future__ import annotations

from pathlib import Path

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
    assert "$ref" not in text and "anyOf" not in text and "default:" not in text
    spec = schema["properties"]["spec"]
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
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Version",
        "Checksum",
        "Ready",
        "Age",
    ]


def test_model_and_crd_agree_on_every_spec_field() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    props = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]
    aliases = {f.alias or n for n, f in models.ConfigSpec.model_fields.items()}
    assert set(props) == aliases
    parsed = parse_spec({"data": {"a": 1}})
    assert (parsed.history.max_versions, parsed.deletion_policy) == (100, "Retain")
