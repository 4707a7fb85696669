"""The etcd v3 client: ``grpc.aio`` over stubs generated from etcd's own protos.

This is the only module that imports gRPC or the generated stubs. Rules:

- no hidden retries of writes: gRPC's own retries are disabled, and a write
  that fails with an unknown outcome raises ``EtcdUnavailable``;
- reads (ranges, lease TTL queries) fail over to the next endpoint;
- watches report compaction (``Compacted``) and cancellation instead of
  silently ending;
- TLS with client certificates and user/password auth (token in metadata,
  re-authenticated when etcd says the token is no longer valid);
- every failure names its cause: a refused TLS handshake, a wrong password, a
  role that does not grant the key range (with the identity and the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

# gRPC's C core logs TLS failures to stderr in its own unstructured format, duplicating
# what _map_error says in words; keep it quiet unless GRPC_VERBOSITY asks otherwise
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
import grpc.aio

from etcdconfig.errors import (
    Compacted,
    EtcdAuthError,
    EtcdError,
    EtcdPermissionDenied,
    EtcdTLSError,
    EtcdUnavailable,
    LeaseNotFound,
    RequestTooLarge,
    StoreFull,
)
from etcdconfig.etcd._pb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from etcdconfig.etcd.types import (
    Compare,
    DeleteRange,
    Event,
    KeyValue,
    Put,
    Range,
    RangeResult,
    TxnOp,
    TxnResult,
    prefix_end,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

log = logging.getLogger(__name__)

T = TypeVar("T")

_TARGETS = {
    "version": rpc_pb2.Compare.VERSION,
    "create": rpc_pb2.Compare.CREATE,
    "mod": rpc_pb2.Compare.MOD,
    "value": rpc_pb2.Compare.VALUE,
    "lease": rpc_pb2.Compare.LEASE,
}
_OPS = {
    "=": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    "<": rpc_pb2.Compare.LESS,
    ">": rpc_pb2.Compare.GREATER,
}


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for TLS: the CA that signed etcd's server certificate, and our client pair."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: Sequence[str] = ("127.0.0.1:2379",)
    tls: TLSFiles | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    request_timeout: float = 5.0
    # bounds the whole of connect(): a bad TLS setup or a silent endpoint fails within it
    connect_timeout: float = 5.0
    # the key prefix this client works under: connect() checks that the identity may read it
    prefix: str | None = None


def _strip_scheme(endpoint: str) -> tuple[str, bool | None]:
    for scheme, tls in (("https://", True), ("http://", False), ("unixs://", True)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :], tls
    return endpoint, None


def _kv(pb: Any) -> KeyValue:
    return KeyValue(
        key=bytes(pb.key),
        value=bytes(pb.value),
        create_revision=int(pb.create_revision),
        mod_revision=int(pb.mod_revision),
        version=int(pb.version),
        lease=int(pb.lease),
    )


def _range_result(resp: Any) -> RangeResult:
    return RangeResult(
        kvs=tuple(_kv(kv) for kv in resp.kvs),
        revision=int(resp.header.revision),
        more=bool(resp.more),
        count=int(resp.count),
    )


# what gRPC's details say when the TLS handshake failed (BoringSSL and TSI wording)
_TLS_MARKERS = ("handshake", "CERTIFICATE", "certificate", "TSI_", "SSL_ERROR", "Unwrap failed")


def _tls_hint(details: str) -> str:
    """What a failed handshake most likely means, from gRPC's terse details."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        reason = details.rsplit("CERTIFICATE_VERIFY_FAILED:", 1)[-1].split(":")[0].strip()
        return (
            f"etcd's server certificate was not accepted ({reason or 'verification failed'}); "
            "check the CA file and that the certificate is valid for this address"
        )
    if "TSI_DATA_CORRUPTED" in details or "Unwrap failed" in details:
        return (
            "etcd closed the connection after the handshake: it refused our client "
            "certificate (missing, expired, or signed by a CA etcd does not trust)"
        )
    return "check the CA / client certificate"


#: what a refused write says to do (docs/operations.md#etcd-space)
NOSPACE_HINT = (
    "etcd's NOSPACE alarm is raised: its database reached --quota-backend-bytes and it "
    "refuses every write until an admin frees space: compact, defragment, then "
    "`etcdctl alarm disarm` (docs/operations.md#etcd-space)"
)


