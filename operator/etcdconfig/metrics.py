"""Prometheus metrics of the operator (served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LOCK_ACQUIRE = Histogram(
    "etcdconfig_lock_acquire_seconds",
    "Time to acquire a per-Config lock (in-process and etcd).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
LOCK_KEYS_SWEPT = Counter(
    "etcdconfig_lock_keys_swept_total",
    "Orphaned lock keys of this replica's session deleted by the periodic sweep.",
    registry=REGISTRY,
)
LOCK_CONTENTION = Counter(
    "etcdconfig_lock_contention_total",
    "Lock acquisitions that had to wait behind another holder.",
    registry=REGISTRY,
)
COMMITS = Counter(
    "etcdconfig_commits_total",
    "Commit attempts by result (recorded, already_recorded).",
    ["result"],
    registry=REGISTRY,
)
CONFLICTS = Counter(
    "etcdconfig_commit_conflicts_total",
    "Commits refused or retried, by kind "
    "(conflict, lost_lock, unknown_outcome, stale_incarnation).",
    ["kind"],
    registry=REGISTRY,
)
VALIDATION_FAILURES = Counter(
    "etcdconfig_validation_failures_total",
    "Config generations rejected, by reason (InvalidData, InvalidSchema, InvalidSpec, TooLarge).",
    ["reason"],
    registry=REGISTRY,
)
RECONCILE = Histogram(
    "etcdconfig_reconcile_duration_seconds",
    "Duration of one reconcile of one Config.",
    ["trigger"],
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "etcdconfig_cache_hits_total", "Cache hits, by cache.", ["cache"], registry=REGISTRY
)
CACHE_MISSES = Counter(
    "etcdconfig_cache_misses_total", "Cache misses, by cache.", ["cache"], registry=REGISTRY
)
INTEGRITY_VIOLATIONS = Counter(
    "etcdconfig_integrity_violations_total",
    "Integrity problems found by scans (checksum mismatch, broken chain, …).",
    registry=REGISTRY,
)
MEMBERS = Gauge("etcdconfig_members", "Live operator replicas seen in etcd.", registry=REGISTRY)
OWNED = Gauge("etcdconfig_owned_configs", "Configs this replica owns.", registry=REGISTRY)
SESSION_LOST = Counter(
    "etcdconfig_session_lost_total",
    "Times this replica's etcd session lease was lost.",
    registry=REGISTRY,
)
BACKGROUND_TASK_UP = Gauge(
    "etcdconfig_background_task_up",
    "1 while a supervised background task runs; 0 while it waits to restart, is dead or stopped.",
    ["task"],
    registry=REGISTRY,
)
BACKGROUND_TASK_RESTARTS = Counter(
    "etcdconfig_background_task_restarts_total",
    "Times a supervised background task was started again after it failed.",
    ["task"],
    registry=REGISTRY,
)
RESYNC_ROUNDS = Counter(
    "etcdconfig_resync_rounds_total",
    "Resync rounds completed (each goes over every Config this replica owns).",
    registry=REGISTRY,
)
RESYNC_ERRORS = Counter(
    "etcdconfig_resync_errors_total",
    "Failures in resync rounds, by stage (round: listing the Configs; reconcile; integrity) "
    "and error type; a failed Config does not stop the round, a failed round not the loop.",
    ["stage", "error"],
    registry=REGISTRY,
)
PUBLISH_REPAIRS = Counter(
    "etcdconfig_publish_repairs_total",
    "Published ConfigMaps found changed under the operator (the key no longer holds the "
    "head it is annotated with) and rewritten from the verified head.",
    registry=REGISTRY,
)
PUBLISH_REFUSALS = Counter(
    "etcdconfig_publish_refusals_total",
    "Config generations whose head was not published, by reason (ConfigMapNotOwned, "
    "ConfigMapOwnedByAnotherConfig, IntegrityViolation); counted once per generation.",
    ["reason"],
    registry=REGISTRY,
)
