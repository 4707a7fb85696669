"""A fault-injecting TCP proxy in front of etcd that understands etcd's gRPC calls.

Both test tiers use it: the integration tests drive the store and the locks
through it, the chaos suite puts one in front of each operator replica.

It forwards bytes unchanged both ways. On the client→server side it parses the
HTTP/2 frames: HEADERS (+ CONTINUATION) blocks are decoded with one HPACK
decoder per connection (the header table is per connection, so every block is
decoded, in order) to learn each stream's ``:path`` and ``grpc-timeout``; DATA
frames are reassembled into gRPC messages and decoded with etcd's own protos
(``etcdconfig.etcd._pb.rpc_pb2``) to classify the call:

``acquire``    a Txn whose success ops put a key under ``{prefix}/locks/`` with a lease
``commit``     a Txn that puts a key under ``.../versions/``
``release``    a Txn (or DeleteRange) that deletes only lock keys and puts nothing
``tombstone``  a Txn that puts a head whose value says ``"deleted": true``
``keepalive``  a message on a LeaseKeepAlive stream

``arm(kind, times=N, mode=...)`` selects ONE kind; the next N calls of that kind
meet the fault, every other byte passes. Modes:

``drop``     the request reaches etcd; from then on nothing etcd sends on that
             connection reaches the client; once etcd has answered the call, the
             connection is reset (the client sees UNAVAILABLE, the outcome is
             unknown to it, and in fact the call was applied)
``timeout``  the same, but the connection stays open and silent for ``hold``
             seconds (past the client's deadline: DEADLINE_EXCEEDED) before it
             is reset
``lose``     the request never reaches etcd; the connection is reset at once
             (the client cannot tell this from ``drop``)
``late``     the request is held in the network: the client's connection is
             reset at once, and the request reaches etcd later, on its original
             upstream connection, just before the next call of the same kind is
             let through (or after half of its gRPC deadline, at most
             ``late_max`` seconds). Its answer is lost. This is the "timed out,
             but landed after my retry read the state" interleaving.

A reset is a TCP RST on both sockets (``SO_LINGER`` 0), so the client's HTTP/2
state (and HPACK tables) die with the connection and it reconnects fresh.
``blackhole()`` / ``heal()`` hold every byte both ways (a partition), as the
chaos suite's original TCP proxy did. Anything that is not cleartext HTTP/2
(e.g. TLS) is forwarded without inspection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import hpack

from etcdconfig.etcd._pb import rpc_pb2

Kind = Literal["acquire", "commit", "release", "tombstone", "keepalive"]
Mode = Literal["drop", "timeout", "lose", "late"]
KINDS: tuple[Kind, ...] = ("acquire", "commit", "release", "tombstone", "keepalive")
MODES: tuple[Mode, ...] = ("drop", "timeout", "lose", "late")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _GOAWAY, _CONTINUATION = 0x0, 0x1, 0x3, 0x7, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20

TXN = "/etcdserverpb.KV/Txn"
DELETE_RANGE = "/etcdserverpb.KV/DeleteRange"
KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
_INSPECTED = (TXN, DELETE_RANGE, KEEPALIVE)
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def classify(path: str, message: bytes, prefix: str = "") -> Kind | None:
    """The kind of one etcd gRPC request message, or None for any other call."""
    locks = f"{prefix.rstrip('/')}/locks/".encode() if prefix else b""

    def is_lock(key: bytes) -> bool:
        return key.startswith(locks) if locks else b"/locks/" in key

    if path == KEEPALIVE:
        return "keepalive"
    if path == DELETE_RANGE:
        req: Any = rpc_pb2.DeleteRangeRequest.FromString(message)
        return "release" if is_lock(req.key) and not req.range_end else None
    if path != TXN:
        return None
    txn: Any = rpc_pb2.TxnRequest.FromString(message)
    puts = [op.request_put for op in txn.success if op.HasField("request_put")]
    deletes = [op.request_delete_range for op in txn.success if op.HasField("request_delete_range")]
    for put in puts:
        if put.key.endswith(b"/head") and _says_deleted(put.value):
            return "tombstone"
    if any(b"/versions/" in put.key for put in puts):
        return "commit"
    if any(is_lock(put.key) and put.lease for put in puts):
        return "acquire"
    if not puts and deletes and all(is_lock(d.key) and not d.range_end for d in deletes):
        return "release"
    return None


def _says_deleted(value: bytes) -> bool:
    try:
        obj = json.loads(value)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("deleted") is True


def _grpc_timeout(value: str) -> float | None:
    try:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    except (KeyError, ValueError, IndexError):
        return None


def _take_frame(buf: bytearray) -> bytes | None:
    if len(buf) < 9:
        return None
    size = 9 + int.from_bytes(buf[:3], "big")
    if len(buf) < size:
        return None
    frame = bytes(buf[:size])
    del buf[:size]
    return frame


def _frame_header(frame: bytes) -> tuple[int, int, int]:
    return frame[3], frame[4], int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF


def _payload(ftype: int, flags: int, body: bytes) -> bytes:
    if flags & _PADDED and ftype in (_DATA, _HEADERS) and body:
        body = body[1 : len(body) - body[0]]
    if ftype == _HEADERS and flags & _PRIORITY:
        body = body[5:]
    return body


@dataclass
class Fault:
    """One fired fault: what call met it and what etcd did with the request."""

    kind: Kind
    mode: Mode
    path: str
    stream: int
    at: float  # time.monotonic() when the request was seen
    hold: float = 0.0  # timeout mode: how long the connection stays silent
    answered: bool = False  # etcd answered the request (it executed it)
    delivered_at: float | None = None  # when the request was handed to etcd (None: never)


@dataclass
class _Rule:
    kind: Kind
    mode: Mode
    left: int
    hold: float


@dataclass(eq=False)
class _Conn:
    client_w: asyncio.StreamWriter
    up_w: asyncio.StreamWriter
    decoder: hpack.Decoder = field(default_factory=hpack.Decoder)
    paths: dict[int, str] = field(default_factory=dict)
    deadlines: dict[int, float] = field(default_factory=dict)
    bodies: dict[int, bytearray] = field(default_factory=dict)
    block: tuple[int, bytearray] | None = None
    raw: bool = False  # not cleartext HTTP/2 (or undecodable): forward blindly
    muted: bool = False  # server→client bytes are dropped from now on
    client_gone: bool = False
    upstream_gone: bool = False
    keep_upstream: bool = False  # a late request still has to go out on it
    replies: dict[int, asyncio.Event] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)  # streams etcd answered after a fault


@dataclass(eq=False)
class _Late:
    conn: _Conn
    frame: bytes
    fault: Fault
    due: float
    started: bool = False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (not a FIN): the peer sees "connection reset"."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forwards a local port to etcd, injecting faults into selected gRPC calls."""

    def __init__(
        self, target_host: str, target_port: int, *, prefix: str = "", late_max: float = 2.0
    ) -> None:
        self.target = (target_host, target_port)
        self.prefix = prefix
        self.late_max = late_max
        self.port = 0
        self.seen: Counter[str] = Counter()  # calls seen per kind (faulted or not)
        self._fired: list[Fault] = []
        self._rule: _Rule | None = None
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._late: list[_Late] = []
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._stop = asyncio.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")

    # --- control (any thread) ---------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, kind: Kind, *, times: int = 1, mode: Mode = "drop", hold: float = 2.0) -> None:
        """Fault the next ``times`` calls of ``kind`` (replaces any armed rule)."""
        if kind not in KINDS or mode not in MODES:
            raise ValueError(f"unknown fault {kind!r}/{mode!r}")
        with self._lock:
            self._rule = _Rule(kind, mode, times, hold)

    def disarm(self) -> None:
        with self._lock:
            self._rule = None

    @property
    def fired(self) -> list[Fault]:
        with self._lock:
            return list(self._fired)

    @property
    def armed_left(self) -> int:
        with self._lock:
            return self._rule.left if self._rule else 0

    def blackhole(self) -> None:
        """Hold every byte both ways (connections stay open, like a partition)."""
        self._loop.call_soon_threadsafe(self._open.clear)

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)

    def reset_all(self) -> None:
        """Reset every connection through the proxy now."""

        def run() -> None:
            for conn in list(self._conns):
                self._abort(conn)

        self._loop.call_soon_threadsafe(run)

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the event loop thread ----------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(ready))
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._open.set()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for conn in list(self._conns):
                self._abort(conn)
            # let the connection handlers end on the resets (a cancelled handler task is
            # reported by asyncio's stream machinery as an error)
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        conn = _Conn(client_w=writer, up_w=up_w)
        self._conns.add(conn)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await asyncio.gather(self._client_pipe(conn, reader), self._server_pipe(conn, up_r))
        finally:
            self._conns.discard(conn)
            self._handlers.discard(task)

    def _abort(self, conn: _Conn, *, upstream: bool = True) -> None:
        if not conn.client_gone:
            conn.client_gone = True
            _reset(conn.client_w)
        if upstream and not conn.upstream_gone:
            conn.upstream_gone = True
            _reset(conn.up_w)

    async def _client_pipe(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        preface = True
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                if conn.raw:
                    if buf:  # inspection stopped mid-stream: what was buffered goes first
                        data = bytes(buf) + data
                        buf.clear()
                    conn.up_w.write(data)
                    await conn.up_w.drain()
                    continue
                buf += data
                if preface:
                    if len(buf) < len(PREFACE) and PREFACE.startswith(buf):
                        continue
                    preface = False
                    if not buf.startswith(PREFACE):
                        conn.raw = True  # not cleartext HTTP/2: forward blindly
                        conn.up_w.write(bytes(buf))
                        await conn.up_w.drain()
                        continue
                    conn.up_w.write(PREFACE)
                    del buf[: len(PREFACE)]
                out = bytearray()
                while (frame := _take_frame(buf)) is not None:
                    fault = await self._inspect(conn, frame)
                    if fault is None:
                        out += frame
                        continue
                    if out:
                        conn.up_w.write(bytes(out))
                        out.clear()
                    if self._fire(conn, frame, fault):
                        return
                    out += frame  # drop / timeout: the request goes on to etcd
                if out:
                    conn.up_w.write(bytes(out))
                    await conn.up_w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not conn.keep_upstream:
                self._abort(conn)

    async def _server_pipe(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                if not conn.raw:
                    buf += data
                    while (frame := _take_frame(buf)) is not None:
                        self._observe_reply(conn, frame)
                if conn.muted or conn.client_gone:
                    continue
                try:
                    conn.client_w.write(data)
                    await conn.client_w.drain()
                except (ConnectionError, OSError):
                    conn.client_gone = True
        except (ConnectionError, OSError):
            pass
        finally:
            for ev in conn.replies.values():
                ev.set()
            conn.upstream_gone = True
            conn.up_w.transport.abort()
            if not conn.muted:  # a muted connection is reset by its fault's own task
                self._abort(conn)

    def _observe_reply(self, conn: _Conn, frame: bytes) -> None:
        ftype, flags, sid = _frame_header(frame)
        if ftype == _GOAWAY:
            for waiting in conn.replies.values():
                waiting.set()
            return
        ev = conn.replies.get(sid)
        if ev is not None and (
            ftype in (_DATA, _RST_STREAM) or (ftype == _HEADERS and flags & _END_STREAM)
        ):
            conn.answered.add(sid)
            ev.set()

    # --- inspection ---------------------------------------------------------------------------

    async def _inspect(self, conn: _Conn, frame: bytes) -> Fault | None:
        ftype, flags, sid = _frame_header(frame)
        body = frame[9:]
        if ftype == _HEADERS:
            payload = _payload(ftype, flags, body)
            if flags & _END_HEADERS:
                self._headers(conn, sid, payload)
            else:
                conn.block = (sid, bytearray(payload))
            return None
        if ftype == _CONTINUATION and conn.block is not None:
            conn.block[1].extend(body)
            if flags & _END_HEADERS:
                block_sid, block = conn.block
                conn.block = None
                self._headers(conn, block_sid, bytes(block))
            return None
        if ftype == _RST_STREAM:
            conn.bodies.pop(sid, None)
            return None
        if ftype != _DATA:
            return None
        path = conn.paths.get(sid)
        if path not in _INSPECTED:
            return None
        pending = conn.bodies.setdefault(sid, bytearray())
        pending += _payload(ftype, flags, body)
        kinds: list[Kind] = []
        while len(pending) >= 5:
            size = int.from_bytes(pending[1:5], "big")
            if len(pending) < 5 + size:
                break
            compressed, message = pending[0], bytes(pending[5 : 5 + size])
            del pending[: 5 + size]
            if compressed:
                continue
            try:
                kind = classify(str(path), message, self.prefix)
            except Exception:  # an undecodable message is simply not classified
                kind = None
            if kind is not None:
                kinds.append(kind)
        if flags & _END_STREAM:
            conn.bodies.pop(sid, None)
        for kind in kinds:
            self.seen[kind] += 1
        for kind in kinds:
            fault = self._take(kind, str(path), sid)
            if fault is not None:
                return fault
        for kind in kinds:
            await self._deliver_late(kind)
        return None

    def _headers(self, conn: _Conn, sid: int, block: bytes) -> None:
        try:
            headers = {
                bytes(k).decode() if isinstance(k, bytes | bytearray) else str(k): (
                    bytes(v).decode() if isinstance(v, bytes | bytearray) else str(v)
                )
                for k, v in conn.decoder.decode(block)
            }
        except Exception:
            conn.raw = True  # the header table is out of step: stop inspecting
            return
        path = headers.get(":path")
        if path:
            conn.paths[sid] = path
        timeout = _grpc_timeout(headers.get("grpc-timeout", ""))
        if timeout is not None:
            conn.deadlines[sid] = time.monotonic() + timeout

    def _take(self, kind: Kind, path: str, sid: int) -> Fault | None:
        with self._lock:
            rule = self._rule
            if rule is None or rule.kind != kind or rule.left <= 0:
                return None
            rule.left -= 1
            fault = Fault(
                kind=kind,
                mode=rule.mode,
                path=path,
                stream=sid,
                at=time.monotonic(),
                hold=rule.hold if rule.mode == "timeout" else 0.0,
            )
            self._fired.append(fault)
            return fault

    # --- faults -------------------------------------------------------------------------------

    def _fire(self, conn: _Conn, frame: bytes, fault: Fault) -> bool:
        """Act on a faulted request; True when the client side is finished."""
        if fault.mode == "lose":
            self._abort(conn)
            return True
        if fault.mode == "late":
            conn.keep_upstream = True
            conn.muted = True
            self._abort(conn, upstream=False)
            deadline = conn.deadlines.get(fault.stream)
            wait = self.late_max
            if deadline is not None:
                wait = min(wait, max(0.0, (deadline - time.monotonic()) / 2))
            late = _Late(conn, frame, fault, due=time.monotonic() + wait)
            self._late.append(late)
            asyncio.get_running_loop().create_task(self._late_timer(late))
            return True
        # drop / timeout: mute the replies before the request goes out
        conn.muted = True
        conn.replies[fault.stream] = asyncio.Event()
        fault.delivered_at = time.monotonic()
        asyncio.get_running_loop().create_task(self._cut_after_reply(conn, fault))
        return False

    async def _cut_after_reply(self, conn: _Conn, fault: Fault) -> None:
        ev = conn.replies[fault.stream]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await ev.wait()
        fault.answered = fault.stream in conn.answered
        await asyncio.sleep(max(0.0, fault.at + fault.hold - time.monotonic()))  # its length
        self._abort(conn)

    async def _late_timer(self, late: _Late) -> None:
        await asyncio.sleep(max(0.0, late.due - time.monotonic()))  # the fault's length
        await self._deliver(late)

    async def _deliver_late(self, kind: Kind) -> None:
        for late in list(self._late):
            if late.fault.kind == kind:
                await self._deliver(late)

    async def _deliver(self, late: _Late) -> None:
        if late.started:
            return
        late.started = True
        conn = late.conn
        try:
            if conn.upstream_gone:
                return
            ev = conn.replies[late.fault.stream] = asyncio.Event()
            conn.up_w.write(late.frame)
            await conn.up_w.drain()
            late.fault.delivered_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await ev.wait()
            late.fault.answered = late.fault.stream in conn.answered
        except (ConnectionError, OSError):
            pass
        finally:
            self._late.remove(late)
            conn.keep_upstream = False
            self._abort(conn)
