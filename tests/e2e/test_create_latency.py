"""New Configs are recorded on their creation event by the replica that owns them,
with several replicas running: never left for the resync loop (the safety net) to
find a resync interval later. And with the owner gone, Configs are still taken over
with the finalizer on, and deleted with their deletion recorded.

The resync interval is 600 s here, so the safety net cannot hide a creation event
that the owner's kopf dropped: every Config must be recorded within seconds of its
creation, by a reconcile triggered by the creation itself.

The defect this guards against: every replica's kopf added the finalizer on the
first event (the deletion handler was unfiltered). When a non-owner's finalizer
patch landed first, the owner's guarded patch failed (422) and stayed pending in
kopf, which then skipped the next event (the finalizer arriving) as inconsistent,
and nothing else followed: about half of the new Configs waited for the resync.
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
    wait_until,
)

from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.models import FINALIZER
from etcdconfig.store import VersionedStore

REPLICAS = 2
CONFIGS = 20  # each replica owns some of them: all on one has odds of 2 in 2**20
RESYNC_INTERVAL = 600  # seconds: no periodic resync round runs during a test
DEADLINE = 10.0  # seconds for all of them after the creation; each takes well under one

StartReplicas = Callable[..., list[OperatorProcess]]


def sample(op: OperatorProcess, name: str, **labels: str) -> float:
    """One sample of one of ``op``'s metrics (0 when it has none yet)."""
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def reconciles(op: OperatorProcess, trigger: str) -> float:
    return sample(op, "etcdconfig_reconcile_duration_seconds_count", trigger=trigger)


@pytest.fixture
def prefix() -> str:
    return f"/e2e-latency-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_replicas(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    namespace: str,
    tmp_path: Path,
    prefix: str,
) -> Iterator[StartReplicas]:
    """``start(lock_ttl=3)``: two replicas sharing one store prefix, watching only
    ``namespace``, ready, and both agreeing that there are two members."""
    started: list[OperatorProcess] = []

    def start(lock_ttl: int = 3) -> list[OperatorProcess]:
        ops = [
            OperatorProcess(
                plane=control_plane,
                etcd_endpoint=store_etcd.endpoint,
                prefix=prefix,
                workdir=tmp_path,
                replica_id=f"latency-{i}",
                extra=(
                    "--resync-interval",
                    str(RESYNC_INTERVAL),
                    # every round reconciles every Config: these tests time repairs by rounds
                    "--resync-full-every",
                    "1",
                    "--lock-ttl",
                    str(lock_ttl),
                    "--namespaces",
                    namespace,
                ),
            )
            for i in range(REPLICAS)
        ]
        started.extend(ops)
        for op in ops:
            op.start()
        for op in ops:
            op.wait_ready()
        # a membership change starts a resync round at once, which sets the gauge: once
        # both show two members, both have the final membership and no round is due
        wait_until(
            lambda: all(sample(op, "etcdconfig_members") == REPLICAS for op in ops),
            30,
            "both replicas see both members",
        )
        return ops

    try:
        yield start
    finally:
        for op in started:
            op.resume_if_paused()
            op.stop()


@pytest.fixture
async def store(store_etcd: EtcdServer, prefix: str) -> AsyncIterator[VersionedStore]:
    client = EtcdClient(EtcdSettings(endpoints=[store_etcd.endpoint]))
    yield VersionedStore(client, prefix=prefix)
    await client.close()


def create(plane: ControlPlane, namespace: str, names: list[str]) -> None:
    items = [config_manifest(n, namespace, {"index": i}) for i, n in enumerate(names)]
    apply(plane, {"apiVersion": "v1", "kind": "List", "items": items})


