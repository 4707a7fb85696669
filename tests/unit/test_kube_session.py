"""The operator's own Kubernetes client: the environment's proxy settings are read
once, not by aiohttp in a worker thread for every request (with ``~/.netrc``)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from etcdconfig.kube import load_api_client

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: "t"}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"""


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    return path


async def test_the_session_does_not_consult_the_environment_per_request(kubeconfig: Path) -> None:
    api = await load_api_client(str(kubeconfig), connections=7)
    try:
        session = api.rest_client.pool_manager
        assert isinstance(session, aiohttp.ClientSession)
        assert session.trust_env is False
        assert not session.closed
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == 7  # the cap survives the swap
        assert api.rest_client.proxy is None
    finally:
        await api.close()


async def test_a_proxy_from_the_environment_is_still_used(
    kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    api = await load_api_client(str(kubeconfig))
    try:
        assert api.rest_client.proxy == "http://proxy.invalid:3128"
    finally:
        await api.close()


async def test_no_proxy_for_the_api_servers_host_is_honoured(
    kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    api = await load_api_client(str(kubeconfig))
    try:
        assert api.rest_client.proxy is None
    finally:
        await api.close()
