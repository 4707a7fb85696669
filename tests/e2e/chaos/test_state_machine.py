"""A hypothesis state machine mixing apply / kill / pause / resume / restart etcd /
partition / heal / lost gRPC answers against 3 live replicas. Safety invariants
(gapless versions, no duplicate (uid, generation), increasing generations and
fencing revisions, intact chain) are checked after every step; convergence (the
final generation recorded with the data Kubernetes held, status = head, no lock
key left, every replica ready, the write-log audit) at the end of every example.
Bounded to fit CI."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from tests.e2e.chaos.harness import Fleet, KubeAPI, Writer, check_invariants
from tests.e2e.operator_env import crd
from tests.faultproxy import KINDS, FaultProxy, Kind, Mode

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import VersionedStore

CONFIGS = 5
REPLICAS = 3


async def _safety(endpoint: str, prefix: str, namespace: str, names: list[str]) -> int:
    client = EtcdClient(EtcdSettings(endpoints=[endpoint]))
    store = VersionedStore(client, prefix=prefix)
    total = 0
    try:
        for name in names:
            records, _ = await store.history(namespace, name, limit=100000)
            records.reverse()
            assert [r.version for r in records] == list(range(1, len(records) + 1))
            pairs = [(r.uid, r.generation) for r in records]
            assert len(set(pairs)) == len(pairs)
            gens = [r.generation for r in records]
            assert gens == sorted(set(gens))
            fencing = [r.fencing_revision for r in records]
            assert fencing == sorted(set(fencing))
            assert await store.verify(namespace, name) == []
            total += len(records)
    finally:
        await client.close()
    return total


class ChaosMachine(RuleBasedStateMachine):
    plane: ClassVar[ControlPlane]
    etcd: ClassVar[EtcdServer]
    proxies: ClassVar[list[FaultProxy]]
    fleet: ClassVar[Fleet]
    api: ClassVar[KubeAPI]
    namespace: ClassVar[str]
    names: ClassVar[list[str]]
    steps: ClassVar[int] = 0
    counter: ClassVar[int] = 0
    acked: ClassVar[int] = 0
    calls: ClassVar[dict[str, int]] = {}

    def _count(self, rule_name: str) -> None:
        ChaosMachine.calls[rule_name] = ChaosMachine.calls.get(rule_name, 0) + 1

    @rule(i=st.integers(0, CONFIGS - 1))
    def apply(self, i: int) -> None:
        self._count("apply")
        ChaosMachine.counter += 1
        self.api.patch_data(self.namespace, self.names[i], {"n": self.counter})

    @rule(r=st.integers(0, REPLICAS - 1))
    def kill(self, r: int) -> None:
        self._count("kill")
        self.fleet.replicas[r].resume_if_paused()
        self.fleet.kill_and_restart(r)

    @rule(r=st.integers(0, REPLICAS - 1))
    def pause(self, r: int) -> None:
        self._count("pause")
        self.fleet.replicas[r].pause()

    @rule(r=st.integers(0, REPLICAS - 1))
    def resume(self, r: int) -> None:
        self._count("resume")
        self.fleet.replicas[r].resume_if_paused()

    @rule()
    def restart_etcd(self) -> None:
        self._count("restart_etcd")
        self.etcd.kill()
        self.etcd.start()
        self.etcd.wait_healthy(30)

    @rule(r=st.integers(0, REPLICAS - 1))
    def partition(self, r: int) -> None:
        self._count("partition")
        self.proxies[r].blackhole()

    @rule(r=st.integers(0, REPLICAS - 1))
    def heal(self, r: int) -> None:
        self._count("heal")
        self.proxies[r].heal()

    @rule(
        r=st.integers(0, REPLICAS - 1),
        kind=st.sampled_from(KINDS),
        mode=st.sampled_from(("drop", "timeout", "lose")),
    )
    def lose_grpc_answers(self, r: int, kind: Kind, mode: Mode) -> None:
        """The next two calls of one kind lose their answer (or themselves)."""
        self._count("lose_grpc_answers")
        self.proxies[r].arm(kind, times=2, mode=mode, hold=5.5)

    @rule()
    def let_time_pass(self) -> None:
        self._count("let_time_pass")
        time.sleep(1.0)  # the schedule: faults last a while before the next step

    @invariant()
    def histories_are_safe(self) -> None:
        ChaosMachine.steps += 1
        asyncio.run(_safety(self.etcd.endpoint, self.fleet.prefix, self.namespace, self.names))

    def __init__(self) -> None:
        super().__init__()
        # a continuous stream of updates runs under every fault of the example
        self.writer = Writer(self.api, self.namespace, self.names, interval=0.05)
        self.writer.start()

    def teardown(self) -> None:
        self.writer.stop()
        ChaosMachine.acked += self.writer.updates
        for p in self.proxies:
            p.disarm()
            p.heal()
        for r in self.fleet.replicas:
            r.resume_if_paused()
        self.fleet.ensure_running()
        asyncio.run(
            check_invariants(
                self.api,
                [self.etcd.endpoint],
                self.fleet.prefix,
                self.namespace,
                self.names,
                fleet=self.fleet,
            )
        )


def test_state_machine_of_faults_keeps_every_history_exact(
    control_plane: ControlPlane, namespace: str, crd: Path, tmp_path: Path
) -> None:
    etcd = EtcdServer(data_dir=tmp_path / "etcd" / "data", name="machine")
    etcd.start()
    etcd.wait_healthy(30)
    host, port = etcd.endpoint.split(":")
    prefix = f"/sm-{uuid.uuid4().hex[:8]}"
    proxies = [FaultProxy(host, int(port), prefix=prefix) for _ in range(REPLICAS)]
    fleet = Fleet(control_plane, [p.endpoint for p in proxies], prefix, tmp_path)
    try:
        fleet.start()
        api = KubeAPI(control_plane)
        names = [f"m{i}" for i in range(CONFIGS)]
        for name in names:
            # examples share the Configs: keep every version, so histories stay 1..N
            api.create_config(namespace, name, {"n": 0}, history={"maxVersions": 100000})
        ChaosMachine.plane, ChaosMachine.etcd, ChaosMachine.proxies = control_plane, etcd, proxies
        ChaosMachine.fleet, ChaosMachine.api = fleet, api
        ChaosMachine.namespace, ChaosMachine.names = namespace, names
        run_state_machine_as_test(
            ChaosMachine,
            settings=settings(
                max_examples=3,
                stateful_step_count=12,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
        print(
            f"\n[chaos state-machine] examples=3 steps_checked={ChaosMachine.steps} "
            f"updates_acked={ChaosMachine.acked} rules={ChaosMachine.calls}"
        )
    finally:
        for p in proxies:
            p.heal()
        fleet.stop()
        for p in proxies:
            p.close()
        etcd.stop()
