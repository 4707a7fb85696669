"""JSON Schema (draft 2020-12) validation that reports every error with its path.

- Results are cached by (schema checksum, data checksum): a resync of thousands
  of unchanged Configs costs a dictionary look-up each.
- A remote ``$ref`` is never fetched: only references inside the schema resolve.
- Error messages name the path and the rule, never the offending value (data
  may hold secrets).
- Validation time is bounded, so a hostile schema cannot pin the operator.
  Regular expressions (``pattern``, ``patternProperties``) run on the ``regex``
  engine with a timeout of ``PATTERN_TIMEOUT_MS`` each (Python's ``re``
  backtracks catastrophically on patterns like ``^(a|aa)+$`` and cannot be
  interrupted); one validation as a whole may take ``VALIDATION_BUDGET_MS``
  (nested ``anyOf`` over ``$ref`` multiplies work exponentially), checked before
  every keyword; ``uniqueItems`` hashes canonical JSON instead of comparing
  every pair. Beyond a bound the data is invalid with an issue that says so.
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import referencing
import referencing.exceptions
import regex

from etcdconfig.canonical import (
    canonical_json,
    check_ijson,
    checksum,
    fast_canonical_json,
    json_path,
    sha256_of,
)
from etcdconfig.errors import InvalidConfig, ValidationIssue

if TYPE_CHECKING:
    from collections.abc import Iterator

PATTERN_TIMEOUT_MS = 100
VALIDATION_BUDGET_MS = 2000


class _PatternTimeout(Exception):
    """One regular expression search ran out of time."""


class _BudgetExceeded(Exception):
    """The whole validation ran out of time: abandon it."""


class _OwnMessage(jsonschema.exceptions.ValidationError):  # type: ignore[misc]
    """An error whose message our keyword wrote: it names no instance value."""


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> Any:
    return regex.compile(pattern)


class _Budget:
    """The time one validation may still take."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + VALIDATION_BUDGET_MS / 1000
        self.pattern_timeouts = 0

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise _BudgetExceeded


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "etcdconfig_validation_budget", default=None
)


def _search(pattern: str, text: str) -> bool:
    budget = _BUDGET.get()
    timeout = PATTERN_TIMEOUT_MS / 1000
    if budget is not None:
        budget.check()
        timeout = min(timeout, budget.deadline - time.monotonic())
    try:
        return _compile(pattern).search(text, timeout=max(timeout, 0.001)) is not None
    except TimeoutError as exc:
        if budget is not None:
            budget.pattern_timeouts += 1
            budget.check()
        raise _PatternTimeout from exc


