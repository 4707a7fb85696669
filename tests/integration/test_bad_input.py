"""Hostile input at the store, against a real etcd: every refusal is exact, and the
head and the history are byte-for-byte untouched afterwards (a snapshot of every key
under the Config, with its mod revision, is compared).

Also records written under the prefix by something else — garbage JSON, a wrong
checksum, a missing version, bytes that are not UTF-8, a key the layout does not
know: ``verify`` names each precisely, and a commit never writes over them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from etcdconfig.canonical import canonical_json, checksum
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import CorruptRecord, InvalidConfig, RequestTooLarge
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end
from etcdconfig.store import ChangeRequest, Problem, VersionedStore

TYPE_HINT = (
    'is not a JSON Schema type: use one of "array", "boolean", "integer", "null", '
    '"number", "object", "string", or an array of them'
)

NS, NAME = "prod", "payments"
NON_FINITE = (
    "NaN or Infinity is not valid JSON (a number beyond the IEEE double range, such as "
    "1e400, reads as Infinity); use null or a string"
)


def change(gen: int, data: Any, schema: Any = None, **kw: Any) -> ChangeRequest:
    return ChangeRequest(
        namespace=kw.pop("namespace", NS),
        name=kw.pop("name", NAME),
        uid="uid-1",
        generation=gen,
        data=data,
        schema=schema,
        owner_confirmed=kw.pop("owner_confirmed", True),
        **kw,
    )


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


class Env:
    def __init__(self, client: EtcdClient, prefix: str, locks: ConfigLocks) -> None:
        self.client = client
        self.prefix = prefix
        self.locks = locks
        self.store = VersionedStore(client, prefix=prefix, replica_id="test")

    def key(self, suffix: str, ns: str = NS, name: str = NAME) -> bytes:
        return f"{self.prefix}/configs/{ns}/{name}/{suffix}".encode()

    def version_key(self, version: int) -> bytes:
        return self.key(f"versions/{version:020d}")

    async def snapshot(self) -> list[tuple[bytes, bytes, int]]:
        base = f"{self.prefix}/configs/".encode()
        res = await self.client.range(base, prefix_end(base))
        return [(kv.key, kv.value, kv.mod_revision) for kv in res.kvs]

    async def record(self, c: ChangeRequest) -> Any:
        return await self.store.record(c, self.locks)


@pytest.fixture
async def env(client: EtcdClient, prefix: str) -> AsyncIterator[Env]:
    session = await Session(client, ttl=10).start()
    e = Env(client, prefix, ConfigLocks(session, prefix=prefix, identity="test"))
    await e.record(change(1, {"replicas": 1}))
    await e.record(change(2, {"replicas": 2}))
    yield e
    await session.close()


# (id, data, schema, reason, exact issues) — refused by the store's own validation
STORE_MATRIX: list[tuple[str, Any, Any, str, list[str]]] = [
    (
        "nan-infinity-1e400",
        json.loads('{"n": NaN, "i": Infinity, "big": 1e400}'),
        None,
        "InvalidData",
        [f"data.big: {NON_FINITE}", f"data.i: {NON_FINITE}", f"data.n: {NON_FINITE}"],
    ),
    (
        "integer-beyond-2^53",
        {"id": -(2**63)},
        None,
        "InvalidData",
        [
            "data.id: integer out of the exactly representable range ±(2^53-1) (19 digits); "
            "quote it as a string"
        ],
    ),
    (
        "nested-10000-levels",
        nested(10_000),
        None,
        "InvalidData",
        ["data" + ".a" * 100 + ": nested deeper than 100 levels; flatten the structure"],
    ),
    (
        "not-utf8",
        json.loads('{"s": "bad \\udcff byte"}'),
        None,
        "InvalidData",
        ["data.s: string is not valid UTF-8"],
    ),
    (
        "data-not-an-object",
        ["a", "list"],
        None,
        "InvalidData",
        ["data: must be a JSON object, got array"],
    ),
    (
        "schema-not-a-json-schema",
        {"a": 1},
        {"type": 7},
        "InvalidSchema",
        ["schema.type: " + TYPE_HINT],
    ),
    (
        "schema-remote-ref",
        {"a": 1},
        {"properties": {"a": {"$ref": "http://127.0.0.1:1/never-fetched.json"}}},
        "InvalidSchema",
        [
            'schema.properties.a["$ref"]: remote references are not fetched; inline the '
            "referenced schema under $defs and use '#/$defs/…'"
        ],
    ),
    (
        "redos-pattern",
        {"a": "a" * 40 + "!"},
        {"properties": {"a": {"pattern": "^(a|aa)+$"}}},
        "InvalidData",
        [
            "data.a: pattern evaluation exceeded 100 ms ('^(a|aa)+$'); simplify the pattern "
            "(nested or overlapping quantifiers backtrack catastrophically)"
        ],
    ),
    (
        "record-over-etcd-request-limit",
        {"blob": "x" * (1600 * 1024)},
        None,
        "TooLarge",
        [
            "data: the version record would be 1643{} bytes, over etcd's request limit of "
            "1572864 bytes; make spec.data smaller"
        ],
    ),
]


@pytest.mark.parametrize(
    ("data", "schema", "reason", "issues"),
    [pytest.param(d, s, r, i, id=n) for n, d, s, r, i in STORE_MATRIX],
)
async def test_bad_input_is_refused_exactly_and_leaves_head_and_history_untouched(
    env: Env, data: Any, schema: Any, reason: str, issues: list[str]
) -> None:
    before = await env.snapshot()
    with pytest.raises(InvalidConfig) as info:
        await env.record(change(3, data, schema))
    got = [str(i) for i in info.value.issues]
    if "{}" in issues[0]:  # the record's size depends on the prefix and the time stamp
        start, end = issues[0].split("{}")
        assert len(got) == 1 and got[0].startswith(start) and got[0].endswith(end), got
        got = issues
    assert (info.value.reason, got) == (reason, issues)
    assert await env.snapshot() == before
    assert await env.store.verify(NS, NAME) == []
    # the lock was released: a valid change goes through right after
    assert (await env.record(change(4, {"replicas": 4}))).version == 3


async def test_awkward_keys_and_unicode_round_trip_exactly(env: Env) -> None:
    data = {"a/b": 1, "..": 2, "nul\x00key": 3, "ünïcødé ✓": "значение", "": None, "../x": [1]}
    result = await env.record(change(3, data))
    stored = await env.store.get_version(NS, NAME, result.version)
    assert stored.data == data
    assert stored.checksum == checksum(data)
    assert await env.store.verify(NS, NAME) == []


async def test_data_at_the_depth_limit_is_recorded(env: Env) -> None:
    # the record wraps the data one level deeper: it must still canonicalise
    result = await env.record(change(3, nested(100)))
    assert result.recorded and result.version == 3
    assert (await env.store.current(NS, NAME)).data == nested(100)
    assert await env.store.verify(NS, NAME) == []


async def test_names_at_kubernetes_length_limits_work_end_to_end(env: Env) -> None:
    ns, name = "n" * 63, "c" * 253  # a DNS label, a DNS subdomain
    await env.record(change(1, {"a": 1}, namespace=ns, name=name))
    result = await env.record(change(2, {"a": 2}, namespace=ns, name=name))
    assert result.version == 2
    assert (ns, name) in await env.store.list_configs()
    assert await env.store.verify(ns, name) == []


@pytest.fixture(scope="module")
def small_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd whose request limit (256 KiB) is below what the store was told."""
    base: Path = tmp_path_factory.mktemp("small-etcd")
    server = EtcdServer(
        data_dir=base / "data", name="small", extra_args=("--max-request-bytes=262144",)
    )
    server.start()
    try:
        server.wait_healthy(60)
        yield server
    finally:
        server.stop()


