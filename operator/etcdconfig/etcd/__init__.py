"""A thin asyncio client for etcd v3: the only package that talks to etcd.

``client`` is the only module that imports gRPC and the generated stubs; the
rest of etcdconfig sees the small, typed interface of ``types`` and
``EtcdClient``: ranges at a revision, transactions with compares, leases,
watches that report compaction, TLS and user/password auth. No call is
retried behind the caller's back: a write that times out raises
``EtcdUnavailable`` and the caller decides (the store re-reads the head).
"""

from etcdconfig.etcd.client import EtcdClient, EtcdSettings, TLSFiles
from etcdconfig.etcd.types import (
    Compare,
    DeleteRange,
    Event,
    KeyValue,
    Put,
    Range,
    RangeResult,
    TxnResult,
    prefix_end,
)

__all__ = [
    "Compare",
    "DeleteRange",
    "EtcdClient",
    "EtcdSettings",
    "Event",
    "KeyValue",
    "Put",
    "Range",
    "RangeResult",
    "TLSFiles",
    "TxnResult",
    "prefix_end",
]
