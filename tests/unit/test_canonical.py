"""Canonical JSON and checksums (RFC 8785), including property tests."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdconfig.canonical import canonical_json, canonical_object, check_ijson, checksum, loads
from etcdconfig.errors import InvalidConfig

safe_ints = st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | safe_ints | finite | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


@given(json_objects)
def test_canonical_form_is_stable_under_key_order_and_reparsing(data: dict[str, Any]) -> None:
    raw = canonical_json(data)
    shuffled = dict(reversed(list(data.items())))
    assert canonical_json(shuffled) == raw
    assert canonical_json(loads(raw)) == raw


@given(json_objects)
def test_checksum_is_sha256_of_the_canonical_bytes(data: dict[str, Any]) -> None:
    assert checksum(data) == "sha256:" + hashlib.sha256(canonical_json(data)).hexdigest()


@given(json_objects, json_objects)
def test_different_data_have_different_checksums(a: dict[str, Any], b: dict[str, Any]) -> None:
    if canonical_json(a) != canonical_json(b):
        assert checksum(a) != checksum(b)


def test_rfc8785_example_orders_keys_by_utf16_and_normalises_numbers() -> None:
    assert canonical_json({"b": 1.0, "a": [1e21, 0.1], "€": "x", "\u00e9": None}) == (
        '{"a":[1e+21,0.1],"b":1,"\u00e9":null,"€":"x"}'.encode()
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"big": 2**53}, "data.big: integer out of the exactly representable range"),
        ({"a": [1, {"n": -(2**60)}]}, "data.a[1].n: integer out of"),
        ({"x": math.nan}, "data.x: NaN or Infinity is not valid JSON"),
        ({"odd key": math.inf}, 'data["odd key"]: NaN or Infinity'),
        ({"s": "\ud800"}, "data.s: string is not valid UTF-8"),
    ],
)
def test_values_without_canonical_form_are_invalid_with_their_path(
    data: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidConfig) as err:
        canonical_json(data)
    assert str(err.value.issues[0]).startswith(expected)


def test_deep_nesting_is_reported_not_a_recursion_crash() -> None:
    deep: Any = {}
    node = deep
    for _ in range(10_000):
        node["a"] = {}
        node = node["a"]
    issues = check_ijson(deep)
    assert len(issues) == 1
    assert "nested deeper than 100 levels" in issues[0].message


@given(json_objects)
def test_spliced_members_equal_the_canonical_form_of_the_whole_object(
    data: dict[str, Any],
) -> None:
    members = {k: canonical_json(v) for k, v in data.items()}
    assert canonical_object(members) == canonical_json(data)
