"""Second adversarial review round, against a real etcd: the audit path (author notes,
change-cause), Purge upgrades, lock cleanup.

Tests named ``test_defect_*`` FAIL on the code as reviewed: each docstring gives the
interleaving, what is observed and what the promise requires. The others are
hypotheses that held.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from tests.faultproxy import FaultProxy

from etcdconfig.audit import AuthorBook, note_admission
from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.controller.runtime import Runtime
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import EtcdUnavailable
from etcdconfig.etcd import EtcdClient, EtcdSettings, Put
from etcdconfig.models import CHANGE_CAUSE_ANNOTATION
from etcdconfig.store import ChangeRequest, VersionedStore
from etcdconfig.validation import Validator

NS, NAME, UID = "prod", "payments", "uid-1"


def change(gen: int, *, uid: str = UID, author: dict[str, Any] | None = None) -> ChangeRequest:
    return ChangeRequest(
        namespace=NS,
        name=NAME,
        uid=uid,
        generation=gen,
        data={"gen": gen},
        author=author or {},
        owner_confirmed=True,
    )


def body(gen: int, *, cause: str | None = None, uid: str = UID) -> dict[str, Any]:
    annotations = {} if cause is None else {CHANGE_CAUSE_ANNOTATION: cause}
    return {
        "metadata": {
            "namespace": NS,
            "name": NAME,
            "uid": uid,
            "generation": gen,
            "annotations": annotations,
            "managedFields": [
                {
                    "manager": "kubectl",
                    "operation": "Update",
                    "time": f"2026-01-01T00:00:0{gen}Z",
                    "fieldsV1": {"f:spec": {}},
                }
            ],
        },
        "spec": {"data": {"gen": gen}},
    }


class _Kube:
    async def get_config(self, ns: str, name: str) -> dict[str, Any] | None:
        return {"metadata": {"uid": UID, "namespace": ns, "name": name}}

    async def event(self, *_: Any, **__: Any) -> None:
        return None

    def event_soon(self, *_: Any, **__: Any) -> None:
        return None


async def _replica(client: EtcdClient, prefix: str, rid: str) -> SimpleNamespace:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity=rid, acquire_timeout=5.0)
    store = VersionedStore(client, prefix=prefix, replica_id=rid)
    return SimpleNamespace(
        session=session,
        locks=locks,
        store=store,
        client=client,
        kube=_Kube(),
        validator=Validator(),
        settings=SimpleNamespace(etcd_prefix=prefix),
        intact={},
        rollouts=None,
        rollout_failures={},
        recheck=set(),
        note_usage=lambda uid, sizes: None,
        space=None,
    )


# =================================================================================================
# DEFECTS
# =================================================================================================


async def test_defect_change_cause_is_judged_against_the_head_read_before_the_lock(
    client: EtcdClient, prefix: str
) -> None:
    """Interleaving (two replicas during an ownership hand-over, or — in ONE replica —
    the resync loop with a listed copy of generation 2 and kopf's handler with
    generation 3: ``ResyncLoop.reconcile_one`` calls ``Reconciler.reconcile`` beside
    kopf, and only ``_record`` is serialized by the in-process lock):

    1. v1 = generation 1, no change-cause.
    2. Replica A reconciles generation 3 (annotation ``change-cause: X`` that the
       generation-2 change set, no admission note). ``Reconciler._reconcile`` reads the
       head *before* taking the lock: v1.
    3. Replica B records generation 2 as v2 with ``changeCause: X`` (the cause was set
       by that change).
    4. A's ``_author`` compares the annotation with the cause in force at *v1* (none)
       and decides "X is new": ``changeCause: X``. Its commit, under the lock, chains
       on v2 and writes v3.

    Observed: v2 and v3 both claim ``changeCause: X`` — the cause is attributed to a
    change that did not make it (v3 merely inherited it).
    Expected: v3 says ``inheritedChangeCause: X`` — the cause must be judged against
    the version the commit actually chains on (the head read under the lock).
    Fix: compute ``author`` inside the lock (e.g. pass a callback to the store that
    receives the locked head / parent record, or re-check after the lock that the
    lock-time head equals ``mine`` and recompute otherwise)."""
    a = await _replica(client, prefix, "replica-a")
    b = await _replica(client, prefix, "replica-b")
    try:
        await b.store.record(change(1), b.locks)
        real_head = a.store.head
        injected: list[Any] = []

        async def head_then_b_commits(ns: str, name: str) -> Any:
            h = await real_head(ns, name)
            if not injected:  # B records generation 2 between A's head read and A's lock
                injected.append(
                    await b.store.record(change(2, author={"changeCause": "X"}), b.locks)
                )
            return h

        a.store.head = head_then_b_commits
        status = await Reconciler(a).reconcile(  # type: ignore[arg-type]
            body(3, cause="X"), trigger="test"
        )
        assert status is not None
        records, _ = await a.store.history(NS, NAME, limit=10)
        by_version = {r.version: r for r in records}
        assert sorted(by_version) == [1, 2, 3]
        assert by_version[2].author.get("changeCause") == "X"
        v3 = by_version[3].author
        assert v3.get("inheritedChangeCause") == "X" and "changeCause" not in v3, (
            f"v3 claims the cause that v2's change set: {v3}"
        )
    finally:
        await a.session.close()
        await b.session.close()


class _FailingPut:
    """A client whose writes time out (etcd slow or away for the webhook's 3 s): the
    webhook fails open, as designed."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    async def grant(self, ttl: int) -> Any:
        return await self._client.grant(ttl)

    async def put(self, *_: Any, **__: Any) -> Any:
        raise EtcdUnavailable("etcd did not answer the put in time")


def admission_body(gen: int, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": NS,
            "name": NAME,
            "uid": UID,
            "generation": gen,
            "annotations": {},
        },
        "spec": spec,
    }