def _timeout_error(pattern: str) -> _OwnMessage:
    return _OwnMessage(
        f"pattern evaluation exceeded {PATTERN_TIMEOUT_MS} ms ({pattern!r}); simplify the "
        "pattern (nested or overlapping quantifiers backtrack catastrophically)"
    )


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "string"):
        return
    try:
        matched = _search(pattern, instance)
    except _PatternTimeout:
        yield _timeout_error(pattern)
        return
    if not matched:
        yield _OwnMessage(f"does not match pattern {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = _search(pattern, key)
            except _PatternTimeout:
                yield _timeout_error(pattern)
                return
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = []
    for key in instance:
        if key in properties:
            continue
        try:
            if any(_search(p, key) for p in patterns):
                continue
        except _PatternTimeout:
            yield _timeout_error("|".join(patterns))
            return
        extras.append(key)
    if validator.is_type(additional, "object"):
        simple_type = _only_type(additional)
        for key in extras:
            value = instance[key]
            if simple_type is not None and validator.is_type(value, simple_type):
                continue  # what descending would find: nothing
            yield from validator.descend(value, additional, path=key)
    elif not additional and extras:
        names = ", ".join(repr(k) for k in sorted(extras))
        yield _OwnMessage(f"additional properties are not allowed: {names}")


def _only_type(subschema: dict[str, Any]) -> str | None:
    """``T`` if ``subschema`` is just ``{"type": T}`` for one type name ``T``: then a
    value of that type passes it, and the ``type`` keyword's check is all there is."""
    if len(subschema) == 1:
        kind = subschema.get("type")
        if type(kind) is str:
            return kind
    return None


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not unique or not validator.is_type(instance, "array"):
        return
    # canonical JSON is equal exactly when JSON Schema says the values are equal (1 == 1.0,
    # key order ignored, true != 1): one hash each instead of comparing every pair
    seen = {canonical_json(item) for item in instance}
    if len(seen) != len(instance):
        yield _OwnMessage("items must be unique")


def _bounded(keyword: Any) -> Any:
    """Check the validation's time budget before each keyword is evaluated."""

    def evaluate(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.check()
        return keyword(validator, value, instance, schema) or ()

    return evaluate


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    validators={
        kw: _bounded(fn)
        for kw, fn in {
            **jsonschema.Draft202012Validator.VALIDATORS,
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
            "uniqueItems": _unique_items,
        }.items()
    },
)
_MetaValidator = jsonschema.Draft202012Validator
# keywords whose values are data, not schemas: never read keywords inside them
_LITERALS = frozenset({"const", "enum", "default", "examples"})


def _no_remote(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


_REGISTRY: referencing.Registry[Any] = referencing.Registry(retrieve=_no_remote)  # type: ignore[call-arg]


def _rule(err: jsonschema.exceptions.ValidationError) -> str:
    """Describe the failed rule without echoing the instance value."""
    if isinstance(err, _OwnMessage):
        return str(err.message)
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
        if isinstance(expected, list) and len(expected) <= 10:
            return f"must be one of {_json_values(expected)}"
        return "must be one of the enum values"
    if kw == "const":
        return "must equal the schema's const value"
    if kw == "pattern":
        return f"does not match pattern {expected!r}"
    if kw == "format":
        return f"is not a valid {expected!r}"
    if kw in ("oneOf", "anyOf"):
        return _alternatives(err, kw)
    if kw in ("allOf", "not"):
        return f"does not satisfy {kw}"
    if kw == "uniqueItems":
        return "items must be unique"
    return f"violates {kw!r}"


def _json_values(values: list[Any]) -> str:
    """Enum members as JSON (``"a", 1, null``), never as a Python list."""
    return ", ".join(json.dumps(v, ensure_ascii=False, sort_keys=True) for v in values)


# the metaschema's ``type`` keyword: a simple type or an array of them
_SIMPLE_TYPES_ANY_OF = [
    {"$ref": "#/$defs/simpleTypes"},
    {"type": "array", "items": {"$ref": "#/$defs/simpleTypes"}, "minItems": 1, "uniqueItems": True},
]
_TYPE_ANY_OF = (
    'is not a JSON Schema type: use one of "array", "boolean", "integer", "null", '
    '"number", "object", "string", or an array of them'
)


def _alternatives(err: jsonschema.exceptions.ValidationError, kw: str) -> str:
    """``anyOf``/``oneOf``: what each alternative required, so the user sees what is
    allowed (the sub-errors' own rules, which name no instance value)."""
    if err.validator_value == _SIMPLE_TYPES_ANY_OF and list(err.path)[-1:] == ["type"]:
        return _TYPE_ANY_OF
    branches: dict[int, list[str]] = {}
    for sub in err.context or []:
        if not sub.relative_schema_path:
            continue
        branch = sub.relative_schema_path[0]
        if isinstance(branch, int):
            where = json_path(tuple(sub.relative_path), "") if sub.relative_path else ""
            rule = f"{where.lstrip('.')}: {_rule(sub)}" if where else _rule(sub)
            branches.setdefault(branch, []).append(rule)
    count = len(err.validator_value) if isinstance(err.validator_value, list) else 0
    if kw == "oneOf" and len(branches) < count:
        return f"must satisfy exactly one of the {count} oneOf alternatives, not several"
    if not branches:
        return f"does not satisfy {kw}"
    described = "; ".join(
        f"({i + 1}) {', '.join(dict.fromkeys(rules))}" for i, rules in sorted(branches.items())
    )
    need = "any" if kw == "anyOf" else "exactly one"
    return f"does not satisfy {kw} ({need} of: {described})"


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
        _MetaValidator(_MetaValidator.META_SCHEMA).iter_errors(schema),
        key=lambda e: list(e.path),
    ):
        issues.append(ValidationIssue(json_path(tuple(err.absolute_path), root), _rule(err)))
    issues.extend(_keyword_problems(schema, root))
    return sorted(issues, key=lambda i: (i.path, i.message))


def _regex_problem(pattern: str) -> str | None:
    try:
        _compile(pattern)
    except regex.error as exc:
        return f"invalid regular expression: {exc}"
    return None


def _keyword_problems(schema: Any, root: str) -> list[ValidationIssue]:
    """Remote references, regular expressions that do not compile, and keyword
    combinations whose regular expressions could not be time-bounded."""
    out: list[ValidationIssue] = []
    seen: set[str] = set()
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                where = json_path((*path, k), root)
                if k in ("$ref", "$dynamicRef") and isinstance(v, str) and not v.startswith("#"):
                    out.append(
                        ValidationIssue(
                            where,
                            "remote references are not fetched; inline the referenced schema "
                            "under $defs and use '#/$defs/…'",
                        )
                    )
                elif k == "pattern" and isinstance(v, str):
                    problem = _regex_problem(v)
                    if problem:
                        out.append(ValidationIssue(where, problem))
                elif k == "patternProperties" and isinstance(v, dict):
                    seen.add(k)
                    for p in v:
                        problem = _regex_problem(p)
                        if problem:
                            out.append(ValidationIssue(json_path((*path, k, p), root), problem))
                elif k == "unevaluatedProperties":
                    seen.add(k)
                if k not in _LITERALS:
                    stack.append((v, (*path, k)))
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(node))
    if {"patternProperties", "unevaluatedProperties"} <= seen:
        out.append(
            ValidationIssue(
                root,
                "unevaluatedProperties together with patternProperties is not supported "
                "(its pattern evaluation cannot be time-bounded); use additionalProperties",
            )
        )
    return out


