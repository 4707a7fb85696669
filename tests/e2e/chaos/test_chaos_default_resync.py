"""Chaos with the resync round's DEFAULT skip: 3 replicas run with the product's
``--resync-full-every`` (10: a settled Config — a resync reconcile found nothing to
change, unchanged since — is reconciled in full only once in ten rounds, spread by
uid) and a short ``--resync-interval``. Every other chaos scenario runs
``--resync-full-every 1``, so none of them meets the skip.

1. Chaos: a writer stream on some Configs, delete/re-create/Purge churn on others,
   and "quiet" Configs nobody writes that publish a ConfigMap — quiet Configs settle,
   so they are the ones the skip leaves alone. Faults: replicas SIGKILLed and
   restarted, the lock holder frozen past its lease TTL, lost etcd answers (the
   fault proxies of ``tests/faultproxy.py``), and published ConfigMaps edited or
   deleted behind the operator's back. Afterwards every quiet ConfigMap is repaired.
2. Drift of settled Configs, membership stable: every quiet ConfigMap is edited or
   deleted; each is repaired within ``full_every + 1`` rounds of its owner (the
   round in progress, then its turn within the next ``full_every``).
3. A hand-over: every quiet ConfigMap drifts again and a replica is SIGKILLed (some
   quiet Configs of the dead one also get a spec change while their owner is dead).
   Once a survivor sees the new membership, its next round is a full one: every
   drift — of the survivors' own settled Configs too, not only of the Configs they
   take over — is repaired within 2 rounds (1 is the guarantee; 1 spare for a
   transiently failed reconcile), not after up to ``full_every``.
4. The writer stops, the killed replica comes back: every Config converges to its
   last acknowledged generation, and the harness's full invariants hold
   (``check_invariants``: histories, data = what Kubernetes held, status = head, no
   lock key left, replicas ready; and the write-log audit).

Sleeps are the *timing of the faults* (the schedule), never a way to wait for an
outcome: outcomes are awaited on conditions with deadlines, counted in resync
rounds read from each replica's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.chaos.harness import (
    Churner,
    Fleet,
    KubeAPI,
    Report,
    Writer,
    check_invariants,
    lock_holders,
    rand,
)
from tests.e2e.operator_env import OperatorProcess, wait_until
from tests.faultproxy import KINDS, MODES, FaultProxy

from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end
from etcdconfig.settings import Settings

TTL = 2
RESYNC = 1.0  # seconds between rounds: short, so ten rounds fit the test
FULL_EVERY = int(Settings.model_fields["resync_full_every"].default)
QUIET = 30  # Configs nobody writes: they settle, the skip leaves them alone
WRITTEN = 6
KEY = "config.json"
HANDOVER_ROUNDS = 2  # a full round right after the membership change; 1 spare
ROUNDS = "etcdconfig_resync_rounds_total"
MEMBERS = "etcdconfig_members"
SKIPPED = "etcdconfig_resync_skipped_total"
SESSION_LOST = "etcdconfig_session_lost_total"
# `make soak` multiplies every scenario's iterations (CI runs them once)
SCALE = max(1, int(os.environ.get("ETCDCONFIG_CHAOS_SCALE", "1")))


@pytest.fixture
def prefix() -> str:
    return f"/chaos-default-resync-{uuid.uuid4().hex[:8]}"


def _cm(name: str) -> str:
    return f"cm-{name}"


def _samples(replica: OperatorProcess) -> dict[str, float]:
    """The unlabelled samples of one scrape of the replica's /metrics."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(replica.metrics()):
        for s in family.samples:
            if not s.labels:
                found[s.name] = float(s.value)
    return found


async def _members(endpoint: str, prefix: str) -> tuple[str, ...]:
    client = EtcdClient(EtcdSettings(endpoints=[endpoint]))
    try:
        base = f"{prefix}/members/".encode()
        res = await client.range(base, prefix_end(base), keys_only=True)
        return tuple(sorted(kv.key[len(base) :].decode() for kv in res.kvs))
    finally:
        await client.close()


