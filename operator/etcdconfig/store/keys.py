"""The etcd key layout (a public contract: DESIGN §3)."""

from __future__ import annotations

from dataclasses import dataclass

from etcdconfig.etcd import prefix_end


@dataclass(frozen=True)
class Keys:
    prefix: str = "/etcdconfig"

    @property
    def root(self) -> str:
        return self.prefix.rstrip("/")

    def config(self, namespace: str, name: str) -> str:
        return f"{self.root}/configs/{namespace}/{name}"

    def head(self, namespace: str, name: str) -> bytes:
        return f"{self.config(namespace, name)}/head".encode()

    def sizes(self, namespace: str, name: str) -> bytes:
        """The usage index: each retained version record's size (records.Sizes)."""
        return f"{self.config(namespace, name)}/sizes".encode()

    def versions(self, namespace: str, name: str) -> bytes:
        return f"{self.config(namespace, name)}/versions/".encode()

    def version(self, namespace: str, name: str, version: int) -> bytes:
        return f"{self.config(namespace, name)}/versions/{version:020d}".encode()

    def incarnations(self, namespace: str, name: str) -> bytes:
        return f"{self.config(namespace, name)}/incarnations/".encode()

    def incarnation(self, namespace: str, name: str, uid: str) -> bytes:
        return f"{self.config(namespace, name)}/incarnations/{uid}".encode()

    def rollouts(self, namespace: str, name: str) -> bytes:
        """Every incarnation's rollout records of ``namespace/name`` (docs/rollouts.md)."""
        return f"{self.root}/rollouts/{namespace}/{name}/".encode()

    def rollouts_of(self, namespace: str, name: str, uid: str) -> bytes:
        return f"{self.root}/rollouts/{namespace}/{name}/{uid}/".encode()

    def rollout(self, namespace: str, name: str, uid: str, version: int) -> bytes:
        """The outcome of rolling ``version`` of incarnation ``uid`` out (not a version
        record: written by the rollout, never part of the checksum chain)."""
        return f"{self.root}/rollouts/{namespace}/{name}/{uid}/{version:020d}".encode()

    def configs(self) -> bytes:
        return f"{self.root}/configs/".encode()

    def locks(self) -> bytes:
        return f"{self.root}/locks/".encode()

    def members(self) -> bytes:
        return f"{self.root}/members/".encode()

    def member(self, replica_id: str) -> bytes:
        return f"{self.root}/members/{replica_id}".encode()

    @staticmethod
    def end(prefix: bytes) -> bytes:
        return prefix_end(prefix)

    def parse_head_key(self, key: bytes) -> tuple[str, str] | None:
        """``{p}/configs/{ns}/{name}/head`` -> (ns, name)."""
        text = key.decode(errors="replace")
        base = f"{self.root}/configs/"
        if not text.startswith(base) or not text.endswith("/head"):
            return None
        parts = text[len(base) : -len("/head")].split("/")
        if len(parts) != 2:
            return None
        return parts[0], parts[1]
