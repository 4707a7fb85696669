"""Adversarial review of the canonical JSON fast path (canonical.py, validation.py).

Every test compares with the reference written out here independently of the code
under review: ``check_ijson`` then ``rfc8785.dumps`` (what ``canonical_json`` did
before the fast path), bytes for bytes and refusal for refusal. ``test_held_*``:
attacks the fast path withstood.
"""

from __future__ import annotations

import collections
import enum
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdconfig.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    canonical_json,
    canonical_object,
    check_ijson,
    checksum,
    fast_canonical_json,
)
from etcdconfig.errors import InvalidConfig
from etcdconfig.validation import Validator

DEPTHS = {"data": MAX_DEPTH, "record": MAX_DEPTH + 8, "schema": MAX_DEPTH}
FUZZ = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def outcome(fn: Any, value: Any, root: str) -> tuple[str, Any]:
    try:
        return "bytes", fn(value, root)
    except InvalidConfig as exc:
        return "refused", (exc.reason, [(i.path, i.message) for i in exc.issues])


def reference(value: Any, root: str = "data") -> bytes:
    issues = check_ijson(value, root, max_depth=DEPTHS[root])
    if issues:
        raise InvalidConfig(issues, reason="InvalidData")
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, RecursionError, ValueError) as exc:
        from etcdconfig.errors import ValidationIssue

        raise InvalidConfig(
            [ValidationIssue(root, f"cannot be canonicalised: {exc}")], reason="InvalidData"
        ) from exc


def same(value: Any, root: str = "data") -> None:
    got = outcome(canonical_json, value, root)
    want = outcome(reference, value, root)
    assert got == want
    fast = fast_canonical_json(value, root)
    if fast is not None:
        assert ("bytes", fast) == want