class Validator:
    """Validates data against schemas, caching results by checksums."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._cache: OrderedDict[tuple[str, str], tuple[ValidationIssue, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._schemas: OrderedDict[str, tuple[ValidationIssue, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def validate(
        self, data: Any, schema: Any | None, *, data_checksum: str | None = None
    ) -> list[ValidationIssue]:
        """Every issue with ``data`` (and ``schema``), each with its path; [] when valid.

        ``data_checksum``: the caller already canonicalised ``data`` (so it has a
        canonical form) and hashed it; saves doing both again.
        """
        if not isinstance(data, dict):
            return [ValidationIssue("data", f"must be a JSON object, got {_json_type(data)}")]
        # fast canonical bytes also prove that check_ijson would find nothing
        data_raw = None if data_checksum is not None else fast_canonical_json(data)
        issues = [] if data_checksum is not None or data_raw is not None else check_ijson(data)
        if schema is None or issues:
            return issues
        if not isinstance(schema, dict | bool):
            return check_schema(schema)
        schema_raw = fast_canonical_json(schema, "schema")
        if schema_raw is not None:
            schema_sum = sha256_of(schema_raw)
        else:
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
        key = (
            schema_sum,
            data_checksum or (sha256_of(data_raw) if data_raw is not None else checksum(data)),
        )
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return list(cached)
        self.misses += 1
        budget = _Budget()
        result = tuple(self._run(data, schema, budget))
        # a timeout depends on the machine's load: never remember it
        if not any("exceeded" in i.message for i in result):
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return list(result)

    def _run(self, data: Any, schema: Any, budget: _Budget) -> list[ValidationIssue]:
        validator = _Validator(schema, registry=_REGISTRY)
        issues: list[ValidationIssue] = []
        token = _BUDGET.set(budget)
        try:
            for err in validator.iter_errors(data):
                issues.append(ValidationIssue(json_path(tuple(err.absolute_path)), _rule(err)))
        except referencing.exceptions.Unresolvable as exc:
            issues.append(ValidationIssue("schema", f"unresolvable reference: {exc.ref!r}"))
        except RecursionError:
            issues.append(ValidationIssue("schema", "schema recursion too deep"))
        except _BudgetExceeded:
            issues.append(
                ValidationIssue(
                    "schema",
                    f"schema evaluation exceeded {VALIDATION_BUDGET_MS} ms; simplify the schema "
                    "(nested anyOf/oneOf over $ref multiply the work)",
                )
            )
        except BaseException as exc:
            # a $ref loop that reaches the recursion limit inside referencing's Rust map
            # (rpds) surfaces as pyo3's PanicException, a BaseException: the same failure
            if type(exc).__name__ != "PanicException":
                raise
            issues.append(ValidationIssue("schema", "schema recursion too deep"))
        finally:
            _BUDGET.reset(token)
        if budget.pattern_timeouts and not any("exceeded" in i.message for i in issues):
            # a timeout inside anyOf/oneOf/not was folded into their verdict: say so
            issues.append(
                ValidationIssue(
                    "data",
                    f"pattern evaluation exceeded {PATTERN_TIMEOUT_MS} ms; simplify the "
                    "schema's patterns",
                )
            )
        issues.sort(key=lambda i: (i.path, i.message))
        return issues

    def require_valid(
        self, data: Any, schema: Any | None, *, data_checksum: str | None = None
    ) -> None:
        issues = self.validate(data, schema, data_checksum=data_checksum)
        if issues:
            reason = "InvalidSchema" if issues[0].path.startswith("schema") else "InvalidData"
            raise InvalidConfig(issues, reason=reason)
