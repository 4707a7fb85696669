"""The Config API (``etcdconfig.io/v1alpha1``, kind ``Config``): the single source
of truth for the CRD's schema (``etcdconfig.crd`` generates it from these models,
and a test fails when ``crds/`` drifts from them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GROUP = "etcdconfig.io"
VERSION = "v1alpha1"
KIND = "Config"
PLURAL = "configs"
SINGULAR = "config"
SHORT_NAMES = ("cfg",)
FINALIZER = "etcdconfig.io/finalizer"
CHANGE_CAUSE_ANNOTATION = "etcdconfig.io/change-cause"
ROLLBACK_ANNOTATION = "etcdconfig.io/rollback"
MAX_VERSIONS_LIMIT = 100_000
# the diffbase kopf keeps in status doubles the object's size; the API server caps an
# object at ~1.5 MiB, so the data (canonical JSON) is capped well under half of that
MAX_DATA_BYTES = 512 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


#: spec.history.maxBytes by default: 100 versions of ~100 KiB (docs/operations.md)
DEFAULT_MAX_BYTES = 10 * 1024 * 1024


class History(_Strict):
    """Retention of the versioned store."""

    max_versions: int = Field(
        default=100,
        ge=1,
        le=MAX_VERSIONS_LIMIT,
        alias="maxVersions",
        description="Versions kept in the store; the head is never pruned. Default: 100.",
    )
    max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES,
        ge=1,
        alias="maxBytes",
        description="Bytes of version records kept in the store (their stored size, as "
        "`etcdconfig usage` shows it): the oldest versions beyond it are pruned like those "
        "beyond maxVersions; the head is never pruned. Default: 10485760 (10 MiB).",
    )


class ConfigMapTarget(_Strict):
    """The ConfigMap (same namespace) the operator creates, owns and keeps equal to the
    head's data."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of the ConfigMap (same namespace) that receives the head's data.",
    )
    key: str = Field(
        default="config.json",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the ConfigMap that holds the data as JSON (format json only). "
        "Default: config.json.",
    )
    format: Literal["json", "flat"] = Field(
        default="json",
        description="json: the whole data as one JSON document under key. flat: one key per "
        "top-level field of data (strings as they are, numbers, booleans and null as JSON "
        "text, objects and arrays as JSON), for envFrom; every top-level field name must be "
        "a valid ConfigMap key. Default: json.",
    )
    versioned: bool = Field(
        default=False,
        description="Also publish every recorded version N as an immutable ConfigMap "
        "<name>-v<N> (labels etcdconfig.io/config and etcdconfig.io/version, annotation "
        "etcdconfig.io/checksum), which pods can be pinned to. One is deleted only when no "
        "Pod, ReplicaSet, ControllerRevision or workload template refers to it (by name, or "
        "by an etcdconfig.io/version.<config> pod-template annotation) and it is not among "
        "the newest `keep`. Default: false.",
    )
    keep: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="With versioned: how many of the newest versioned ConfigMaps are kept "
        "even when nothing refers to them (older ones go once unreferenced). Default: 3.",
    )

    @model_validator(mode="after")
    def _versioned_name_fits(self) -> ConfigMapTarget:
        # <name>-v<N> is a ConfigMap name too: room for "-v" and a version of 10 digits
        if self.versioned and len(self.name) > 241:
            raise ValueError(
                f"name is {len(self.name)} characters; with versioned: true it may have at "
                "most 241 (the versioned ConfigMaps are named <name>-v<N>)"
            )
        return self


class Publish(_Strict):
    """Where the operator publishes the head (the current version) for consumers."""

    config_map: ConfigMapTarget | None = Field(
        default=None,
        alias="configMap",
        description="Materialise the head's data into a ConfigMap for pods.",
    )


class RolloutWindow(_Strict):
    """When rollouts may start (UTC; end before start spans midnight)."""

    start: str = Field(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="First minute a rollout may start, HH:MM (UTC).",
    )
    end: str = Field(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="First minute rollouts are held again, HH:MM (UTC).",
    )


class Rollout(_Strict):
    """How a recorded version reaches the workloads that consume this Config (those
    annotated etcdconfig.io/configs with its name; needs publish.configMap.versioned)."""

    paused: bool = Field(
        default=False,
        description="Start no rollout (a version recorded meanwhile rolls out once this is "
        "false again). Default: false.",
    )
    debounce_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        alias="debounceSeconds",
        description="Seconds to wait after a version is recorded before rolling it out; "
        "versions recorded meanwhile coalesce into one rollout of the last. Default: 2.",
    )
    window: RolloutWindow | None = Field(
        default=None,
        description="Hours (UTC) in which rollouts may start; outside them rollouts are "
        "held until the window opens. Default: any time.",
    )
    progress_deadline_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        alias="progressDeadlineSeconds",
        description="Seconds a rollout may take until every consuming workload runs the "
        "version on all its replicas, Ready; longer fails it (and rolls back). Default: 300.",
    )
    bake_seconds: int = Field(
        default=30,
        ge=0,
        le=86400,
        alias="bakeSeconds",
        description="Seconds a completed rollout is still watched: a pod of the version that "
        "crashes within them fails it (and rolls back). Default: 30.",
    )
    auto_rollback: bool = Field(
        default=True,
        alias="autoRollback",
        description="Roll the workloads back to the last version that rolled out healthy "
        "when a rollout fails. Default: true.",
    )


