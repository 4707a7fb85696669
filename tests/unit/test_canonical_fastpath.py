"""The fast path of canonical JSON writes exactly the bytes of the reference path.

``canonical_json`` tries C ``json.dumps`` on plain values first and falls back to
``check_ijson`` + ``rfc8785``. A single differing byte would break every stored
checksum, so every test here compares with the reference implementation (the code
as it was before the fast path, kept below) byte for byte, and refusals exception
for exception and message for message.
"""

from __future__ import annotations

import collections
import decimal
import enum
import json
import math
import sys
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdconfig import canonical, validation
from etcdconfig.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    canonical_json,
    canonical_object,
    check_ijson,
    checksum,
    fast_canonical_json,
)
from etcdconfig.errors import InvalidConfig, ValidationIssue
from etcdconfig.validation import Validator

MANY = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROOTS = ("data", "record", "schema")
DEPTHS = {"data": MAX_DEPTH, "record": MAX_DEPTH + 8, "schema": MAX_DEPTH}


# --- the reference: canonical_json before the fast path -------------------------------


def reference_canonical_json(value: Any, root: str = "data") -> bytes:
    issues = check_ijson(value, root, max_depth=DEPTHS[root])
    if issues:
        raise InvalidConfig(issues, reason="InvalidData")
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, RecursionError, ValueError) as exc:
        raise InvalidConfig(
            [ValidationIssue(root, f"cannot be canonicalised: {exc}")], reason="InvalidData"
        ) from exc


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """What ``fn(*args)`` did: its bytes, or its exception in every detail we show."""
    try:
        return ("bytes", fn(*args))
    except InvalidConfig as exc:
        return ("InvalidConfig", (str(exc), exc.reason, [(i.path, i.message) for i in exc.issues]))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def assert_same(value: Any, root: str = "data") -> tuple[str, Any]:
    got = outcome(canonical_json, value, root)
    want = outcome(reference_canonical_json, value, root)
    assert got == want
    fast = fast_canonical_json(value, root)
    if fast is not None:
        # the fast path answers only what the reference answers with bytes, and then
        # check_ijson (which validation skips on the strength of it) finds nothing
        assert want == ("bytes", fast)
        assert check_ijson(value, root, max_depth=DEPTHS[root]) == []
    return got


# --- generated values ---------------------------------------------------------------------

SPECIAL_CHARS = [
    *(chr(c) for c in range(0x20)),  # controls: \b \f \n \r \t by name, the rest \u00xx
    '"',
    "\\",
    "/",
    "\x7f",
    "\x80",
    "\x9f",
    "\xa0",
    "\u00e9",
    "\u2028",
    "\u2029",
    "\ud7ff",
    "\ud800",  # lone surrogates: no UTF-8 form
    "\udbff",
    "\udc00",
    "\udfff",
    "\ue000",  # above the surrogates: sorts after them in UTF-16, before them by code point
    "\uff61",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\U00010000",
    "\U0001f600",
    "\U0010ffff",
]
chars = (
    st.sampled_from(SPECIAL_CHARS)
    | st.characters(codec="ascii")
    | st.integers(0, 0x10FFFF).map(chr)  # every code point, surrogates included
    | st.integers(0xE000, 0xFFFF).map(chr)
    | st.integers(0x10000, 0x10FFFF).map(chr)
)
texts = st.text(chars, max_size=8)
# mostly clean keys, so that many objects take the fast path; some with everything
keys = st.text(st.characters(codec="ascii"), max_size=6) | texts
INT_EDGES = [
    0,
    1,
    -1,
    MAX_SAFE_INTEGER,
    -MAX_SAFE_INTEGER,
    MAX_SAFE_INTEGER + 1,
    -MAX_SAFE_INTEGER - 1,
    MAX_SAFE_INTEGER - 1,
    2**63,
    -(2**64),
    10**400,
]
ints = st.sampled_from(INT_EDGES) | st.integers(-(2**54), 2**54) | st.integers()
FLOAT_EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e21,
    1e-7,
    1e16,
    2.0**53,
    5e-324,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
]
floats = st.sampled_from(FLOAT_EDGES) | st.floats()


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Flag(enum.Enum):
    ON = "on"


ODD_SCALARS = [
    b"bytes",
    decimal.Decimal("1.5"),
    Color.RED,
    Name("sub"),
    Flag.ON,
    object(),
    1j,
    frozenset(),
    {1, 2},
]
scalars = (
    st.none()
    | st.booleans()
    | ints
    | texts
    | floats
    | st.sampled_from(ODD_SCALARS)
    | st.text(st.characters(codec="utf-8"), max_size=12)
)
plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=12)
)
odd_keys = st.sampled_from([1, None, True, 1.5, ("t",), Name("k")])


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=5)
        | st.dictionaries(keys | odd_keys, inner, max_size=3)
        | st.dictionaries(keys, inner, max_size=3).map(collections.OrderedDict)
    )


