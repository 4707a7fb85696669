"""Prometheus metrics of the operator (served on ``/metrics``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterable

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
RESYNC_ROUND_SECONDS = Histogram(
    "etcdconfig_resync_round_duration_seconds",
    "Time a resync round took, from listing the Configs to the last reconcile and "
    "integrity check of the round (a round over N owned Configs, most of them settled, "
    "lists N and reconciles a tenth by default).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
RESYNC_SKIPPED = Counter(
    "etcdconfig_resync_skipped_total",
    "Configs a resync round left alone: settled (a resync reconcile found nothing to "
    "change), unchanged since, and their full check not due this round.",
    registry=REGISTRY,
)
RESYNC_ERRORS = Counter(
    "etcdconfig_resync_errors_total",
    "Failures in resync rounds, by stage (round: listing the Configs; reconcile; integrity) "
    "and error type; a failed Config does not stop the round, a failed round not the loop.",
    ["stage", "error"],
    registry=REGISTRY,
)
ROLLOUTS = Counter(
    "etcdconfig_rollouts_total",
    "Rollouts of a recorded version to consuming workloads that ended, by result: "
    "Succeeded, RolledBack (a pod of the version failed; the workloads went back to the "
    "last version that rolled out healthy) or Failed (not rolled back).",
    ["result"],
    registry=REGISTRY,
)
UNPINNED_PODS = Gauge(
    "etcdconfig_unpinned_pods",
    "Pods of a workload rolled by this Config whose template pins a version but that run "
    "on the plain ConfigMap (created while the pod webhook did not answer, or could not "
    "pin them), as the last rollout check found them.",
    ["namespace", "config"],
    registry=REGISTRY,
)
POD_PINS = Counter(
    "etcdconfig_pod_pins_total",
    "References of new pods to a pinned Config's ConfigMap, by result: pinned (rewritten "
    "to the version's immutable ConfigMap) or skipped (left on the plain ConfigMap: no "
    "such Config, not versioned, the version not in the store, etcd unreachable).",
    ["result"],
    registry=REGISTRY,
)
VERSIONED_CONFIGMAPS_DELETED = Counter(
    "etcdconfig_versioned_configmaps_deleted_total",
    "Versioned ConfigMaps (<name>-v<N>) deleted because nothing referred to them any more "
    "and they were beyond the newest `keep`.",
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

# --- etcd's space (controller/space.py, docs/operations.md#etcd-space) -------------------------
ETCD_DB_SIZE = Gauge(
    "etcdconfig_etcd_db_size_bytes",
    "Size of the store's etcd database file on the member that answered (what "
    "--quota-backend-bytes limits), as the last space check read it.",
    registry=REGISTRY,
)
ETCD_DB_SIZE_IN_USE = Gauge(
    "etcdconfig_etcd_db_size_in_use_bytes",
    "Bytes of the store's etcd database in use (the rest is free pages a defragmentation "
    "gives back).",
    registry=REGISTRY,
)
ETCD_DB_QUOTA = Gauge(
    "etcdconfig_etcd_db_quota_bytes",
    "The store's etcd --quota-backend-bytes (0: etcd before 3.6 does not report it).",
    registry=REGISTRY,
)
ETCD_NOSPACE = Gauge(
    "etcdconfig_etcd_nospace",
    "1 while the store's etcd has its NOSPACE alarm raised: every write is refused and "
    "nothing is recorded until an admin frees space and disarms the alarm.",
    registry=REGISTRY,
)
HISTORY_BYTES = Gauge(
    "etcdconfig_history_bytes",
    "Bytes of version records the store retains for the Configs this replica owns (their "
    "stored size: the usage index, as of each one's last commit or integrity scan); "
    "sum over replicas for the store's total.",
    registry=REGISTRY,
)
HISTORY_VERSIONS = Gauge(
    "etcdconfig_history_versions",
    "Version records the store retains for the Configs this replica owns.",
    registry=REGISTRY,
)
STORE_FULL_REFUSALS = Counter(
    "etcdconfig_store_full_total",
    "Reconciles of a Config that could not record because etcd was out of space.",
    registry=REGISTRY,
)

# --- per-Config state -------------------------------------------------------------------------
# One series per Config and state (kube-state-metrics style): 1 for the state the Config is
# in, 0 for the others, set by the replica that owns the Config whenever it works out the
# status, and removed when the Config is deleted or its ownership moves to another replica
# (which then sets its own). So an alert on ``etcdconfig_config_state{state="invalid"} == 1``
# stays firing while the Config is invalid, whatever the rate counters do.
CONFIG_STATES = ("ready", "reconciling", "invalid", "stalled", "corrupt")
_config_states: dict[tuple[str, str], str] = {}


class _ConfigStateCollector(Collector):
    """``etcdconfig_config_state``, made at scrape time from one entry per Config (its
    state) instead of five Gauge children per Config: at 10,000 Configs that was
    ~17 MB of objects (docs/scale.md §4); the exposition is the same."""

    HELP = (
        "State of each Config this replica owns: 1 for the state it is in, 0 for the others "
        "(ready, reconciling, invalid, stalled, corrupt)."
    )

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "etcdconfig_config_state", self.HELP, labels=["namespace", "name", "state"]
        )

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "etcdconfig_config_state", self.HELP, labels=["namespace", "name", "state"]
        )
        for (namespace, name), state in list(_config_states.items()):
            for s in CONFIG_STATES:
                family.add_metric([namespace, name, s], 1.0 if s == state else 0.0)
        yield family


REGISTRY.register(_ConfigStateCollector())


def config_state_of(status: dict[str, object]) -> str | None:
    """The state a Config's status conditions say it is in (None: no conditions yet).

    ``corrupt``: ``Intact`` False; ``invalid``: ``Valid`` False; ``ready``: ``Ready`` True;
    ``stalled``: ``Stalled`` True (only a user's action helps, e.g. a ConfigMap the operator
    must not touch); otherwise ``reconciling`` (retrying: etcd away, lock busy, …).
    """
    raw = status.get("conditions")
    conditions = {
        str(c.get("type")): c.get("status")
        for c in (raw if isinstance(raw, list) else [])
        if isinstance(c, dict)
    }
    if not conditions:
        return None
    if conditions.get("Intact") == "False":
        return "corrupt"
    if conditions.get("Valid") == "False":
        return "invalid"
    if conditions.get("Ready") == "True":
        return "ready"
    if conditions.get("Stalled") == "True":
        return "stalled"
    return "reconciling"


def set_config_state(namespace: str, name: str, status: dict[str, object] | None) -> None:
    """Record the state ``status`` says (no-op when it says none)."""
    state = config_state_of(status) if status is not None else None
    if state is None:
        return
    key = (namespace, name)
    _config_states[key] = state


_unpinned: set[tuple[str, str]] = set()


def set_unpinned(namespace: str, name: str, pods: int) -> None:
    """``etcdconfig_unpinned_pods`` of a Config this replica owns (removed with it)."""
    _unpinned.add((namespace, name))
    UNPINNED_PODS.labels(namespace, name).set(pods)


def forget_config(namespace: str, name: str) -> None:
    """Remove a Config's series (deleted, or no longer owned by this replica)."""
    if (namespace, name) in _unpinned:
        _unpinned.discard((namespace, name))
        with contextlib.suppress(KeyError):
            UNPINNED_PODS.remove(namespace, name)
    _config_states.pop((namespace, name), None)


def retain_configs(keep: set[tuple[str, str]]) -> None:
    """Remove the series of every Config not in ``keep`` (the Configs owned now)."""
    for namespace, name in [k for k in {*_config_states, *_unpinned} if k not in keep]:
        forget_config(namespace, name)
