"""Reconcile decisions: pure functions, no I/O.

Given a Config object (and what the store says), decide what to record and what
the status must say. Status follows kstatus: ``observedGeneration`` + ``Ready``,
with ``Reconciling`` while work is pending and ``Stalled`` when it cannot progress
until the user changes the spec.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from etcdconfig.canonical import canonical_json
from etcdconfig.errors import InvalidConfig, ValidationIssue
from etcdconfig.models import (
    CHANGE_CAUSE_ANNOTATION,
    MAX_DATA_BYTES,
    ROLLBACK_ANNOTATION,
    ConfigSpec,
)

if TYPE_CHECKING:
    from etcdconfig.validation import Validator

CONDITION_TYPES = ("Ready", "Valid", "Recorded", "Published", "Intact", "Reconciling", "Stalled")
MAX_MESSAGE = 4000  # keep conditions and events readable and well under API limits


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_spec(spec: Any) -> ConfigSpec:
    """The spec as a model; ``InvalidConfig`` listing every problem with its path."""
    try:
        return ConfigSpec.model_validate(spec)
    except ValidationError as exc:
        issues = [
            ValidationIssue(
                "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]),
                e["msg"],
            )
            for e in exc.errors(include_input=False)
        ]
        raise InvalidConfig(issues, reason="InvalidSpec") from None


def validate_spec(spec: ConfigSpec, validator: Validator) -> list[ValidationIssue]:
    """Every reason the spec's data cannot be recorded (schema, canonical form, size)."""
    issues = validator.validate(spec.data, spec.schema_)
    if issues:
        return [_under_spec(i) for i in issues]
    size = len(canonical_json(spec.data))
    if size > MAX_DATA_BYTES:
        return [
            ValidationIssue(
                "spec.data",
                f"is {size} bytes as canonical JSON, over the limit of {MAX_DATA_BYTES} bytes "
                "(the API server caps objects at ~1.5 MiB and the operator's status keeps a "
                "copy); split the configuration into several Configs",
            )
        ]
    return []


def _under_spec(issue: ValidationIssue) -> ValidationIssue:
    return ValidationIssue(f"spec.{issue.path}", issue.message)


def issue_reason(issues: list[ValidationIssue]) -> str:
    if any(i.path.startswith("spec.schema") for i in issues):
        return "InvalidSchema"
    if any("over the limit" in i.message for i in issues):
        return "TooLarge"
    return "InvalidData"


def format_issues(issues: list[ValidationIssue]) -> str:
    text = "; ".join(str(i) for i in issues)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 20] + f"… ({len(issues)} errors)"
    return text


