"""Development environment: build the real infrastructure (etcd, kube-apiserver,
helm) from Go modules into a cache outside the repository, and run it as local
processes on loopback for tests and demos. Never used by the operator at run time."""
