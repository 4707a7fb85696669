"""What ``history`` and ``show`` say about deletions and re-creations (pure, no I/O).

A Config's name may be held by several objects (uids) over time. The store keeps,
besides the versions, the head (a tombstone after a deletion: ``deleted``, and
``purged`` when the deleted uid's versions were removed) and one incarnation record
per uid (``{p}/configs/{ns}/{name}/incarnations/{uid}``). From these, the history
shows, between the version rows:

- ``deleted (Retain) uid U`` / ``deleted (Purge) uid U``: the deletion of uid U was
  recorded (Purge: none of its versions remain);
- ``ended uid U: replaced by uid V``: U vanished without its deletion being recorded
  (deleted before the finalizer was added, or the finalizer removed by hand) and V
  recorded after it;
- ``re-created uid V``: V's first version (a later object that took the name).

Events are placed by time (``recordedAt``; the deletion's time is when it was recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from etcdconfig.store import Head, VersionRecord
    from etcdconfig.store.records import Incarnation

__all__ = ["Event", "config_state", "events_for", "merge"]


@dataclass(frozen=True)
class Event:
    kind: str  # "deleted" | "replaced" | "re-created"
    uid: str
    at: str
    policy: str | None = None  # deleted: "Retain" | "Purge"
    version: int | None = None  # re-created: its first version; deleted: its last one
    by: str | None = None  # replaced: the uid that followed

    @property
    def label(self) -> str:
        if self.kind == "deleted":
            return f"deleted ({self.policy}) uid {self.uid}"
        if self.kind == "replaced":
            return f"ended uid {self.uid}: replaced by uid {self.by}"
        return f"re-created uid {self.uid}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind, "uid": self.uid, "at": self.at}
        if self.policy is not None:
            out["deletionPolicy"] = self.policy
        if self.version is not None:
            out["firstVersion" if self.kind == "re-created" else "lastVersion"] = self.version
        if self.by is not None:
            out["replacedBy"] = self.by
        return out


def events_for(
    incarnations: list[Incarnation], records: list[VersionRecord], head: Head | None
) -> list[Event]:
    """Every deletion, replacement and re-creation the store knows of (unordered).

    ``records`` are the versions listed (a re-creation is shown where its first version
    is listed); ``head`` covers a store written before incarnation records existed
    (a tombstone with no record of its uid)."""
    out: list[Event] = []
    known = {inc.uid for inc in incarnations}
    by_version = {(r.uid, r.version): r for r in records}
    for i, inc in enumerate(incarnations):
        if inc.superseded_by:
            out.append(Event("replaced", inc.uid, inc.recorded_at, by=inc.superseded_by))
        elif inc.deleted:
            out.append(
                Event(
                    "deleted",
                    inc.uid,
                    inc.recorded_at,
                    policy="Purge" if inc.purged else "Retain",
                    version=inc.last_version,
                )
            )
        if i > 0 and inc.first_version is not None:
            first = by_version.get((inc.uid, inc.first_version))
            if first is not None:
                out.append(Event("re-created", inc.uid, first.recorded_at, version=first.version))
    if head is not None and head.deleted and head.uid not in known:
        out.append(
            Event(
                "deleted",
                head.uid,
                head.recorded_at,
                policy="Purge" if head.purged else "Retain",
            )
        )
    return out


def merge(
    records: list[VersionRecord], events: list[Event], *, first_page: bool
) -> list[VersionRecord | Event]:
    """Versions (newest first, as listed) with the events that fall within them, newest
    first. A re-creation sits just below its first version; the first page also shows
    events newer than its newest version (a deletion after the last change)."""
    if records:
        low = records[-1].recorded_at
        high = records[0].recorded_at
        shown = [
            e
            for e in events
            if e.at >= low and (first_page or e.at <= high or e.kind == "re-created")
        ]
    else:
        shown = list(events) if first_page else []
    # versions keep their order (by number); other events go above the first version
    # recorded before them, a re-creation right below its first version
    pending = sorted((e for e in shown if e.kind != "re-created"), key=lambda e: e.at)
    recreated = {(e.uid, e.version): e for e in shown if e.kind == "re-created"}
    out: list[VersionRecord | Event] = []
    for r in records:
        while pending and pending[-1].at > r.recorded_at:
            out.append(pending.pop())
        out.append(r)
        e = recreated.get((r.uid, r.version))
        if e is not None:
            out.append(e)
    out.extend(reversed(pending))
    return out


def config_state(head: Head | None) -> str:
    """``live``; ``deleted`` (a tombstone, versions remain); ``purged`` (nothing remains)."""
    if head is None or not head.deleted:
        return "live"
    return "purged" if head.version == 0 else "deleted"
