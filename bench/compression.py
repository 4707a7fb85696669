#!/usr/bin/env python3
"""Compression benchmark: what compressing version records would save (issue #16).

A measurement only: nothing here changes the store. Each data set is recorded by
the real ``VersionedStore.commit`` (in process, against a client that keeps what
the commit transaction puts; a real ``Mutex`` holding the lock, a head at version
41 of the same uid read with it), so the record measured is byte for byte what the
store writes to ``versions/{N}`` today: version 42 with its ``parentChecksum``,
``author``, ``origin``, ``fencingRevision``. The bench checks that the bytes hash
to the head's ``recordChecksum`` and that its own serialisation (the baseline
below) writes the same bytes.

Data sets (``{kind}_{size}``; deterministic, ``--seed``)
--------------------------------------------------------
``example_payments``, ``example_feature_flags``
    ``spec.data`` (and ``spec.schema``) of the Configs in ``examples/``.
``repo_crd``, ``repo_chart_values``, ``repo_values_schema``
    real documents written by people, as a Config's data: the CRD
    (``crds/etcdconfig.io_configs.yaml``), the chart's ``values.yaml`` and
    ``values.schema.json`` (≈8.6, 2.6 and 7.3 KB of canonical JSON): a check on
    the synthetic kinds below, whose values come from small vocabularies.
``app``
    an application config: a map of services, each with image, replicas,
    resources, env, database pool, HTTP timeouts and retries, probes, logging and a
    build commit id: nested objects whose key names repeat per service.
``flags``
    a feature-flag map: ``team.feature`` → a boolean, or ``{enabled, rollout,
    segments, owner, expires, description}``.
``routes``
    a list of routes with ACLs: host, path prefix, methods, backend, timeouts,
    retries, allowed and denied CIDRs.
``rules``
    a Prometheus rules file (alerting rules, YAML) stored as one string.
``pem``
    certificates: PEM blocks of random DER bytes, base64 key material and
    fingerprints (poorly compressible: a reference, not part of ``mix``).

Each synthetic kind is built at ≈1, 4, 16, 64, 256 KiB and ≈1 MiB of canonical
data (``1k`` … ``1m``; the first item past the size or the last before it,
whichever is closer). ``1m`` is over ``MAX_DATA_BYTES`` (512 KiB): the operator
refuses such data today, so that row shows only the trend. ``mix`` at a size is
the four structured kinds (``app``, ``flags``, ``routes``, ``rules``) together:
bytes and µs summed over them, then divided.

What is measured
----------------
Codecs: ``zlib1``, ``zlib6`` (stdlib ``zlib``, levels 1 and 6) and ``zstd1``,
``zstd3``, ``zstd9`` (the ``zstandard`` package from PyPI, one compressor object
per level reused, the frame carrying the content size) when it can be imported;
when not, the zstd figures are ``null`` and ``zstd_available`` is false.

Two shapes of a compressed record:

value (binary)
    the whole stored record compressed: the etcd value is a zlib or zstd frame
    instead of JSON (the frame's magic tells it from a JSON ``{``); etcdctl
    shows binary.
b64 (stays JSON)
    only ``data`` compressed and base64-encoded, spliced into the record as a
    string, with ``"dataEncoding": "<codec>"`` added and ``format: 2``; the rest
    of the record stays readable with ``etcdctl get``.

Sizes: ``stored_bytes`` (the record today), ``value_bytes``/``b64_bytes`` (the
record in each shape), ``saved_ratio`` = 1 − compressed ÷ stored (0.7: 70 % fewer
bytes; negative: larger).

CPU: µs per call of each codec's compress and decompress, next to a baseline
measured in the same run and interleaved with it: the time the store already
spends serialising that record canonically (``canonical_json`` of the data, then
``canonical_object`` splicing it with every other field canonicalised: the two
lines of ``VersionedStore._commit_once`` that build ``record_raw``). value:
compress the record bytes / decompress them. b64: compress the canonical data and
base64-encode / base64-decode and decompress. Each subject is timed in repeats of
enough calls to last ``--min-time`` seconds (garbage collection off); the
subjects of one data set take turns repeat by repeat and each figure is the median
of its repeats. Ratios are µs ÷ the baseline's µs.

Fleet: the issue's reference point, 10,000 Configs × 100 versions × 10 KB of data
(the four structured kinds built at 10,000 bytes of data, averaged): the record
bytes held today and the bytes each codec would save (values only: keys, heads,
the MVCC history before compaction and bbolt's pages come on top, unchanged).

JSON keys
---------
per data set ``{set}`` (e.g. ``app_16k``, ``example_payments``) and codec
``{codec}`` (``zlib1`` … ``zstd9``):
``data_bytes_{set}``, ``stored_bytes_{set}``, ``canonical_us_{set}``,
``value_bytes_{codec}_{set}``, ``b64_bytes_{codec}_{set}``,
``saved_ratio_{codec}_{set}``, ``saved_ratio_b64_{codec}_{set}``,
``compress_us_{codec}_{set}``, ``decompress_us_{codec}_{set}``,
``compress_us_vs_canonical_{codec}_{set}``,
``decompress_us_vs_canonical_{codec}_{set}`` and the same four timings with
``_b64`` after the figure's name (``compress_us_b64_{codec}_{set}``, …).
per size ``{size}`` (``1k`` … ``1m``), the mix: ``stored_bytes_{size}``,
``saved_ratio_{codec}_{size}``, ``saved_ratio_b64_{codec}_{size}``,
``compress_us_vs_canonical_{codec}_{size}``,
``decompress_us_vs_canonical_{codec}_{size}`` (and ``_b64`` variants).
fleet: ``fleet_configs``, ``fleet_versions``, ``fleet_data_bytes``,
``fleet_stored_bytes``, ``fleet_saved_bytes_{codec}``,
``fleet_saved_bytes_b64_{codec}``, ``fleet_saved_ratio_{codec}``, and per kind
``fleet_saved_bytes_{codec}_{kind}``.
Also ``sets``, ``sizes``, ``codecs``, ``zstd_available``, ``zstd_version``,
``zstd_error``, ``elapsed_s``, ``seed``. A zstd figure is ``null`` when zstd is
not available.

Usage::

    .venv/bin/python bench/compression.py            # 1-2 min, prints tables
    .venv/bin/python bench/compression.py --quick    # under 10 s
    .venv/bin/python bench/compression.py --json     # only the JSON object on stdout

It needs no etcd and exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import random
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import yaml
from rich.console import Console
from rich.table import Table

from etcdconfig.canonical import canonical_json, canonical_object, sha256_of
from etcdconfig.concurrency import Mutex, Session
from etcdconfig.etcd import (
    EtcdClient,
    KeyValue,
    Put,
    Range,
    RangeResult,
    TxnResult,
)
from etcdconfig.models import MAX_DATA_BYTES
from etcdconfig.store import ChangeRequest, Head, Keys, VersionedStore
from etcdconfig.store.records import Incarnation, Sizes, dump

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# real configuration documents written by people, stored as a Config's data
REPO_SETS = {
    "repo_crd": "crds/etcdconfig.io_configs.yaml",
    "repo_chart_values": "charts/etcdconfig/values.yaml",
    "repo_values_schema": "charts/etcdconfig/values.schema.json",
}

SIZES: dict[str, int] = {
    "1k": 1024,
    "4k": 4 * 1024,
    "16k": 16 * 1024,
    "64k": 64 * 1024,
    "256k": 256 * 1024,
    "1m": 1024 * 1024,
}
MIX_KINDS = ("app", "flags", "routes", "rules")
KINDS = (*MIX_KINDS, "pem")
ZLIB_LEVELS = (1, 6)
ZSTD_LEVELS = (1, 3, 9)
CODECS = tuple(f"zlib{n}" for n in ZLIB_LEVELS) + tuple(f"zstd{n}" for n in ZSTD_LEVELS)
SHAPES = ("value", "b64")

FLEET_CONFIGS = 10_000
FLEET_VERSIONS = 100
FLEET_DATA_BYTES = 10_000
ETCD_QUOTA = 8 * 1024**3  # etcd's largest recommended --quota-backend-bytes

NAMESPACE = "team-payments"
PREVIOUS_VERSION = 41  # the head the measured commit builds on (version 42 is measured)


@dataclass(frozen=True)
class Params:
    repeats: int  # timing repeats per subject (the median is kept)
    min_time: float  # seconds one repeat lasts at least (more calls per repeat)


DEFAULT = Params(repeats=7, min_time=0.02)
QUICK = Params(repeats=1, min_time=0.001)


# --- codecs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _zlib(level: int) -> Codec:
    return Codec(f"zlib{level}", lambda b: zlib.compress(b, level), zlib.decompress)


def load_codecs() -> tuple[dict[str, Codec | None], str | None, str | None]:
    """Every codec of ``CODECS`` (None: not available), zstandard's version, and why
    zstd is not available (None when it is)."""
    codecs: dict[str, Codec | None] = {c.name: c for c in map(_zlib, ZLIB_LEVELS)}
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        for level in ZSTD_LEVELS:
            codecs[f"zstd{level}"] = None
        return codecs, None, f"zstandard not importable ({exc}); zlib only"
    decompressor = zstandard.ZstdDecompressor()
    for level in ZSTD_LEVELS:
        compressor = zstandard.ZstdCompressor(level=level)
        codecs[f"zstd{level}"] = Codec(f"zstd{level}", compressor.compress, decompressor.decompress)
    return codecs, str(zstandard.__version__), None


# --- data sets ----------------------------------------------------------------------------------

_ENCODE = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode

_VOCABULARY = (
    "account activity address alert api audit auth backend balance batch billing "
    "cache capacity card cart catalog checkout client cluster config connection "
    "consumer count currency customer daily data database delivery deploy device "
    "discount dispatch email endpoint error event export feature fraud gateway "
    "health history identity image import inventory invoice job key latency ledger "
    "limit list login merchant message metric mobile notification order partner "
    "payment payout pending pipeline plan pool price product profile queue quota "
    "rate receipt refund region report request retry risk route schedule search "
    "service session settlement shipping signup storage stream subscription sync "
    "tax tenant threshold timeout token traffic transfer upload user vendor wallet "
    "warehouse webhook worker"
)
WORDS = tuple(_VOCABULARY.split())
TEAMS = ("payments", "checkout", "identity", "search", "platform", "growth", "risk", "ledger")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


def _sentence(rng: random.Random, lo: int = 6, hi: int = 16) -> str:
    text = " ".join(_words(rng, lo, hi))
    return text[0].upper() + text[1:] + "."


def _hex(rng: random.Random, chars: int) -> str:
    return f"{rng.getrandbits(4 * chars):0{chars}x}"


def _date(rng: random.Random) -> str:
    return f"20{rng.randint(24, 27)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _cidr(rng: random.Random) -> str:
    return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/{rng.choice((16, 20, 24, 28))}"


def _service(rng: random.Random, team: str, svc: str, i: int) -> dict[str, Any]:
    def probe(path: str) -> dict[str, Any]:
        return {
            "path": path,
            "periodSeconds": rng.choice((5, 10, 15, 30)),
            "timeoutSeconds": rng.choice((1, 2, 5)),
            "failureThreshold": rng.choice((3, 5)),
        }

    env_keys = ("LOG_LEVEL", "REGION", "CACHE_TTL_SECONDS", "MAX_BATCH", "UPSTREAM_URL", "TZ")
    return {
        "image": f"registry.example.com/{team}/{svc}:{rng.randint(1, 9)}.{rng.randint(0, 40)}"
        f".{rng.randint(0, 20)}",
        "replicas": rng.choice((1, 2, 3, 5, 8)),
        "resources": {
            "requests": {
                "cpu": f"{rng.choice((100, 250, 500))}m",
                "memory": f"{rng.choice((128, 256, 512))}Mi",
            },
            "limits": {
                "cpu": f"{rng.choice((500, 1000, 2000))}m",
                "memory": f"{rng.choice((512, 1024, 2048))}Mi",
            },
        },
        "env": {
            k: rng.choice(("info", "debug", "eu-west-1", "300", "500", f"https://{svc}.internal"))
            for k in rng.sample(env_keys, rng.randint(2, len(env_keys)))
        },
        "database": {
            "host": f"pg-{rng.randint(0, 9)}.{team}.svc.cluster.local",
            "port": 5432,
            "name": f"{svc.replace('-', '_')}_{i}",
            "pool": {
                "min": rng.randint(1, 4),
                "max": rng.choice((10, 20, 50)),
                "idleTimeoutMs": rng.choice((10000, 30000, 60000)),
            },
        },
        "http": {
            "port": rng.choice((8080, 8443, 9090)),
            "timeouts": {
                "connectMs": rng.choice((250, 500, 1000)),
                "readMs": rng.choice((1000, 2000, 5000)),
                "writeMs": rng.choice((1000, 2000, 5000)),
            },
            "retries": {"attempts": rng.randint(0, 5), "backoffMs": rng.choice((50, 100, 200))},
        },
        "probes": {"liveness": probe("/healthz"), "readiness": probe("/readyz")},
        "logging": {
            "level": rng.choice(("debug", "info", "warn")),
            "format": rng.choice(("json", "logfmt")),
            "sampleRate": rng.choice((1, 10, 100)),
        },
        "build": {"commit": _hex(rng, 40), "builtAt": _date(rng) + "T12:00:00Z"},
    }


def _app(rng: random.Random) -> Iterator[tuple[str, Any]]:
    i = 0
    while True:
        i += 1
        team, svc = rng.choice(TEAMS), "-".join(_words(rng, 1, 2))
        yield f"{team}-{svc}-{i}", _service(rng, team, svc, i)


def _flags(rng: random.Random) -> Iterator[tuple[str, Any]]:
    i = 0
    while True:
        i += 1
        team = rng.choice(TEAMS)
        key = f"{team}.{''.join(w.capitalize() for w in _words(rng, 1, 3))}{i}"
        if rng.random() < 0.3:
            yield key, rng.random() < 0.5
            continue
        yield (
            key,
            {
                "enabled": rng.random() < 0.6,
                "rollout": rng.choice((0, 1, 5, 10, 25, 50, 100)),
                "segments": rng.sample(("beta", "staff", "eu", "us", "mobile", "enterprise"), 2),
                "owner": f"{team}@example.com",
                "expires": _date(rng),
                "description": _sentence(rng),
            },
        )


def _routes(rng: random.Random) -> Iterator[tuple[str | None, Any]]:
    i = 0
    while True:
        i += 1
        team, svc = rng.choice(TEAMS), "-".join(_words(rng, 1, 2))
        yield (
            None,
            {
                "name": f"{svc}-{i}",
                "match": {
                    "host": f"{svc}.example.com",
                    "pathPrefix": f"/api/v{rng.randint(1, 3)}/" + "/".join(_words(rng, 1, 3)),
                    "methods": sorted(rng.sample(METHODS, rng.randint(1, 3))),
                },
                "backend": {
                    "service": f"{svc}.{team}.svc.cluster.local",
                    "port": rng.choice((80, 8080, 8443)),
                    "weight": rng.choice((100, 90, 50, 10)),
                },
                "timeoutMs": rng.choice((1000, 3000, 10000)),
                "retries": {"attempts": rng.randint(0, 3), "on": ["5xx", "reset"]},
                "acl": {
                    "allow": [_cidr(rng) for _ in range(rng.randint(1, 5))],
                    "deny": [_cidr(rng) for _ in range(rng.randint(0, 2))],
                },
                "headers": {"x-team": team},
            },
        )


def _pem(rng: random.Random) -> Iterator[tuple[str, Any]]:
    i = 0
    while True:
        i += 1
        team, svc = rng.choice(TEAMS), rng.choice(WORDS)
        der = base64.b64encode(rng.randbytes(rng.randint(700, 1400))).decode()
        body = "\n".join(der[j : j + 64] for j in range(0, len(der), 64))
        yield (
            f"{svc}.{team}.{i}",
            {
                "certificate": f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n",
                "hmacKey": base64.b64encode(rng.randbytes(32)).decode(),
                "fingerprint": "sha256:" + _hex(rng, 64),
                "notAfter": _date(rng) + "T00:00:00Z",
            },
        )


def _rule(rng: random.Random, i: int) -> str:
    svc, team = rng.choice(WORDS), rng.choice(TEAMS)
    cond = rng.choice(("HighErrorRate", "HighLatency", "QueueBacklog", "PodRestarts"))
    window = rng.choice(("1m", "5m", "15m"))
    expr = rng.choice(
        (
            f'sum(rate(http_requests_total{{job="{svc}",code=~"5.."}}[{window}])) / '
            f'sum(rate(http_requests_total{{job="{svc}"}}[{window}])) > 0.0{rng.randint(1, 9)}',
            f"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket"
            f'{{job="{svc}"}}[{window}]))) > {rng.choice((0.25, 0.5, 1, 2))}',
            f'sum(queue_depth{{queue="{svc}"}}) > {rng.randint(100, 5000)}',
            f'increase(kube_pod_container_status_restarts_total{{namespace="{team}"}}[1h]) > 3',
        )
    )
    return (
        f"      - alert: {svc.capitalize()}{cond}{i}\n"
        f"        expr: {expr}\n"
        f"        for: {rng.choice(('2m', '5m', '10m', '30m'))}\n"
        f"        labels:\n"
        f"          severity: {rng.choice(('page', 'ticket', 'info'))}\n"
        f"          team: {team}\n"
        f"        annotations:\n"
        f"          summary: {_sentence(rng, 4, 9)}\n"
        f"          description: {_sentence(rng, 10, 24)}\n"
        f"          runbook_url: https://runbooks.example.com/{team}/{svc}-{cond.lower()}\n"
    )


def rules_data(rng: random.Random, target: int) -> dict[str, Any]:
    """A rules file as one string, grown rule by rule to about ``target`` bytes of data."""
    head = {"namespace": "monitoring", "format": "prometheus-rules/v1"}
    base = len(_ENCODE({**head, "rules": ""}))
    parts = ["groups:\n"]
    text_len = len(_ENCODE(parts[0])) - 2
    i = 0
    while True:
        i += 1
        piece = (f"  - name: {rng.choice(TEAMS)}.{i}.rules\n    rules:\n" if i % 8 == 1 else "") + (
            _rule(rng, i)
        )
        grown = text_len + len(_ENCODE(piece)) - 2
        if base + grown >= target:
            if base + grown - target < target - (base + text_len) or i == 1:
                parts.append(piece)
            break
        parts.append(piece)
        text_len = grown
    return {**head, "rules": "".join(parts)}


GENERATORS: dict[str, Callable[[random.Random], Iterator[tuple[str | None, Any]]]] = {
    "app": _app,
    "flags": _flags,
    "routes": _routes,
    "pem": _pem,
}
CONTAINER = {"app": "services", "flags": "flags", "routes": "routes", "pem": "certificates"}


def build_data(kind: str, target: int, seed: int) -> dict[str, Any]:
    """Data of ``kind`` whose canonical JSON is about ``target`` bytes: items are added
    while under it; the last one is kept if that lands closer to it."""
    rng = random.Random(f"{seed}/{kind}/{target}")
    if kind == "rules":
        return rules_data(rng, target)
    container = CONTAINER[kind]
    is_list = kind == "routes"
    size = len(_ENCODE({container: [] if is_list else {}}))
    items: list[tuple[str | None, Any]] = []
    for key, value in GENERATORS[kind](rng):
        item = len(_ENCODE(value)) + (0 if key is None else len(_ENCODE(key)) + 1)
        grown = size + item + (1 if items else 0)
        if grown >= target:
            if grown - target < target - size or not items:
                items.append((key, value))
            break
        items.append((key, value))
        size = grown
    if is_list:
        return {container: [v for _, v in items]}
    return {container: {str(k): v for k, v in items}}


def example_sets() -> list[tuple[str, dict[str, Any], Any]]:
    """``(name, spec.data, spec.schema)`` of every Config in ``examples/``, then the
    human-written ``REPO_SETS`` files as data (no schema)."""
    out: list[tuple[str, dict[str, Any], Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Config":
                spec = doc.get("spec") or {}
                name = "example_" + str(doc["metadata"]["name"]).replace("-", "_")
                out.append((name, spec.get("data") or {}, spec.get("schema")))
    for name, rel in REPO_SETS.items():
        path = ROOT / rel
        if path.is_file():
            doc = yaml.safe_load(path.read_text())
            if isinstance(doc, dict):
                out.append((name, doc, None))
    return out


# --- the record, as the store writes it ---------------------------------------------------------


class _CaptureClient:
    """Just enough of ``EtcdClient`` for one uncontended commit: every transaction
    succeeds; a ``Range`` in it reads what the same transaction put."""

    def __init__(self) -> None:
        self.puts: dict[bytes, bytes] = {}

    async def txn(self, compares: Any, success: Any, failure: Any = ()) -> TxnResult:
        responses: list[RangeResult | None] = []
        for op in success:
            if isinstance(op, Put):
                self.puts[op.key] = op.value
                responses.append(None)
            elif isinstance(op, Range):
                value = self.puts.get(op.key)
                kvs = () if value is None else (KeyValue(op.key, value, 900, 900, 1, 0),)
                responses.append(RangeResult(kvs=kvs, revision=900, more=False, count=len(kvs)))
            else:
                responses.append(None)
        return TxnResult(succeeded=True, revision=900, responses=tuple(responses))


def serialise(record: dict[str, Any]) -> bytes:
    """The record's bytes as ``VersionedStore._commit_once`` builds them: the data
    canonicalised once and spliced in with every other field canonicalised."""
    data_raw = canonical_json(record["data"])
    return canonical_object(
        {k: (data_raw if k == "data" else canonical_json(v, "record")) for k, v in record.items()}
    )


@dataclass
class Sample:
    name: str
    kind: str  # "example" (examples/ and REPO_SETS), or a generator's kind
    size: str | None  # the SIZES label, None for examples and the fleet sets
    record: dict[str, Any]
    stored: bytes
    data_raw: bytes
    over_limit: bool = False  # data over MAX_DATA_BYTES: the operator refuses it today
    bytes_: dict[str, dict[str, int]] = field(default_factory=dict)  # shape -> codec -> bytes
    us: dict[str, float] = field(default_factory=dict)  # subject -> µs per call


def record_with_store(name: str, data: dict[str, Any], schema: Any, seed: int) -> Sample:
    """Commit ``data`` as version 42 of a Config through the real store and return the
    record it put (checked against the head's record checksum and ``serialise``)."""
    rng = random.Random(f"{seed}/record/{name}")
    keys = Keys("/etcdconfig")
    config = name.replace("_", "-")
    uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    head_key = keys.head(NAMESPACE, config)
    inc_key = keys.incarnation(NAMESPACE, config, uid)
    sizes_key = keys.sizes(NAMESPACE, config)
    previous = Head(
        version=PREVIOUS_VERSION,
        uid=uid,
        generation=PREVIOUS_VERSION,
        checksum="sha256:" + _hex(rng, 64),
        record_checksum="sha256:" + _hex(rng, 64),
        recorded_at="2025-06-01T09:30:00.000Z",
    )
    incarnation = Incarnation(uid=uid, first_version=1, recorded_at="2025-01-10T08:00:00.000Z")
    sizes = Sizes(((PREVIOUS_VERSION, len(_ENCODE(data)) + 900),), head=previous.record_checksum)

    def kv(key: bytes, value: bytes) -> KeyValue:
        return KeyValue(key, value, 100, 800, PREVIOUS_VERSION, 0)

    session = cast("Session", SimpleNamespace(lease_id=0x694D9A2B1C3E4F50))
    mutex = Mutex(session, keys.locks().decode() + f"configs/{NAMESPACE}/{config}/")
    mutex.revision = 123_456_789
    mutex.held = True
    mutex.prefetched = {
        head_key: kv(head_key, dump(previous.to_json())),
        inc_key: kv(inc_key, dump(incarnation.to_json())),
        sizes_key: kv(sizes_key, dump(sizes.to_json())),
    }
    client = _CaptureClient()
    store = VersionedStore(
        cast("EtcdClient", client), replica_id="etcdconfig-7d9f8b6c5d-x2x9q", max_attempts=1
    )
    change = ChangeRequest(
        namespace=NAMESPACE,
        name=config,
        uid=uid,
        generation=PREVIOUS_VERSION + 1,
        data=data,
        schema=schema,
        author={
            "manager": "argocd-controller",
            "operation": "Apply",
            "time": "2025-06-02T10:15:00Z",
            "user": "system:serviceaccount:argocd:argocd-application-controller",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:argocd"],
            "source": "admission",
            "changeCause": f"sync {_hex(rng, 7)}: raise pool sizes for the June peak",
        },
        origin={"kind": "apply"},
    )
    result = asyncio.run(store.commit(change, mutex))
    stored = client.puts.get(keys.version(NAMESPACE, config, PREVIOUS_VERSION + 1))
    if not result.recorded or result.record is None or stored is None:
        raise RuntimeError(f"{name}: the store recorded nothing ({result})")
    if sha256_of(stored) != result.head.record_checksum:
        raise RuntimeError(f"{name}: the stored bytes do not hash to the head's recordChecksum")
    record = result.record.raw
    if serialise(record) != stored:
        raise RuntimeError(f"{name}: serialise() differs from the record the store wrote")
    data_raw = canonical_json(data)
    return Sample(
        name=name,
        kind="example",
        size=None,
        record=record,
        stored=stored,
        data_raw=data_raw,
        over_limit=len(data_raw) > MAX_DATA_BYTES,
    )


def b64_record(record: dict[str, Any], blob: bytes, codec: str) -> bytes:
    """The record in the JSON shape: ``data`` the base64 of its compressed canonical
    form, ``dataEncoding`` naming the codec, ``format`` 2."""
    members = {k: canonical_json(v, "record") for k, v in record.items() if k != "data"}
    members["format"] = b"2"
    members["data"] = canonical_json(base64.b64encode(blob).decode("ascii"), "record")
    members["dataEncoding"] = canonical_json(codec, "record")
    return canonical_object(members)


def measure_sizes(sample: Sample, codecs: dict[str, Codec | None]) -> None:
    sample.bytes_ = {"value": {}, "b64": {}}
    for name, codec in codecs.items():
        if codec is None:
            continue
        value = codec.compress(sample.stored)
        blob = codec.compress(sample.data_raw)
        if codec.decompress(value) != sample.stored or codec.decompress(blob) != sample.data_raw:
            raise RuntimeError(f"{name} does not round-trip {sample.name}")
        sample.bytes_["value"][name] = len(value)
        sample.bytes_["b64"][name] = len(b64_record(sample.record, blob, name))


# --- timing -------------------------------------------------------------------------------------


def subjects(sample: Sample, codecs: dict[str, Codec | None]) -> dict[str, Callable[[], object]]:
    """Name -> the call to time: the baseline ``canonical`` first, then each codec's
    compress and decompress in both shapes."""
    record, stored, data_raw = sample.record, sample.stored, sample.data_raw
    out: dict[str, Callable[[], object]] = {"canonical": lambda: serialise(record)}
    b64encode, b64decode = base64.b64encode, base64.b64decode
    for name, codec in codecs.items():
        if codec is None:
            continue
        c, d = codec.compress, codec.decompress
        value, blob = c(stored), b64encode(c(data_raw))
        out[f"compress_{name}"] = lambda c=c: c(stored)  # type: ignore[misc]
        out[f"decompress_{name}"] = lambda d=d, v=value: d(v)  # type: ignore[misc]
        out[f"compress_b64_{name}"] = lambda c=c: b64encode(c(data_raw))  # type: ignore[misc]
        out[f"decompress_b64_{name}"] = lambda d=d, b=blob: d(b64decode(b))  # type: ignore[misc]
    return out


def time_subjects(calls: dict[str, Callable[[], object]], params: Params) -> dict[str, float]:
    """µs per call of each subject: repeats interleaved across subjects, the median kept."""
    loops: dict[str, int] = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()  # warms up and calibrates: enough calls per repeat to last min_time
        one = max(time.perf_counter() - t0, 1e-7)
        loops[name] = max(1, int(params.min_time / one))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(params.repeats):
            for name, fn in calls.items():
                n = loops[name]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - t0) / n * 1e6)
    finally:
        if enabled:
            gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


