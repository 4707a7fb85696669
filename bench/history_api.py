#!/usr/bin/env python3
"""History API benchmark: reading the recorded history through kube-apiserver's
aggregation layer (``history.etcdconfig.io``) against reading it straight from etcd.

One control plane (etcd + kube-apiserver + kube-controller-manager, started by the
benchmark in a temporary directory), a separate etcd for the versioned store and one
``etcdconfig run`` with the history API on, registered behind a real APIService the
way tests/e2e/history_env.py does it: an ``ExternalName`` Service naming 127.0.0.1
(kube-apiserver's aggregator resolves it directly) and a serving certificate issued
for ``<service>.<namespace>.svc`` by a CA given as the APIService's ``caBundle``.

The operator records one Config with N versions (100; ``--quick`` 20) and a few other
Configs next to it (through the API server, each change waited for until recorded).
Then, in the same run, in interleaved rounds (one sample of every operation per round,
in an order reversed every other round, so that the noise of a shared machine lands
on every side alike):

baseline, in-process (``etcd_history``, ``etcd_get``)
    ``VersionedStore.history(ns, name, limit=50)`` and ``VersionedStore.get_version``
    on the store etcd, one ``EtcdClient`` (one gRPC channel) in the benchmark process.
through the aggregation layer, as a user would (``admin_*``)
    HTTPS to kube-apiserver with the admin client certificate of the kubeconfig, one
    keep-alive connection (aiohttp): the list
    ``GET /apis/history.etcdconfig.io/v1alpha1/namespaces/NS/configversions?``
    ``labelSelector=etcdconfig.io/config=NAME&limit=50`` (``admin_list``), a ``get``
    of one version (``admin_get``) and the list as a ``Table`` (``admin_table``,
    ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``, what ``kubectl get``
    sends). The JSON answer is read and decoded (as the baseline's records are).
    The request goes client → kube-apiserver (authentication, RBAC) → the operator
    (front-proxy authentication, SubjectAccessReview, verified store reads) and back.
a user bound to ``etcdconfig-history-reader`` (``reader_*``)
    The same requests with a non-admin client certificate (a user in a group bound to
    the reader ClusterRole in the namespace). ``*_cached``: the operator's
    SubjectAccessReview answer for that user and access is in its cache (the version
    names a ``get`` asks for were all asked once during the warm-up; the operator runs
    with ``ETCDCONFIG_HISTORY_API_AUTHZ_TTL`` = 3600 so that nothing expires during the
    run). ``*_uncached``: each round a new user of that group (its TLS connection
    opened beforehand by an unauthorized discovery request, which needs no review)
    makes its very first list and its very first get: each waits for a
    SubjectAccessReview to the API server.

The admin's requests are reviewed and cached alike (the operator reviews every user),
so ``admin_*`` and ``reader_*_cached`` differ only in how kube-apiserver authorizes
the user (``system:masters`` vs RBAC).

Every figure is the nearest-rank p50 and p99 of its samples in ms, and the ratio to
the baseline of the same run: lists and tables against ``etcd_history``, gets against
``etcd_get``.

Usage::

    .venv/bin/python bench/history_api.py            # 100 versions, 500 rounds (~1 min)
    .venv/bin/python bench/history_api.py --quick    # 20 versions, 100 rounds (~20 s)
    .venv/bin/python bench/history_api.py --json     # only the JSON object on stdout

The run exits 0 whatever the figures are (there are no goals yet). ``--keep`` keeps
the temporary directory with every log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console
from rich.table import Table

from _cluster import Cluster, config_data, parallel, percentile, wait_until
from etcdconfig.devenv.etcd import free_port
from etcdconfig.devenv.pki import CertificateAuthority
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import VersionedStore

SERVICE = "etcdconfig-history"
APISERVICE = "v1alpha1.history.etcdconfig.io"
READER_ROLE = "etcdconfig-history-reader"
READERS_GROUP = "bench-history-readers"
GROUP_PATH = "/apis/history.etcdconfig.io/v1alpha1"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
NAMESPACE = "bench-history"
CONFIG = "payments"
OTHERS = 5  # other Configs in the namespace, 3 versions each
PAGE = 50
AUTHZ_TTL = 3600  # nothing the warm-up cached expires during the run

# (figure, the baseline it is compared with)
FIGURES: dict[str, str | None] = {
    "etcd_history": None,
    "etcd_get": None,
    "admin_list": "etcd_history",
    "admin_get": "etcd_get",
    "admin_table": "etcd_history",
    "reader_list_cached": "etcd_history",
    "reader_get_cached": "etcd_get",
    "reader_table_cached": "etcd_history",
    "reader_list_uncached": "etcd_history",
    "reader_get_uncached": "etcd_get",
}


@dataclass(frozen=True)
class Params:
    versions: int  # versions of the measured Config
    rounds: int  # one sample of every operation per round


DEFAULT = Params(versions=100, rounds=500)
QUICK = Params(versions=20, rounds=100)


# --- the APIService (the minimum of tests/e2e/history_env.py) ---------------------------------


def reader_role() -> dict[str, Any]:
    """The chart's ClusterRole users bind per namespace (charts/etcdconfig/templates)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": READER_ROLE},
        "rules": [
            {
                "apiGroups": ["history.etcdconfig.io"],
                "resources": ["configversions", "confighistories"],
                "verbs": ["get", "list"],
            }
        ],
    }