@dataclass
class Quiet:
    """The quiet Configs: their uids, and whether each one's ConfigMap holds its data."""

    api: KubeAPI
    namespace: str
    uids: dict[str, str]  # name -> uid

    def unpublished(self) -> list[str]:
        """Quiet Configs whose ConfigMap is missing, or does not hold the Config's data
        (two LISTs: a consistent, cheap look at all of them)."""
        ns = self.namespace
        status, configs = self.api.request("GET", self.api.config_path(ns))
        assert status == 200, (status, configs)
        status, cms = self.api.request("GET", f"/api/v1/namespaces/{ns}/configmaps")
        assert status == 200, (status, cms)
        data = {o["metadata"]["name"]: o["spec"]["data"] for o in configs["items"]}
        held: dict[str, Any] = {}
        for cm in cms["items"]:
            if cm["metadata"].get("deletionTimestamp"):
                continue
            try:
                held[cm["metadata"]["name"]] = json.loads((cm.get("data") or {}).get(KEY, ""))
            except ValueError:
                continue
        return [n for n in self.uids if held.get(_cm(n), object()) != data[n]]

    def drift(self, names: list[str], rng: random.Random, *, strict: bool = True) -> None:
        """Behind the operator's back: edit the published key (the annotations still
        name the head) or delete the ConfigMap, half and half; all at once (8 requests
        in flight), so the drift lands within a fraction of a resync round."""
        edits = {name: rng.random() < 0.5 for name in names}

        def one(name: str) -> None:
            path = f"/api/v1/namespaces/{self.namespace}/configmaps/{_cm(name)}"
            if edits[name]:
                body = {"data": {KEY: json.dumps({"drift": uuid.uuid4().hex})}}
                status, obj = self.api.request(
                    "PATCH", path, body, content_type="application/merge-patch+json"
                )
                ok = status == 200
            else:
                status, obj = self.api.request("DELETE", path)
                ok = status in (200, 202)
            assert ok or (not strict and status == 404), (name, status, obj)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, names))  # re-raises a failed request's assertion


def _repaired_within(
    quiet: Quiet,
    replicas: Mapping[str, OperatorProcess],
    owner: dict[str, str],
    base: dict[str, float],
    limit: int,
    timeout: float,
    what: str,
) -> dict[str, int]:
    """Wait until no quiet Config is unpublished. Each must be repaired before its
    owner has completed ``limit`` resync rounds since ``base`` (the owner's count
    then); returns, per Config, how many of its owner's rounds had completed when
    it was first seen repaired."""
    deadline = time.monotonic() + timeout
    repaired_at: dict[str, int] = {}
    while True:
        # rounds first, then the ConfigMaps: a Config still drifted after its owner's
        # `limit`-th round was not repaired within `limit` rounds
        done = {rid: int(_samples(r)[ROUNDS] - base[rid]) for rid, r in replicas.items()}
        left = set(quiet.unpublished())
        for name in quiet.uids:
            if name not in left:
                repaired_at.setdefault(name, done[owner[name]])
        if not left:
            return repaired_at
        late = sorted(n for n in left if done[owner[n]] >= limit)
        assert not late, (
            f"{what}: drift of {late} not repaired within {limit} resync rounds of their "
            f"owners ({ {n: owner[n] for n in late} }; rounds done {done})"
        )
        assert time.monotonic() < deadline, (
            f"{what}: drift of {sorted(left)} not repaired after {timeout}s "
            f"(rounds done {done}; the resync loop is stuck?)"
        )
        time.sleep(0.2)  # poll interval of a deadline-bounded wait


def _wait_rounds(replicas: Sequence[OperatorProcess], n: int, timeout: float, what: str) -> None:
    """Every replica completes ``n`` more resync rounds."""
    base = {r.replica_id: _samples(r)[ROUNDS] for r in replicas}
    wait_until(
        lambda: all(_samples(r)[ROUNDS] >= base[r.replica_id] + n for r in replicas),
        timeout,
        what,
        interval=0.2,
    )


def _lagging(api: KubeAPI, namespace: str, names: list[str]) -> dict[str, Any]:
    """Configs whose status has not observed their generation, or whose generation is
    behind the newest one the API server acknowledged for their uid."""
    lag: dict[str, Any] = {}
    for name in names:
        obj = api.get_config(namespace, name)
        meta, st = obj["metadata"], obj.get("status") or {}
        acked = api.ledger.newest.get((name, str(meta["uid"])), 0)
        if st.get("observedGeneration") != meta["generation"] or meta["generation"] < acked:
            lag[name] = (st.get("observedGeneration"), meta["generation"], acked)
    return lag