async def test_etcd_refusing_a_request_gives_size_and_limit_and_writes_nothing(
    small_etcd: EtcdServer, prefix: str
) -> None:
    client = EtcdClient(EtcdSettings(endpoints=(small_etcd.endpoint,)))
    session = await Session(client, ttl=10).start()
    try:
        e = Env(client, prefix, ConfigLocks(session, prefix=prefix))
        await e.record(change(1, {"a": 1}))
        before = await e.snapshot()
        with pytest.raises(RequestTooLarge) as info:
            await e.record(change(2, {"blob": "x" * (300 * 1024)}))
        text = str(info.value)
        assert text.startswith(
            f"etcd transaction on '{prefix}/configs/prod/payments/versions/"
            "00000000000000000002' failed: etcdserver: request is too large (the request is "
        )
        assert text.endswith(
            " bytes, over etcd's --max-request-bytes; set ETCDCONFIG_ETCD_MAX_REQUEST_BYTES to "
            "etcd's value so oversized data is refused as invalid instead)"
        )
        assert await e.snapshot() == before
        # told the real limit, the store refuses it as invalid data with both numbers
        e.store.max_request_bytes = 262144
        with pytest.raises(InvalidConfig, match=r"over etcd's request limit of 262144 bytes"):
            await e.record(change(2, {"blob": "x" * (300 * 1024)}))
        assert await e.snapshot() == before
    finally:
        await session.close()
        await client.close()