def registration(service_ns: str, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": service_ns}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": service_ns},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": "history.etcdconfig.io",
                "version": "v1alpha1",
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
                "service": {"name": SERVICE, "namespace": service_ns, "port": port},
                "caBundle": base64.b64encode(ca_pem).decode(),
            },
        },
        reader_role(),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "bench-history-readers", "namespace": NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": READER_ROLE,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": READERS_GROUP}
            ],
        },
    ]


def apiservice_available(cluster: Cluster) -> bool:
    out = cluster.plane.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    if out.returncode != 0:
        return False
    conds = json.loads(out.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conds)


def start_history_api(cluster: Cluster, prefix: str) -> None:
    """One operator serving the history API, registered behind the APIService."""
    service_ns = f"bench-history-api-{uuid.uuid4().hex[:8]}"
    certs = cluster.workdir / "history-api-certs"
    certs.mkdir()
    ca = CertificateAuthority.load_or_create(certs, "history-ca")
    ca.issue(
        certs / "serving",
        common_name=SERVICE,
        server=True,
        dns_names=(f"{SERVICE}.{service_ns}.svc",),
    )
    port = free_port()
    proc = cluster.operator("etcdconfig-history", prefix, namespaces=[NAMESPACE])
    proc.env = {
        **proc.env,
        "ETCDCONFIG_HISTORY_API_ENABLED": "true",
        "ETCDCONFIG_HISTORY_API_ADDR": "127.0.0.1",
        "ETCDCONFIG_HISTORY_API_PORT": str(port),
        "ETCDCONFIG_HISTORY_API_CERT_FILE": str(certs / "serving.crt"),
        "ETCDCONFIG_HISTORY_API_KEY_FILE": str(certs / "serving.key"),
        "ETCDCONFIG_HISTORY_API_AUTHZ_TTL": str(AUTHZ_TTL),
    }
    proc.start()
    wait_until(proc.ready, 90, "the operator's /readyz")
    cluster.plane.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all(registration(service_ns, port, ca.cert_path.read_bytes())),
    )
    wait_until(lambda: apiservice_available(cluster), 90, "APIService Available", interval=0.5)


def record_history(cluster: Cluster, versions: int, progress: Callable[[str], None]) -> None:
    """CONFIG with ``versions`` versions and OTHERS Configs of 3 versions each, recorded
    by the operator (each change waited for, so that none is merged into the next)."""
    api, watch = cluster.api, cluster.watch
    progress(f"recording {CONFIG} with {versions} versions and {OTHERS} other Configs")
    api.create_config(NAMESPACE, CONFIG, config_data(0))
    watch.wait_recorded(NAMESPACE, [CONFIG], 1, 120)
    others = [f"other-{i}" for i in range(OTHERS)]
    parallel(lambda n: api.create_config(NAMESPACE, n, config_data(1)), others)
    for revision in (1, 2):
        gens = parallel(
            lambda n, r=revision: api.patch_data(NAMESPACE, n, config_data(r, r)), others
        )
        watch.wait_recorded(NAMESPACE, others, dict(zip(others, gens, strict=True)), 120)
    for i in range(1, versions):
        gen = api.patch_data(NAMESPACE, CONFIG, config_data(i, i))
        watch.wait_recorded(NAMESPACE, [CONFIG], gen, 60)


# --- clients ------------------------------------------------------------------------------------