values = st.recursive(scalars, containers, max_leaves=40)
plain_values = st.recursive(
    plain_scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(st.characters(codec="ascii"), max_size=8), inner, max_size=6)
        | st.dictionaries(
            st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=60,
)


@st.composite
def deep(draw: st.DrawFn) -> tuple[Any, str]:
    """A value nested to within a few levels of the root's depth limit."""
    root = draw(st.sampled_from(ROOTS))
    depth = DEPTHS[root] + draw(st.integers(-3, 2))
    value: Any = draw(plain_scalars | floats | st.just({}) | st.just([]))
    for _ in range(depth):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            value = [value]
        elif kind == 1:
            value = {draw(keys): value}
        else:
            value = {"a": 1, "b": [value, "x"]} if draw(st.booleans()) else (value,)
    return value, root


@MANY
@given(values, st.sampled_from(ROOTS))
def test_any_value_gives_the_reference_bytes_or_the_reference_refusal(
    value: Any, root: str
) -> None:
    assert_same(value, root)


@MANY
@given(plain_values, st.sampled_from(ROOTS))
def test_plain_values_take_the_fast_path_and_give_the_reference_bytes(
    value: Any, root: str
) -> None:
    fast = fast_canonical_json(value, root)
    assert fast is not None
    assert fast == bytes(rfc8785.dumps(value))
    assert assert_same(value, root) == ("bytes", fast)


@MANY
@given(st.dictionaries(texts, plain_scalars, min_size=2, max_size=8))
def test_object_member_order_is_by_utf16_code_units(value: dict[str, Any]) -> None:
    # names mixing U+E000..U+FFFF with non-BMP characters sort differently by code
    # point and by UTF-16 code unit: the result must still be RFC 8785's
    assert_same(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deep())
def test_nesting_near_the_depth_limit(case: tuple[Any, str]) -> None:
    value, root = case
    assert_same(value, root)


@MANY
@given(
    st.dictionaries(keys, plain_scalars | floats | ints, max_size=6),
    st.dictionaries(texts, plain_scalars, max_size=6),
)
def test_canonical_object_matches_the_reference(
    names: dict[str, Any], more: dict[str, Any]
) -> None:
    members = {}
    for name, v in {**names, **more}.items():
        try:
            members[name] = reference_canonical_json(v)
        except InvalidConfig:
            continue
    try:
        want: Any = (
            b"{"
            + b",".join(
                bytes(rfc8785.dumps(n)) + b":" + members[n]
                for n in sorted(members, key=lambda n: n.encode("utf-16-be"))
            )
            + b"}"
        )
    except Exception as exc:
        want = (type(exc).__name__, str(exc))
    try:
        got: Any = canonical_object(members)
    except Exception as exc:
        got = (type(exc).__name__, str(exc))
    assert got == want


# --- exhaustive over code points -------------------------------------------------------

NON_SURROGATES = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def test_every_code_point_in_a_string_is_written_as_rfc8785_writes_it() -> None:
    text = "".join(NON_SURROGATES)
    assert fast_canonical_json(text) == bytes(rfc8785.dumps(text))
    assert json.dumps(text, ensure_ascii=False).encode() == bytes(rfc8785.dumps(text))


def test_every_bmp_code_point_as_a_name_sorts_and_escapes_as_rfc8785() -> None:
    bmp = [c for c in NON_SURROGATES if c <= "\uffff"]
    value = {c + "x": i for i, c in enumerate(reversed(bmp))} | {c: c for c in bmp}
    fast = fast_canonical_json(value)
    assert fast is not None
    assert fast == bytes(rfc8785.dumps(value))


@pytest.mark.parametrize("where", ["value", "key", "nested key", "pair"])
def test_every_surrogate_is_refused_as_today(where: str) -> None:
    for c in range(0xD800, 0xE000):
        s = chr(c)
        value: Any = {
            "value": {"a": ["ok", s]},
            "key": {s: 1},
            "nested key": {"a": [{"b": 1, s + "z": None}]},
            "pair": {"p": "\ud83d\ude00" if c % 2 else s + "\udc00"},
        }[where]
        assert fast_canonical_json(value) is None
        kind, _ = assert_same(value)
        assert kind == "InvalidConfig"


