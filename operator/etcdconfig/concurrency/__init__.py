"""Coordination on etcd: ``Session`` (one lease per process, kept alive) and
``Mutex`` (a fenced lock whose ownership is a compare usable in any write).
A port of the semantics of etcd's ``client/v3/concurrency``."""

from etcdconfig.concurrency.locks import ConfigLocks
from etcdconfig.concurrency.mutex import Mutex
from etcdconfig.concurrency.session import Session

__all__ = ["ConfigLocks", "Mutex", "Session"]