def author_of(
    meta: dict[str, Any],
    *,
    note: dict[str, Any] | None = None,
    previous: dict[str, Any] | None = None,
    origin: dict[str, Any] | None = None,
    previous_origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Who changed the spec, and why (docs/configs.md, "Audit").

    - ``manager``/``operation``/``time``: the newest managedFields entry that touched
      ``spec`` (the client program, e.g. ``kubectl-patch``; always there).
    - ``user``/``groups`` with ``source: admission``: the authenticated user of the
      request, from the admission webhook's ``note`` (``etcdconfig.audit``); without a
      note (webhook off, or its note lost) ``source: fieldManager`` and no user.
    - ``changeCause``: the ``etcdconfig.io/change-cause`` annotation, only when it
      belongs to this change; an annotation left over from an earlier change is kept
      as ``inheritedChangeCause`` instead. It belongs to this change when this is the
      uid's first version (``previous`` None), when the admission note says the
      request set it, when it differs from the cause in force at the previous version
      (``previous``: that version's author), or when this is a rollback the previous
      version was not (a repeated ``rollback --to N`` writes the same text).
    """
    author: dict[str, Any] = {}
    entries = [
        e
        for e in meta.get("managedFields") or []
        if not e.get("subresource") and "f:spec" in (e.get("fieldsV1") or {})
    ]
    if entries:
        newest = max(entries, key=lambda e: e.get("time") or "")
        author["manager"] = newest.get("manager", "")
        author["operation"] = newest.get("operation", "")
        if newest.get("time"):
            author["time"] = newest["time"]
    if note is not None:
        author["user"] = str(note.get("user", ""))
        groups = note.get("groups")
        author["groups"] = [str(g) for g in groups] if isinstance(groups, list) else []
        author["source"] = "admission"
    else:
        author["source"] = "fieldManager"
    cause = (meta.get("annotations") or {}).get(CHANGE_CAUSE_ANNOTATION)
    if cause:
        cause = str(cause)[:1024]
        if _cause_is_new(cause, note, previous, origin, previous_origin):
            author["changeCause"] = cause
        else:
            author["inheritedChangeCause"] = cause
    return author


def cause_in_force(author: dict[str, Any]) -> str | None:
    """The change-cause annotation's value when a version was recorded (set or inherited)."""
    value = author.get("changeCause") or author.get("inheritedChangeCause")
    return None if value is None else str(value)


def _cause_is_new(
    cause: str,
    note: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    origin: dict[str, Any] | None,
    previous_origin: dict[str, Any] | None,
) -> bool:
    if previous is None or (note is not None and note.get("changeCauseSet")):
        return True
    if cause != cause_in_force(previous):
        return True
    return bool(origin and origin.get("kind") == "rollback" and origin != previous_origin)


def origin_of(
    meta: dict[str, Any], data_checksum: str, head_checksum: str | None = None
) -> dict[str, Any]:
    """``rollback`` when the rollback annotation names exactly this data and the data
    changed from the head's (``head_checksum``), else ``apply``.

    ``etcdconfig rollback`` writes the annotation together with the data; a later
    apply that changes the data no longer matches its checksum, and a later change
    that leaves the data as it is (the schema, the history settings; a manifest
    committed from ``rollback --print`` keeps the annotation in Git) does not roll
    anything back: so a stale annotation never mislabels a change.
    """
    raw = (meta.get("annotations") or {}).get(ROLLBACK_ANNOTATION)
    if raw and data_checksum != head_checksum:
        try:
            note = json.loads(raw)
            if note.get("checksum") == data_checksum and isinstance(note.get("fromVersion"), int):
                return {"kind": "rollback", "fromVersion": note["fromVersion"]}
        except (ValueError, AttributeError):
            pass
    return {"kind": "apply"}


@dataclass
class StatusBuilder:
    """Builds ``status`` keeping ``lastTransitionTime`` when a condition's status is unchanged."""

    generation: int
    previous: list[dict[str, Any]] = field(default_factory=list)
    now: str = field(default_factory=now_rfc3339)
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def set(self, type_: str, status: bool | None, reason: str, message: str) -> StatusBuilder:
        value = "Unknown" if status is None else ("True" if status else "False")
        old = next((c for c in self.previous if c.get("type") == type_), None)
        changed = old is None or old.get("status") != value
        self.conditions[type_] = {
            "type": type_,
            "status": value,
            "observedGeneration": self.generation,
            "lastTransitionTime": self.now if changed else old.get("lastTransitionTime", self.now),  # type: ignore[union-attr]
            "reason": reason,
            "message": message[:MAX_MESSAGE],
        }
        return self

    def keep(self, type_: str, default: tuple[bool | None, str, str]) -> StatusBuilder:
        old = next((c for c in self.previous if c.get("type") == type_), None)
        if old is not None:
            self.conditions[type_] = {**old, "observedGeneration": self.generation}
        else:
            self.set(type_, *default)
        return self

    def build(self, **fields: Any) -> dict[str, Any]:
        conditions = [self.conditions[t] for t in CONDITION_TYPES if t in self.conditions]
        status: dict[str, Any] = {"observedGeneration": self.generation, **fields}
        status["conditions"] = conditions
        return status


def head_fields(
    version: int | None, checksum: str | None, recorded_at: str | None
) -> dict[str, Any]:
    return {
        "version": version,
        "checksum": checksum,
        "shortChecksum": checksum.split(":", 1)[-1][:12] if checksum else None,
        "recordedAt": recorded_at,
    }


def _recorded(b: StatusBuilder, generation: int, version: int, head_generation: int) -> None:
    """The message depends on the state only (is the head the version this generation
    recorded?), never on which path got there: the reconcile that committed and a later
    one that found the version recorded must build the same status, or every Config a
    watch event recorded would get a status patch from the next resync round."""
    b.set("Valid", True, "Valid", "data satisfies the schema")
    b.set(
        "Recorded",
        True,
        "Recorded",
        f"generation {generation} recorded as version {version}"
        if head_generation == generation
        else f"generation {generation} is recorded; head is version {version}",
    )


def status_recorded(
    generation: int,
    previous: list[dict[str, Any]],
    *,
    version: int,
    checksum: str | None,
    recorded_at: str,
    head_generation: int,
    published_to: str | None = None,
) -> dict[str, Any]:
    """The generation is recorded (and, with ``published_to``, the head is in that
    ConfigMap: ``Published`` True; without ``spec.publish`` there is no such condition)."""
    b = StatusBuilder(generation, previous)
    b.set("Ready", True, "Recorded", f"version {version} is the head")
    _recorded(b, generation, version, head_generation)
    if published_to is not None:
        b.set("Published", True, "Published", f"version {version} is in ConfigMap {published_to}")
    b.keep("Intact", (True, "ReadBackVerified", "the head record was read back and verified"))
    if b.conditions["Intact"]["status"] == "False":
        _integrity_stall(b)
    else:
        b.set("Reconciling", False, "Recorded", "")
        b.set("Stalled", False, "Recorded", "")
    return b.build(**head_fields(version, checksum, recorded_at))


INTEGRITY_STALLED = "run `etcdconfig verify` and repair the store"


def _integrity_stall(b: StatusBuilder) -> None:
    """Intact is False (a stored version failed verification): not ready and stalled —
    only a person helps — until a scan verifies the store again, whatever else the
    reconcile found (kstatus reads Stalled as Failed, the GitOps tools as Degraded)."""
    b.set("Ready", False, "IntegrityViolation", b.conditions["Intact"]["message"])
    b.set("Reconciling", False, "IntegrityViolation", "")
    b.set("Stalled", True, "IntegrityViolation", INTEGRITY_STALLED)


def status_rollout_failed(
    current: dict[str, Any],
    generation: int,
    message: str,
    before: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The head is recorded, but rolling it out broke the workloads that consume it
    (docs/rollouts.md): not ready, stalled — the desired state is what is wrong; a new
    generation resumes — with the rollout's message (workload, pod, reason).
    ``before``: the conditions as they are on the object (transition times are kept
    from them) when ``current`` is a status just built from them."""
    previous = list(current.get("conditions") or [])
    b = StatusBuilder(
        int(current.get("observedGeneration") or generation),
        before if before is not None else previous,
    )
    for c in previous:
        if c.get("type") in CONDITION_TYPES:
            b.conditions[c["type"]] = c
    if (b.conditions.get("Intact") or {}).get("status") == "False":
        return b.build(**_fields(current))  # an integrity violation says more
    b.set("Ready", False, ROLLOUT_FAILED, message)
    b.set("Reconciling", False, ROLLOUT_FAILED, "")
    b.set("Stalled", True, ROLLOUT_FAILED, message)
    return b.build(**_fields(current))


def with_rollout_failure(
    status: dict[str, Any],
    failure: tuple[int, str] | None,
    before: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``status`` as a reconcile built it from the conditions ``before``, stalled by the
    rollout ``failure`` (version, message) when that is the version the status reports
    (a reconcile must not clear it; a newer version does). Transition times come from
    ``before``: a stall that stands does not flip."""
    if failure is None or status.get("version") != failure[0]:
        return status
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return status  # not ready for a reason of its own (publishing, integrity)
    return status_rollout_failed(
        status, int(status.get("observedGeneration") or 1), failure[1], before
    )


def _fields(current: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in current.items() if k not in ("conditions", "observedGeneration")}


ROLLOUT_FAILED = "RolloutFailed"


def with_intact(
    previous: list[dict[str, Any]], intact: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """``previous`` conditions with ``Intact`` replaced by ``intact`` (this replica's
    last integrity-scan verdict), so a status built from a body read before the scan
    carries the scan's verdict instead of erasing it."""
    if intact is None:
        return previous
    return [*(c for c in previous if c.get("type") != "Intact"), intact]


def status_not_published(
    generation: int,
    previous: list[dict[str, Any]],
    *,
    version: int,
    checksum: str | None,
    recorded_at: str,
    head_generation: int,
    reason: str,
    message: str,
    stalled: bool,
) -> dict[str, Any]:
    """The generation is recorded, but ``spec.publish`` could not be carried out.

    ``Recorded`` stays True (the version exists); ``Published`` is False with the
    reason, and so is ``Ready``: the user asked for a ConfigMap that does not carry the
    head. ``stalled``: only a user's action helps (a ConfigMap etcdconfig must not
    touch, a record that does not verify); otherwise the operator keeps retrying
    (``Reconciling``). Never put data values in ``message``.
    """
    b = StatusBuilder(generation, previous)
    _recorded(b, generation, version, head_generation)
    b.set("Published", False, reason, message)
    if reason == "IntegrityViolation":
        b.set("Intact", False, reason, message)
    else:
        b.keep("Intact", (True, "ReadBackVerified", "the head record was read back and verified"))
    if b.conditions["Intact"]["status"] == "False" and reason != "IntegrityViolation":
        _integrity_stall(b)
        return b.build(**head_fields(version, checksum, recorded_at))
    if b.conditions["Intact"]["status"] == "False":
        b.set("Ready", False, "IntegrityViolation", b.conditions["Intact"]["message"])
    else:
        b.set("Ready", False, reason, f"version {version} is recorded but not published: {message}")
    b.set("Reconciling", not stalled, reason, "" if stalled else message)
    b.set("Stalled", stalled, reason, message if stalled else "")
    return b.build(**head_fields(version, checksum, recorded_at))


def status_invalid(
    generation: int,
    previous: list[dict[str, Any]],
    issues: list[ValidationIssue],
    head: tuple[int | None, str | None, str | None],
) -> dict[str, Any]:
    reason = issue_reason(issues)
    message = format_issues(issues)
    b = StatusBuilder(generation, previous)
    b.set("Ready", False, reason, f"generation {generation} was not recorded: {message}")
    b.set("Valid", False, reason, message)
    b.set(
        "Recorded",
        False,
        reason,
        f"not recorded; the head stays version {head[0]}" if head[0] else "nothing recorded yet",
    )
    b.keep("Intact", (None, "NotVerified", "not verified yet"))
    b.set("Reconciling", False, reason, "")
    b.set("Stalled", True, reason, "fix spec to continue: " + message)
    return b.build(**head_fields(*head))


def status_corrupt(
    generation: int,
    previous: list[dict[str, Any]],
    message: str,
    head: tuple[int | None, str | None, str | None],
) -> dict[str, Any]:
    """The store holds records the operator cannot continue: stalled until repaired."""
    b = StatusBuilder(generation, previous)
    b.set("Ready", False, "IntegrityViolation", message)
    b.keep("Valid", (None, "NotValidated", ""))
    b.set(
        "Recorded",
        False,
        "IntegrityViolation",
        "the store holds records this operator cannot continue",
    )
    b.set("Intact", False, "IntegrityViolation", message)
    b.set("Reconciling", False, "IntegrityViolation", "")
    b.set("Stalled", True, "IntegrityViolation", "run `etcdconfig verify` and repair the store")
    return b.build(**head_fields(*head))


def status_pending(
    generation: int,
    previous: list[dict[str, Any]],
    reason: str,
    message: str,
    head: tuple[int | None, str | None, str | None],
    *,
    stalled: bool = False,
) -> dict[str, Any]:
    """etcd unreachable, lock busy, …: the operator keeps retrying with backoff.
    ``stalled``: retried too, but only an admin's action helps (etcd out of space):
    kstatus and the GitOps tools read Failed / Degraded, not in progress forever."""
    b = StatusBuilder(generation, previous)
    b.set("Ready", False, reason, message)
    b.keep("Valid", (None, "NotValidated", "not validated yet"))
    b.set("Recorded", False, reason, message)
    b.keep("Intact", (None, "NotVerified", "not verified yet"))
    b.set("Reconciling", not stalled, reason, "" if stalled else message)
    b.set("Stalled", stalled, reason, message if stalled else "")
    return b.build(**head_fields(*head))


def status_integrity(
    current: dict[str, Any], generation: int, problems: list[str]
) -> dict[str, Any]:
    """Update ``Intact`` (and ``Ready``) after an integrity scan."""
    previous = list(current.get("conditions") or [])
    b = StatusBuilder(int(current.get("observedGeneration") or generation), previous)
    for c in previous:
        if c.get("type") in CONDITION_TYPES:
            b.conditions[c["type"]] = c
    if problems:
        msg = format_issues([ValidationIssue("store", p) for p in problems])
        b.set("Intact", False, "IntegrityViolation", msg)
        b.set("Ready", False, "IntegrityViolation", msg)
        # only a person helps (`etcdconfig verify`, repair): stalled, as kstatus and the
        # GitOps tools read it (Failed / Degraded), not in progress forever
        b.set("Reconciling", False, "IntegrityViolation", "")
        b.set("Stalled", True, "IntegrityViolation", INTEGRITY_STALLED)
    else:
        b.set("Intact", True, "Verified", "every stored version and the checksum chain verified")
        stalled = b.conditions.get("Stalled")
        if stalled and stalled.get("reason") == "IntegrityViolation":
            b.set("Stalled", False, "Verified", "")
        ready = b.conditions.get("Ready")
        published = b.conditions.get("Published")
        if ready and ready.get("reason") == "IntegrityViolation":
            if published and published.get("status") == "False":
                # still not published (for a reason of its own): Ready says that instead
                b.set(
                    "Ready",
                    False,
                    str(published.get("reason")),
                    f"version {current.get('version')} is recorded but not published: "
                    f"{published.get('message')}",
                )
            else:
                b.set("Ready", True, "Recorded", f"version {current.get('version')} is the head")
    fields = {
        k: v for k, v in current.items() if k not in ("conditions", "observedGeneration", "kopf")
    }
    return b.build(**fields)


def status_differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """True if patching ``desired`` would change ``current`` (ignoring kopf's own fields)."""
    return any(current.get(k) != v for k, v in desired.items())