async def test_defect_a_denied_requests_note_is_attributed_to_a_later_identical_change(
    client: EtcdClient, prefix: str
) -> None:
    """Interleaving: the object is at generation 1, spec S1.

    1. alice sends UPDATE S1 -> S2. The API server sets generation 2 and calls the
       validating webhooks (in parallel). Ours admits it and writes the note
       ``authors/.../{uid}/{sha(S2)} = {user: alice, generation: 2}``. Another
       webhook (or a quota/policy plugin) denies the request: nothing is stored, the
       object stays at generation 1.
    2. bob sends the same UPDATE S1 -> S2 (e.g. a GitOps sync of the same commit); it
       gets generation 2 again. Our webhook admits it but its note cannot be written
       (etcd slow for 3 s: audit fails open, or failurePolicy=Ignore and the webhook
       was not reached). The request is stored.
    3. The committer looks up (uid, sha(S2), generation 2) and finds alice's note.

    Observed: v2 is recorded as ``user: alice, source: admission`` — the author of a
    request that was denied and changed nothing.
    Expected (audit.py: a note that cannot be written leaves "the field manager only,
    source: fieldManager"): no user is attributed.
    Fix: make the note identify the request, not only the resulting state — e.g. the
    webhook deletes the key for (uid, spec) *before* it tries to write (so a failed
    write leaves no older note), or store the request's admission UID and the
    resourceVersion of ``oldObject`` in the note and have the committer accept it only
    when the managedFields time / the object's previous resourceVersion match; at the
    least, on a failed write, delete the key best-effort."""
    s1, s2 = {"data": {"v": 1}}, {"data": {"v": 2}}
    webhook = AuthorBook(client, prefix)
    denied = await note_admission(
        webhook,
        operation="UPDATE",
        userinfo={"username": "alice", "groups": ["dev"]},
        body=admission_body(2, s2),
        old=admission_body(1, s1),
    )
    assert denied  # written; the request is then denied by another admission plugin

    failing = AuthorBook(_FailingPut(client), prefix)  # type: ignore[arg-type]
    written = await note_admission(
        failing,
        operation="UPDATE",
        userinfo={"username": "bob", "groups": ["ops"]},
        body=admission_body(2, s2),
        old=admission_body(1, s1),
    )
    assert not written  # failed open: the request is admitted and stored

    committer = AuthorBook(client, prefix)
    note = await committer.lookup(NS, NAME, UID, s2, 2)
    assert note is None, f"bob's change is attributed to {note['user']!r}'s denied request"