# --- records written by something else ----------------------------------------------------


def _problems(found: list[Problem]) -> list[tuple[int | None, str, str]]:
    return [(p.version, p.kind, p.message) for p in found]


async def test_garbage_head_is_reported_and_never_overwritten(env: Env) -> None:
    await env.client.put(env.key("head"), b"{not json")
    before = await env.snapshot()
    assert _problems(await env.store.verify(NS, NAME)) == [
        (
            None,
            "corrupt-head",
            "head is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
    ]
    with pytest.raises(CorruptRecord, match="head of prod/payments is not valid JSON"):
        await env.record(change(3, {"replicas": 3}))
    assert await env.snapshot() == before


async def test_garbage_version_beyond_the_head_blocks_commits_without_being_overwritten(
    env: Env,
) -> None:
    await env.client.put(env.version_key(3), b'{"a": "\xff"}')
    before = await env.snapshot()
    problems = _problems(await env.store.verify(NS, NAME))
    assert problems == [
        (
            3,
            "corrupt-record",
            "version record is not valid JSON: 'utf-8' codec can't decode byte 0xff in "
            "position 7: invalid start byte",
        )
    ]
    with pytest.raises(CorruptRecord) as info:
        await env.record(change(3, {"replicas": 3}))
    assert str(info.value) == (
        "prod/payments: a version key exists beyond the head (written by something else?); "
        "refusing to overwrite it — run `etcdconfig verify`"
    )
    assert await env.snapshot() == before


async def test_wrong_checksum_missing_version_and_unknown_keys_are_each_named(env: Env) -> None:
    await env.record(change(3, {"replicas": 3}))
    await env.record(change(4, {"replicas": 4}))
    # version 2's data edited in place, version 3 deleted, a stray key and a future format
    raw = json.loads((await env.client.get(env.version_key(2)))[0].value)  # type: ignore[union-attr]
    raw["data"] = {"replicas": 200}
    await env.client.put(env.version_key(2), canonical_json(raw, "record"))
    await env.client.delete_range(env.version_key(3))
    await env.client.put(env.key("versions/garbage"), b"{}")
    future = {**raw, "format": 2, "version": 5}
    await env.client.put(env.version_key(5), json.dumps(future).encode())
    before = await env.snapshot()

    assert sorted(_problems(await env.store.verify(NS, NAME)), key=str) == sorted(
        [
            (
                2,
                "checksum-mismatch",
                f"data hashes to {checksum({'replicas': 200})}, record says "
                f"{checksum({'replicas': 2})}",
            ),
            (4, "missing-versions", "versions 3..3 are missing"),
            (
                5,
                "corrupt-record",
                "version record has format 2; this etcdconfig reads format 1 only (upgrade "
                "etcdconfig to read newer stores)",
            ),
            (
                None,
                "unexpected-key",
                f"unexpected key '{env.prefix}/configs/prod/payments/versions/garbage' "
                "under versions/",
            ),
        ],
        key=str,
    )
    # a version key beyond the head: the commit refuses rather than overwrite it
    with pytest.raises(CorruptRecord, match="a version key exists beyond the head"):
        await env.record(change(5, {"replicas": 5}))
    assert await env.snapshot() == before