def test_non_bmp_names_fall_back_and_sort_by_code_units() -> None:
    value = {"\uff61": 1, "\U0001f600": 2, "a": 3}
    assert fast_canonical_json(value) is None
    raw = canonical_json(value)
    assert raw == bytes(rfc8785.dumps(value))
    assert raw.index("\U0001f600".encode()) < raw.index("\uff61".encode())  # D83D < FF61


# --- boundaries and refusals -----------------------------------------------------------


@pytest.mark.parametrize("n", INT_EDGES)
@pytest.mark.parametrize("sign", [1, -1])
def test_integer_boundaries(n: int, sign: int) -> None:
    value = {"n": sign * n, "l": [sign * n]}
    kind, _ = assert_same(value)
    assert (kind == "bytes") == (abs(n) <= MAX_SAFE_INTEGER)
    assert (fast_canonical_json(value) is not None) == (abs(n) <= MAX_SAFE_INTEGER)


@pytest.mark.parametrize("f", FLOAT_EDGES)
def test_floats_take_the_reference_path(f: float) -> None:
    value = {"f": f}
    assert fast_canonical_json(value) is None
    assert_same(value)


@pytest.mark.parametrize(
    "value",
    [
        {"a": Color.RED},
        {"a": Name("x")},
        {Name("k"): 1},
        {1: "x"},
        {None: "x"},
        {True: "x"},
        collections.OrderedDict(a=1),
        {"a": collections.OrderedDict(a=1)},
        {"a": b"x"},
        {"a": {1, 2}},
        {"a": decimal.Decimal(1)},
        {"a": Flag.ON},
        {"a": object()},
    ],
    ids=repr,
)
def test_other_types_take_the_reference_path(value: Any) -> None:
    assert fast_canonical_json(value) is None
    assert_same(value)


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_exact_depth_limit(root: str, extra: int) -> None:
    for leaf in ("x", {}, [], {"k": "v"}, [1]):
        value: Any = leaf
        for _ in range(DEPTHS[root] + extra):
            value = {"k": value}
        assert_same(value, root)


def test_a_cycle_is_refused_as_today() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert fast_canonical_json(loop) is None
    assert assert_same({"a": loop})[0] == "InvalidConfig"


def test_near_the_recursion_limit_the_result_is_the_reference_or_a_refusal() -> None:
    # close to the interpreter's recursion limit json.dumps may fail where a shallow
    # call succeeds: the reference path then decides; bytes, when given, are the same
    value: Any = "x"
    for _ in range(MAX_DEPTH):
        value = [value]
    want = reference_canonical_json(value)

    def at_depth(n: int) -> tuple[tuple[str, Any], tuple[str, Any]]:
        if n:
            return at_depth(n - 1)
        return outcome(canonical_json, value), outcome(reference_canonical_json, value)

    limit = sys.getrecursionlimit()
    for headroom in range(5, 400, 7):
        try:
            got, ref = at_depth(limit - headroom)
        except RecursionError:
            continue
        # the same as the reference at the same stack depth, or bytes (the correct
        # ones) where the reference ran out of stack; when both run out of stack, where
        # exactly (and so RecursionError's message) depends on the interpreter's frames
        both_out = all(o[0] != "bytes" and "recursion" in repr(o).lower() for o in (got, ref))
        assert got == ref or both_out or (got == ("bytes", want) and ref[0] != "bytes")


# --- the fast path is the one taken --------------------------------------------------------


def typical_config() -> dict[str, Any]:
    return {
        "replicas": 3,
        "image": "registry.example/app:1.2.3",
        "debug": False,
        "owner": None,
        "env": {f"FEATURE_{i:02d}": f"value-{i}" for i in range(40)},
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        "ports": [{"name": f"p{i}", "containerPort": 8000 + i} for i in range(8)],
        "labels": {"app.kubernetes.io/name": "étiquette ✓", "note": 'a\nb\t"c" \\'},
    }


class _Counted:
    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> tuple[_Counted, _Counted]:
    dumps = _Counted(rfc8785.dumps)
    check = _Counted(canonical.check_ijson)
    monkeypatch.setattr(rfc8785, "dumps", dumps)
    monkeypatch.setattr(canonical, "check_ijson", check)
    monkeypatch.setattr(validation, "check_ijson", check)
    return dumps, check


