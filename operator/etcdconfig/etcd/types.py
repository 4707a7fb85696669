"""Plain values exchanged with the etcd client (no protobuf outside ``client``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Target = Literal["version", "create", "mod", "value", "lease"]
Operator = Literal["=", "!=", "<", ">"]


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``target(key) op value``."""

    key: bytes
    target: Target
    op: Operator
    value: int | bytes

    @staticmethod
    def create_revision(key: bytes, op: Operator, value: int) -> Compare:
        return Compare(key, "create", op, value)

    @staticmethod
    def mod_revision(key: bytes, op: Operator, value: int) -> Compare:
        return Compare(key, "mod", op, value)

    @staticmethod
    def version(key: bytes, op: Operator, value: int) -> Compare:
        return Compare(key, "version", op, value)

    @staticmethod
    def value_is(key: bytes, op: Operator, value: bytes) -> Compare:
        return Compare(key, "value", op, value)


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class DeleteRange:
    key: bytes
    range_end: bytes | None = None


@dataclass(frozen=True)
class Range:
    key: bytes
    range_end: bytes | None = None
    limit: int = 0
    sort_by_create: bool = False  # ascending by create revision (oldest first)


TxnOp = Put | DeleteRange | Range


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool
    count: int


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # one entry per op of the branch that ran: a RangeResult for Range, None otherwise
    responses: tuple[RangeResult | None, ...]


@dataclass(frozen=True)
class Event:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev_kv: KeyValue | None
