"""JSON Schema (draft 2020-12) validation that reports every error with its path.

- Results are cached by (schema checksum, data checksum): a resync of thousands
  of unchanged Configs costs a dictionary look-up each.
- A remote ``$ref`` is never fetched: only references inside the schema resolve.
- Error messages name the path and the rule, never the offending value (data
  may hold secrets).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import jsonschema
import jsonschema.exceptions
import referencing
import referencing.exceptions

from etcdconfig.canonical import check_ijson, checksum, json_path
from etcdconfig.errors import InvalidConfig, ValidationIssue

_Validator = jsonschema.Draft202012Validator


def _no_remote(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


_REGISTRY: referencing.Registry[Any] = referencing.Registry(retrieve=_no_remote)  # type: ignore[call-arg]


def _rule(err: jsonschema.exceptions.ValidationError) -> str:
    """Describe the failed rule without echoing the instance value."""
    kw = str(err.validator)
    expected = err.validator_value
    if kw == "required":
        missing = [
            p
            for p in (expected if isinstance(expected, list) else [])
            if isinstance(err.instance, dict) and p not in err.instance
        ]
        names = ", ".join(repr(m) for m in missing) or repr(expected)
        return f"missing required property {names}"
    if kw == "additionalProperties":
        allowed = (
            set((err.schema.get("properties") or {}).keys())
            if isinstance(err.schema, dict)
            else set()
        )
        extra = (
            sorted(k for k in err.instance if k not in allowed)
            if isinstance(err.instance, dict)
            else []
        )
        return f"additional properties are not allowed: {', '.join(repr(e) for e in extra)}"
    if kw == "type":
        return f"must be of type {expected!r}, got {_json_type(err.instance)}"
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        return f"violates {kw} {expected!r}"
    if kw in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        return f"violates {kw} {expected!r}"
    if kw == "enum":
        shown = expected if isinstance(expected, list) and len(expected) <= 10 else "the enum"
        return (
            f"must be one of {shown!r}" if shown != "the enum" else "must be one of the enum values"
        )
    if kw == "const":
        return "must equal the schema's const value"
    if kw == "pattern":
        return f"does not match pattern {expected!r}"
    if kw == "format":
        return f"is not a valid {expected!r}"
    if kw in ("oneOf", "anyOf", "allOf", "not"):
        return f"does not satisfy {kw}"
    if kw == "uniqueItems":
        return "items must be unique"
    return f"violates {kw!r}"


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def check_schema(schema: Any, root: str = "schema") -> list[ValidationIssue]:
    """Every reason ``schema`` is not a usable draft 2020-12 JSON Schema."""
    if not isinstance(schema, dict | bool):
        return [ValidationIssue(root, f"must be a JSON object, got {_json_type(schema)}")]
    issues = check_ijson(schema, root)
    if issues:
        return issues
    for err in sorted(
        _Validator(_Validator.META_SCHEMA).iter_errors(schema), key=lambda e: list(e.path)
    ):
        issues.append(ValidationIssue(json_path(tuple(err.absolute_path), root), _rule(err)))
    issues.extend(_remote_refs(schema, root))
    return issues


def _remote_refs(schema: Any, root: str) -> list[ValidationIssue]:
    out: list[ValidationIssue] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("$ref", "$dynamicRef") and isinstance(v, str) and not v.startswith("#"):
                    out.append(
                        ValidationIssue(
                            json_path((*path, k), root),
                            "remote references are not fetched; inline the referenced schema "
                            "under $defs and use '#/$defs/…'",
                        )
                    )
                else:
                    stack.append((v, (*path, k)))
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(node))
    return out


class Validator:
    """Validates data against schemas, caching results by checksums."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._cache: OrderedDict[tuple[str, str], tuple[ValidationIssue, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._schemas: OrderedDict[str, tuple[ValidationIssue, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def validate(self, data: Any, schema: Any | None) -> list[ValidationIssue]:
        """Every issue with ``data`` (and ``schema``), each with its path; [] when valid."""
        if not isinstance(data, dict):
            return [ValidationIssue("data", f"must be a JSON object, got {_json_type(data)}")]
        issues = check_ijson(data)
        if schema is None or issues:
            return issues
        if not isinstance(schema, dict | bool):
            return check_schema(schema)
        if isinstance(schema, dict):
            ijson = check_ijson(schema, "schema")
            if ijson:
                return ijson
        schema_sum = checksum(schema, "schema")
        schema_issues = self._schemas.get(schema_sum)
        if schema_issues is None:
            schema_issues = tuple(check_schema(schema))
            self._schemas[schema_sum] = schema_issues
            if len(self._schemas) > self._cache_size:
                self._schemas.popitem(last=False)
        if schema_issues:
            return list(schema_issues)
        key = (schema_sum, checksum(data))
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return list(cached)
        self.misses += 1
        result = tuple(self._run(data, schema))
        self._cache[key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return list(result)

    def _run(self, data: Any, schema: Any) -> list[ValidationIssue]:
        validator = _Validator(schema, registry=_REGISTRY)
        issues: list[ValidationIssue] = []
        try:
            for err in validator.iter_errors(data):
                issues.append(ValidationIssue(json_path(tuple(err.absolute_path)), _rule(err)))
        except referencing.exceptions.Unresolvable as exc:
            issues.append(ValidationIssue("schema", f"unresolvable reference: {exc.ref!r}"))
        except RecursionError:
            issues.append(ValidationIssue("schema", "schema recursion too deep"))
        issues.sort(key=lambda i: (i.path, i.message))
        return issues

    def require_valid(self, data: Any, schema: Any | None) -> None:
        issues = self.validate(data, schema)
        if issues:
            reason = "InvalidSchema" if issues[0].path.startswith("schema") else "InvalidData"
            raise InvalidConfig(issues, reason=reason)