def test_typical_data_takes_the_fast_path(counted: tuple[_Counted, _Counted]) -> None:
    dumps, check = counted
    schema = {"type": "object", "additionalProperties": {"type": "string"}}
    validator = Validator()
    validator.validate({"a": "b"}, schema)  # checks the schema itself once
    check.calls = 0
    data = typical_config()
    raw = canonical_json(data)
    canonical_json({"data": data, "version": 3}, "record")
    checksum(data)
    canonical_object({"data": raw, "version": b"3", "schemaChecksum": b"null"})
    validator.validate({"a": "c"}, schema)
    validator.validate(data, schema, data_checksum=checksum(data))
    validator.validate(data, schema)
    assert (dumps.calls, check.calls) == (0, 0)
    assert raw == reference_canonical_json(data)


def test_a_float_takes_the_reference_path(counted: tuple[_Counted, _Counted]) -> None:
    dumps, check = counted
    canonical_json({**typical_config(), "ratio": 0.25})
    assert (dumps.calls, check.calls) == (1, 1)


# --- validation: additionalProperties {"type": T} checked directly -------------------------

TYPES = ["string", "integer", "number", "boolean", "null", "object", "array"]
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
json_data = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


EXTRA_RULES: list[tuple[str, Any]] = [
    ("minLength", 1),
    ("maxLength", 1),
    ("minimum", 0),
    ("maxProperties", 0),
    ("maxItems", 0),
    ("const", None),
    ("enum", ["", 0, False]),
    ("not", {"type": "string"}),
]


@st.composite
def schemas_with_typed_extras(draw: st.DrawFn) -> dict[str, Any]:
    kind: Any = draw(st.sampled_from(TYPES))
    additional: dict[str, Any] = {"type": kind}
    if draw(st.integers(0, 4)) == 0:
        additional = {"type": draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=2))}
    if draw(st.integers(0, 2)) == 0:
        # a second keyword: the subschema is no longer just a type check
        name, rule = draw(st.sampled_from(EXTRA_RULES))
        additional[name] = rule
    schema: dict[str, Any] = {"type": "object", "additionalProperties": additional}
    if draw(st.booleans()):
        schema["properties"] = {"p": {"type": "integer"}}
    if draw(st.integers(0, 3)) == 0:
        schema["patternProperties"] = {"^x": {"type": "string"}}
    if draw(st.integers(0, 3)) == 0:
        return {"type": "object", "properties": {"nested": schema}, "anyOf": [schema, {}]}
    return schema


@MANY
@given(
    schemas_with_typed_extras(),
    st.dictionaries(st.text(max_size=3), json_data, max_size=6),
    st.booleans(),
)
def test_typed_additional_properties_report_what_descending_reports(
    schema: dict[str, Any], data: dict[str, Any], nest: bool
) -> None:
    if nest:
        data = {"nested": data, **data}
    fast = Validator().validate(data, schema)
    saved = validation._only_type
    validation._only_type = lambda subschema: None
    try:
        slow = Validator().validate(data, schema)
    finally:
        validation._only_type = saved
    assert fast == slow


def test_typed_additional_properties_messages() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "string"}}
    issues = Validator().validate({"a": "x", "b": 1, "c": None, "d": True}, schema)
    assert [(i.path, i.message) for i in issues] == [
        ("data.b", "must be of type 'string', got integer"),
        ("data.c", "must be of type 'string', got null"),
        ("data.d", "must be of type 'string', got boolean"),
    ]
    number = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert Validator().validate({"a": 1.0, "b": 2}, number) == []
    assert [i.message for i in Validator().validate({"a": 1.5, "b": True}, number)] == [
        "must be of type 'integer', got number",
        "must be of type 'integer', got boolean",
    ]


def test_validate_with_and_without_fast_canonical_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    cases: list[tuple[Any, Any]] = [
        ({"a": 1}, {"type": "object"}),
        ({"a": 1.5}, {"type": "object", "properties": {"a": {"maximum": 1.0}}}),
        ({"a": 2**60}, {"type": "object"}),
        ({"a": "\ud800"}, {"type": "object"}),
        ({"a": 1}, {"type": "object", "properties": {"a": {"const": 2**60}}}),
        ({"a": 1}, {"type": "object", "properties": {"a": {"enum": [1.5, "\U0001f600"]}}}),
        ({"a": 1}, True),
        ({"a": 1}, False),
        ({"a": 1}, None),
        ({"a": 1}, [1]),
        ({"\ud800": 1}, {"type": "object"}),
        ({"a": 1}, {"\ud800": 1}),
    ]
    fast = [Validator().validate(d, s) for d, s in cases]
    monkeypatch.setattr(validation, "fast_canonical_json", lambda value, root="data": None)
    slow = [Validator().validate(d, s) for d, s in cases]
    assert fast == slow
