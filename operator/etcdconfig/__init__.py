"""etcdconfig: safe configuration changes for Kubernetes.

Every change to a ``Config`` custom resource is validated and recorded as an
immutable, numbered, checksummed version in a versioned store in etcd, written
by a compare-and-swap transaction fenced by a per-Config lock.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