class ConfigSpec(_Strict):
    """The desired configuration. Every accepted change of it is recorded as a new,
    immutable, checksummed version in etcd."""

    data: dict[str, Any] = Field(
        description="The configuration itself: any JSON object (at most 512 KiB as JSON). "
        "Each change is recorded as a new version."
    )
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="JSON Schema (draft 2020-12) that data must satisfy; remote references "
        "are refused. Default: none (any object).",
    )
    history: History = Field(
        default_factory=History, description="Retention of versions in the store."
    )
    deletion_policy: Literal["Retain", "Purge"] = Field(
        default="Retain",
        alias="deletionPolicy",
        description="What happens to the history in etcd when the Config is deleted: "
        "Retain keeps it, Purge removes it. Default: Retain.",
    )
    publish: Publish | None = Field(
        default=None,
        description="Where to publish the head for consumers. Default: nowhere.",
    )
    rollout: Rollout | None = Field(
        default=None,
        description="How recorded versions roll out to the workloads that consume this "
        "Config (docs/rollouts.md). Default: at once (after 2 s), any time.",
    )


class Condition(_Strict):
    """A metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    last_transition_time: str = Field(alias="lastTransitionTime")
    reason: str
    message: str


class RolloutTarget(_Strict):
    """One workload that consumes the Config, as the last rollout left it."""

    kind: str = Field(description="Deployment, StatefulSet or DaemonSet.")
    name: str
    version: int | None = Field(default=None, description="The version its template names.")
    replicas: int | None = None
    updated: int | None = Field(default=None, description="Replicas of the current template.")
    ready: int | None = Field(default=None, description="Ready replicas.")
    summary: str | None = Field(
        default=None, description="As `kubectl get cfg -o wide` shows it: `3/3 on v7`."
    )


class RolloutStatus(_Strict):
    """The rollout of the head to the workloads that consume the Config."""

    version: int | None = Field(default=None, description="The version being rolled out.")
    state: str | None = Field(
        default=None,
        description="Rolling (the workloads' templates name the version), Succeeded (every "
        "replica runs it, Ready, through the bake time), Failed or RolledBack (a pod of it "
        "failed, or the deadline passed), Paused (spec.rollout.paused), Held (outside "
        "spec.rollout.window), NoConsumers.",
    )
    message: str | None = None
    summary: str | None = Field(
        default=None, description="Each workload's `updated/replicas on vN`, comma-separated."
    )
    targets: list[RolloutTarget] = Field(default_factory=list)


class ConfigStatus(_Strict):
    """What the operator observed and recorded; written by the operator only."""

    observed_generation: int | None = Field(
        default=None,
        alias="observedGeneration",
        description="The metadata.generation the status describes.",
    )
    version: int | None = Field(default=None, description="Head version number in the store.")
    checksum: str | None = Field(default=None, description="Checksum of the head's data.")
    short_checksum: str | None = Field(
        default=None, alias="shortChecksum", description="First 12 hex digits of the checksum."
    )
    recorded_at: str | None = Field(
        default=None, alias="recordedAt", description="When the head was recorded (RFC 3339)."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="kstatus conditions: Ready, Valid, Recorded, Intact, Published, "
        "Reconciling, Stalled.",
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="The rollout to consuming workloads (docs/rollouts.md)."
    )


PRINTER_COLUMNS = [
    {"name": "Version", "type": "integer", "jsonPath": ".status.version"},
    {"name": "Checksum", "type": "string", "jsonPath": ".status.shortChecksum"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # last: it can be long (as Flux's STATUS)
    {
        "name": "Message",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
    },
    # -o wide only (priority 1)
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "priority": 1,
    },
    {"name": "Generation", "type": "integer", "jsonPath": ".metadata.generation", "priority": 1},
    {
        "name": "Observed",
        "type": "integer",
        "jsonPath": ".status.observedGeneration",
        "priority": 1,
    },
    {"name": "Recorded", "type": "date", "jsonPath": ".status.recordedAt", "priority": 1},
    {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.summary", "priority": 1},
]