def _map_error(exc: grpc.aio.AioRpcError, what: str, identity: str = "") -> EtcdError:
    code = exc.code()
    details = exc.details() or ""
    text = f"etcd {what} failed: {details or code.name}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) and any(
        m in details for m in _TLS_MARKERS
    ):
        return EtcdTLSError(
            f"TLS handshake with etcd failed during {what}: {_tls_hint(details)} ({details})"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EtcdUnavailable(text)
    who = f" for {identity}" if identity else ""
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return EtcdPermissionDenied(
            f"{text}{who} (the etcd user's roles do not grant this key range; grant readwrite "
            "on the configured prefix: `etcdctl role grant-permission --prefix=true ROLE "
            "readwrite PREFIX/`)"
        )
    if "user name is empty" in details:
        return EtcdAuthError(
            f"{text} (etcd has authentication enabled: configure an etcd username and password, "
            "or a client certificate whose common name is an etcd user)"
        )
    if "authentication is not enabled" in details:
        return EtcdAuthError(
            f"{text} (an etcd username is configured but etcd has authentication disabled; "
            "enable it with `etcdctl auth enable` or drop the username)"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED or "authentication failed" in details:
        return EtcdAuthError(f"{text}{who} (check the etcd username and password)")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return Compacted(text)
    if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
        return LeaseNotFound(text)
    if code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in details:
        return RequestTooLarge(text)
    if "database space exceeded" in details:
        return StoreFull(f"{text} ({NOSPACE_HINT})")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RequestTooLarge(text)
    return EtcdError(text)


def _key_text(key: bytes, range_end: bytes | None = None) -> str:
    text = repr(key.decode(errors="replace"))
    if range_end and range_end == prefix_end(key):
        return f"keys under {text}"
    return text if not range_end else f"{text}..{range_end.decode(errors='replace')!r}"


def _compare_pb(c: Compare) -> Any:
    pb = rpc_pb2.Compare(key=c.key, target=_TARGETS[c.target], result=_OPS[c.op])
    if c.target == "version":
        pb.version = int(c.value)
    elif c.target == "create":
        pb.create_revision = int(c.value)
    elif c.target == "mod":
        pb.mod_revision = int(c.value)
    elif c.target == "lease":
        pb.lease = int(c.value)
    else:
        assert isinstance(c.value, bytes)
        pb.value = c.value
    return pb


def _op_pb(op: TxnOp) -> Any:
    if isinstance(op, Put):
        return rpc_pb2.RequestOp(
            request_put=rpc_pb2.PutRequest(key=op.key, value=op.value, lease=op.lease)
        )
    if isinstance(op, DeleteRange):
        return rpc_pb2.RequestOp(
            request_delete_range=rpc_pb2.DeleteRangeRequest(
                key=op.key, range_end=op.range_end or b""
            )
        )
    return rpc_pb2.RequestOp(
        request_range=rpc_pb2.RangeRequest(
            key=op.key,
            range_end=op.range_end or b"",
            limit=op.limit,
            sort_order=rpc_pb2.RangeRequest.ASCEND
            if op.sort_by_create
            else rpc_pb2.RangeRequest.NONE,
            sort_target=rpc_pb2.RangeRequest.CREATE
            if op.sort_by_create
            else rpc_pb2.RangeRequest.KEY,
        )
    )


class _Endpoint:
    def __init__(self, address: str, creds: grpc.ChannelCredentials | None) -> None:
        self.address = address
        options = [
            ("grpc.enable_retries", 0),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        if creds is not None:
            self.channel = grpc.aio.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.auth = rpc_pb2_grpc.AuthStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(self.channel)


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EtcdTLSError(f"cannot read the etcd {what} {path}: {exc.strerror or exc}") from exc


class EtcdClient:
    """An asyncio etcd v3 client over one or more endpoints.

    Channels open on first use, so a TLS file that cannot be read is reported by
    ``connect()`` like every other connection problem.
    """

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._addresses = [addr for addr, _ in map(_strip_scheme, settings.endpoints)]
        if not self._addresses:
            raise EtcdError("no etcd endpoints configured")
        self._use_tls = settings.tls is not None or any(
            tls for _, tls in map(_strip_scheme, settings.endpoints)
        )
        self._opened: list[_Endpoint] | None = None
        self._current = 0
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()

    # --- plumbing -------------------------------------------------------------------------

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if not self._use_tls:
            return None
        tls = self.settings.tls or TLSFiles()
        if (tls.cert_file is None) != (tls.key_file is None):
            raise EtcdTLSError(
                "an etcd client certificate needs both the certificate and the key file"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(tls.ca_file, "CA file") if tls.ca_file else None,
            private_key=_read_pem(tls.key_file, "client key file") if tls.key_file else None,
            certificate_chain=_read_pem(tls.cert_file, "client certificate file")
            if tls.cert_file
            else None,
        )

    @property
    def _endpoints(self) -> list[_Endpoint]:
        if self._opened is None:
            creds = self._credentials()
            self._opened = [_Endpoint(addr, creds) for addr in self._addresses]
        return self._opened

    @property
    def endpoint(self) -> _Endpoint:
        return self._endpoints[self._current]

    @property
    def identity(self) -> str:
        """Who etcd sees us as, in words (for error messages)."""
        if self.settings.username:
            return f"etcd user {self.settings.username!r}"
        tls = self.settings.tls
        if tls is not None and tls.cert_file is not None:
            return f"the etcd user named by the common name of {tls.cert_file}"
        return "an anonymous etcd client"

    def _rotate(self) -> None:
        self._current = (self._current + 1) % len(self._endpoints)

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("token", self._token),) if self._token else None

    async def _authenticate(self) -> None:
        if not self.settings.username:
            return
        async with self._auth_lock:
            try:
                resp = await self.endpoint.auth.Authenticate(
                    rpc_pb2.AuthenticateRequest(
                        name=self.settings.username, password=self.settings.password or ""
                    ),
                    timeout=self.settings.request_timeout,
                )
            except grpc.aio.AioRpcError as exc:
                raise _map_error(exc, f"authentication as {self.settings.username!r}") from exc
            self._token = str(resp.token)

    async def _call(self, what: str, fn: Any, request: Any, *, idempotent: bool) -> Any:
        """Run one unary call. Reads fail over across endpoints; writes never retry
        unless etcd refused them before executing (stale auth token)."""
        if self.settings.username and self._token is None:
            await self._authenticate()
        attempts = len(self._endpoints) if idempotent else 1
        reauthed = False
        last: grpc.aio.AioRpcError | None = None
        i = 0
        while i < attempts:
            ep = self.endpoint
            try:
                return await fn(ep)(
                    request, timeout=self.settings.request_timeout, metadata=self._metadata()
                )
            except grpc.aio.AioRpcError as exc:
                last = exc
                details = exc.details() or ""
                if not reauthed and (
                    "invalid auth token" in details or "auth token is invalid" in details
                ):
                    reauthed = True
                    await self._authenticate()
                    continue
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self._rotate()
                    i += 1
                    continue
                error = _map_error(exc, what, self.identity)
                if isinstance(error, RequestTooLarge):
                    error = RequestTooLarge(
                        f"{error} (the request is {request.ByteSize()} bytes, over etcd's "
                        "--max-request-bytes; set ETCDCONFIG_ETCD_MAX_REQUEST_BYTES to "
                        "etcd's value so oversized data is refused as invalid instead)"
                    )
                raise error from exc
        assert last is not None
        raise _map_error(last, what, self.identity) from last

    async def connect(self, *, prefix: str | None = None, write: bool = False) -> None:
        """Check that etcd answers over the configured transport and accepts our identity,
        and that the identity may read keys under ``prefix`` (default: the settings'
        prefix) and, with ``write``, write them. Fails within ``connect_timeout`` with an
        error that names the cause (TLS, password, role, or an unreachable endpoint)."""
        prefix = prefix if prefix is not None else self.settings.prefix
        names = ", ".join(self._addresses)
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                try:
                    await self._check_access(prefix, write=write)
                except EtcdUnavailable as exc:
                    if self._use_tls:
                        cause = await self._diagnose_tls()
                    elif await self._speaks_tls():
                        cause = (
                            "etcd expects TLS and we connected without it; use an https:// "
                            "endpoint with the CA file (and a client certificate)"
                        )
                    else:
                        cause = None
                    if cause is not None:
                        raise EtcdTLSError(
                            f"TLS handshake with etcd at {self.endpoint.address} failed: {cause}"
                        ) from exc
                    if isinstance(exc, EtcdTLSError):
                        raise
                    raise EtcdUnavailable(
                        f"cannot reach etcd at {names}: {exc} (is it running, and are TLS "
                        "settings and the CA right?)"
                    ) from exc
        except TimeoutError as exc:
            raise EtcdUnavailable(
                f"etcd at {names} did not answer within {self.settings.connect_timeout:g}s "
                "(is it running, and does it speak TLS exactly when we do?)"
            ) from exc

    async def _check_access(self, prefix: str | None, *, write: bool) -> None:
        await self._authenticate()
        if prefix is None:
            # etcd answered and knows who we are; there is no key range to check
            with contextlib.suppress(EtcdPermissionDenied):
                await self.range(b"\0", limit=1, serializable=True, keys_only=True)
            return
        root = prefix.rstrip("/").encode() + b"/"
        try:
            await self.range(root, prefix_end(root), limit=1, serializable=True, keys_only=True)
        except EtcdPermissionDenied as exc:
            raise EtcdPermissionDenied(
                f"{self.identity} may not read keys under {root.decode()!r}: its etcd roles do "
                f"not grant the configured prefix (grant it with `etcdctl role grant-permission "
                f"--prefix=true ROLE readwrite {root.decode()}`)"
            ) from exc
        if write:
            # etcd checks the permissions of both branches of a transaction before it
            # evaluates the compare; this compare is never true, so nothing is written
            probe = root + b".access-check"
            try:
                await self.txn([Compare.create_revision(probe, "<", 0)], [Put(probe, b"")])
            except EtcdPermissionDenied as exc:
                raise EtcdPermissionDenied(
                    f"{self.identity} may read but not write keys under {root.decode()!r}: "
                    "the operator needs readwrite on the configured prefix"
                ) from exc

    async def _diagnose_tls(self) -> str | None:
        """Why the TLS handshake failed, in words. gRPC reports a refused client
        certificate only as "Unwrap failed"; a handshake of our own with the stdlib
        ``ssl`` module reads the alert etcd sent. None: TLS is not the problem."""
        tls = self.settings.tls or TLSFiles()
        host, _, port = self.endpoint.address.rpartition(":")
        try:
            ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            ctx.set_alpn_protocols(["h2"])
            if tls.cert_file is not None and tls.key_file is not None:
                ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return f"the TLS files cannot be loaded ({exc}); check the CA, certificate and key"
        ca = f"the CA file {tls.ca_file}" if tls.ca_file else "the system's CA store (no CA file)"
        cert = tls.cert_file
        handshaken = False
        try:
            async with asyncio.timeout(2.0):
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=ctx, server_hostname=host.strip("[]")
                )
                handshaken = True
                try:
                    # TLS 1.3 finishes the client's side of the handshake before the server
                    # judges our certificate: its verdict (an alert, or its first HTTP/2
                    # frame) comes with the first read
                    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    await writer.drain()
                    await reader.read(1)
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except ssl.SSLCertVerificationError as exc:
            return (
                f"etcd's server certificate was not accepted ({exc.verify_message}); "
                f"check {ca} and that the certificate is valid for {host}"
            )
        except ssl.SSLError as exc:
            reason = str(exc.reason or exc)
            if "CERTIFICATE_REQUIRED" in reason:
                return "etcd requires a client certificate and none is configured"
            if "EXPIRED" in reason:
                return f"etcd refused our client certificate {cert}: it has expired"
            if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
                return (
                    f"etcd refused our client certificate {cert}: it is not signed by a CA "
                    f"etcd trusts ({reason})"
                )
            if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
                return "etcd does not speak TLS on this port; use an http:// endpoint"
            return f"{reason}; check the CA / client certificate"
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            if not handshaken:
                # a plain HTTP/2 server drops a TLS client hello without a word
                return "etcd does not speak TLS on this port; use an http:// endpoint"
            if cert is None:
                return (
                    "etcd closed the connection after the handshake; it may require a client "
                    "certificate"
                )
            return (
                f"etcd closed the connection after the handshake ({type(exc).__name__}): it "
                f"most likely refused our client certificate {cert} (not signed by a CA it "
                "trusts, or expired)"
            )
        except (OSError, TimeoutError):
            return None  # not reachable at all: not a TLS problem
        return None

    async def _speaks_tls(self) -> bool:
        """Whether the endpoint answers a TLS handshake (when we were told to speak plain)."""
        host, _, port = self.endpoint.address.rpartition(":")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # a probe that sends nothing but a handshake
        try:
            async with asyncio.timeout(2.0):
                _, writer = await asyncio.open_connection(host.strip("[]"), int(port), ssl=ctx)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        except ssl.SSLError as exc:
            return "ALERT" in str(exc.reason or "")  # a TLS server that dislikes our hello
        except (OSError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        for ep in self._opened or ():
            await ep.channel.close()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- KV -------------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        descending: bool = False,
        sort_by_create: bool = False,
        max_create_revision: int = 0,
    ) -> RangeResult:
        req = rpc_pb2.RangeRequest(
            key=key,
            range_end=range_end or b"",
            revision=revision,
            limit=limit,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            sort_order=rpc_pb2.RangeRequest.DESCEND if descending else rpc_pb2.RangeRequest.ASCEND,
            sort_target=rpc_pb2.RangeRequest.CREATE if sort_by_create else rpc_pb2.RangeRequest.KEY,
            max_create_revision=max_create_revision,
        )
        resp = await self._call(
            f"range of {_key_text(key, range_end)}", lambda ep: ep.kv.Range, req, idempotent=True
        )
        return _range_result(resp)

    async def get(self, key: bytes, *, revision: int = 0) -> tuple[KeyValue | None, int]:
        res = await self.range(key, revision=revision)
        return (res.kvs[0] if res.kvs else None), res.revision

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        req = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        resp = await self._call(
            f"put of {_key_text(key)}", lambda ep: ep.kv.Put, req, idempotent=False
        )
        return int(resp.header.revision)

    async def delete_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, int]:
        req = rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end or b"")
        resp = await self._call(
            f"delete of {_key_text(key, range_end)}",
            lambda ep: ep.kv.DeleteRange,
            req,
            idempotent=False,
        )
        return int(resp.deleted), int(resp.header.revision)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        req = rpc_pb2.TxnRequest(
            compare=[_compare_pb(c) for c in compare],
            success=[_op_pb(o) for o in success],
            failure=[_op_pb(o) for o in failure],
        )
        keys = [o.key for o in success] or [c.key for c in compare]
        what = f"transaction on {_key_text(keys[0])}" if keys else "transaction"
        resp = await self._call(what, lambda ep: ep.kv.Txn, req, idempotent=False)
        ran = success if resp.succeeded else failure
        out: list[RangeResult | None] = []
        for op, r in zip(ran, resp.responses, strict=True):
            out.append(_range_result(r.response_range) if isinstance(op, Range) else None)
        return TxnResult(
            succeeded=bool(resp.succeeded), revision=int(resp.header.revision), responses=tuple(out)
        )

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        req = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        await self._call("compact", lambda ep: ep.kv.Compact, req, idempotent=True)

    # --- leases ---------------------------------------------------------------------------

    async def grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        req = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        resp = await self._call(
            "lease grant", lambda ep: ep.lease.LeaseGrant, req, idempotent=False
        )
        if resp.error:
            raise EtcdError(f"etcd lease grant failed: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def revoke(self, lease_id: int) -> None:
        req = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        await self._call("lease revoke", lambda ep: ep.lease.LeaseRevoke, req, idempotent=True)

    async def time_to_live(self, lease_id: int) -> int:
        """Remaining TTL in seconds; -1 when the lease no longer exists."""
        req = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id)
        resp = await self._call(
            "lease ttl", lambda ep: ep.lease.LeaseTimeToLive, req, idempotent=True
        )
        return int(resp.TTL)

    def keepalive(self) -> KeepAliveStream:
        return KeepAliveStream(self)

    # --- watch ----------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
    ) -> AsyncIterator[tuple[int, list[Event]]]:
        """Yield ``(revision, events)`` batches from ``start_revision`` on.

        Raises ``Compacted`` (with ``compact_revision``) if the start revision was
        compacted, and ``EtcdUnavailable`` if the stream breaks: the caller
        re-reads state and resumes from the revision after the last one it saw.
        """
        if self.settings.username and self._token is None:
            await self._authenticate()
        filters = []
        if no_put:
            filters.append(rpc_pb2.WatchCreateRequest.NOPUT)
        if no_delete:
            filters.append(rpc_pb2.WatchCreateRequest.NODELETE)
        create = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=key,
                range_end=range_end or b"",
                start_revision=start_revision,
                prev_kv=prev_kv,
                filters=filters,
                progress_notify=True,
            )
        )
        ep = self.endpoint
        call = ep.watch.Watch(metadata=self._metadata())
        try:
            await call.write(create)
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd watch stream ended")
                if resp.compact_revision:
                    raise Compacted(
                        f"watch from revision {start_revision} failed: etcd compacted up to "
                        f"revision {resp.compact_revision}",
                        compact_revision=int(resp.compact_revision),
                    )
                if resp.canceled:
                    reason = resp.cancel_reason or "no reason"
                    if "permission denied" in reason:
                        raise EtcdPermissionDenied(
                            f"etcd refused the watch of {_key_text(key, range_end)} for "
                            f"{self.identity}: {reason} (grant read on the configured prefix)"
                        )
                    raise EtcdError(f"etcd cancelled the watch: {reason}")
                if resp.created and not resp.events:
                    continue
                events = [
                    Event(
                        type="DELETE" if ev.type == kv_pb2.Event.DELETE else "PUT",
                        kv=_kv(ev.kv),
                        prev_kv=_kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                    )
                    for ev in resp.events
                ]
                yield int(resp.header.revision), events
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._rotate()
            raise _map_error(exc, "watch", self.identity) from exc
        finally:
            call.cancel()

    # --- cluster / maintenance (tests and diagnostics) ------------------------------------

    async def status(self) -> dict[str, int]:
        resp = await self._call(
            "status", lambda ep: ep.maintenance.Status, rpc_pb2.StatusRequest(), idempotent=True
        )
        return {
            "member_id": int(resp.header.member_id),
            "leader": int(resp.leader),
            "revision": int(resp.header.revision),
            "raft_term": int(resp.raftTerm),
            "db_size": int(resp.dbSize),
            "db_size_in_use": int(resp.dbSizeInUse),
            "db_size_quota": int(resp.dbSizeQuota),  # 0 from an etcd before 3.6
        }

    async def alarms(self) -> list[str]:
        """The alarms raised on any member (``NOSPACE``, ``CORRUPT``), each once."""
        resp = await self._call(
            "alarm list",
            lambda ep: ep.maintenance.Alarm,
            rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET),
            idempotent=True,
        )
        return sorted({rpc_pb2.AlarmType.Name(a.alarm) for a in resp.alarms})


