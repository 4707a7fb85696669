"""Canonical JSON (RFC 8785) and checksums, with data checks that name the path.

RFC 8785 rests on I-JSON: integers beyond ±(2^53 − 1) and NaN/Infinity have no
canonical form, yet Kubernetes accepts them. They are reported as invalid data
with the path and a hint, never as a crash.
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


def canonical_json(value: Any, root: str = "data") -> bytes:
    """RFC 8785 bytes of ``value``; ``InvalidConfig`` (with paths) if it has none."""
    issues = check_ijson(value, root, max_depth=_DEPTH_BY_ROOT.get(root, MAX_DEPTH))
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
        bytes(rfc8785.dumps(name)) + b":" + members[name]
        for name in sorted(members, key=lambda n: n.encode("utf-16-be"))
    ]
    return b"{" + b",".join(parts) + b"}"
