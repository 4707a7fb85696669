"""Pinning pods to an exact recorded version (docs/rollouts.md): the pure parts.

A workload (Deployment, StatefulSet, DaemonSet) opts in by naming the Configs it
consumes in the annotation ``etcdconfig.io/configs: payments,flags``. Its manifest keeps
referring to each Config's plain ConfigMap (``spec.publish.configMap.name``); the
operator sets only pod-template metadata, with its own field manager:

- ``etcdconfig.io/version.<config>: "N"`` — the version this template runs;
- the label ``etcdconfig.io/pinned: "true"`` — what the pod webhook's objectSelector
  matches, so the webhook never sees any other pod.

When a pod of such a template is created, the mutating webhook rewrites every reference
to a pinned Config's plain ConfigMap — volumes (``configMap``, projected
``sources[].configMap``), ``envFrom[].configMapRef``, ``env[].valueFrom.configMapKeyRef``
of containers and init containers — into the version's immutable ConfigMap
``<name>-v<N>`` (:mod:`etcdconfig.controller.versioned`), and records what it did in the
pod annotation ``etcdconfig.io/pinned-to``. A pod made from an older template (an old
ReplicaSet, ``kubectl rollout undo``) names the older version, and gets it.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

CONFIGS_ANNOTATION = "etcdconfig.io/configs"
PIN_PREFIX = "etcdconfig.io/version."
PINNED_LABEL = "etcdconfig.io/pinned"
PINNED_TO_ANNOTATION = "etcdconfig.io/pinned-to"
#: on a versioned ConfigMap: when the pod webhook last pinned a pod to it (RFC 3339); the
#: collection leaves it alone for PIN_GRACE seconds after, and the write itself fails a
#: collection's delete precondition in flight
PINNED_AT_ANNOTATION = "etcdconfig.io/pinned-at"
PIN_GRACE = 120.0

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def consumed(annotations: dict[str, Any] | None) -> list[str]:
    """The Config names of an ``etcdconfig.io/configs`` annotation (comma-separated,
    blanks ignored, each a DNS subdomain), in order, without duplicates."""
    raw = str((annotations or {}).get(CONFIGS_ANNOTATION) or "")
    out: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if name and _NAME.match(name) and name not in out:
            out.append(name)
    return out


_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def parse_pin(value: Any) -> int | None:
    """The version a pin annotation's value names: a positive decimal integer in ASCII
    digits, blanks around it ignored; anything else (``"²"``, ``"0"``, ``"v3"``) is no
    pin. The one reading of a pin: the webhook pins by it, the collection keeps by it."""
    text = str(value).strip()
    return int(text) if _VERSION.fullmatch(text) else None


def pins(annotations: dict[str, Any] | None) -> dict[str, int]:
    """config -> version, from ``etcdconfig.io/version.<config>: "N"`` annotations."""
    out: dict[str, int] = {}
    for key, value in (annotations or {}).items():
        if not isinstance(key, str) or not key.startswith(PIN_PREFIX):
            continue
        version = parse_pin(value)
        if version is not None:
            out[key[len(PIN_PREFIX) :]] = version
    return out


def rewrite(spec: dict[str, Any], names: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """A copy of the pod ``spec`` whose references to each ConfigMap in ``names`` (plain
    name -> versioned name) name the versioned one instead; and the plain names that
    were rewritten (each once, in ``names``' order)."""
    out = copy.deepcopy(spec)
    done: set[str] = set()

    def swap(ref: Any) -> None:
        if isinstance(ref, dict) and ref.get("name") in names:
            done.add(ref["name"])
            ref["name"] = names[ref["name"]]

    for volume in out.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        swap(volume.get("configMap"))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if isinstance(source, dict):
                swap(source.get("configMap"))
    for kind in ("initContainers", "containers"):
        for container in out.get(kind) or []:
            if not isinstance(container, dict):
                continue
            for env_from in container.get("envFrom") or []:
                if isinstance(env_from, dict):
                    swap(env_from.get("configMapRef"))
            for env in container.get("env") or []:
                if isinstance(env, dict):
                    swap((env.get("valueFrom") or {}).get("configMapKeyRef"))
    return out, [n for n in names if n in done]


def pinned_to(rewritten: dict[str, str]) -> str:
    """The ``etcdconfig.io/pinned-to`` annotation: ``plain=versioned`` pairs, sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(rewritten.items()))


#: a rollout record's states: Started, then exactly one of the others
ROLLOUT_STATES = ("Started", "Succeeded", "RolledBack", "Failed", "Superseded")


@dataclass(frozen=True)
class Outcome:
    """One rollout record (``<prefix>/rollouts/<ns>/<name>/<uid>/<version>``): which
    version was rolled out to which workloads, when, and how it ended. Operational
    records beside the history, not versions: no checksum chain covers them."""

    version: int
    uid: str
    state: str
    targets: tuple[str, ...] = ()
    started_at: str = ""
    ended_at: str | None = None
    reason: str = ""
    rolled_back_to: int | None = None

    @classmethod
    def parse(cls, raw: bytes | str) -> Outcome | None:
        """The record, or None when it is not one (unreadable, or without a version,
        a uid or a known state): a listing shows what it can read and skips the rest."""
        try:
            obj = json.loads(raw)
        except ValueError:
            return None
        return cls.from_json(obj)

    @classmethod
    def from_json(cls, obj: Any) -> Outcome | None:
        """As :meth:`parse`, from the decoded record (or the history API's copy of it)."""
        if not isinstance(obj, dict):
            return None
        version, uid, state = obj.get("version"), obj.get("uid"), obj.get("state")
        if type(version) is not int or not isinstance(uid, str) or state not in ROLLOUT_STATES:
            return None
        back = obj.get("rolledBackTo")
        targets = obj.get("targets")
        return cls(
            version=version,
            uid=uid,
            state=state,
            targets=tuple(str(t) for t in targets) if isinstance(targets, list) else (),
            started_at=str(obj.get("startedAt") or ""),
            ended_at=str(obj["endedAt"]) if obj.get("endedAt") else None,
            reason=str(obj.get("reason") or ""),
            rolled_back_to=back if type(back) is int else None,
        )

    def label(self) -> str:
        """The ROLLOUT column of ``etcdconfig history``: ``Succeeded``, ``RolledBack to
        v2``, ``Failed``, ``Superseded``, ``Started`` (under way)."""
        if self.state == "RolledBack" and self.rolled_back_to is not None:
            return f"RolledBack to v{self.rolled_back_to}"
        return self.state

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "uid": self.uid,
            "state": self.state,
            "targets": list(self.targets),
            "startedAt": self.started_at,
        }
        if self.ended_at is not None:
            out["endedAt"] = self.ended_at
        if self.reason:
            out["reason"] = self.reason
        if self.rolled_back_to is not None:
            out["rolledBackTo"] = self.rolled_back_to
        return out


def outcomes(values: Iterable[bytes | str]) -> list[Outcome]:
    """The rollout records among ``values`` (raw record bytes), oldest version first;
    what does not parse is skipped."""
    return ordered(Outcome.parse(v) for v in values)


def ordered(found: Iterable[Outcome | None]) -> list[Outcome]:
    """The outcomes (None: one that did not parse, skipped), oldest version first."""
    return sorted((o for o in found if o is not None), key=lambda o: (o.version, o.started_at))
