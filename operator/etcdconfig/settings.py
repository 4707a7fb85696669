"""Operator and CLI settings: flags override ``ETCDCONFIG_*`` environment variables."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from etcdconfig.etcd import EtcdSettings, TLSFiles


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ETCDCONFIG_", extra="ignore")

    # etcd
    etcd_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:2379"]
    )
    etcd_prefix: str = "/etcdconfig"
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None
    etcd_username: str | None = None
    etcd_password: SecretStr | None = None
    etcd_timeout: float = 5.0
    etcd_max_request_bytes: int = 1572864
    # seconds to keep retrying an etcd that does not answer at start-up (0: fail at once)
    etcd_wait: float = Field(default=0.0, ge=0)

    # Kubernetes
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # replicas and locks
    replica_id: str = Field(default_factory=socket.gethostname)
    lock_ttl: int = Field(default=10, ge=2, description="session lease TTL (seconds)")
    acquire_timeout: float = 30.0
    hold_timeout: float = 30.0
    resync_interval: float = 60.0
    integrity_interval: float = 600.0
    resync_concurrency: int = 8
    # a settled Config (nothing changed since a resync found nothing to do) is reconciled
    # in full only every this many rounds (spread by uid); 1: every round
    resync_full_every: int = Field(default=10, ge=1)
    # connections each Kubernetes client (kopf's, the operator's own) may keep open to the
    # API server besides its watch streams: requests beyond it wait for a free one. A bulk
    # of Configs otherwise opens one TLS connection per Config in flight (each holds a
    # 256 KiB read buffer and a handshake's CPU on both sides)
    api_connections: int = Field(default=32, ge=4)
    # etcd's space (controller/space.py): seconds between checks of the database size and
    # alarms, and the share of --quota-backend-bytes at which the operator warns
    space_check_interval: float = Field(default=30.0, gt=0)
    space_warn_ratio: float = Field(default=0.8, gt=0, le=1)

    # serving
    http_addr: str = "0.0.0.0"
    http_port: int = 8080
    webhook_enabled: bool = False
    webhook_addr: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_cert_file: Path | None = None
    webhook_key_file: Path | None = None
    # seconds between checks of the webhook's certificate files (reloaded when they change)
    webhook_cert_check_interval: float = Field(default=5.0, gt=0)

    # the history API (history.etcdconfig.io, docs/history-api.md) behind an APIService
    history_api_enabled: bool = False
    history_api_addr: str = "0.0.0.0"
    history_api_port: int = 8443
    history_api_cert_file: Path | None = None
    history_api_key_file: Path | None = None
    # seconds a SubjectAccessReview answer (allowed or denied) is reused
    history_api_authz_ttl: float = Field(default=10.0, ge=0)

    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _webhook_needs_tls(self) -> Settings:
        if self.webhook_enabled and not (self.webhook_cert_file and self.webhook_key_file):
            raise ValueError(
                "the webhook serves TLS only: set the webhook certificate and key files "
                "(--webhook-cert-file, --webhook-key-file)"
            )
        if self.history_api_enabled and not (
            self.history_api_cert_file and self.history_api_key_file
        ):
            raise ValueError(
                "the history API serves TLS only: set its certificate and key files "
                "(--history-api-cert-file, --history-api-key-file)"
            )
        return self

    @field_validator("etcd_endpoints", "namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @field_validator("namespaces", mode="after")
    @classmethod
    def _namespace_names(cls, value: list[str]) -> list[str]:
        # Names, not patterns: the resync lists each entry as a namespace, and the
        # connection budget (--api-connections) reserves one watch stream per entry;
        # kopf would take "team-*" or "!kube-system" as patterns and watch more.
        for name in value:
            if not _NAMESPACE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a namespace name (lowercase letters, "
                    "digits and '-', at most 63, starting and ending with a letter or "
                    "digit); patterns such as 'team-*' or '!kube-system' are not "
                    "supported: list the namespaces, or leave it empty for all"
                )
        return list(dict.fromkeys(value))  # each namespace once

    def etcd(self) -> EtcdSettings:
        tls = None
        if self.etcd_ca_file or self.etcd_cert_file or self.etcd_key_file:
            tls = TLSFiles(self.etcd_ca_file, self.etcd_cert_file, self.etcd_key_file)
        return EtcdSettings(
            endpoints=tuple(self.etcd_endpoints),
            tls=tls,
            username=self.etcd_username,
            password=self.etcd_password.get_secret_value() if self.etcd_password else None,
            request_timeout=self.etcd_timeout,
            prefix=self.etcd_prefix,
        )