async def test_defect_the_losing_request_of_two_identical_concurrent_updates_is_the_author(
    client: EtcdClient, prefix: str
) -> None:
    """No fault needed. The object is at generation 1, spec S1; alice and bob apply the
    same S2 concurrently (two pipelines syncing one commit), both as PUT with
    resourceVersion 1 (kubectl replace / client-go Update).

    1. The API server runs both requests' admission against RV 1: both get generation
       2, both reach our webhook (on two replicas, say). alice's note is written, then
       bob's: same key ``{uid}/{sha(S2)}``, bob's overwrites.
    2. alice's request wins the storage compare-and-swap; bob's fails it, is retried
       against the new object and gets 409 Conflict (a PATCH would instead become a
       no-op). bob changed nothing.
    3. The committer records generation 2 with bob's note.

    Observed: v2 says ``user: bob`` — a request that was rejected.
    Expected: alice, or no user (``source: fieldManager``) when it cannot be told;
    ``audit.py`` says "the latest note ... describes the request that made the object
    what it is", which the order of note writes does not guarantee.
    Fix: write notes create-only (a txn ``create_revision == 0``); when a note for the
    same (uid, spec, generation) already exists from another user, mark it ambiguous
    so the committer records ``source: fieldManager`` (or keep both users)."""
    s1, s2 = {"data": {"v": 1}}, {"data": {"v": 2}}
    replica_1, replica_2 = AuthorBook(client, prefix), AuthorBook(client, prefix)
    for book, user in ((replica_1, "alice"), (replica_2, "bob")):
        assert await note_admission(
            book,
            operation="UPDATE",
            userinfo={"username": user, "groups": []},
            body=admission_body(2, s2),
            old=admission_body(1, s1),
        )
    # alice's request is stored (generation 2, S2); bob's gets 409 Conflict
    note = await AuthorBook(client, prefix).lookup(NS, NAME, UID, s2, 2)
    assert note is None or note["user"] == "alice", (
        f"generation 2 (alice's change) is attributed to {note['user']!r}, whose "
        "request was rejected"
    )


@pytest.fixture
def proxy(etcd_server: EtcdServer, prefix: str) -> Iterator[FaultProxy]:
    host, port = etcd_server.endpoint.split(":")
    with FaultProxy(host, int(port), prefix=prefix) as p:
        yield p


async def test_defect_slow_keepalive_answers_end_a_session_whose_lease_etcd_keeps_alive(
    proxy: FaultProxy, client: EtcdClient, prefix: str
) -> None:
    """etcd is slow (fsync stalls, a loaded leader): every keep-alive is applied at once
    but its answer takes longer than the session's per-ping wait, max(TTL/6, 1 s).

    Interleaving (TTL 3): ping 1 renews the lease in etcd, the answer is not back
    within 1 s, the stream is cancelled; quick retry 0.3 s later, ping 2 renews the
    lease again, times out again; ... ``_expires_at`` is only moved by an *answer*, so
    after one TTL the session says "etcd session lease expired" and sets ``done``.

    Observed: ``done`` is set while etcd holds the lease with most of its TTL left
    (every ping refreshed it). The runtime then starts a new session and never revokes
    the old lease: its lock keys (held/waiting) and its member key stay until it
    expires, and with answers that stay slow this repeats every TTL (membership flaps,
    Configs are reassigned, resync takes over) — before 92a80d4 a slow answer was
    waited for as long as the lease could live. Expected: the session stays alive
    while etcd is renewing its lease (or, if it gives up, revokes the lease so no key
    of it outlives the decision).
    Fix: after a timed-out ping, ask ``LeaseTimeToLive`` (a unary call with its own
    deadline) before declaring loss, or let the wait for an answer grow back towards
    ``left`` after a timeout; and have ``_keep_session`` revoke a lost session's lease
    best-effort."""
    faulty = EtcdClient(EtcdSettings(endpoints=[proxy.endpoint], request_timeout=1.0))
    session = await Session(faulty, ttl=3).start()
    try:
        proxy.arm("keepalive", times=1000, mode="timeout", hold=1.5)
        try:
            async with asyncio.timeout(4 * session.ttl):
                await session.done.wait()
        except TimeoutError:
            return  # the session stayed alive through the slow answers: fine
        left = await client.time_to_live(session.lease_id)
        assert left <= 0, (
            f"the session declared its lease lost while etcd keeps it alive ({left}s left): "
            "every ping renewed it, only the answers were slow"
        )
    finally:
        proxy.disarm()
        await session.close()
        await faulty.close()


