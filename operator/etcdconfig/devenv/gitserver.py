"""A Git server on loopback over plain ``http://``, for GitOps tools (Flux's go-git).

``git http-backend`` (Git's own smart-HTTP CGI program) behind a small threaded
Python HTTP server on ``127.0.0.1:<free port>``: read-only (``upload-pack``, what a
clone or fetch needs); tests change a repository through :class:`GitRepository`,
which commits in a working clone and pushes to the served bare repository over
the file system. Nothing leaves the machine; no host state changes beyond
``root`` (the served bare repositories and the working clones).
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

#: Git's settings for every command here: no user or system configuration applies.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "etcdconfig e2e",
    "GIT_AUTHOR_EMAIL": "e2e@etcdconfig.invalid",
    "GIT_COMMITTER_NAME": "etcdconfig e2e",
    "GIT_COMMITTER_EMAIL": "e2e@etcdconfig.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}


class GitServerError(RuntimeError):
    """A git command failed; the message has its output."""


def git_binary() -> str:
    git = shutil.which("git")
    if git is None:
        raise GitServerError("git is required for the Git server: apt-get install git")
    return git


def http_backend() -> str:
    exec_path = subprocess.run(
        [git_binary(), "--exec-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    backend = Path(exec_path) / "git-http-backend"
    if not backend.is_file():
        raise GitServerError(f"{backend} is missing: install a git with http-backend")
    return str(backend)


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [git_binary(), *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise GitServerError(
            f"git {' '.join(args)} in {cwd} exited {proc.returncode}:\n{proc.stderr}"
        )
    return proc.stdout


def _handler(root: Path, backend: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        requests_log: ClassVar[list[str]] = []

        def do_GET(self) -> None:
            self._cgi()

        def do_POST(self) -> None:
            self._cgi()

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _cgi(self) -> None:
            path, _, query = self.path.partition("?")
            if path.endswith("/git-receive-pack") or "service=git-receive-pack" in query:
                self.send_error(403, "read-only: push through GitRepository.commit")
                return
            body = self._body()
            env = {
                **GIT_ENV,
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
                "SERVER_PROTOCOL": "HTTP/1.1",
            }
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            proc = subprocess.run(
                [backend], input=body, env=env, capture_output=True, check=False, timeout=120
            )
            head, _, payload = proc.stdout.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = proc.stdout.partition(b"\n\n")
            status, headers = 200, []
            for line in head.decode("latin-1").splitlines():
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.strip().split()[0])
                elif key:
                    headers.append((key.strip(), value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            type(self).requests_log.append(f"{self.command} {self.path} {status}")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # requests_log keeps them; stderr stays quiet under pytest

    return Handler


@dataclass
class GitRepository:
    """A served bare repository and a working clone to commit into."""

    server: GitServer
    name: str

    @property
    def bare(self) -> Path:
        return self.server.root / f"{self.name}.git"

    @property
    def work(self) -> Path:
        return self.server.work_root / self.name

    @property
    def url(self) -> str:
        """The clone URL: ``http://127.0.0.1:<port>/<name>.git``."""
        return f"{self.server.url}/{self.name}.git"

    def create(self, branch: str = "main") -> None:
        self.bare.mkdir(parents=True)
        git("init", "--bare", "--quiet", f"--initial-branch={branch}", cwd=self.bare)
        self.work.mkdir(parents=True)
        git("init", "--quiet", f"--initial-branch={branch}", cwd=self.work)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write (``str``) or delete (``None``) ``files`` (paths relative to the repository
        root), commit them and push; return the new commit's SHA."""
        for rel, content in files.items():
            target = self.work / rel
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        branch = git("rev-parse", "--abbrev-ref", "HEAD", cwd=self.work).strip()
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work).strip()

    def branch(self) -> str:
        return git("rev-parse", "--abbrev-ref", "HEAD", cwd=self.work).strip()


@dataclass
class GitServer:
    """``git http-backend`` on ``http://127.0.0.1:<port>``, serving ``<root>/*.git``."""

    state_dir: Path
    host: str = "127.0.0.1"
    port_wanted: int = 0  # 0: any free port
    _httpd: http.server.ThreadingHTTPServer | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def root(self) -> Path:
        return self.state_dir / "repos"

    @property
    def work_root(self) -> Path:
        return self.state_dir / "work"

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise GitServerError("the Git server is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.work_root.mkdir(parents=True, exist_ok=True)
        handler = _handler(self.root, http_backend())
        self._httpd = http.server.ThreadingHTTPServer((self.host, self.port_wanted), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="git-http", daemon=True
        )
        self._thread.start()

    def requests(self) -> list[str]:
        """``METHOD path status`` of each request served so far (oldest first)."""
        if self._httpd is None:
            return []
        handler = self._httpd.RequestHandlerClass
        return list(getattr(handler, "requests_log", []))

    def repository(self, name: str) -> GitRepository:
        """A new, empty repository named ``name`` (served as ``/<name>.git``)."""
        repo = GitRepository(self, name)
        repo.create()
        return repo

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> GitServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m etcdconfig.devenv.gitserver STATE_DIR --port P``: serve until SIGTERM
    (``dev up --gitops`` runs it as one of the cluster's processes)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m etcdconfig.devenv.gitserver")
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    wanted = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)  # before any thread: all inherit it
    server = GitServer(args.state_dir, port_wanted=args.port)
    server.start()
    print(f"serving {server.root}/*.git on {server.url}", flush=True)
    signal.sigwait(wanted)
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