# --- figures ------------------------------------------------------------------------------------


def build_samples(seed: int, progress: Callable[[str], None]) -> list[Sample]:
    samples: list[Sample] = []
    for name, data, schema in example_sets():
        samples.append(record_with_store(name, data, schema, seed))
    for label, target in SIZES.items():
        for kind in KINDS:
            progress(f"building {kind}_{label}")
            s = record_with_store(f"{kind}_{label}", build_data(kind, target, seed), None, seed)
            samples.append(replace(s, kind=kind, size=label))
    for kind in MIX_KINDS:
        data = build_data(kind, FLEET_DATA_BYTES, seed)
        s = record_with_store(f"fleet_{kind}", data, None, seed)
        samples.append(replace(s, kind=kind, size="fleet"))
    return samples


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else 0.0


def figures_of(samples: list[Sample], codecs: dict[str, Codec | None]) -> dict[str, Any]:
    f: dict[str, Any] = {}
    for s in samples:
        if s.size == "fleet":
            continue
        n = s.name
        f[f"data_bytes_{n}"] = len(s.data_raw)
        f[f"stored_bytes_{n}"] = len(s.stored)
        f[f"canonical_us_{n}"] = round(s.us["canonical"], 2)
        if s.over_limit:
            f[f"over_data_limit_{n}"] = True
        for c in CODECS:
            available = codecs.get(c) is not None
            for shape in SHAPES:
                tag = "" if shape == "value" else "b64_"
                size = s.bytes_[shape].get(c) if available else None
                f[f"{shape}_bytes_{c}_{n}"] = size
                f[f"saved_ratio_{tag}{c}_{n}"] = (
                    None if size is None else round(1 - size / len(s.stored), 4)
                )
                for op in ("compress", "decompress"):
                    us = s.us.get(f"{op}_{tag}{c}") if available else None
                    f[f"{op}_us_{tag}{c}_{n}"] = None if us is None else round(us, 2)
                    f[f"{op}_us_vs_canonical_{tag}{c}_{n}"] = (
                        None if us is None else _ratio(us, s.us["canonical"])
                    )
    for label in SIZES:
        mix = [s for s in samples if s.size == label and s.kind in MIX_KINDS]
        stored = sum(len(s.stored) for s in mix)
        canonical = sum(s.us["canonical"] for s in mix)
        f[f"stored_bytes_{label}"] = stored
        f[f"canonical_us_{label}"] = round(canonical, 2)
        for c in CODECS:
            available = codecs.get(c) is not None
            for shape in SHAPES:
                tag = "" if shape == "value" else "b64_"
                f[f"saved_ratio_{tag}{c}_{label}"] = (
                    round(1 - sum(s.bytes_[shape][c] for s in mix) / stored, 4)
                    if available
                    else None
                )
                for op in ("compress", "decompress"):
                    f[f"{op}_us_vs_canonical_{tag}{c}_{label}"] = (
                        _ratio(sum(s.us[f"{op}_{tag}{c}"] for s in mix), canonical)
                        if available
                        else None
                    )
    fleet = [s for s in samples if s.size == "fleet"]
    records = FLEET_CONFIGS * FLEET_VERSIONS
    mean_stored = sum(len(s.stored) for s in fleet) / len(fleet)
    f["fleet_configs"] = FLEET_CONFIGS
    f["fleet_versions"] = FLEET_VERSIONS
    f["fleet_data_bytes"] = FLEET_DATA_BYTES
    f["fleet_kinds"] = list(MIX_KINDS)
    f["fleet_record_bytes"] = round(mean_stored)
    f["fleet_stored_bytes"] = round(records * mean_stored)
    for c in CODECS:
        available = codecs.get(c) is not None
        for shape in SHAPES:
            tag = "" if shape == "value" else "b64_"
            if not available:
                f[f"fleet_saved_bytes_{tag}{c}"] = None
                f[f"fleet_saved_ratio_{tag}{c}"] = None
                continue
            mean_c = sum(s.bytes_[shape][c] for s in fleet) / len(fleet)
            f[f"fleet_saved_bytes_{tag}{c}"] = round(records * (mean_stored - mean_c))
            f[f"fleet_saved_ratio_{tag}{c}"] = round(1 - mean_c / mean_stored, 4)
        for s in fleet:
            f[f"fleet_saved_bytes_{c}_{s.kind}"] = (
                round(records * (len(s.stored) - s.bytes_["value"][c])) if available else None
            )
    return f


