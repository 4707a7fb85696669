"""Canonical JSON (RFC 8785) and checksums, with data checks that name the path.

RFC 8785 rests on I-JSON: integers beyond ±(2^53 − 1) and NaN/Infinity have no
canonical form, yet Kubernetes accepts them. They are reported as invalid data
with the path and a hint, never as a crash.

Fast path: for the values that make up nearly all Config data (strings, booleans,
null, safe integers, lists and objects whose keys are in the Basic Multilingual
Plane), the RFC 8785 bytes are exactly what C ``json.dumps`` writes with sorted keys
and no whitespace, so those are produced by it; everything else (floats, other
keys, lone surrogates, out-of-range integers, other types, too deep) takes the
reference path (``check_ijson`` + ``rfc8785``), which also words every refusal.
Why the bytes are identical is argued at :func:`_fast_canonical`.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import rfc8785

from etcdconfig.errors import InvalidConfig, ValidationIssue

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 100  # of data and schemas; deeper nesting is invalid data
# a stored record wraps the data a level deep (record -> data -> ...): canonicalising a
# record must accept every data that passed MAX_DEPTH, yet still bound the recursion
_DEPTH_BY_ROOT = {"record": MAX_DEPTH + 8}


def json_path(parts: tuple[str | int, ...], root: str = "data") -> str:
    """``("a", 3, "b/c")`` -> ``data.a[3]["b/c"]``."""
    out = root
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.isidentifier():
            out += f".{p}"
        else:
            out += f"[{json.dumps(p, ensure_ascii=False)}]"
    return out


def check_ijson(
    value: Any, root: str = "data", max_depth: int = MAX_DEPTH
) -> list[ValidationIssue]:
    """Every reason ``value`` has no RFC 8785 canonical form, each with its path."""
    issues: list[ValidationIssue] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        v, path = stack.pop()
        if len(path) > max_depth:
            issues.append(
                ValidationIssue(
                    json_path(path[:max_depth], root),
                    f"nested deeper than {max_depth} levels; flatten the structure",
                )
            )
            continue
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            if abs(v) > MAX_SAFE_INTEGER:
                issues.append(
                    ValidationIssue(
                        json_path(path, root),
                        f"integer out of the exactly representable range ±(2^53-1) "
                        f"({len(str(abs(v)))} digits); quote it as a string",
                    )
                )
        elif isinstance(v, float):
            if not math.isfinite(v):
                issues.append(
                    ValidationIssue(
                        json_path(path, root),
                        "NaN or Infinity is not valid JSON (a number beyond the IEEE "
                        "double range, such as 1e400, reads as Infinity); use null or a "
                        "string",
                    )
                )
        elif isinstance(v, str):
            if _has_lone_surrogate(v):
                issues.append(ValidationIssue(json_path(path, root), "string is not valid UTF-8"))
        elif isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    issues.append(
                        ValidationIssue(json_path(path, root), f"object key {k!r} is not a string")
                    )
                    continue
                if _has_lone_surrogate(k):
                    issues.append(
                        ValidationIssue(json_path(path, root), "object key is not valid UTF-8")
                    )
                    continue
                stack.append((item, (*path, k)))
        elif isinstance(v, list | tuple):
            for i, item in enumerate(v):
                stack.append((item, (*path, i)))
        else:
            issues.append(
                ValidationIssue(json_path(path, root), f"{type(v).__name__} is not a JSON value")
            )
    issues.sort(key=lambda i: i.path)
    return issues


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# C json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
# allow_nan=False); encode() reads only the encoder's settings, so one is shared
_JSON_ENCODE = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode
_SUPPLEMENTARY = "\U00010000"  # the first code point beyond the BMP


def _fast_canonical(value: Any, max_depth: int) -> bytes | None:
    r"""The RFC 8785 bytes of ``value`` if it is plain JSON, else ``None`` (then use
    the reference path). Runs no code of the value's own (exact types only).

    Accepted, level by level and by exact type (no subclasses): ``str``, ``bool``,
    ``None``, ``int`` within ±(2^53 − 1), ``list``/``tuple``, and ``dict`` whose keys
    are ``str`` of code points below U+10000; no value deeper than ``max_depth``.
    For exactly these values ``check_ijson`` finds no issue (a lone surrogate, its
    only other refusal, makes the final UTF-8 encoding fail and so returns ``None``)
    and ``rfc8785.dumps`` writes the same bytes as ``json.dumps`` does here:

    - strings: both escape exactly ``"``, ``\\`` and U+0000–U+001F (``\b \f \n \r \t``
      by name, the rest as lowercase ``\u00xx``) and write every other code point
      (U+007F, U+2028, U+2029, non-BMP ...) as itself in UTF-8 (the unit tests
      compare the two over every code point);
    - ``true``/``false``/``null``; an ``int`` as its decimal ``str``/``repr``;
    - arrays and objects with ``,`` and ``:`` and no whitespace;
    - object members: RFC 8785 sorts names by UTF-16 code units, ``sort_keys`` by
      code points. For names without surrogates and below U+10000 every code point
      is one code unit of the same value, so the orders agree.
    """
    level = [value]
    depth = 0
    while level:
        if depth > max_depth:
            return None
        below: list[Any] = []
        for v in level:
            t = type(v)
            if t is str or t is bool or v is None:
                continue
            if t is int:
                if -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                    continue
                return None
            if t is dict:
                for k in v:
                    # isascii() is O(1); max() of a non-empty str is its largest code point
                    if type(k) is not str or not (k.isascii() or max(k) < _SUPPLEMENTARY):
                        return None
                below.extend(v.values())
            elif t is list or t is tuple:
                below.extend(v)
            else:
                return None
        level = below
        depth += 1
    try:
        return _JSON_ENCODE(value).encode("utf-8")
    except (ValueError, RecursionError):
        # UnicodeEncodeError (a surrogate) is a ValueError; RecursionError: called
        # near the interpreter's limit. The reference path decides (and words) both.
        return None


def fast_canonical_json(value: Any, root: str = "data") -> bytes | None:
    """``canonical_json(value, root)`` when the fast path proves it, else ``None``.

    Bytes here also mean ``check_ijson(value, root)`` would find no issue, so a
    caller may skip it; on ``None`` call ``check_ijson``/``canonical_json``.
    """
    return _fast_canonical(value, _DEPTH_BY_ROOT.get(root, MAX_DEPTH))


def canonical_json(value: Any, root: str = "data") -> bytes:
    """RFC 8785 bytes of ``value``; ``InvalidConfig`` (with paths) if it has none."""
    max_depth = _DEPTH_BY_ROOT.get(root, MAX_DEPTH)
    raw = _fast_canonical(value, max_depth)
    if raw is not None:
        return raw
    issues = check_ijson(value, root, max_depth=max_depth)
    if issues:
        raise InvalidConfig(issues, reason="InvalidData")
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, RecursionError, ValueError) as exc:
        raise InvalidConfig(
            [ValidationIssue(root, f"cannot be canonicalised: {exc}")], reason="InvalidData"
        ) from exc


def sha256_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def checksum(value: Any, root: str = "data") -> str:
    """``sha256:`` + hex SHA-256 of the canonical JSON of ``value``."""
    return sha256_of(canonical_json(value, root))


def _parse_int(text: str) -> int | float:
    # RFC 8785 writes a float of magnitude >= 2^53 with integer digits (1e16 -> 10000000000000000);
    # read such digits back as the float they came from, so re-hashing gives the same checksum.
    n = int(text)
    return float(n) if abs(n) > MAX_SAFE_INTEGER else n


def loads(raw: bytes | str) -> Any:
    """Parse JSON written by :func:`canonical_json` back into the same values."""
    return json.loads(raw, parse_int=_parse_int)


def canonical_object(members: dict[str, bytes]) -> bytes:
    """The RFC 8785 form of an object whose member values are already canonical.

    RFC 8785 serialises an object as its members sorted by the UTF-16 code units of
    their names, each value in canonical form; so a large value (a Config's data)
    is canonicalised once and spliced in, not re-serialised with its record.
    """
    parts = [
        _canonical_name(name) + b":" + members[name]
        for name in sorted(members, key=lambda n: n.encode("utf-16-be"))
    ]
    return b"{" + b",".join(parts) + b"}"


def _canonical_name(name: str) -> bytes:
    raw = _fast_canonical(name, 0)
    return raw if raw is not None else bytes(rfc8785.dumps(name))