async def test_defect_an_orphan_reported_after_the_sweeper_fell_asleep_waits_a_whole_ttl(
    client: EtcdClient, prefix: str
) -> None:
    """``Runtime._sweep_locks`` promises to delete an orphaned lock key "within a second
    after a release could not delete its key". It decides how long to sleep *before*
    sleeping: with no suspect at that moment it sleeps a whole ``lock_ttl``; a release
    (or an acquire with an unknown outcome) that reports its key to ``suspects`` during
    that sleep is swept only when the sleep ends.

    Interleaving: sweeper loop starts with ``suspects`` empty -> sleeps ``lock_ttl``
    (10 s by default); 0.2 s later an acquire's reply is lost, ``_delete_own_key``
    finds nothing yet and reports the key; the acquiring transaction lands; the key sits
    on this healthy replica's lease and locks every other replica out of that Config.

    Observed: the key is still there 1.5 s later (it goes at the end of the TTL sleep).
    Expected: removed within about a second. Fix: wait on an ``asyncio.Event`` set by
    ``on_orphan`` (``asyncio.wait_for(event.wait(), interval)``) instead of a sleep
    chosen in advance."""
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="r")
    fake = SimpleNamespace(settings=SimpleNamespace(lock_ttl=6), locks=locks)
    sweeper = asyncio.create_task(Runtime._sweep_locks(fake))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.2)  # the sweeper is asleep with no suspect
        key = f"{lock_prefix(prefix, NS, NAME)}/{session.lease_id:x}".encode()
        await client.txn([], [Put(key, b"r", lease=session.lease_id)])  # landed late
        locks.suspects.add(key)  # what Mutex.on_orphan does
        await asyncio.sleep(1.5)
        kv, _ = await client.get(key)
        assert kv is None, "an orphan reported to the sweeper was not swept within 1.5 s"
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await session.close()


async def test_defect_a_change_cause_annotation_makes_a_bad_previous_record_block_recording(
    client: EtcdClient, prefix: str
) -> None:
    """Audit is meant to fail open (``audit.py``; ``_author`` logs and records the field
    manager only when a note cannot be read). But ``Reconciler._author`` reads the
    uid's previous version *verified* (``get_version(expected_record_checksum=...)``)
    whenever the Config carries a change-cause annotation, and that read's errors are
    not caught: ``CorruptRecord`` becomes ``IntegrityViolation`` (Stalled, nothing
    recorded), ``NotFound`` a retry forever.

    Interleaving: v1 is recorded; its record is then damaged (a bad restore, a bit flip,
    a hand edit). generation 2 arrives.
    - without the annotation: the commit chains on the head's recordChecksum and v2 is
      recorded (the integrity scan reports v1);
    - with ``etcdconfig.io/change-cause``: ``_author`` raises CorruptRecord before the
      commit; generation 2 is never recorded — the change is lost for as long as v1 is
      damaged, only because of audit bookkeeping.

    Expected: the same as without the annotation (record v2; judge the cause without
    the previous author, e.g. as ``changeCause``, or note that it is unknown).
    Fix: catch ``StoreError`` (CorruptRecord/NotFound/UnsupportedFormat) around the
    previous-version read in ``_author`` and fall back, as for an unreadable note."""
    results = {}
    for cause in (None, "scale up"):
        pfx = f"{prefix}-{'cause' if cause else 'plain'}"
        r = await _replica(client, pfx, "r")
        try:
            await r.store.record(change(1), r.locks)
            vkey = r.store.keys.version(NS, NAME, 1)
            kv, _ = await client.get(vkey)
            assert kv is not None
            await client.put(vkey, kv.value.replace(b'"gen":1', b'"gen":7'))  # damaged
            await Reconciler(r).reconcile(  # type: ignore[arg-type]
                body(2, cause=cause), trigger="test"
            )
            head = await r.store.head(NS, NAME)
            results[cause] = head.version if head else None
        finally:
            await r.session.close()
    assert results[None] == 2  # without the annotation generation 2 is recorded
    assert results["scale up"] == 2, (
        "with a change-cause annotation generation 2 was not recorded: the audit read of "
        "the damaged previous version blocked the commit"
    )


@pytest.fixture
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.integration.secure_etcd import start_secure_etcd

    env = start_secure_etcd(tmp_path_factory.mktemp("secure-etcd-rv2"))
    try:
        yield env
    finally:
        env.server.stop()


