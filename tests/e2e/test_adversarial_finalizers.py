"""Adversarial review of "only the owner adds the finalizer" (handlers.finalized,
Resync.finalized, Kube.add_finalizer), against a real control plane, a real etcd and
real operator processes.

The promise under attack: no change is lost, duplicated, recorded stale or corrupted,
and the deletion of a recorded Config is always recorded (a tombstone). Since the
change, a replica's kopf adds ``etcdconfig.io/finalizer`` only to the Configs that
replica owns (or that carry it already); the resync loop adds it before it records an
owned Config that lacks it.

Interleavings tried here (each test says what it expects):

- a recorded Config loses the finalizer through an ordinary full-object update
  (``kubectl replace``: a PUT of the manifest, which has no finalizers) while its
  owner is frozen but still a member, and is then deleted;
- Configs created and deleted while their owner is frozen, the names re-created, then
  taken over: the new incarnations start a clean history;
- the frozen owner thaws after the take-over (stale membership view, queued watch
  events): later updates and deletions are recorded exactly once, by kopf alone;
- the namespace is deleted while an owner is frozen;
- ``Kube.add_finalizer`` against a stale, a deleted, a terminating and a current object;
- an invalid Config (created while no admission webhook was registered) whose
  finalizer patch the webhook refuses: is its invalidity ever reported?

No sleeps synchronise anything: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    crd,
    install_webhook,
    make_webhook_certs,
    wait_until,
)

from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.kube import Kube, load_api_client
from etcdconfig.models import FINALIZER
from etcdconfig.store import VersionedStore

CONFIGS = 8  # per batch; batches are added until the replica a test needs owns some
NO_RESYNC = 600  # seconds: no periodic resync round during a test (membership changes only)
FAST = 10.0  # seconds for something kopf does on an event (each takes well under one)

Start = Callable[..., list[OperatorProcess]]


# ---------------------------------------------------------------------------- helpers


def sample(op: OperatorProcess, name: str) -> float:
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    return 0.0


def list_configs(plane: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    out = plane.kubectl("get", "configs.etcdconfig.io", "-n", namespace, "-o", "json")
    return {o["metadata"]["name"]: o for o in json.loads(out.stdout)["items"]}


def create(plane: ControlPlane, namespace: str, names: list[str], tag: str = "a") -> None:
    items = [config_manifest(n, namespace, {"name": n, "tag": tag}) for n in names]
    apply(plane, {"apiVersion": "v1", "kind": "List", "items": items})


def create_owned_by(
    plane: ControlPlane, namespace: str, ops: list[OperatorProcess], prefix: str, replica: str
) -> list[str]:
    """Create batches of ``CONFIGS`` Configs ``<prefix>-<i>`` until ``replica`` owns at
    least one of them (uids are random: a single batch all on the other replica has odds
    2 in 2**8); return every name created."""
    names: list[str] = []
    while len(names) < 8 * CONFIGS:
        batch = [f"{prefix}-{i}" for i in range(len(names), len(names) + CONFIGS)]
        create(plane, namespace, batch)
        names += batch
        objs = list_configs(plane, namespace)
        if any(owner_of(ops, objs[n]["metadata"]["uid"]) == replica for n in names):
            return names
    raise AssertionError(f"{replica} owns none of {len(names)} Configs: is the hash one-sided?")


def recorded_at(obj: dict[str, Any], version: int) -> bool:
    st = obj.get("status") or {}
    rec = condition(obj, "Recorded")
    return (
        st.get("observedGeneration") == obj["metadata"]["generation"]
        and st.get("version") == version
        and rec is not None
        and rec["status"] == "True"
    )


def wait_recorded(
    plane: ControlPlane, namespace: str, names: list[str], version: int, timeout: float
) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        objs = list_configs(plane, namespace)
        ok = all(n in objs and recorded_at(objs[n], version) for n in names)
        return objs if ok else None

    return dict(wait_until(done, timeout, f"{names} recorded as version {version}"))


def owner_of(ops: list[OperatorProcess], uid: str) -> str | None:
    return rendezvous_owner(tuple(op.replica_id for op in ops), uid)


def delete_all(plane: ControlPlane, namespace: str, names: list[str]) -> None:
    plane.kubectl("delete", "configs.etcdconfig.io", *names, "-n", namespace, "--wait=false")


def wait_gone(plane: ControlPlane, namespace: str, names: list[str], timeout: float) -> None:
    wait_until(
        lambda: not set(names) & set(list_configs(plane, namespace)),
        timeout,
        f"{names} gone from the API server",
    )


@pytest.fixture
def prefix() -> str:
    return f"/e2e-adv-fin-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(store_etcd: EtcdServer, prefix: str) -> AsyncIterator[VersionedStore]:
    client = EtcdClient(EtcdSettings(endpoints=[store_etcd.endpoint]))
    yield VersionedStore(client, prefix=prefix)
    await client.close()


@pytest.fixture
def start(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    namespace: str,
    tmp_path: Path,
    prefix: str,
) -> Iterator[Start]:
    """``start(n, lock_ttl=…, resync=…, webhook=None)``: n replicas sharing one store
    prefix, watching only ``namespace``, ready, all agreeing that there are n members."""
    started: list[OperatorProcess] = []

    def run(
        n: int = 2, *, lock_ttl: int = 3, resync: float = NO_RESYNC, webhook: Any = None
    ) -> list[OperatorProcess]:
        ops = [
            OperatorProcess(
                plane=control_plane,
                etcd_endpoint=store_etcd.endpoint,
                prefix=prefix,
                workdir=tmp_path,
                replica_id=f"fin-{i}",
                webhook=webhook,
                extra=(
                    "--resync-interval",
                    str(resync),
                    # every round reconciles every Config: these tests time repairs by rounds
                    "--resync-full-every",
                    "1",
                    "--lock-ttl",
                    str(lock_ttl),
                    "--namespaces",
                    namespace,
                ),
            )
            for i in range(n)
        ]
        started.extend(ops)
        for op in ops:
            op.start()
        for op in ops:
            op.wait_ready()
        wait_until(
            lambda: all(sample(op, "etcdconfig_members") == n for op in ops),
            30,
            f"every replica sees {n} members",
        )
        return ops

    try:
        yield run
    finally:
        for op in started:
            op.resume_if_paused()
            op.stop()


# ------------------------------------------------------------------------------ tests


async def test_a_recorded_config_replaced_while_its_owner_is_frozen_keeps_its_finalizer(
    control_plane: ControlPlane, namespace: str, start: Start, store: VersionedStore
) -> None:
    """``kubectl replace -f config.yaml`` (a full-object PUT; also Argo CD's
    ``Replace=true`` sync, or a manifest printed by ``etcdconfig rollback --print``,
    which leaves the finalizer out) drops ``metadata.finalizers``. Spec unchanged: the
    history is complete at version 1.

    Before the change every live replica's kopf put the finalizer back at once. Now
    only the owner does, and the owner is frozen (a GC pause, a node cut off from the
    API server but not from etcd: its lease lives on, it stays a member). A deletion
    in that window removes the object at once: nobody records it, the store's head
    stays live for a Config that no longer exists (readers keep serving it, a Purge
    is never done), and a re-creation later shows as "replaced", not "deleted"."""
    # the frozen owner stays a member throughout; the resync (its own Configs only) is
    # on, so the set-up also passes on a release with the old creation delay
    ops = start(2, lock_ttl=60, resync=3)
    frozen, alive = ops
    names = create_owned_by(control_plane, namespace, ops, "rep", frozen.replica_id)
    objs = wait_recorded(control_plane, namespace, names, 1, 30)
    mine = [n for n in names if owner_of(ops, objs[n]["metadata"]["uid"]) == frozen.replica_id]
    assert mine, "no Config owned by the replica to freeze"
    for n in mine:
        assert objs[n]["metadata"].get("finalizers") == [FINALIZER], n

    frozen.pause()
    for n in mine:
        out = control_plane.kubectl(
            "replace",
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(config_manifest(n, namespace, {"name": n, "tag": "a"})),
        )
        replaced = json.loads(out.stdout)
        assert replaced["metadata"]["generation"] == 1, n  # spec unchanged: v1 is complete
        assert FINALIZER not in (replaced["metadata"].get("finalizers") or []), (
            f"precondition: kubectl replace was expected to drop the finalizer of {n}"
        )

    def finalized() -> bool:
        objs = list_configs(control_plane, namespace)
        return all(FINALIZER in (objs[n]["metadata"].get("finalizers") or []) for n in mine)

    restored = True
    try:
        wait_until(finalized, FAST, f"the finalizer back on {mine} (a live replica runs)")
    except AssertionError:
        restored = False

    delete_all(control_plane, namespace, mine)
    wait_gone(control_plane, namespace, mine, 30)
    unrecorded = []
    for n in mine:
        head = await store.head(namespace, n)
        assert head is not None, n
        if not (head.deleted and head.uid == objs[n]["metadata"]["uid"]):
            unrecorded.append(f"{n}: head uid={head.uid} v{head.version} deleted={head.deleted}")
    assert sample(alive, "etcdconfig_members") == 2  # no take-over happened meanwhile
    assert restored and not unrecorded, (
        f"finalizer restored while the owner was frozen: {restored}; recorded Configs "
        "deleted without their deletion recorded (no tombstone, head still live):\n"
        + "\n".join(unrecorded)
    )


async def test_configs_created_and_deleted_while_their_owner_is_frozen_leave_no_trace(
    control_plane: ControlPlane, namespace: str, start: Start, store: VersionedStore
) -> None:
    """Configs created while their owner is frozen get no finalizer (the other replica
    records its own at once); deleted in that window they go at once, with nothing
    recorded. The names are re-created; once the owner's lease expires the survivor
    takes them over: each new uid starts a history of its own at version 1, nothing of
    the old uids, and its deletion is then recorded."""
    ttl = 15
    ops = start(2, lock_ttl=ttl)
    frozen, survivor = ops
    frozen.pause()
    names = create_owned_by(control_plane, namespace, ops, "gone", frozen.replica_id)
    objs = list_configs(control_plane, namespace)
    first = {n: objs[n]["metadata"]["uid"] for n in names}
    theirs = [n for n in names if owner_of(ops, first[n]) == frozen.replica_id]
    ours = [n for n in names if n not in theirs]
    assert theirs, "no Config owned by the frozen replica"
    # the survivor's own are recorded on their creation events: a barrier for its kopf
    if ours:
        wait_recorded(control_plane, namespace, ours, 1, FAST)
    assert sample(survivor, "etcdconfig_members") == 2, "the lease expired too early"
    objs = list_configs(control_plane, namespace)
    for n in theirs:
        assert not objs[n]["metadata"].get("finalizers"), f"{n}: a non-owner added it"
        assert not (objs[n].get("status") or {}).get("version"), f"{n}: recorded"

    delete_all(control_plane, namespace, theirs)
    wait_gone(control_plane, namespace, theirs, FAST)  # no finalizer: gone at once
    create(control_plane, namespace, theirs, tag="b")
    objs = wait_recorded(control_plane, namespace, theirs, 1, ttl + 30)
    for n in theirs:
        meta = objs[n]["metadata"]
        assert meta["uid"] != first[n]
        assert meta.get("finalizers") == [FINALIZER], n
        records, _ = await store.history(namespace, n, limit=100)
        assert [(r.uid, r.version, r.data) for r in records] == [
            (meta["uid"], 1, {"name": n, "tag": "b"})
        ], n
        head = await store.head(namespace, n)
        assert head is not None and (head.uid, head.version, head.deleted) == (
            meta["uid"],
            1,
            False,
        )

    delete_all(control_plane, namespace, theirs)
    wait_gone(control_plane, namespace, theirs, FAST)
    for n in theirs:
        head = await store.head(namespace, n)
        assert head is not None
        assert (head.uid, head.deleted) == (objs[n]["metadata"]["uid"], True), n


async def test_a_thawed_owner_handles_later_changes_once_by_its_watch_events(
    control_plane: ControlPlane, namespace: str, start: Start, store: VersionedStore
) -> None:
    """The owner is frozen past its lease; Configs are created before and after the
    expiry; the survivor takes them over (finalizer added by its resync round, or by
    its kopf as the new owner). The old owner thaws with a stale membership view and a
    socket full of watch events, starts a new session and re-joins: ownership moves
    back. With no periodic resync, every later update must be recorded on its watch
    event, exactly once, and every deletion recorded."""
    ops = start(2, lock_ttl=3)
    frozen, survivor = ops
    frozen.pause()
    before = [f"pre-{i}" for i in range(CONFIGS)]
    create(control_plane, namespace, before)
    wait_until(lambda: sample(survivor, "etcdconfig_members") == 1, 30, "the lease expired")
    after = [f"post-{i}" for i in range(CONFIGS)]
    create(control_plane, namespace, after)
    names = before + after
    wait_recorded(control_plane, namespace, names, 1, 30)

    frozen.resume_if_paused()
    wait_until(lambda: all(sample(op, "etcdconfig_members") == 2 for op in ops), 30, "re-joined")
    objs = list_configs(control_plane, namespace)
    assert any(owner_of(ops, o["metadata"]["uid"]) == frozen.replica_id for o in objs.values())

    for n in names:
        control_plane.kubectl(
            "patch",
            "configs.etcdconfig.io",
            n,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"data": {"name": n, "tag": "c"}}}),
        )
    objs = wait_recorded(control_plane, namespace, names, 2, FAST)
    for n in names:
        uid = objs[n]["metadata"]["uid"]
        assert objs[n]["metadata"].get("finalizers") == [FINALIZER], n
        records, _ = await store.history(namespace, n, limit=100)
        assert [(r.uid, r.version, r.generation) for r in reversed(records)] == [
            (uid, 1, 1),
            (uid, 2, 2),
        ], n

    delete_all(control_plane, namespace, names)
    wait_gone(control_plane, namespace, names, 30)
    for n in names:
        head = await store.head(namespace, n)
        assert head is not None
        assert (head.uid, head.version, head.deleted) == (objs[n]["metadata"]["uid"], 2, True)


async def test_namespace_deletion_with_a_frozen_owner_records_every_recorded_deletion(
    control_plane: ControlPlane, namespace: str, start: Start, store: VersionedStore
) -> None:
    """Recorded Configs (finalized by their owners) and unrecorded ones (created while
    their owner is frozen: no finalizer) in one namespace; the namespace is deleted
    while the owner is still frozen and a member. The other replica must record the
    deletion of every recorded one (it is not their owner); the namespace goes away."""
    ops = start(2, lock_ttl=300, resync=3)  # the frozen owner's lease outlives the test
    frozen, alive = ops
    names = create_owned_by(control_plane, namespace, ops, "ns", frozen.replica_id)
    objs = wait_recorded(control_plane, namespace, names, 1, 30)
    frozen.pause()
    late = [f"late-{i}" for i in range(CONFIGS)]
    create(control_plane, namespace, late)

    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")

    def namespace_gone() -> bool:
        out = control_plane.kubectl(
            "get", "namespace", namespace, "--ignore-not-found", "-o", "name"
        )
        return out.stdout.strip() == ""

    try:
        wait_until(namespace_gone, 120, f"namespace {namespace} gone")
    except AssertionError:
        left = control_plane.kubectl(
            "get", "configs.etcdconfig.io", "-n", namespace, "-o", "json", check=False
        ).stdout
        pytest.fail(f"namespace {namespace} still there; its Configs: {left[-3000:]}")
    assert sample(alive, "etcdconfig_members") == 2  # no take-over: the non-owner did it
    problems = []
    for n in names:
        head = await store.head(namespace, n)
        want = (objs[n]["metadata"]["uid"], 1, True)
        got = None if head is None else (head.uid, head.version, head.deleted)
        if got != want:
            problems.append(f"{n}: head {got}, expected {want}")
    for n in late:
        head = await store.head(namespace, n)
        # recorded by the other replica (its own) and then deleted, or never recorded
        if head is not None and not head.deleted:
            problems.append(f"{n}: head {head.uid} v{head.version} live after its deletion")
    assert not problems, "\n".join(problems)


async def test_add_finalizer_is_guarded_by_the_listed_resource_version(
    control_plane: ControlPlane, namespace: str, crd: Path
) -> None:
    """``Kube.add_finalizer`` adds nothing to an object that changed since the copy it
    was given (a user's update, a deletion holding another finalizer, a deletion and a
    re-creation under the same name), and adds it exactly once to a current one."""
    api = await load_api_client(str(control_plane.kubeconfig))
    kube = Kube(api, component="adversarial-test")
    other = "example.com/hold"
    try:
        # a stale copy: the user changed the spec since
        create(control_plane, namespace, ["stale"])
        listed = list_configs(control_plane, namespace)["stale"]
        control_plane.kubectl(
            "patch",
            "configs.etcdconfig.io",
            "stale",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"data": {"changed": True}}}),
        )
        assert await kube.add_finalizer(listed, FINALIZER) is None
        now = list_configs(control_plane, namespace)["stale"]
        assert not now["metadata"].get("finalizers")

        # a copy of a now-terminating object (another finalizer holds it)
        m = config_manifest("term", namespace, {"x": 1})
        m["metadata"]["finalizers"] = [other]
        apply(control_plane, m)
        listed = list_configs(control_plane, namespace)["term"]
        control_plane.kubectl(
            "delete", "configs.etcdconfig.io", "term", "-n", namespace, "--wait=false"
        )
        assert await kube.add_finalizer(listed, FINALIZER) is None
        now = list_configs(control_plane, namespace)["term"]
        assert now["metadata"]["finalizers"] == [other]

        # a copy of a deleted object whose name was taken again
        create(control_plane, namespace, ["again"])
        listed = list_configs(control_plane, namespace)["again"]
        control_plane.kubectl("delete", "configs.etcdconfig.io", "again", "-n", namespace)
        create(control_plane, namespace, ["again"], tag="b")
        assert await kube.add_finalizer(listed, FINALIZER) is None
        now = list_configs(control_plane, namespace)["again"]
        assert now["metadata"]["uid"] != listed["metadata"]["uid"]
        assert not now["metadata"].get("finalizers")

        # a deleted object
        control_plane.kubectl("delete", "configs.etcdconfig.io", "again", "-n", namespace)
        assert await kube.add_finalizer(listed, FINALIZER) is None

        # a current copy, with another finalizer present: appended, once
        m = config_manifest("cur", namespace, {"x": 1})
        m["metadata"]["finalizers"] = [other]
        apply(control_plane, m)
        listed = list_configs(control_plane, namespace)["cur"]
        rv = await kube.add_finalizer(listed, FINALIZER)
        assert rv is not None and rv != listed["metadata"]["resourceVersion"]
        now = list_configs(control_plane, namespace)["cur"]
        assert now["metadata"]["finalizers"] == [other, FINALIZER]
        assert now["metadata"]["resourceVersion"] == rv
        assert await kube.add_finalizer(now, FINALIZER) == rv  # present: nothing sent
    finally:
        for name in ("term", "cur"):
            control_plane.kubectl(
                "patch",
                "configs.etcdconfig.io",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
        await kube.close()


async def test_an_invalid_config_the_webhook_keeps_unfinalized_is_still_reported(
    control_plane: ControlPlane, namespace: str, start: Start, tmp_path: Path
) -> None:
    """An invalid Config exists when it was created while no admission webhook was
    registered (installed later, or ``failurePolicy: Ignore`` while it was down). The
    finalizer patch is an UPDATE, and the webhook refuses every UPDATE of an invalid
    spec (422): kopf's patch fails, and ``Resync.finalized`` takes the 422 for "changed
    since listed; left to its watch event" and skips the Config, but no watch event
    follows. Before the change the resync round reconciled it anyway and reported
    ``Valid=False`` (Ready False, Stalled). Is the invalidity reported within a few
    resync rounds?"""
    certs = make_webhook_certs(tmp_path / "certs")
    (op,) = start(1, lock_ttl=3, resync=1, webhook=certs)
    vwc = f"adv-fin-{uuid.uuid4().hex[:6]}"
    op.pause()  # the replica must not add the finalizer before the webhook is registered
    try:
        bad = config_manifest(
            "bad",
            namespace,
            {"retries": 99},
            schema={"type": "object", "properties": {"retries": {"maximum": 10}}},
        )
        apply(control_plane, bad)
        install_webhook(control_plane, vwc, op.webhook_port, certs, [namespace])
        op.resume_if_paused()

        def reported() -> dict[str, Any] | None:
            obj = list_configs(control_plane, namespace)["bad"]
            valid = condition(obj, "Valid")
            return obj if valid is not None and valid["status"] == "False" else None

        try:
            wait_until(reported, 20, "bad reported Valid=False")
        except AssertionError:
            obj = list_configs(control_plane, namespace)["bad"]
            pytest.fail(
                "an invalid Config was never reported (no status at all) because the "
                "webhook refuses its finalizer patch: finalizers="
                f"{obj['metadata'].get('finalizers')} status={obj.get('status')}\n"
                + "\n".join(line for line in op.log_text().splitlines() if "finalizer" in line)[
                    -2000:
                ]
            )
    finally:
        op.resume_if_paused()
        control_plane.kubectl("delete", "validatingwebhookconfiguration", vwc, "--ignore-not-found")