def list_configs(plane: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    out = plane.kubectl("get", "configs.etcdconfig.io", "-n", namespace, "-o", "json")
    return {o["metadata"]["name"]: o for o in json.loads(out.stdout)["items"]}


def recorded(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    rec = condition(obj, "Recorded")
    return (
        st.get("observedGeneration") == obj["metadata"]["generation"]
        and st.get("version") == 1
        and rec is not None
        and rec["status"] == "True"
    )


def owner(ops: list[OperatorProcess], obj: dict[str, Any]) -> str | None:
    """The owner while every replica is a member."""
    return rendezvous_owner(tuple(op.replica_id for op in ops), obj["metadata"]["uid"])


def wait_recorded(
    plane: ControlPlane,
    namespace: str,
    names: list[str],
    ops: list[OperatorProcess],
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """Every one of ``names`` recorded within ``timeout``; else fail naming the rest."""
    seen: dict[str, dict[str, Any]] = {}

    def unrecorded() -> list[str]:
        seen.clear()
        seen.update(list_configs(plane, namespace))
        return [n for n in names if n not in seen or not recorded(seen[n])]

    try:
        wait_until(lambda: not unrecorded(), timeout, "every new Config recorded")
    except AssertionError:
        missing = unrecorded()
        lines = [
            f"{n}: owner={owner(ops, seen[n])} finalizers={seen[n]['metadata'].get('finalizers')}"
            f" status={seen[n].get('status') or {}}"
            if n in seen
            else f"{n}: absent"
            for n in missing
        ]
        pytest.fail(
            f"{len(missing)} of {len(names)} new Configs not recorded within {timeout}s "
            "of their creation (left for the resync loop):\n" + "\n".join(lines)
        )
    return dict(seen)


async def assert_deletions_recorded(
    store: VersionedStore, namespace: str, objs: dict[str, dict[str, Any]]
) -> None:
    for name, obj in objs.items():
        head = await store.head(namespace, name)
        assert head is not None, name
        assert (head.uid, head.version, head.deleted) == (obj["metadata"]["uid"], 1, True), name


def test_every_new_config_is_recorded_on_its_creation_event(
    control_plane: ControlPlane, namespace: str, start_replicas: StartReplicas
) -> None:
    ops = start_replicas()
    names = [f"cfg-{i:02d}" for i in range(CONFIGS)]
    resyncs = sum(reconciles(op, "resync") for op in ops)

    create(control_plane, namespace, names)
    objs = wait_recorded(control_plane, namespace, names, ops, DEADLINE)

    # by their owners' creation events (each replica owns some), not by a resync
    assert {owner(ops, o) for o in objs.values()} == {op.replica_id for op in ops}
    assert sum(reconciles(op, "create") for op in ops) >= CONFIGS
    assert sum(reconciles(op, "resync") for op in ops) == resyncs
    for name, obj in objs.items():
        assert obj["metadata"].get("finalizers") == [FINALIZER], name


async def test_a_frozen_owners_configs_are_deleted_by_the_other_replica(
    control_plane: ControlPlane,
    namespace: str,
    start_replicas: StartReplicas,
    store: VersionedStore,
) -> None:
    """The finalizer is on every Config (the owner added it), and with the owner
    frozen but still a member (its lease outlives the test) the other replica, not
    the owner, records the deletions and lets the objects go."""
    ops = start_replicas(lock_ttl=60)
    frozen, other = ops
    names = [f"del-{i:02d}" for i in range(CONFIGS)]
    create(control_plane, namespace, names)
    objs = wait_recorded(control_plane, namespace, names, ops, DEADLINE)
    assert any(owner(ops, o) == frozen.replica_id for o in objs.values())

    frozen.pause()
    control_plane.kubectl(
        "delete", "configs.etcdconfig.io", "--all", "-n", namespace, "--wait=false"
    )
    wait_until(lambda: not list_configs(control_plane, namespace), 20, "every Config gone")

    assert sample(other, "etcdconfig_members") == REPLICAS  # no take-over happened
    await assert_deletions_recorded(store, namespace, objs)


async def test_configs_created_while_their_owner_is_frozen_are_taken_over_finalized(
    control_plane: ControlPlane,
    namespace: str,
    start_replicas: StartReplicas,
    store: VersionedStore,
) -> None:
    """Configs created while their owner is frozen get no finalizer from the other
    replica (only owners add it). Once the owner's lease expires, the other replica's
    resync round takes them over: it adds the finalizer before it records them, and
    their deletion is then recorded."""
    ops = start_replicas(lock_ttl=3)
    frozen, survivor = ops
    frozen.pause()
    names = [f"new-{i:02d}" for i in range(CONFIGS)]
    create(control_plane, namespace, names)
    # the lease expires (3 s), then the membership change starts a resync round
    objs = wait_recorded(control_plane, namespace, names, ops, 30)

    taken = [n for n, o in objs.items() if owner(ops, o) == frozen.replica_id]
    assert taken
    assert reconciles(survivor, "resync") >= len(taken)
    for name, obj in objs.items():
        assert obj["metadata"].get("finalizers") == [FINALIZER], name

    control_plane.kubectl(
        "delete", "configs.etcdconfig.io", "--all", "-n", namespace, "--wait=false"
    )
    wait_until(lambda: not list_configs(control_plane, namespace), 20, "every Config gone")
    await assert_deletions_recorded(store, namespace, objs)
