"""The versioned store in etcd (DESIGN §3–4): key layout, records, the fenced
commit, history, retention, tombstones and integrity verification."""

from etcdconfig.store.keys import Keys
from etcdconfig.store.records import FORMAT, Head, VersionRecord, record_checksum
from etcdconfig.store.store import ChangeRequest, CommitResult, Problem, VersionedStore

__all__ = [
    "FORMAT",
    "ChangeRequest",
    "CommitResult",
    "Head",
    "Keys",
    "Problem",
    "VersionRecord",
    "VersionedStore",
    "record_checksum",
]