async def test_chaos_with_the_default_resync_skip_repairs_drift_and_hands_over_at_once(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path: Path,
    prefix: str,
) -> None:
    assert FULL_EVERY > 1, "the product's default no longer skips settled Configs"
    rng = rand()
    ns = namespace
    host, port = store_etcd.endpoint.split(":")
    proxies = [FaultProxy(host, int(port), prefix=prefix) for _ in range(3)]
    fleet = Fleet(
        control_plane,
        [p.endpoint for p in proxies],
        prefix,
        tmp_path,
        ttl=TTL,
        resync=RESYNC,
        resync_full_every=None,  # the product's default
    )
    for r in fleet.replicas:  # the last flag wins: the product's default
        cmd = r.command()
        last = len(cmd) - 1 - cmd[::-1].index("--resync-full-every")
        assert cmd[last + 1] == str(FULL_EVERY), cmd
    api = KubeAPI(control_plane)
    written = [f"w{i}" for i in range(WRITTEN)]
    quiet_names = [f"q{i:02d}" for i in range(QUIET)]
    writer = Writer(api, ns, written, interval=0.02)
    churner = Churner(api, ns, ["gone0", "gone1"], updates=1)
    client = EtcdClient(EtcdSettings(endpoints=[store_etcd.endpoint]))
    fired: dict[str, int] = {}
    try:
        fleet.start()
        for name in written:
            api.create_config(ns, name, {"n": -1})
        quiet = Quiet(api, ns, {})
        for name in quiet_names:
            obj = api.create_config(
                ns, name, {"name": name, "n": 0}, publish={"configMap": {"name": _cm(name)}}
            )
            quiet.uids[name] = str(obj["metadata"]["uid"])
        wait_until(lambda: not quiet.unpublished(), 60, "every quiet Config published", 0.5)
        writer.start()
        churner.start()

        # --- 1. chaos ----------------------------------------------------------------------
        paused = kills = 0
        iterations = 6 * SCALE
        for i in range(iterations):
            quiet.drift(rng.sample(quiet_names, 4), rng, strict=False)
            fault = i % 3
            if fault == 0:
                fleet.kill_and_restart(rng.randrange(3))
                kills += 1
                time.sleep(rng.uniform(0.5, 1.5))  # the schedule: let it rejoin under load
            elif fault == 1:
                holders: list[str] = []
                deadline = time.monotonic() + 5
                while not holders and time.monotonic() < deadline:
                    holders = await lock_holders(client, prefix)
                    if not holders:
                        await asyncio.sleep(0.005)  # poll for a holder to freeze
                idx = fleet.index_of(rng.choice(holders)) if holders else None
                victim = fleet.replicas[idx if idx is not None else rng.randrange(3)]
                victim.pause()
                time.sleep(1.5 * TTL + 0.5)  # the fault: frozen past its lease TTL
                victim.resume_if_paused()
                paused += 1
            else:
                proxy = proxies[rng.randrange(3)]
                # timeout: silent past the operator's 5 s etcd deadline
                proxy.arm(rng.choice(KINDS), times=2, mode=rng.choice(MODES[:3]), hold=5.5)
                deadline = time.monotonic() + 3
                while proxy.armed_left and time.monotonic() < deadline:
                    time.sleep(0.05)  # the schedule: let the fault meet its calls
                proxy.disarm()
        for p in proxies:
            p.disarm()
            for f in p.fired:
                fired[f"{f.kind}/{f.mode}"] = fired.get(f"{f.kind}/{f.mode}", 0) + 1
        churner.stop()
        fleet.ensure_running()
        # the chaos' drift, settled Configs' included: repaired (their turn comes)
        wait_until(lambda: not quiet.unpublished(), 90, "chaos drift repaired", 0.5)
        wait_until(
            lambda: not _lagging(api, ns, [*quiet_names, *churner.names]),
            90,
            "quiet and churned Configs to converge",
            0.5,
        )
        # a resync reconcile that changed a status settles the Config the round after
        _wait_rounds(fleet.replicas, 3, 60, "3 resync rounds: quiet Configs settled")

        # --- 2. drift of settled Configs, membership stable --------------------------------
        members = await _members(store_etcd.endpoint, prefix)
        ids = {r.replica_id: r for r in fleet.replicas}
        assert members == tuple(sorted(ids)), members
        owner = {n: str(rendezvous_owner(members, u)) for n, u in quiet.uids.items()}
        lost_before = fleet.metric(SESSION_LOST)
        skipped_before = fleet.metric(SKIPPED)
        base = {rid: _samples(r)[ROUNDS] for rid, r in ids.items()}
        quiet.drift(quiet_names, rng)
        at = _repaired_within(
            quiet, ids, owner, base, FULL_EVERY + 1, 90, "settled Configs, members stable"
        )
        assert fleet.metric(SKIPPED) > skipped_before, "no round skipped a settled Config"
        stable = fleet.metric(SESSION_LOST) == lost_before and all(
            _samples(r)[MEMBERS] == len(ids) for r in ids.values()
        )
        print(f"[chaos default-resync] drift repaired after rounds {sorted(at.values())}")
        if stable:
            # the scenario meets the skip: some drift waited for its Config's turn
            assert max(at.values()) >= 3, f"every drift repaired at once: {at}"

        # --- 3. a hand-over: a replica dies, the next round is a full one ------------------
        _wait_rounds(fleet.replicas, 2, 60, "2 resync rounds: repaired Configs settled")
        members = await _members(store_etcd.endpoint, prefix)
        assert members == tuple(sorted(ids)), members
        owner = {n: str(rendezvous_owner(members, u)) for n, u in quiet.uids.items()}
        counts = {rid: sum(o == rid for o in owner.values()) for rid in ids}
        dead = min((rid for rid in ids if counts[rid] >= 2), key=lambda rid: counts[rid])
        survivors = {rid: r for rid, r in ids.items() if rid != dead}
        after = tuple(sorted(survivors))
        new_owner = {n: str(rendezvous_owner(after, u)) for n, u in quiet.uids.items()}
        orphans = [n for n in quiet_names if owner[n] == dead]
        lost_before = fleet.metric(SESSION_LOST)
        drifted = {rid: _samples(r)[ROUNDS] for rid, r in survivors.items()}
        quiet.drift(quiet_names, rng)
        ids[dead].kill()
        # a spec change while its owner is dead (no replica's kopf acts on it: the owner
        # is still the dead one until its lease expires); its new owner records it
        changed = orphans[:2]
        for name in changed:
            assert api.patch_data(ns, name, {"name": name, "n": 1}) is not None

        left: list[str] = []  # drift not repaired yet, just before the survivors saw it

        def saw_departure() -> dict[str, float] | None:
            seen = {rid: _samples(r) for rid, r in survivors.items()}
            if all(s[MEMBERS] == len(survivors) for s in seen.values()):
                return {rid: s[ROUNDS] for rid, s in seen.items()}
            left[:] = quiet.unpublished()
            return None

        base = wait_until(saw_departure, 3 * TTL + 15, "the survivors to see the departure")
        # the survivors' own settled drift, which the skip would still have left alone
        pending = sorted(n for n in left if owner[n] != dead)
        at = _repaired_within(
            quiet,
            dict(survivors),
            new_owner,
            base,
            HANDOVER_ROUNDS,
            60,
            f"after {dead} died",
        )
        stable = fleet.metric(SESSION_LOST) == lost_before
        print(
            f"[chaos default-resync] {dead} killed: {len(orphans)} quiet Configs handed over, "
            f"{len(pending)} survivors' drifted Configs left before the hand-over, "
            f"{ {rid: int(base[rid] - drifted[rid]) for rid in survivors} } rounds after the "
            f"drift; repaired after rounds {sorted(at.values())}"
        )
        if stable:
            assert pending, "the survivors repaired every drift before the hand-over"
        # published means recorded; the status patch follows the publish
        wait_until(lambda: not _lagging(api, ns, changed), 15, f"{changed} observed")

        # --- 4. the end: convergence and the full invariants -------------------------------
        writer.stop()
        fleet.ensure_running()
        names = [*written, *quiet_names, *churner.names]
        wait_until(
            lambda: not _lagging(api, ns, names),
            90,
            "every Config to converge to its last acknowledged generation",
            0.5,
        )
        checked = await check_invariants(
            api, [store_etcd.endpoint], prefix, ns, names, fleet=fleet, timeout=60
        )
        assert not quiet.unpublished()
        report = Report(
            "default-resync",
            iterations,
            len(names),
            checked.versions,
            writer.updates,
            checked.lost,
            checked.duplicated,
            {
                "kills": kills,
                "paused": paused,
                "faults": dict(sorted(fired.items())),
                "incarnations": len(churner.incarnations),
                "writes": checked.audit.writes,
                "acks": api.ledger.acks,
                "skipped": int(fleet.metric(SKIPPED)),
            },
        )
        report.print()
        assert (checked.lost, checked.duplicated) == (0, 0)
    finally:
        await client.close()
        writer.stop()
        churner.halt()
        for p in proxies:
            p.disarm()
        fleet.stop()
        for p in proxies:
            p.close()
