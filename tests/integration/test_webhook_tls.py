"""The admission webhook's TLS on loopback: TLS only, rotated certificate files are
served to new connections without a restart, and a half-rotated pair (new
certificate, old key) keeps the previous pair serving instead of failing."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from etcdconfig.controller.handlers import ReloadingWebhookServer
from etcdconfig.devenv.etcd import free_port
from etcdconfig.devenv.pki import CertificateAuthority, KeyPair
from etcdconfig.settings import Settings


def _issue(ca: CertificateAuthority, stem: Path, cn: str) -> KeyPair:
    return ca.issue(stem, common_name=cn, server=True, ip_addresses=("127.0.0.1",))


async def served(port: int, ca: Path) -> bytes:
    """The DER certificate a new connection gets (verified against the CA)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return bytes(der)


def der(pair: KeyPair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert_pem.decode())


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[Any]:
    ca = CertificateAuthority.load_or_create(tmp_path, "ca")
    live = _issue(ca, tmp_path / "live", "first")
    port = free_port()
    server = ReloadingWebhookServer(
        addr="127.0.0.1",
        port=port,
        certfile=live.cert_path,
        pkeyfile=live.key_path,
        file_check_interval=0.05,
    )

    async def review(*_: Any, **__: Any) -> dict[str, Any]:
        return {}

    configs = server(review)
    first = await anext(configs)
    task = asyncio.create_task(anext(configs))  # the reload loop; it never yields again
    yield ca, live, port, first
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await configs.aclose()


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll what another party (a TLS listener) shows; nothing to wait on but the wire."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - the condition is only observable
            await asyncio.sleep(0.05)


async def test_rotated_files_reach_new_connections_without_a_restart(
    webhook: Any, tmp_path: Path
) -> None:
    ca, live, port, first = webhook
    assert first == {"url": f"https://127.0.0.1:{port}"}
    assert await served(port, ca.cert_path) == der(live)
    staged = _issue(ca, tmp_path / "staged", "second")
    shutil.copyfile(staged.key_path, live.key_path)
    shutil.copyfile(staged.cert_path, live.cert_path)

    async def rotated() -> bool:
        return await served(port, ca.cert_path) == der(staged)

    await wait_for(rotated)


async def test_half_rotated_pair_keeps_the_previous_one_serving(
    webhook: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca, live, port, _ = webhook
    staged = _issue(ca, tmp_path / "staged", "second")
    shutil.copyfile(staged.cert_path, live.cert_path)  # the key has not arrived yet

    async def refused() -> bool:
        return any("still serving the previous pair" in r.message for r in caplog.records)

    await wait_for(refused)
    assert await served(port, ca.cert_path) == der(live)
    shutil.copyfile(staged.key_path, live.key_path)

    async def rotated() -> bool:
        return await served(port, ca.cert_path) == der(staged)

    await wait_for(rotated)


async def test_plain_http_gets_no_answer(webhook: Any) -> None:
    _, _, port, _ = webhook
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /validate-config HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    reply = await reader.read(100)
    writer.close()
    assert not reply.startswith(b"HTTP/")


def test_a_webhook_without_certificate_files_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="the webhook serves TLS only"):
        Settings(webhook_enabled=True)
