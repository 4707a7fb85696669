"""Chaos harness: several operator replicas as processes; a ledger of every write the
API server acknowledged (from the POST/PATCH answers themselves), fed by a writer
and a delete/re-create churner; fault proxies in front of etcd
(``tests/faultproxy.py``); and the invariant checkers, which read etcd directly.

The checkers:

- ``check_invariants``: every Config converged; versions 1..N gapless, no
  (uid, generation) twice, generations and fencing revisions increasing, head =
  newest record, chain intact, status = head; every record's data is what
  Kubernetes held at its (uid, generation); the final generation recorded; no
  lock key left; every replica ready (``/readyz`` 200) with its resync and
  membership tasks up; and the write-log audit below.
- ``audit_write_log``: replays every write ever made under the prefix (an etcd
  watch from revision 1, so versions a Purge removed later are seen too) and
  checks that each version was written once, by the lock owner of that moment
  (its fencing revision was the oldest lock key just before), never over an
  existing key, never for a uid after that uid's deletion was recorded, with the
  data the ledger says; that each (uid, generation) was recorded at most once and
  a uid's generations only increase; and that versions are removed only by a
  Purge of their own uid or by retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.operator_env import OperatorProcess, wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings, Event, prefix_end
from etcdconfig.settings import Settings
from etcdconfig.store import VersionedStore

GROUP_PATH = "/apis/etcdconfig.io/v1alpha1"


class Ledger:
    """What the API server acknowledged, read from its answers to our POST/PATCH:
    ``(uid, generation) → spec.data``, and per name and uid the newest acknowledged
    generation. A write whose answer was lost may have landed: its payload is kept
    in ``lost`` (a record holding it is not an invention)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.data: dict[tuple[str, int], Any] = {}
        self.newest: dict[tuple[str, str], int] = {}  # (name, uid) -> generation
        self.lost: dict[str, list[Any]] = defaultdict(list)
        self.acks = 0

    def ack(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (str(meta["uid"]), int(meta["generation"]))
        data = (obj.get("spec") or {}).get("data")
        with self._lock:
            seen = self.data.setdefault(key, data)
            assert seen == data, f"the API acknowledged two datas at {key}"
            nk = (str(meta["name"]), key[0])
            self.newest[nk] = max(self.newest.get(nk, 0), key[1])
            self.acks += 1

    def lose(self, name: str, data: Any) -> None:
        with self._lock:
            self.lost[name].append(data)

    def explains(self, name: str, uid: str, generation: int, data: Any) -> str | None:
        """None if ``data`` is what Kubernetes held at (uid, generation); else why not."""
        with self._lock:
            if (uid, generation) in self.data:
                held = self.data[(uid, generation)]
                return None if held == data else f"Kubernetes held {held!r} there"
            if any(d == data for d in self.lost[name]):
                return None  # a write whose answer was lost
        return "Kubernetes never acknowledged that (uid, generation)"


class KubeAPI:
    """A small, thread-safe admin client for the API server (faster than kubectl).
    Every acknowledged create or spec patch goes into ``ledger``."""

    def __init__(self, plane: ControlPlane, ledger: Ledger | None = None) -> None:
        self.host, port = plane.server.removeprefix("https://").split(":")
        self.port = int(port)
        ctx = ssl.create_default_context(cafile=str(plane.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(plane.pki_dir / "admin.crt"), str(plane.pki_dir / "admin.key"))
        self.ctx = ctx
        self.ledger = ledger or Ledger()

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=15)
        try:
            payload = json.dumps(body) if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def config_path(self, namespace: str, name: str = "") -> str:
        base = f"{GROUP_PATH}/namespaces/{namespace}/configs"
        return f"{base}/{name}" if name else base

    def try_create(self, namespace: str, name: str, spec: dict[str, Any]) -> tuple[int, Any]:
        """POST a Config; (status, object). Status 0: the answer was lost."""
        body = {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        try:
            status, obj = self.request("POST", self.config_path(namespace), body)
        except OSError:
            self.ledger.lose(name, spec.get("data"))
            return 0, None
        if status == 201:
            self.ledger.ack(obj)
        elif status >= 500:
            self.ledger.lose(name, spec.get("data"))
        return status, obj

    def create_config(
        self, namespace: str, name: str, data: dict[str, Any], **spec: Any
    ) -> dict[str, Any]:
        # retention off unless a scenario asks: the checks read every version from 1
        spec.setdefault("history", {"maxVersions": 100000})
        status, obj = self.try_create(namespace, name, {"data": data, **spec})
        assert status == 201, (status, obj)
        return dict(obj)

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the spec; the object as acknowledged, or None without an answer."""
        try:
            status, obj = self.request(
                "PATCH",
                self.config_path(namespace, name),
                {"spec": spec},
                content_type="application/merge-patch+json",
            )
        except OSError:
            self.ledger.lose(name, spec.get("data"))
            return None
        if status == 200:
            self.ledger.ack(obj)
            return dict(obj)
        if status >= 500:
            self.ledger.lose(name, spec.get("data"))
        return None

    def patch_data(self, namespace: str, name: str, data: dict[str, Any]) -> int | None:
        """Returns the acknowledged generation, or None if the API did not acknowledge."""
        obj = self.patch_spec(namespace, name, {"data": data})
        return int(obj["metadata"]["generation"]) if obj is not None else None

    def delete_config(self, namespace: str, name: str, uid: str) -> int:
        """DELETE that incarnation (uid precondition); the HTTP status, 0 without an answer."""
        try:
            status, _ = self.request(
                "DELETE",
                self.config_path(namespace, name),
                {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}},
            )
        except OSError:
            return 0
        return status

    def burst(
        self, namespace: str, name: str, datas: list[dict[str, Any]]
    ) -> tuple[list[int | None], float]:
        """Send one PATCH per item at once over pre-opened connections; returns the
        acknowledged generations and the time from the first send to the last answer."""
        conns = []
        for _ in datas:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=15)
            conn.connect()
            conns.append(conn)
        barrier = threading.Barrier(len(datas))
        gens: list[int | None] = [None] * len(datas)
        ends: list[float] = [time.monotonic()] * len(datas)

        def send(i: int) -> None:
            barrier.wait()
            try:
                conns[i].request(
                    "PATCH",
                    self.config_path(namespace, name),
                    body=json.dumps({"spec": {"data": datas[i]}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                resp = conns[i].getresponse()
                obj = json.loads(resp.read())
            except OSError:
                self.ledger.lose(name, datas[i])
                return
            ends[i] = time.monotonic()
            if resp.status == 200:
                self.ledger.ack(obj)
                gens[i] = int(obj["metadata"]["generation"])
            elif resp.status >= 500:
                self.ledger.lose(name, datas[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(datas))]
        for t in threads:
            t.start()
        started = time.monotonic()
        for t in threads:
            t.join(30)
        for c in conns:
            c.close()
        return gens, max(ends) - started

    def get_config(self, namespace: str, name: str) -> dict[str, Any]:
        status, obj = self.request("GET", self.config_path(namespace, name))
        assert status == 200, (status, obj)
        return dict(obj)

    def find_config(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, obj = self.request("GET", self.config_path(namespace, name))
        return dict(obj) if status == 200 else None


@dataclass
class Writer:
    """Applies a stream of updates to many Configs from a background thread."""

    api: KubeAPI
    namespace: str
    names: list[str]
    interval: float = 0.02
    acked: dict[str, int] = field(default_factory=dict)
    updates: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        tag = uuid.uuid4().hex[:6]  # every payload is unique across writers
        while not self._stop.is_set():
            name = self.names[i % len(self.names)]
            gen = self.api.patch_data(self.namespace, name, {"n": i, "w": tag, "pad": "x" * 64})
            if gen is not None:
                self.acked[name] = max(self.acked.get(name, 0), gen)
                self.updates += 1
            i += 1
            self._stop.wait(self.interval)  # pacing of the load, not synchronisation

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


@dataclass
class Incarnation:
    name: str
    uid: str
    policy: str  # deletionPolicy: Retain | Purge
    updates: int = 0
    delete_acked: bool = False
    delete_unknown: bool = False  # a DELETE was sent and its answer lost (it may land late)


class Churner:
    """Churns Configs from a background thread: create (deletionPolicy alternating
    Retain / Purge per incarnation of a name), ``updates`` spec patches, delete, and
    again — the create is refused (409) while the previous incarnation is still being
    finalised, so each name goes through incarnations as fast as the operator
    records their deletions. Every acknowledged write goes into the API's ledger."""

    def __init__(
        self,
        api: KubeAPI,
        namespace: str,
        names: list[str],
        *,
        updates: int = 2,
        interval: float = 0.02,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.names = names
        self.updates_per = updates
        self.interval = interval
        self.incarnations: dict[str, Incarnation] = {}  # uid -> incarnation
        self.current: dict[str, Incarnation | None] = dict.fromkeys(names)
        self._turn: dict[str, int] = dict.fromkeys(names, 0)
        self.creates = self.updates = self.deletes = 0
        self.odd: Counter[str] = Counter()  # unexpected answers, for the report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tag = uuid.uuid4().hex[:6]
        self._seq = 0

    def _data(self, name: str) -> dict[str, Any]:
        self._seq += 1
        return {"name": name, "seq": self._seq, "w": self._tag}

    def _step(self, name: str) -> None:
        cur = self.current[name]
        if cur is None:
            policy = ("Retain", "Purge")[self._turn[name] % 2]
            status, obj = self.api.try_create(
                self.namespace,
                name,
                {
                    "data": self._data(name),
                    "deletionPolicy": policy,
                    "history": {"maxVersions": 100000},  # nothing pruned: all history audited
                },
            )
            if status == 201:
                inc = Incarnation(name, str(obj["metadata"]["uid"]), policy)
                self.incarnations[inc.uid] = inc
                self.current[name] = inc
                self._turn[name] += 1
                self.creates += 1
            return  # 409: the previous incarnation is still being finalised
        if cur.updates < self.updates_per:
            if self.api.patch_spec(self.namespace, name, {"data": self._data(name)}) is not None:
                cur.updates += 1
                self.updates += 1
            return
        status = self.api.delete_config(self.namespace, name, cur.uid)
        if status in (200, 202, 404):
            cur.delete_acked = status != 404
            self.current[name] = None
            self.deletes += 1
        else:
            self.odd[f"DELETE {status}"] += 1
            cur.delete_unknown = True

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self._step(self.names[i % len(self.names)])
            i += 1
            self._stop.wait(self.interval)  # pacing of the load, not synchronisation

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def stop(self, settle: float = 90.0) -> None:
        """Stop churning, then make sure every name has a live incarnation again (its
        predecessor's deletion must complete: that waits for the operator)."""
        self.halt()

        def settled() -> bool:
            for name in self.names:
                cur = self.current[name]
                if cur is not None and cur.delete_unknown:
                    # a DELETE whose answer was lost (a timeout under load) may still
                    # land, after any check here: send it again until an answer says
                    # what happened (409: the uid no longer holds the name)
                    status = self.api.delete_config(self.namespace, name, cur.uid)
                    if status not in (200, 202, 404, 409):
                        return False
                    cur.delete_acked = status in (200, 202)
                    self.current[name] = None
                    self.deletes += 1
                    cur = None
                if cur is not None:  # a deletion whose answer was lost may have landed
                    obj = self.api.find_config(self.namespace, name)
                    meta = obj["metadata"] if obj is not None else {}
                    if meta.get("uid") != cur.uid or meta.get("deletionTimestamp"):
                        cur.delete_acked = True
                        self.current[name] = None
                if self.current[name] is None:
                    self._step(name)
            return all(self.current[n] is not None for n in self.names)

        wait_until(settled, settle, "every deleted Config to be finalised and re-created")

    @property
    def gone(self) -> list[Incarnation]:
        """Incarnations deleted for good (another one holds the name now)."""
        live = {inc.uid for inc in self.current.values() if inc is not None}
        return [inc for uid, inc in self.incarnations.items() if uid not in live]


@dataclass
class ChaosReplica(OperatorProcess):
    """An operator process with extra environment (settings without a flag)."""

    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.plane.client_env(), **self.env},
                start_new_session=True,
            )
        self.starts += 1


class Fleet:
    """``n`` operator replicas sharing one store prefix."""

    def __init__(
        self,
        plane: ControlPlane,
        endpoints: list[str],
        prefix: str,
        workdir: Path,
        n: int = 3,
        ttl: int = 2,
        resync: float = 2.0,
        resync_concurrency: int | None = None,
        resync_full_every: int | None = 1,
    ) -> None:
        """``resync_full_every``: 1 by default (every round reconciles every Config: the
        scenarios time repairs by rounds); None: the product's default, passed explicitly
        (``OperatorProcess`` sets 1; the last flag wins)."""
        self.plane = plane
        self.prefix = prefix
        env = {}
        if resync_concurrency is not None:
            env["ETCDCONFIG_RESYNC_CONCURRENCY"] = str(resync_concurrency)
        if resync_full_every is None:
            resync_full_every = int(Settings.model_fields["resync_full_every"].default)
        self.replicas = [
            ChaosReplica(
                plane=plane,
                etcd_endpoint=endpoints[i % len(endpoints)],
                prefix=prefix,
                workdir=workdir,
                replica_id=f"replica-{i}",
                extra=(
                    "--lock-ttl",
                    str(ttl),
                    "--resync-interval",
                    str(resync),
                    "--resync-full-every",
                    str(resync_full_every),
                    "--acquire-timeout",
                    "10",
                ),
                env=env,
            )
            for i in range(n)
        ]
        self.restarts = 0

    def start(self) -> None:
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            r.wait_ready(90)

    def alive(self, i: int) -> bool:
        p = self.replicas[i].proc
        return p is not None and p.poll() is None

    def kill_and_restart(self, i: int) -> None:
        self.replicas[i].kill()
        self.replicas[i].start()
        self.restarts += 1

    def ensure_running(self) -> None:
        for r in self.replicas:
            r.resume_if_paused()
            if r.proc is None or r.proc.poll() is not None:
                r.start()
        for r in self.replicas:
            r.wait_ready(90)

    def stop(self) -> None:
        for r in self.replicas:
            r.resume_if_paused()
            r.stop()

    def index_of(self, replica_id: str) -> int | None:
        for i, r in enumerate(self.replicas):
            if r.replica_id == replica_id:
                return i
        return None

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of one metric sample over the running replicas (counters restart
        with their process)."""
        total = 0.0
        pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", re.M)
        for r in self.replicas:
            if r.proc is None or r.proc.poll() is not None or r.paused:
                continue
            with contextlib.suppress(OSError):
                total += sum(float(m) for m in pattern.findall(r.metrics()))
        return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def lock_holders(client: EtcdClient, prefix: str) -> list[str]:
    """Replica ids currently holding some Config lock (the oldest key per Config)."""
    base = f"{prefix}/locks/configs/".encode()
    res = await client.range(base, prefix_end(base), sort_by_create=True)
    seen: dict[str, str] = {}
    for kv in res.kvs:
        cfg = "/".join(kv.key[len(base) :].decode().split("/")[:2])
        seen.setdefault(cfg, kv.value.decode())
    return list(seen.values())


@dataclass
class Report:
    scenario: str
    iterations: int
    configs: int
    versions: int
    updates: int
    lost: int = 0
    duplicated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def print(self) -> None:
        fields = " ".join(f"{k}={v}" for k, v in self.extra.items())
        print(
            f"\n[chaos {self.scenario}] iterations={self.iterations} configs={self.configs} "
            f"updates_acked={self.updates} versions={self.versions} lost={self.lost} "
            f"duplicated={self.duplicated} {fields}"
        )


# --- the write log --------------------------------------------------------------------------------


@dataclass
class Audit:
    """What replaying every write under a prefix found."""

    writes: int = 0  # version records ever written
    tombstones: dict[str, int] = field(default_factory=dict)  # uid -> revision of its deletion
    purged: dict[str, bool] = field(default_factory=dict)  # uid -> its deletion purged
    written: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # uid -> [(cfg, v)]
    live: dict[str, dict[int, str]] = field(default_factory=dict)  # cfg -> version -> uid (end)
    problems: list[str] = field(default_factory=list)


async def write_log(client: EtcdClient, prefix: str) -> list[tuple[int, list[Event]]]:
    """Every event under ``{prefix}/`` since revision 1, grouped by revision (one
    group = one transaction). Ends at a marker written now."""
    base = f"{prefix.rstrip('/')}/".encode()
    marker = base + b"~chaos-audit/" + uuid.uuid4().hex.encode()
    await client.put(marker, b"")
    groups: dict[int, list[Event]] = defaultdict(list)
    async with asyncio.timeout(120):
        async for _rev, events in client.watch(
            base, prefix_end(base), start_revision=1, prev_kv=True
        ):
            for ev in events:
                if ev.kv.key == marker:
                    return sorted(groups.items())
                groups[ev.kv.mod_revision].append(ev)
    raise AssertionError("the write log ended before its marker")


def _config_of(key: str, root: str, sub: str, namespace: str) -> tuple[str, str] | None:
    """``{root}/{sub}/{namespace}/{name}/{rest}`` -> ("namespace/name", rest)."""
    base = f"{root}/{sub}/{namespace}/"
    if not key.startswith(base):
        return None
    parts = key[len(base) :].split("/", 1)
    if len(parts) < 2:
        return None
    return f"{namespace}/{parts[0]}", parts[1]


async def audit_write_log(client: EtcdClient, prefix: str, ledger: Ledger, namespace: str) -> Audit:
    """The write log of the Configs of ``namespace`` (replicas watch every namespace:
    an earlier test's leftovers may be recorded under this prefix too)."""
    root = prefix.rstrip("/")
    audit = Audit()
    locks: dict[str, dict[str, int]] = defaultdict(dict)  # cfg -> lock key -> create rev
    versions: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)  # cfg -> v -> record
    seen_pairs: dict[tuple[str, str, int], int] = {}
    last_gen: dict[tuple[str, str], int] = {}
    problems = audit.problems
    for rev, events in await write_log(client, prefix):
        heads: dict[str, dict[str, Any]] = {}
        ended: dict[str, set[str]] = defaultdict(set)  # cfg -> uids whose deletion this is
        purgers: dict[str, set[str]] = defaultdict(set)  # cfg -> uids purging in this txn
        for ev in events:
            where = _config_of(ev.kv.key.decode(), root, "configs", namespace)
            if not where or ev.type != "PUT":
                continue
            if where[1] == "head":
                heads[where[0]] = json.loads(ev.kv.value)
                marks = heads[where[0]]
            elif where[1].startswith("incarnations/"):
                # the uid's incarnation record (a store that keeps one marks deletions there)
                marks = json.loads(ev.kv.value)
            else:
                continue
            if marks.get("deleted"):
                ended[where[0]].add(str(marks["uid"]))
                if marks.get("purged"):
                    purgers[where[0]].add(str(marks["uid"]))
        # 1. records written in this transaction, against the state just before it
        for ev in events:
            where = _config_of(ev.kv.key.decode(), root, "configs", namespace)
            if not where or not where[1].startswith("versions/"):
                continue
            cfg, rest = where
            number = int(rest.split("/", 1)[1])
            if ev.type == "PUT":
                rec = json.loads(ev.kv.value)
                uid, gen = str(rec["uid"]), int(rec["generation"])
                audit.writes += 1
                audit.written.setdefault(uid, []).append((cfg, number))
                owner = min(locks[cfg].values(), default=None)
                if owner != rec.get("fencingRevision"):
                    problems.append(
                        f"{cfg} v{number} ({uid}/{gen}) written at revision {rev} with fencing "
                        f"revision {rec.get('fencingRevision')}, but the lock owner was {owner}"
                    )
                if number in versions[cfg]:
                    problems.append(f"{cfg} v{number} overwritten at revision {rev}")
                if (cfg, uid, gen) in seen_pairs:
                    problems.append(
                        f"{cfg}: ({uid}, {gen}) recorded twice (revisions "
                        f"{seen_pairs[(cfg, uid, gen)]} and {rev})"
                    )
                seen_pairs[(cfg, uid, gen)] = rev
                if last_gen.get((cfg, uid), 0) >= gen:
                    problems.append(
                        f"{cfg} v{number}: generation {gen} of {uid} recorded at revision {rev} "
                        f"after its generation {last_gen[(cfg, uid)]}"
                    )
                last_gen[(cfg, uid)] = max(gen, last_gen.get((cfg, uid), 0))
                if uid in audit.tombstones:
                    problems.append(
                        f"{cfg} v{number}: {uid}/{gen} recorded at revision {rev}, after that "
                        f"uid's deletion was recorded at revision {audit.tombstones[uid]}"
                    )
                why = ledger.explains(cfg.split("/")[1], uid, gen, rec.get("data"))
                if why is not None:
                    problems.append(f"{cfg} v{number} ({uid}/{gen}) holds data that {why}")
            else:
                old = versions[cfg].get(number)
                old_uid = old["uid"] if old else None
                head = heads.get(cfg)
                if purgers[cfg]:
                    if old_uid not in purgers[cfg]:
                        problems.append(
                            f"{cfg} v{number} of uid {old_uid} removed at revision {rev} by the "
                            f"Purge of another incarnation ({sorted(purgers[cfg])})"
                        )
                elif not (head and not head.get("deleted") and number < int(head["version"])):
                    problems.append(
                        f"{cfg} v{number} of uid {old_uid} removed at revision {rev} by "
                        "neither its own Purge nor retention"
                    )
        # 2. deletions recorded, and heads, in this transaction
        for cfg, uids in ended.items():
            for uid in uids:
                audit.tombstones.setdefault(uid, rev)
                audit.purged[uid] = audit.purged.get(uid, False) or uid in purgers[cfg]
        for cfg, head in heads.items():
            uid = str(head["uid"])
            if not head.get("deleted") and uid in audit.tombstones:
                problems.append(
                    f"{cfg}: head points to uid {uid} again at revision {rev}, after its "
                    f"deletion was recorded at revision {audit.tombstones[uid]}"
                )
        # 3. apply the transaction
        for ev in events:
            key = ev.kv.key.decode()
            lock = _config_of(key, root, "locks/configs", namespace)
            if lock:
                if ev.type == "PUT":
                    locks[lock[0]].setdefault(key, ev.kv.create_revision)
                else:
                    locks[lock[0]].pop(key, None)
                continue
            where = _config_of(key, root, "configs", namespace)
            if where and where[1].startswith("versions/"):
                number = int(where[1].split("/", 1)[1])
                if ev.type == "PUT":
                    versions[where[0]][number] = json.loads(ev.kv.value)
                else:
                    versions[where[0]].pop(number, None)
    audit.live = {
        cfg: {v: str(r["uid"]) for v, r in recs.items()} for cfg, recs in versions.items()
    }
    return audit


# --- readiness --------------------------------------------------------------------------------


def readiness(replica: OperatorProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{replica.http_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace").strip()
    except OSError as exc:
        return 0, str(exc)


def background_tasks(replica: OperatorProcess) -> dict[str, float]:
    """``etcdconfig_background_task_up`` per task, from the replica's /metrics."""
    found = re.findall(
        r'^etcdconfig_background_task_up\{task="([^"]+)"\} ([0-9.e+-]+)$', replica.metrics(), re.M
    )
    return {task: float(v) for task, v in found}


def assert_replicas_ready(fleet: Fleet, timeout: float = 30.0) -> None:
    """Every replica answers /readyz 200, and its supervised background tasks —
    resync and the membership watch among them — are up."""
    for r in fleet.replicas:
        deadline = time.monotonic() + timeout
        status, body = readiness(r)
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # poll interval of a deadline-bounded wait
            status, body = readiness(r)
        assert status == 200, f"{r.replica_id} /readyz {status}: {body}\n{r.log_tail(15)}"
        tasks = background_tasks(r)
        assert any("resync" in t for t in tasks) and any("membership" in t for t in tasks), (
            f"{r.replica_id}: no etcdconfig_background_task_up for resync and membership: {tasks}"
        )
        down = {t: v for t, v in tasks.items() if v != 1.0}
        assert not down, f"{r.replica_id}: background tasks not up: {down}"


async def _wait_no_lock_keys(
    client: EtcdClient, prefix: str, namespace: str, timeout: float
) -> None:
    base = f"{prefix}/locks/configs/{namespace}/".encode()
    deadline = time.monotonic() + timeout
    while True:
        res = await client.range(base, prefix_end(base))
        if not res.kvs:
            return
        if time.monotonic() > deadline:
            left = [f"{kv.key.decode()} ({kv.value.decode()})" for kv in res.kvs]
            raise AssertionError(f"lock keys left {timeout}s after convergence: {left}")
        await asyncio.sleep(0.2)  # poll interval of a deadline-bounded wait


# --- the checker ---------------------------------------------------------------------------------


@dataclass
class Checked:
    versions: int  # records retained now
    lost: int  # Configs whose final generation is not recorded
    duplicated: int  # retained records repeating a (uid, generation)
    audit: Audit


async def check_invariants(
    api: KubeAPI,
    endpoints: list[str],
    prefix: str,
    namespace: str,
    names: list[str],
    *,
    fleet: Fleet,
    timeout: float = 120.0,
) -> Checked:
    """For each Config: converged (status observed the final generation), versions
    1..N gapless, no (uid, generation) twice, generations and fencing revisions
    strictly increasing, the final generation recorded, every record's data what
    Kubernetes held at its (uid, generation), head = last version, checksum chain
    intact, status agrees with head. Then: the write-log audit, no lock key left,
    every replica ready with its background tasks up."""
    from tests.integration.helpers import assert_history_invariants

    def converged() -> bool:
        for name in names:
            obj = api.get_config(namespace, name)
            st = obj.get("status") or {}
            if (
                st.get("observedGeneration") != obj["metadata"]["generation"]
                or st.get("version") is None
            ):
                return False
            ready = [c for c in st.get("conditions") or [] if c["type"] == "Ready"]
            if not ready or ready[0]["status"] != "True":
                return False
        return True

    wait_until(converged, timeout, "every Config to converge", interval=0.5)
    ledger = api.ledger
    client = EtcdClient(EtcdSettings(endpoints=endpoints))
    store = VersionedStore(client, prefix=prefix)
    total = lost = duplicated = 0
    try:
        for name in names:
            obj = api.get_config(namespace, name)
            uid, final = str(obj["metadata"]["uid"]), int(obj["metadata"]["generation"])
            records, _ = await store.history(namespace, name, limit=100000)
            pairs = [(r.uid, r.generation) for r in records]
            duplicated += len(pairs) - len(set(pairs))
            lost += 0 if any(r.generation == final and r.uid == uid for r in records) else 1
            await assert_history_invariants(client, prefix, namespace, name, final_generation=final)
            fencing = [r.fencing_revision for r in reversed(records)]
            assert fencing == sorted(set(fencing)), (
                f"{name}: a write was not fenced in order: {fencing}"
            )
            for r in records:
                why = ledger.explains(name, r.uid, r.generation, r.data)
                assert why is None, f"{name} v{r.version} ({r.uid}/{r.generation}): {why}"
            acked = ledger.newest.get((name, uid), 0)
            assert acked <= final, f"{name}: acknowledged generation {acked} > final {final}"
            head = await store.head(namespace, name)
            assert head is not None
            # status is not the record: a replica that lost ownership mid-reconcile can
            # patch an older status (kopf's unguarded patch, see handlers._apply) until
            # the owner's next resync round repairs it; wait for that round, not longer
            deadline = time.monotonic() + 30.0
            while (obj["status"].get("version"), obj["status"].get("checksum")) != (
                head.version,
                head.checksum,
            ) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)  # polling the API server for the resync's repair
                obj = api.get_config(namespace, name)
            assert obj["status"]["version"] == head.version
            assert obj["status"]["checksum"] == head.checksum
            total += len(records)
        audit = await audit_write_log(client, prefix, ledger, namespace)
        assert not audit.problems, "write-log audit:\n" + "\n".join(audit.problems[:30])
        await _wait_no_lock_keys(client, prefix, namespace, 15.0)
    finally:
        await client.close()
    assert_replicas_ready(fleet)
    return Checked(total, lost, duplicated, audit)


def rand() -> random.Random:
    seed = int(time.time())
    print(f"[chaos] random seed {seed}")
    return random.Random(seed)
