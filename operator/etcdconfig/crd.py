"""Generate the Config CRD from the pydantic models (``python -m etcdconfig.crd``).

Pydantic's JSON Schema is turned into a structural OpenAPI v3 schema:
references inlined, ``Optional`` as plain optional fields, free-form objects
marked ``x-kubernetes-preserve-unknown-fields``, titles dropped. Descriptions
come from the models' docstrings and field descriptions (``kubectl explain``).

Defaults are left out of the schema on purpose and stated in the descriptions
instead ("Default: 100."): the API server writes a schema default into the stored
object, so a Config applied without ``deletionPolicy`` would come back with
``deletionPolicy: Retain``, a field that is in no Git file -- drift for
``kubectl diff``, Argo CD and Flux. The operator applies the same defaults (the models)
when it reads a spec, so the stored spec stays exactly what the user applied.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from etcdconfig import models


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            return _convert({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs", "additionalProperties", "default"):
            continue
        if key == "properties":
            out[key] = {k: _convert(v, defs) for k, v in value.items()}
        elif key == "description" and isinstance(value, str):
            out[key] = " ".join(value.split())  # docstrings: one line for kubectl explain
        else:
            out[key] = _convert(value, defs)
    if node.get("type") == "object" and "properties" not in node:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return dict(_convert(schema, schema.get("$defs", {})))


def crd() -> dict[str, Any]:
    spec = openapi_schema(models.ConfigSpec)
    status = openapi_schema(models.ConfigStatus)
    # kopf keeps its progress and diffbase under status.kopf: it must survive pruning
    status["properties"]["kopf"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    for cond in status["properties"]["conditions"]["items"]["properties"].values():
        cond.pop("description", None)
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    # a Config the operator has not observed yet reads as observedGeneration 0 (the API
    # server defaults on every read): kstatus — so Flux's health checks — says InProgress
    # until the operator wrote a status, where no status at all would read as Current
    status["default"] = {}
    status["properties"]["observedGeneration"]["default"] = 0
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": ["etcdconfig"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": models.PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A configuration recorded as immutable, checksummed "
                            "versions in etcd by etcdconfig.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m etcdconfig.crd` from etcdconfig/models.py; do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