# every kind of code point: controls, DEL, C1, line/paragraph separators, BOM,
# noncharacters, private use, the surrogate range, beyond the BMP
SPECIAL = [
    *map(chr, range(0x21)),
    "\x7f", "\x80", "\x9f", "\xa0", "\xad", "\u2028", "\u2029", "\ufeff", "\ufffe",
    "\uffff", "\ue000", "\uf8ff", "\ud7ff", "\ud800", "\udbff", "\udc00", "\udfff",
    "\U00010000", "\U0001f600", "\U0010ffff", '"', "\\", "/", "é", "ß", "İ",
]  # fmt: skip
text = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(codec=None)), max_size=12)
keys = st.one_of(text, st.sampled_from(["", "a", "\uffff", "\U00010000", "\ue000", "\ud800"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([0, 1, -1, True, False, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]),
    st.sampled_from([MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=30,
)


@FUZZ
@given(values, st.sampled_from(sorted(DEPTHS)))
def test_held_any_value_gives_the_reference_bytes_or_refusal(value: Any, root: str) -> None:
    same(value, root)


@FUZZ
@given(st.dictionaries(keys, st.one_of(st.booleans(), st.integers(-2, 2)), max_size=12))
def test_held_member_order_agrees_with_utf16_order(obj: dict[str, Any]) -> None:
    same(obj)
    same({"outer": obj, "\uffff": obj, "\U00010000": obj})


def test_held_keys_that_sort_differently_in_utf16_and_code_points() -> None:
    # code points: U+E000 < U+FFFF < U+10000; UTF-16: D800 DC00 < E000 < FFFF
    obj = {"\uffff": 1, "\U00010000": 2, "\ue000": 3, "a": 4, "\U0001f600": 5}
    raw = canonical_json(obj)
    assert raw == bytes(rfc8785.dumps(obj))
    assert list(json.loads(raw)) == ["a", "\U00010000", "\U0001f600", "\ue000", "\uffff"]
    same(obj)
    # the non-BMP key deep inside a plain structure must still send it all the slow way
    same({"x": [{"y": {"\uffff": 1, "\U00010000": 2}}]})


class MyInt(int):
    def __repr__(self) -> str:
        return "MyInt!"

    __str__ = __repr__


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    __slots__ = ()

    def __str__(self) -> str:
        return "other"

    def encode(self, *a: Any, **k: Any) -> bytes:  # type: ignore[override]
        return b"other"


class MyDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:  # type: ignore[override]
        return [("z", 1)]

    def keys(self) -> Any:  # type: ignore[override]
        return ["z"]


class MyList(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter([42])


@pytest.mark.parametrize(
    "value",
    [
        {"a": True, "b": 1, "c": False, "d": 0},
        [True, 1, 1.0, False, 0, 0.0, -0.0],
        {"i": MyInt(5)},
        {"e": Color.RED},
        {"s": MyStr("x")},
        {MyStr("k"): 1},
        MyDict({"a": 1}),
        {"d": MyDict({"a": 1})},
        {"d": collections.OrderedDict([("b", 1), ("a", 2)])},
        {"l": MyList([1, 2])},
        {"t": (1, (2, [3]), ())},
        {"big": 2**53 - 1, "neg": -(2**53 - 1), "over": 2**53},
        {"f": 1e16, "g": 5e-324, "h": 1e21},
        {"nan": float("nan")},
        {"k\ud800": 1},
        {"v": "\udfff"},
        {1: "int key"},
        {True: "bool key"},
        {None: "none key"},
        {"b": b"bytes"},
        {"set": {1}},
    ],
    ids=repr,
)
def test_held_subclasses_bools_and_odd_types_match_the_reference(value: Any) -> None:
    for root in DEPTHS:
        same(value, root)


def _nest(depth: int, leaf: Any, kind: str) -> Any:
    v = leaf
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    return v


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("leaf", [1, [], {}, "s", None])
@pytest.mark.parametrize("root", sorted(DEPTHS))
def test_held_nesting_at_and_past_the_limit(kind: str, leaf: Any, root: str) -> None:
    for depth in (DEPTHS[root] - 1, DEPTHS[root], DEPTHS[root] + 1, DEPTHS[root] + 2, 500):
        same(_nest(depth, leaf, kind), root)


def test_held_big_float_free_structures() -> None:
    big = {
        f"k{i:05d}": {"list": list(range(50)), "s": "é" * 20, "b": i % 2 == 0} for i in range(2000)
    }
    same(big)
    assert checksum(big) == "sha256:" + __import__("hashlib").sha256(rfc8785.dumps(big)).hexdigest()


def test_held_canonical_object_with_odd_names() -> None:
    members = {n: b"1" for n in ["\uffff", "\U00010000", "a", "", '"', "\x00", "\u2028"]}
    want = bytes(rfc8785.dumps(dict.fromkeys(members, 1)))
    assert canonical_object(members) == want


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "x", "y"]),
        st.one_of(st.booleans(), st.integers(-3, 3), st.floats(-2, 2), st.text(max_size=3),
                  st.none(), st.lists(st.integers(0, 2), max_size=2)),
        max_size=5,
    ),
    st.sampled_from(["integer", "number", "string", "boolean", "null", "array", "object"]),
)  # fmt: skip
def test_held_validation_with_typed_additional_properties_matches_the_reference(
    data: dict[str, Any], kind: str
) -> None:
    """The ``{"type": T}`` shortcut of additionalProperties: the same issues as a
    schema whose subschema is spelled so that the shortcut does not apply."""
    fast = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": kind}}
    slow = {
        "type": "object",
        "properties": {"a": {}},
        "additionalProperties": {"type": kind, "$comment": "defeats the shortcut"},
    }
    assert Validator().validate(data, fast) == Validator().validate(data, slow)
    wrapped = {"type": "object", "anyOf": [fast, {"required": ["zz"]}]}
    wrapped_slow = {"type": "object", "anyOf": [slow, {"required": ["zz"]}]}
    assert Validator().validate(data, wrapped) == Validator().validate(data, wrapped_slow)
    mixed = {**fast, "unevaluatedProperties": False}
    mixed_slow = {**slow, "unevaluatedProperties": False}
    assert Validator().validate(data, mixed) == Validator().validate(data, mixed_slow)


@pytest.mark.parametrize(
    ("data", "schema"),
    [
        ({"a": 1}, {"type": "object", "properties": {"a": {"type": "integer"}}}),
        ({"a": True}, {"type": "object", "additionalProperties": {"type": "integer"}}),
        ({"a": 1.0}, {"type": "object", "additionalProperties": {"type": "integer"}}),
        ({"a": 2**60}, {"type": "object"}),
        ({"a": float("inf")}, {"type": "object"}),
        ({"a": 1}, {"type": "object", "const": 2**60}),
        ({"a": 1}, {"type": "object", "enum": [{"\ud800": 1}]}),
        ({"a": 1}, _nest(120, {}, "dict")),
        ({"a": 1}, True),
        ({"a": 1}, False),
        ({"\U00010000": 1, "\uffff": 2}, {"type": "object", "maxProperties": 1}),
    ],
    ids=repr,
)
def test_held_validation_results_match_the_reference_path(data: Any, schema: Any) -> None:
    """``Validator.validate`` with the fast path against the same validation fed the
    reference checksums (``data_checksum`` given: the fast data path is skipped)."""
    got = Validator().validate(data, schema)
    issues = check_ijson(data)
    if issues:
        assert got == issues
        return
    want = Validator().validate(data, schema, data_checksum=checksum(data))
    assert got == want