async def test_defect_the_keepalive_never_reauthenticates_after_an_etcd_restart(
    secure_etcd: Any,
) -> None:
    """etcd with user/password auth (simple tokens, the default: kept in the member's
    memory, so a restart — or a fail-over to another member, which the keep-alive now
    does on every timed-out ping — invalidates the token).

    Interleaving: a session (TTL 5) is alive; etcd restarts (1-2 s; the lease survives
    and is renewed to its full TTL). The keep-alive stream breaks; ``KeepAliveStream``
    reopens it with ``client._metadata()``, the old token; etcd answers "invalid auth
    token"; ``Session._keepalive`` logs and retries with the same token — nothing in the
    keep-alive path calls ``_authenticate`` (unary calls do, in ``EtcdClient._call``) —
    until the TTL is up: the session is declared lost although its lease is alive and
    etcd is healthy. On a replica with no other etcd traffic in that window (nothing
    re-authenticates the shared client) every leader change or restart costs its
    session: its locks are "lost" mid-commit, membership flaps.

    Observed: ``done`` set while etcd still holds the lease. Expected: the keep-alive
    re-authenticates on an invalid-token error and keeps the session.
    Fix: in ``KeepAliveStream.ping``, on an "invalid auth token" error call
    ``client._authenticate()`` before reopening (as ``_call`` does)."""
    from etcdconfig.etcd import EtcdClient as Client

    faulty = Client(secure_etcd.settings())
    await faulty.connect()
    session = await Session(faulty, ttl=5).start()
    metrics = next(a for a in secure_etcd.server.extra_args if a.startswith("--listen-metrics"))
    health = metrics.split("=", 1)[1] + "/health"
    try:
        await asyncio.sleep(0.5)
        secure_etcd.server.stop()
        secure_etcd.server.restart()
        await asyncio.to_thread(secure_etcd.server.wait_healthy, 30, health_url=health)
        # the restart took a second or two of the 5 s TTL: the lease is alive and etcd
        # healthy; only the token is stale
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * session.ttl):
                await session.done.wait()
        assert not session.done.is_set(), (
            "the session was declared lost after a quick etcd restart: the keep-alive kept "
            "sending a stale auth token (etcd: invalid auth token)"
        )
    finally:
        await session.close()
        await faulty.close()


# =================================================================================================
# HYPOTHESES THAT HELD
# =================================================================================================


async def test_purge_upgrade_after_retain_removes_only_the_uids_run(
    client: EtcdClient, prefix: str
) -> None:
    """uid-1 recorded v1..v2 and was deleted under Retain; its finalizer runs again with
    Purge (the policy was changed before the late finalize): with the head still uid-1's
    tombstone at v2, the run v1..v2 is purged and the tombstone points at nothing.
    Then a later incarnation records on top and the old uid's purge upgrade is refused
    (the head no longer points at its run)."""
    r = await _replica(client, prefix, "r")
    try:
        await r.store.record(change(1), r.locks)
        await r.store.record(change(2), r.locks)
        async with r.locks.hold(NS, NAME) as m:
            await r.store.delete(NS, NAME, UID, m, purge=False)
        # a second uid records on top of the retained history
        await r.store.record(dataclasses.replace(change(1, uid="uid-2")), r.locks)
        async with r.locks.hold(NS, NAME) as m:
            await r.store.delete(NS, NAME, UID, m, purge=True)  # late purge upgrade
        records, _ = await r.store.history(NS, NAME, limit=10)
        assert sorted((x.version, x.uid) for x in records) == [
            (1, UID),
            (2, UID),
            (3, "uid-2"),
        ]
        assert await r.store.verify(NS, NAME) == []
    finally:
        await r.session.close()


async def test_the_webhook_notes_nothing_for_a_dry_run_and_notes_a_real_request(
    client: EtcdClient, prefix: str
) -> None:
    """The webhook config says ``sideEffects: None``, so the API server sends dry-run
    requests to it; the handler must not leave a note for them (a dry run by mallory
    must not become the author of alice's identical real change)."""
    import kopf

    from etcdconfig.audit import author_key
    from etcdconfig.controller.handlers import WEBHOOK_ID, build_registry

    rt = SimpleNamespace(
        settings=SimpleNamespace(webhook_enabled=True, etcd_prefix=prefix),
        client=client,
        validator=Validator(),
    )
    registry = build_registry(rt, None)  # type: ignore[arg-type]
    handler = next(h for h in registry._webhooks.get_all_handlers() if h.id == WEBHOOK_ID)
    fn: Any = handler.fn
    raw_old: Any = admission_body(1, {"data": {"v": 1}})
    raw_new: Any = admission_body(2, {"data": {"v": 2}})
    old, new = kopf.Body(raw_old), kopf.Body(raw_new)
    key = author_key(prefix, NS, NAME, UID, raw_new["spec"])
    for dryrun, user in ((True, "mallory"), (False, "alice")):
        await fn(
            spec=new.spec,
            body=new,
            userinfo={"username": user, "groups": []},
            dryrun=dryrun,
            operation="UPDATE",
            old=old,
        )
        kv, _ = await client.get(key)
        if dryrun:
            assert kv is None, "a dry-run request left an author note"
    assert kv is not None and b'"alice"' in kv.value