def run(
    params: Params, seed: int, progress: Callable[[str], None]
) -> tuple[dict[str, Any], list[Sample]]:
    started = time.perf_counter()
    codecs, zstd_version, zstd_error = load_codecs()
    if zstd_error:
        progress(zstd_error)
    samples = build_samples(seed, progress)
    for s in samples:
        measure_sizes(s, codecs)
        if s.size != "fleet":
            progress(f"timing {s.name} ({len(s.stored)} B)")
            s.us = time_subjects(subjects(s, codecs), params)
    figures: dict[str, Any] = {
        "seed": seed,
        "sets": [s.name for s in samples if s.size != "fleet"],
        "sizes": list(SIZES),
        "codecs": [c for c in CODECS if codecs.get(c) is not None],
        "zstd_available": zstd_error is None,
        "zstd_version": zstd_version,
        "zstd_error": zstd_error,
        "python": sys.version.split()[0],
        "repeats": params.repeats,
        "min_time_s": params.min_time,
    }
    figures.update(figures_of(samples, codecs))
    figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    return figures, samples


# --- output -------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.0f}%"


def _bytes(n: float) -> str:
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def render(console: Console, f: dict[str, Any]) -> None:
    codecs = CODECS
    zstd = f"zstandard {f['zstd_version']}" if f["zstd_available"] else "zstd: " + f["zstd_error"]
    rows: list[tuple[str, str]] = [(n, n) for n in f["sets"]]

    sizes = Table(
        title=f"record bytes saved by compression — {zstd}, Python {f['python']}",
        caption_justify="left",
        caption=(
            "stored: the version record as the store writes it today (canonical JSON); "
            "each cell: bytes saved compressing the whole value (binary) · only data, "
            "base64 in the JSON record (format 2); mix: app+flags+routes+rules summed; "
            "1m: over the 512 KiB data limit (trend only)"
        ),
    )
    sizes.add_column("data set")
    sizes.add_column("data B", justify="right")
    sizes.add_column("stored B", justify="right")
    for c in codecs:
        sizes.add_column(c, justify="right")

    def size_row(label: str, n: str, data: str) -> None:
        sizes.add_row(
            label,
            data,
            f"{f[f'stored_bytes_{n}']:,}",
            *(
                f"{_pct(f[f'saved_ratio_{c}_{n}'])} · {_pct(f[f'saved_ratio_b64_{c}_{n}'])}"
                for c in codecs
            ),
        )

    for label, n in rows:
        size_row(label, n, f"{f[f'data_bytes_{n}']:,}")
    for label in f["sizes"]:
        size_row(f"[bold]mix {label}[/]", label, "")
    console.print(sizes)

    cpu = Table(
        title="CPU per record: µs (× the store's canonical serialisation of that record)",
        caption_justify="left",
        caption=(
            "baseline: canonical_json(data) + canonical_object(record), measured "
            "interleaved in the same run; each cell: compress · decompress of the whole "
            "value; the b64 shape's figures are in --json"
        ),
    )
    cpu.add_column("data set")
    cpu.add_column("canonical µs", justify="right")
    for c in codecs:
        cpu.add_column(c, justify="right")

    def cell(n: str, c: str) -> str:
        us_c = f.get(f"compress_us_{c}_{n}")
        if us_c is None:
            return "n/a"
        return (
            f"{us_c:.0f} ({f[f'compress_us_vs_canonical_{c}_{n}']:.2f}×) · "
            f"{f[f'decompress_us_{c}_{n}']:.0f} ({f[f'decompress_us_vs_canonical_{c}_{n}']:.2f}×)"
        )

    for label, n in rows:
        cpu.add_row(label, f"{f[f'canonical_us_{n}']:.1f}", *(cell(n, c) for c in codecs))
    for label in f["sizes"]:

        def mix_cell(c: str, label: str = label) -> str:
            r = f[f"compress_us_vs_canonical_{c}_{label}"]
            if r is None:
                return "n/a"
            return f"{r:.2f}× · {f[f'decompress_us_vs_canonical_{c}_{label}']:.2f}×"

        cpu.add_row(
            f"[bold]mix {label}[/]",
            f"{f[f'canonical_us_{label}']:.1f}",
            *(mix_cell(c) for c in codecs),
        )
    console.print(cpu)

    fleet = Table(
        title=(
            f"fleet: {f['fleet_configs']:,} Configs × {f['fleet_versions']} versions × "
            f"{f['fleet_data_bytes']:,} B of data (record {f['fleet_record_bytes']:,} B, "
            f"mix of {', '.join(f['fleet_kinds'])})"
        ),
        caption_justify="left",
        caption=(
            f"version record values only; today: {_bytes(f['fleet_stored_bytes'])} "
            f"({f['fleet_stored_bytes'] / ETCD_QUOTA:.2f}× etcd's 8 GiB quota)"
        ),
    )
    fleet.add_column("codec")
    fleet.add_column("saved (value)", justify="right")
    fleet.add_column("left (value)", justify="right")
    fleet.add_column("saved (b64)", justify="right")
    for kind in f["fleet_kinds"]:
        fleet.add_column(f"saved, all {kind}", justify="right")
    for c in codecs:
        saved = f[f"fleet_saved_bytes_{c}"]
        if saved is None:
            fleet.add_row(c, "n/a", "n/a", "n/a", *("n/a" for _ in f["fleet_kinds"]))
            continue
        fleet.add_row(
            c,
            f"{_bytes(saved)} ({_pct(f[f'fleet_saved_ratio_{c}'])})",
            _bytes(f["fleet_stored_bytes"] - saved),
            f"{_bytes(f[f'fleet_saved_bytes_b64_{c}'])} ({_pct(f[f'fleet_saved_ratio_b64_{c}'])})",
            *(_bytes(f[f"fleet_saved_bytes_{c}_{k}"]) for k in f["fleet_kinds"]),
        )
    console.print(fleet)
    console.print(f"{len(f['sets'])} data sets, {f['elapsed_s']} s")


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Measure what compressing version records would save (bytes, CPU).",
    )
    ap.add_argument("--quick", action="store_true", help="a shorter run (under 10 s)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--seed", type=int, default=16, help="seed of the synthetic data sets")
    ap.add_argument("--repeats", type=int, help="timing repeats per subject (median kept)")
    ap.add_argument("--min-time", type=float, help="seconds one timing repeat lasts at least")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = QUICK if args.quick else DEFAULT
    if args.repeats is not None:
        params = replace(params, repeats=args.repeats)
    if args.min_time is not None:
        params = replace(params, min_time=args.min_time)
    err = Console(stderr=True)

    def progress(text: str) -> None:
        if not args.json:
            err.log(text)

    figures, _ = run(params, args.seed, progress)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        render(Console(), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
