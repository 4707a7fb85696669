"""The operator: kopf handlers, the resync and integrity loops, and the runtime
that ties the etcd store, the locks, membership and the Kubernetes API together."""
