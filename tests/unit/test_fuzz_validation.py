"""Fuzzing the path every Config takes — parse, validate, canonicalise, checksum —
with arbitrary JSON-like values (NaN, infinities, huge integers, lone surrogates,
any key) and arbitrary schemas: nothing but ``InvalidConfig`` ever escapes, and data
that is accepted round-trips through its stored form to the same checksum."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdconfig.canonical import canonical_json, checksum, loads
from etcdconfig.errors import InvalidConfig, ValidationIssue
from etcdconfig.reconcile import parse_spec, validate_spec
from etcdconfig.validation import Validator

FUZZ = settings(
    max_examples=300,
    deadline=None,  # a pattern may legitimately take up to its timeout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# every code point, surrogates included: what a JSON parser hands over for "\ud800"
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats()
    | any_text
)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=40,
)
small_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)

PATTERNS = ["^a", "^[a-z]+$", "(", "\\d{2,}", "^(a|aa)+$", "\\p{L}", "[", "x*y*z*", ""]
KEYWORDS_WITH_SCHEMAS = ["items", "not", "contains", "additionalProperties", "propertyNames"]


def schemas() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.booleans(),
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(
                    ["object", "array", "string", "integer", "number", "boolean", "null", "x"]
                )
                | st.lists(st.sampled_from(["string", "null"]), max_size=2),
                "minimum": st.integers() | st.floats(),
                "maximum": st.integers() | st.floats(),
                "multipleOf": st.sampled_from([0, -1, 1, 2, 0.1, 1e-308, 1e308, 3]),
                "minLength": st.integers(min_value=-1, max_value=5),
                "maxItems": st.integers(min_value=-1, max_value=5),
                "pattern": st.sampled_from(PATTERNS),
                "enum": st.lists(small_json, max_size=4),
                "const": small_json,
                "required": st.lists(any_text, max_size=3) | small_json,
                "uniqueItems": st.booleans(),
                "format": st.sampled_from(["email", "date-time", "regex", "nope"]),
                "$ref": st.sampled_from(
                    ["#", "#/$defs/a", "#/$defs/missing", "https://example.invalid/s", "x.json"]
                ),
            },
        ),
    )

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(
            {},
            optional={
                "properties": st.dictionaries(any_text, inner, max_size=3),
                "patternProperties": st.dictionaries(st.sampled_from(PATTERNS), inner, max_size=2),
                "anyOf": st.lists(inner, max_size=3),
                "oneOf": st.lists(inner, max_size=3),
                "allOf": st.lists(inner, max_size=3),
                "prefixItems": st.lists(inner, max_size=3),
                "$defs": st.fixed_dictionaries({"a": inner}),
                "if": inner,
                "then": inner,
                "else": inner,
                "dependentSchemas": st.dictionaries(any_text, inner, max_size=2),
                "unevaluatedItems": inner,
                **{k: inner for k in KEYWORDS_WITH_SCHEMAS},
            },
        )

    return st.recursive(leaf, extend, max_leaves=8)


def _round_trips(data: dict[str, Any]) -> None:
    raw = canonical_json(data)
    assert canonical_json(loads(raw)) == raw
    assert checksum(loads(raw)) == checksum(data)


@FUZZ
@given(any_json)
def test_any_data_is_accepted_and_round_trips_or_is_invalid_config(data: Any) -> None:
    try:
        spec = parse_spec({"data": data})
        issues = validate_spec(spec, Validator())
    except InvalidConfig as exc:
        issues = exc.issues
        assert issues and issues[0].path.startswith("spec.data")
        return
    if issues:
        assert all(i.path.startswith("spec.data") for i in issues)
        return
    _round_trips(spec.data)


@FUZZ
@given(schemas(), st.dictionaries(any_text, small_json, max_size=5))
def test_any_schema_with_any_data_never_raises(schema: Any, data: dict[str, Any]) -> None:
    try:
        spec = parse_spec({"data": data, "schema": schema})
    except InvalidConfig:
        return  # a boolean schema is not an object: refused by the spec model
    issues = validate_spec(spec, Validator())
    assert all(isinstance(i, ValidationIssue) and i.path.startswith("spec.") for i in issues)
    if not issues:
        _round_trips(spec.data)


@FUZZ
@given(schemas())
def test_any_schema_is_checked_without_raising(schema: Any) -> None:
    v = Validator()
    assert isinstance(v.validate({}, schema), list)
