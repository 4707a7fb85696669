"""Audit on a real etcd: the webhook's author notes (written on a lease, found by the
committer for exactly the object state they describe) and the schema in every record."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from etcdconfig.audit import AUTHOR_TTL, AuthorBook, author_key
from etcdconfig.canonical import canonical_json, checksum
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.errors import EtcdError
from etcdconfig.etcd import EtcdClient
from etcdconfig.store import ChangeRequest, VersionedStore

SPEC = {"data": {"a": 1}, "schema": {"type": "object"}}
STAMP = "stamp-of-alices-request"
NOTE = {"user": "alice", "groups": ["dev"], "operation": "UPDATE", "generation": 4, "stamp": STAMP}


async def test_a_note_is_found_for_exactly_its_uid_spec_generation_and_request(
    client: EtcdClient, prefix: str
) -> None:
    webhook, committer = AuthorBook(client, prefix), AuthorBook(client, prefix)
    await webhook.note("ns", "pay", "u-1", SPEC, NOTE)
    assert await committer.lookup("ns", "pay", "u-1", SPEC, 4, stamp=STAMP) == NOTE
    # the same spec in another key order / number spelling is the same state
    same = {"schema": {"type": "object"}, "data": {"a": 1.0}}
    assert await committer.lookup("ns", "pay", "u-1", same, 4, stamp=STAMP) == NOTE
    assert await committer.lookup("ns", "pay", "u-1", {"data": {"a": 2}}, 4, stamp=STAMP) is None
    assert await committer.lookup("ns", "pay", "u-2", SPEC, 4, stamp=STAMP) is None
    assert await committer.lookup("ns", "pay", "u-1", SPEC, 5, stamp=STAMP) is None
    # an object stored by another request (alice's was denied after our webhook admitted
    # it), or one that cannot be tied to a request, is not alice's
    assert await committer.lookup("ns", "pay", "u-1", SPEC, 4, stamp="other") is None
    assert await committer.lookup("ns", "pay", "u-1", SPEC, 4) is None


async def test_requests_for_one_state_are_kept_side_by_side(
    client: EtcdClient, prefix: str
) -> None:
    replica_1, replica_2 = AuthorBook(client, prefix), AuthorBook(client, prefix)
    committer = AuthorBook(client, prefix)
    # bob's request for the same state comes later (another second): it does not
    # overwrite alice's, each is found for the object its request stored
    await replica_1.note("ns", "pay", "u-1", SPEC, NOTE)
    await replica_2.note("ns", "pay", "u-1", SPEC, {**NOTE, "user": "bob", "stamp": "bobs"})
    found = await committer.lookup("ns", "pay", "u-1", SPEC, 4, stamp=STAMP)
    assert found is not None and found["user"] == "alice"
    found = await committer.lookup("ns", "pay", "u-1", SPEC, 4, stamp="bobs")
    assert found is not None and found["user"] == "bob"
    # carol's request cannot be told apart from alice's (same field manager, same
    # second): the state they make names nobody
    await replica_2.note("ns", "pay", "u-1", SPEC, {**NOTE, "user": "carol"})
    assert await committer.lookup("ns", "pay", "u-1", SPEC, 4, stamp=STAMP) is None
    # a retried webhook call for alice's request changes nothing
    kv, _ = await client.get(author_key(prefix, "ns", "pay", "u-1", SPEC))
    await replica_1.note("ns", "pay", "u-1", SPEC, NOTE)
    again, _ = await client.get(author_key(prefix, "ns", "pay", "u-1", SPEC))
    assert kv is not None and again is not None and again.mod_revision == kv.mod_revision


async def test_concurrent_notes_for_one_state_are_all_kept(client: EtcdClient, prefix: str) -> None:
    books = [AuthorBook(client, prefix) for _ in range(6)]
    await asyncio.gather(
        *(
            book.note("ns", "pay", "u-1", SPEC, {**NOTE, "user": f"u{i}", "stamp": f"s{i}"})
            for i, book in enumerate(books)
        )
    )
    committer = AuthorBook(client, prefix)
    for i in range(6):
        found = await committer.lookup("ns", "pay", "u-1", SPEC, 4, stamp=f"s{i}")
        assert found is not None and found["user"] == f"u{i}"


async def test_notes_live_on_a_shared_short_lived_lease(client: EtcdClient, prefix: str) -> None:
    book = AuthorBook(client, prefix)
    await book.note("ns", "pay", "u-1", SPEC, NOTE)
    await book.note("ns", "other", "u-9", SPEC, NOTE)
    leases = set()
    for name, uid in (("pay", "u-1"), ("other", "u-9")):
        kv, _ = await client.get(author_key(prefix, "ns", name, uid, SPEC))
        assert kv is not None and kv.lease != 0
        leases.add(kv.lease)
    assert len(leases) == 1  # one lease reused, not one per request
    ttl = await client.time_to_live(leases.pop())
    assert 0 < ttl <= AUTHOR_TTL
    # a note outside the store's configs/ tree: history, list_configs and verify never see it
    kv, _ = await client.get(author_key(prefix, "ns", "pay", "u-1", SPEC))
    assert kv is not None and b"/configs/" not in kv.key


async def test_a_lost_lease_is_replaced(client: EtcdClient, prefix: str) -> None:
    book = AuthorBook(client, prefix)
    await book.note("ns", "pay", "u-1", SPEC, NOTE)
    assert book._lease is not None
    await client.revoke(book._lease[0])
    with pytest.raises(EtcdError):  # the write on the revoked lease fails (and says so)
        await book.note("ns", "pay", "u-1", SPEC, NOTE)
    await book.note("ns", "pay", "u-1", SPEC, NOTE)  # the next one grants a new lease
    assert await book.lookup("ns", "pay", "u-1", SPEC, 4, stamp=STAMP) == NOTE


def change(gen: int, schema: Any, data: dict[str, Any]) -> ChangeRequest:
    return ChangeRequest(
        namespace="prod",
        name="payments",
        uid="uid-1",
        generation=gen,
        data=data,
        schema=schema,
        owner_confirmed=True,
    )


async def test_a_schema_only_change_is_a_visible_covered_difference(
    client: EtcdClient, prefix: str
) -> None:
    session = await Session(client, ttl=10).start()
    try:
        locks = ConfigLocks(session, prefix=prefix, identity="test")
        store = VersionedStore(client, prefix=prefix, replica_id="r")
        narrow = {"type": "object", "properties": {"n": {"minimum": 1}}}
        wide = {"type": "object", "properties": {"n": {"minimum": 0}}}
        await store.record(change(1, narrow, {"n": 1}), locks)
        await store.record(change(2, wide, {"n": 1}), locks)
        v1 = await store.get_version("prod", "payments", 1)
        v2 = await store.get_version("prod", "payments", 2)
        assert v1.checksum == v2.checksum  # the data did not change
        assert (v1.schema, v2.schema) == (narrow, wide)
        assert v1.schema_checksum == checksum(narrow, "schema")
        assert v2.schema_checksum == checksum(wide, "schema")
        raw, _ = await client.get(f"{prefix}/configs/prod/payments/versions/{2:020d}".encode())
        assert raw is not None
        stored = json.loads(raw.value)
        assert stored["schemaChecksum"] == checksum(wide, "schema")
        # the record checksum covers the schema: tampering with it is detected
        stored["schema"] = narrow
        await client.put(raw.key, canonical_json(stored, "record"))
        problems = await store.verify("prod", "payments")
        assert any(p.version == 2 for p in problems), problems
    finally:
        await session.close()
