"""Version records and head pointers: the stored JSON format (DESIGN §3)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from etcdconfig.canonical import canonical_json, loads, sha256_of
from etcdconfig.errors import CorruptRecord, UnsupportedFormat

FORMAT = 1

# a str as canonical JSON writes it (the index's head checksum)
_JSON_STRING = json.JSONEncoder(ensure_ascii=False).encode


def record_checksum(record: dict[str, Any]) -> str:
    """``sha256:`` + SHA-256 of the RFC 8785 form of the whole stored record."""
    return sha256_of(canonical_json(record, "record"))


def _load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CorruptRecord(f"{what} is not a JSON object")
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise UnsupportedFormat(
            f"{what} has format {fmt!r}; this etcdconfig reads format {FORMAT} only "
            "(upgrade etcdconfig to read newer stores)"
        )
    return obj


def dump(obj: dict[str, Any]) -> bytes:
    """Records are stored as their canonical JSON: what is hashed is what is stored."""
    return canonical_json(obj, "record")


@dataclass(frozen=True)
class Head:
    version: int
    uid: str
    generation: int
    checksum: str | None
    record_checksum: str | None
    recorded_at: str
    deleted: bool = False
    purged: bool = False
    mod_revision: int = 0

    @classmethod
    def parse(cls, raw: bytes, *, mod_revision: int = 0, what: str = "head") -> Head:
        obj = _load(raw, what)
        try:
            return cls(
                version=int(obj["version"]),
                uid=str(obj["uid"]),
                generation=int(obj["generation"]),
                checksum=obj.get("checksum"),
                record_checksum=obj.get("recordChecksum"),
                recorded_at=str(obj.get("recordedAt", "")),
                deleted=bool(obj.get("deleted", False)),
                purged=bool(obj.get("purged", False)),
                mod_revision=mod_revision,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"{what} lacks a valid field: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "uid": self.uid,
            "generation": self.generation,
            "checksum": self.checksum,
            "recordChecksum": self.record_checksum,
            "recordedAt": self.recorded_at,
        }
        if self.deleted:
            obj["deleted"] = True
        if self.purged:
            obj["purged"] = True
        return obj


@dataclass(frozen=True)
class Incarnation:
    """What the store knows of one object (uid) that held the Config's name.

    Stored at ``{config}/incarnations/{uid}``. Written in the transaction of the uid's
    first version and by its deletion; it outlives the head, so a uid whose deletion
    was ever recorded is refused for good, whatever the head says later.
    """

    uid: str
    first_version: int | None = None  # the first version this uid recorded (None: none yet)
    last_version: int | None = None  # set at deletion: the uid's newest version then
    deleted: bool = False
    purged: bool = False
    superseded_by: str | None = None  # a newer uid recorded while this one had no tombstone
    recorded_at: str = ""
    mod_revision: int = 0

    @classmethod
    def parse(cls, raw: bytes, *, mod_revision: int = 0, what: str = "incarnation") -> Incarnation:
        obj = _load(raw, what)
        try:
            first, last = obj.get("firstVersion"), obj.get("lastVersion")
            return cls(
                uid=str(obj["uid"]),
                first_version=None if first is None else int(first),
                last_version=None if last is None else int(last),
                deleted=bool(obj.get("deleted", False)),
                purged=bool(obj.get("purged", False)),
                superseded_by=obj.get("supersededBy"),
                recorded_at=str(obj.get("recordedAt", "")),
                mod_revision=mod_revision,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"{what} lacks a valid field: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "uid": self.uid,
            "firstVersion": self.first_version,
            "recordedAt": self.recorded_at,
        }
        if self.deleted:
            obj["deleted"] = True
            obj["lastVersion"] = self.last_version
        if self.purged:
            obj["purged"] = True
        if self.superseded_by:
            obj["supersededBy"] = self.superseded_by
        return obj


@dataclass(frozen=True)
class VersionRecord:
    """One immutable version. ``raw`` is the stored JSON object, field for field."""

    raw: dict[str, Any]
    mod_revision: int = 0

    @classmethod
    def parse(
        cls, raw: bytes, *, mod_revision: int = 0, what: str = "version record"
    ) -> VersionRecord:
        obj = _load(raw, what)
        for f in ("version", "uid", "generation", "checksum", "data"):
            if f not in obj:
                raise CorruptRecord(f"{what} lacks the field {f!r}")
        return cls(raw=obj, mod_revision=mod_revision)

    @property
    def version(self) -> int:
        return int(self.raw["version"])

    @property
    def uid(self) -> str:
        return str(self.raw["uid"])

    @property
    def generation(self) -> int:
        return int(self.raw["generation"])

    @property
    def checksum(self) -> str:
        return str(self.raw["checksum"])

    @property
    def parent_checksum(self) -> str | None:
        v = self.raw.get("parentChecksum")
        return None if v is None else str(v)

    @property
    def data(self) -> dict[str, Any]:
        d = self.raw["data"]
        assert isinstance(d, dict)
        return d

    @property
    def recorded_at(self) -> str:
        return str(self.raw.get("recordedAt", ""))

    @property
    def recorded_by(self) -> str:
        return str(self.raw.get("recordedBy", ""))

    @property
    def author(self) -> dict[str, Any]:
        a = self.raw.get("author") or {}
        return a if isinstance(a, dict) else {}

    @property
    def origin(self) -> dict[str, Any]:
        o = self.raw.get("origin") or {}
        return o if isinstance(o, dict) else {}

    @property
    def schema(self) -> Any:
        """The Config's ``spec.schema`` when this version was recorded (None: no schema,
        or a record written before schemas were recorded: see ``has_schema``)."""
        return self.raw.get("schema")

    @property
    def schema_checksum(self) -> str | None:
        """``sha256:`` of the schema's RFC 8785 form (None: no schema, or not recorded)."""
        v = self.raw.get("schemaChecksum")
        return None if v is None else str(v)

    @property
    def has_schema(self) -> bool:
        """False for records written before the schema was part of the record."""
        return "schemaChecksum" in self.raw

    @property
    def fencing_revision(self) -> int:
        return int(self.raw.get("fencingRevision", 0))

    def record_checksum(self) -> str:
        return record_checksum(self.raw)

    def summary(self) -> dict[str, Any]:
        """Everything but the data (for history listings)."""
        return {k: v for k, v in self.raw.items() if k != "data"}