class KeepAliveStream:
    """One LeaseKeepAlive stream, reopened on the next endpoint when it breaks."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._call: Any = None
        self._reauthenticate = False

    async def ping(self, lease_id: int, wait: float) -> int:
        """Refresh ``lease_id``; return its new TTL (0 or less: the lease is gone)."""
        try:
            async with asyncio.timeout(wait):
                if self._reauthenticate:
                    # etcd's simple tokens live in its memory: a restart or another
                    # member refuses ours; unary calls renew it in _call, the stream here
                    self._reauthenticate = False
                    await self._client._authenticate()
                if self._call is None:
                    self._call = self._client.endpoint.lease.LeaseKeepAlive(
                        metadata=self._client._metadata()
                    )
                await self._call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                resp = await self._call.read()
        except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError) as exc:
            self.close()
            self._client._rotate()
            if isinstance(exc, grpc.aio.AioRpcError):
                details = exc.details() or ""
                if "invalid auth token" in details or "auth token is invalid" in details:
                    self._reauthenticate = True
                raise _map_error(exc, "lease keep-alive") from exc
            raise EtcdUnavailable(f"etcd lease keep-alive got no answer within {wait}s") from exc
        if resp is grpc.aio.EOF:
            self.close()
            raise EtcdUnavailable("etcd lease keep-alive stream ended")
        return int(resp.TTL)

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
