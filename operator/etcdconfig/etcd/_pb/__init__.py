"""Generated from go.etcd.io/etcd/api/v3 v3.6.16 by etcdconfig.devenv.protos; do not edit."""