@dataclass(frozen=True)
class Sizes:
    """The usage index ``{p}/configs/{ns}/{name}/sizes``: the stored size in bytes of
    each retained version record, oldest first, and the ``recordChecksum`` of the head
    it was written with. Written by the commit in its own transaction (and by a
    Purge), so it is exactly the versions the store holds; not part of the checksum
    chain: one that is missing, unreadable, written for another head (an earlier
    release's commit or Purge left it behind) or claims a record larger than etcd
    accepts is measured again from the version records, and ``verify`` reports one
    that disagrees with them. It steers only retention by bytes and ``usage``."""

    entries: tuple[tuple[int, int], ...] = ()
    head: str | None = None  # the recordChecksum of the head it describes

    @property
    def total(self) -> int:
        return sum(size for _, size in self.entries)

    @property
    def newest(self) -> int:
        return self.entries[-1][0] if self.entries else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "head": self.head,
            "versions": [[v, size] for v, size in self.entries],
        }

    def raw(self) -> bytes:
        """The stored bytes: ``dump(self.to_json())`` (canonical JSON), written directly —
        the index is rewritten by every commit, and holds up to ``maxVersions`` pairs."""
        versions = ",".join([f"[{v},{size}]" for v, size in self.entries])
        head = "null" if self.head is None else _JSON_STRING(self.head)
        return f'{{"format":{FORMAT},"head":{head},"versions":[{versions}]}}'.encode()

    @classmethod
    def parse(cls, raw: bytes, max_size: int | None = None) -> Sizes | None:
        """The index, or None when it is not one (then it is measured again): versions
        strictly increasing positive integers, sizes non-negative integers, none over
        ``max_size`` (etcd's request limit: no record can be larger). Read on every
        commit: plain ``json`` (the index holds no data, so no float may hide in an
        integer) and one pass."""
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if type(obj) is not dict or obj.get("format") != FORMAT:
            return None
        head = obj.get("head")
        if head is not None and type(head) is not str:
            return None
        pairs = obj.get("versions")
        if type(pairs) is not list:
            return None
        limit = max_size if max_size is not None else math.inf
        entries: list[tuple[int, int]] = []
        last = 0
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2:
                return None
            version, size = pair
            if (
                type(version) is not int
                or type(size) is not int
                or version <= last
                or size < 0
                or size > limit
            ):
                return None
            last = version
            entries.append((version, size))
        return cls(tuple(entries), head)
