"""JSON Schema validation: every error with its path, no values, no remote refs."""

from __future__ import annotations

from etcdconfig.validation import Validator, check_schema

SCHEMA = {
    "type": "object",
    "properties": {
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "mode": {"enum": ["a", "b"]},
        "hosts": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
    },
    "required": ["port"],
    "additionalProperties": False,
}


def test_every_error_is_reported_with_its_path_and_without_the_value() -> None:
    v = Validator()
    issues = v.validate(
        {"port": 70000, "mode": "SECRET-VALUE", "hosts": ["ok", "BAD-SECRET"], "extra": 1}, SCHEMA
    )
    assert [str(i) for i in issues] == [
        "data: additional properties are not allowed: 'extra'",
        "data.hosts[1]: does not match pattern '^[a-z]+$'",
        'data.mode: must be one of "a", "b"',
        "data.port: violates maximum 65535",
    ]
    assert "SECRET" not in " ".join(str(i) for i in issues)


def test_results_are_cached_by_checksums() -> None:
    v = Validator()
    assert v.validate({"port": 1}, SCHEMA) == []
    assert v.validate({"port": 1}, dict(reversed(list(SCHEMA.items())))) == []
    assert (v.hits, v.misses) == (1, 1)


def test_data_must_be_an_object() -> None:
    assert [str(i) for i in Validator().validate([1, 2], None)] == [
        "data: must be a JSON object, got array"
    ]


def test_invalid_schema_is_reported_under_schema() -> None:
    issues = check_schema({"type": "no-such-type", "minimum": "x"})
    assert {i.path for i in issues} == {"schema.type", "schema.minimum"}


def test_remote_ref_is_refused_and_never_fetched() -> None:
    issues = check_schema({"$ref": "https://example.invalid/schema.json"})
    assert [str(i) for i in issues] == [
        'schema["$ref"]: remote references are not fetched; inline the referenced schema under '
        "$defs and use '#/$defs/…'"
    ]


def test_local_refs_resolve() -> None:
    schema = {"$defs": {"p": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/p"}}}
    assert [str(i) for i in Validator().validate({"a": "x"}, schema)] == [
        "data.a: must be of type 'integer', got string"
    ]