class Client:
    """One user's keep-alive HTTPS connection to kube-apiserver."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.server = server
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=1),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def get(self, path: str, accept: str = "application/json") -> Any:
        async with self.session.get(self.server + path, headers={"Accept": accept}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status} {body[:300]!r}")
        return json.loads(body)

    async def close(self) -> None:
        await self.session.close()


def list_path(name: str = CONFIG) -> str:
    return (
        f"{GROUP_PATH}/namespaces/{NAMESPACE}/configversions"
        f"?labelSelector=etcdconfig.io/config={name}&limit={PAGE}"
    )


def get_path(version: int) -> str:
    return f"{GROUP_PATH}/namespaces/{NAMESPACE}/configversions/{CONFIG}.v{version}"


async def timed(op: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await op()
    return (time.perf_counter() - started) * 1000


@dataclass
class Bench:
    cluster: Cluster
    prefix: str
    params: Params
    progress: Callable[[str], None]

    def user_client(self, name: str) -> Client:
        plane = self.cluster.plane
        plane.add_user(name, (READERS_GROUP,))
        users = plane.pki_dir / "users"
        return Client(
            plane.server, plane.pki_dir / "ca.crt", users / f"{name}.crt", users / f"{name}.key"
        )

    async def run(self) -> dict[str, Any]:
        plane = self.cluster.plane
        etcd = EtcdClient(EtcdSettings(endpoints=[self.cluster.store.endpoint]))
        await etcd.connect()
        store = VersionedStore(etcd, prefix=self.prefix)
        admin = Client(
            plane.server,
            plane.pki_dir / "ca.crt",
            plane.pki_dir / "admin.crt",
            plane.pki_dir / "admin.key",
        )
        reader = self.user_client("bench-reader")
        try:
            return await self.measure(store, admin, reader)
        finally:
            await admin.close()
            await reader.close()
            await etcd.close()

    async def measure(self, store: VersionedStore, admin: Client, reader: Client) -> dict[str, Any]:
        p = self.params
        n = p.versions
        page = min(PAGE, n)

        async def etcd_history() -> None:
            records, _ = await store.history(NAMESPACE, CONFIG, limit=PAGE)
            assert len(records) == page, len(records)

        def api_list(client: Client, accept: str = "application/json") -> Callable[[], Any]:
            async def op() -> None:
                obj = await client.get(list_path(), accept)
                rows = obj["rows"] if accept == TABLE else obj["items"]
                assert len(rows) == page, len(rows)

            return op

        # the version a round's gets read (all of them in turn)
        version = 1

        async def etcd_get() -> None:
            record = await store.get_version(NAMESPACE, CONFIG, version)
            assert record.version == version

        def api_get(client: Client) -> Callable[[], Any]:
            async def op() -> None:
                obj = await client.get(get_path(version))
                assert obj["version"] == version

            return op

        # warm-up: connections, the operator's review cache for every version name
        self.progress("warm-up: every version once per client")
        wait_until_ok = time.monotonic() + 60
        while True:
            try:
                await api_list(admin)()
                break
            except RuntimeError:  # 503 a moment after the APIService became Available
                if time.monotonic() > wait_until_ok:
                    raise
                await asyncio.sleep(0.5)  # retry interval of a deadline-bounded wait
        for v in range(1, n + 1):
            version = v  # read by etcd_get and api_get
            for op in (etcd_get, api_get(admin), api_get(reader)):
                await op()
        for op in (etcd_history, api_list(admin), api_list(admin, TABLE)):
            await op()
        for op in (api_list(reader), api_list(reader, TABLE)):
            await op()

        self.progress(f"{p.rounds} interleaved rounds")
        samples: dict[str, list[float]] = {k: [] for k in FIGURES}
        ops: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("etcd_history", etcd_history),
            ("etcd_get", etcd_get),
            ("admin_list", api_list(admin)),
            ("admin_get", api_get(admin)),
            ("admin_table", api_list(admin, TABLE)),
            ("reader_list_cached", api_list(reader)),
            ("reader_get_cached", api_get(reader)),
            ("reader_table_cached", api_list(reader, TABLE)),
            ("uncached", lambda: asyncio.sleep(0)),  # its place in the order, see below
        ]
        for r in range(p.rounds):
            version = r % n + 1
            # a new user: its connection opened by discovery (reviewed by nobody), then
            # its first list and its first get, each waiting for a SubjectAccessReview
            fresh = self.user_client(f"bench-reader-{r}")
            try:
                await fresh.get(GROUP_PATH)
                for key, op in ops if r % 2 == 0 else reversed(ops):
                    if key != "uncached":
                        samples[key].append(await timed(op))
                        continue
                    samples["reader_list_uncached"].append(await timed(api_list(fresh)))
                    samples["reader_get_uncached"].append(await timed(api_get(fresh)))
            finally:
                await fresh.close()
        return figures_from(samples, p)


def figures_from(samples: dict[str, list[float]], p: Params) -> dict[str, Any]:
    f: dict[str, Any] = {"versions": p.versions, "page": min(PAGE, p.versions)}
    f["rounds"] = p.rounds
    for key, base in FIGURES.items():
        f[f"{key}_samples"] = len(samples[key])
        f[f"{key}_p50_ms"] = percentile(samples[key], 50)
        f[f"{key}_p99_ms"] = percentile(samples[key], 99)
        if base is not None:
            f[f"{key}_p50_ratio"] = f[f"{key}_p50_ms"] / f[f"{base}_p50_ms"]
            f[f"{key}_p99_ratio"] = f[f"{key}_p99_ms"] / f[f"{base}_p99_ms"]
    # what a SubjectAccessReview adds to a request (p50 of uncached - p50 of cached)
    for kind in ("list", "get"):
        f[f"reader_{kind}_review_ms"] = (
            f[f"reader_{kind}_uncached_p50_ms"] - f[f"reader_{kind}_cached_p50_ms"]
        )
    return f


# --- report -------------------------------------------------------------------------------------

LABELS = {
    "etcd_history": "etcd: VersionedStore.history(limit=50)",
    "etcd_get": "etcd: VersionedStore.get_version",
    "admin_list": "admin: list (labelSelector, limit=50)",
    "admin_get": "admin: get one version",
    "admin_table": "admin: list as Table",
    "reader_list_cached": "reader: list, review cached",
    "reader_get_cached": "reader: get, review cached",
    "reader_table_cached": "reader: list as Table, review cached",
    "reader_list_uncached": "reader: first list (review uncached)",
    "reader_get_uncached": "reader: first get (review uncached)",
}


def render(console: Console, f: dict[str, Any]) -> None:
    table = Table(
        title=(
            f"etcdconfig history API benchmark — {f['versions']} versions, page of "
            f"{f['page']}, {f['rounds']} rounds, {f['elapsed_s']} s"
        ),
        caption=(
            "baseline: the store read in-process from etcd (one gRPC channel); the others: "
            "HTTPS to kube-apiserver (one keep-alive connection per user), through the "
            "aggregation layer to the operator, answer decoded; lists and tables vs "
            "etcd history, gets vs etcd get_version; interleaved rounds, same run; "
            "uncached: a new user's first request per round"
        ),
        caption_justify="left",
    )
    for i, column in enumerate(["figure", "n", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio"]):
        table.add_column(column, justify="left" if i == 0 else "right")
    for key, base in FIGURES.items():
        ratios = (
            (f"{f[f'{key}_p50_ratio']:.1f}×", f"{f[f'{key}_p99_ratio']:.1f}×")
            if base is not None
            else ("", "")
        )
        table.add_row(
            LABELS[key],
            str(f[f"{key}_samples"]),
            f"{f[f'{key}_p50_ms']:.2f}",
            f"{f[f'{key}_p99_ms']:.2f}",
            *ratios,
        )
    console.print(table)
    console.print(
        f"a SubjectAccessReview adds (p50 uncached − p50 cached): list "
        f"{f['reader_list_review_ms']:.1f} ms, get {f['reader_get_review_ms']:.1f} ms"
    )


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark the history API through kube-apiserver against etcd (ratios).",
    )
    ap.add_argument("--quick", action="store_true", help="a smaller run (under a minute)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--versions", type=int, help="versions of the measured Config")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (samples per figure)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    return ap.parse_args(argv)


def params_from(args: argparse.Namespace) -> Params:
    p = QUICK if args.quick else DEFAULT
    for name in ("versions", "rounds"):
        value = getattr(args, name)
        if value is not None:
            p = replace(p, **{name: value})
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = params_from(args)
    err = Console(stderr=True)

    def progress(text: str) -> None:
        if not args.json:
            err.log(text)

    started = time.monotonic()
    prefix = f"/etcdconfig-bench-{uuid.uuid4().hex[:8]}"
    with Cluster(progress, keep=args.keep) as cluster:
        cluster.api.create_namespace(NAMESPACE)
        progress("starting the operator with the history API and its APIService")
        start_history_api(cluster, prefix)
        record_history(cluster, params.versions, progress)
        figures = asyncio.run(Bench(cluster, prefix, params, progress).run())
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        render(Console(width=None if sys.stdout.isatty() else 130), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
