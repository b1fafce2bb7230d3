"""Start and stop a local redis-server (for ``cryptopipe up`` and for tests)."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from cryptopipe.procs import die_with_parent
from redisstore.conn import RedisUnavailableError, connect, redact

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS-enabled server: its certificate and key, and the CA."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def self_signed(cls, directory: Path) -> TlsFiles:
        """A throw-away CA and a server certificate for 127.0.0.1 (uses ``openssl``)."""
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = directory / "ca.crt", directory / "ca.key"
        cert, key, csr = directory / "server.crt", directory / "server.key", directory / "s.csr"
        ext = directory / "ext.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run = functools.partial(subprocess.run, check=True, capture_output=True)
        run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=cryptopipe-test-ca",
                "-keyout",
                str(ca_key),
                "-out",
                str(ca),
            ]
        )
        run(
            [
                "openssl",
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(csr),
            ]
        )
        run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca),
                "-CAkey",
                str(ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                str(ext),
                "-out",
                str(cert),
            ]
        )
        for f in (ca_key, key):
            os.chmod(f, 0o600)
        return cls(cert, key, ca)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """Path of ``redis-server``, or an error that says how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        msg = (
            "redis-server is not installed: run './dev setup' (it installs it), or "
            "'apt-get install redis-server', or point --redis-url at a running Redis"
        )
        raise RedisUnavailableError(msg)
    return path


def _quoted(value: str) -> str:
    """``value`` as one double-quoted argument of a redis.conf line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalRedis:
    """A redis-server child process bound to loopback, data under ``data_dir``.

    AOF is on with ``appendfsync everysec``, so a crash loses at most about a
    second of writes and a restart of the server keeps the raw log.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        password: str | None = None,
        username: str | None = None,
        tls: TlsFiles | None = None,
        extra_args: list[str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.password = password
        self.username = username
        self.tls = tls
        self.extra_args = extra_args or []
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """URL of this server (db 0): ``redis://``, or ``rediss://`` with the CA when TLS."""
        auth = ""
        if self.password:
            auth = f"{self.username or ''}:{self.password}@"
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _auth_config(self) -> list[str]:
        """Config lines for the password: in a file, never on the command line (``ps``)."""
        if not self.password:
            return []
        if self.username:
            # An ACL user with every right, and the default user switched off.
            grants = f"on {_quoted('>' + self.password)} ~* &* +@all"
            return ["user default off", f"user {_quoted(self.username)} {grants}"]
        return [f"requirepass {_quoted(self.password)}"]

    def _config_file(self) -> list[str]:
        """``[path]`` of a 0600 config file holding the secrets, or ``[]`` without any."""
        lines = self._auth_config()
        if not lines:
            return []
        path = self.data_dir / "auth.conf"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# Written by cryptopipe: the local Redis's credentials (mode 0600).\n")
            f.write("\n".join(lines) + "\n")
        return [str(path)]

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls.cert),
            "--tls-key-file",
            str(self.tls.key),
            "--tls-ca-cert-file",
            str(self.tls.ca),
            "--tls-auth-clients",
            "no",
        ]

    def start(self, timeout: float = 10.0) -> LocalRedis:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        args = [
            redis_server_binary(),
            *self._config_file(),  # the config file comes first; options follow
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        args += self._tls_args() + self.extra_args
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                connect(self.url, socket_connect_timeout=0.5, cluster=False).close()
                return self
            except RedisUnavailableError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.data_dir / "redis.log"
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    self.stop()
                    msg = f"redis-server on port {self.port} did not start: {tail.strip()}"
                    raise RedisUnavailableError(msg) from None
                time.sleep(0.05)

    def alive(self) -> bool:
        """Whether the server process we started still runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the server we started, once it exited."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, which makes Redis flush its AOF)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_redis(url: str, data_dir: Path, *, die_with_parent: bool = False) -> LocalRedis | None:
    """Make sure a Redis answers at ``url``; start one under ``data_dir`` if none does.

    Returns:
        The started server (stop it on exit), or ``None`` when one already answered.

    Raises:
        RedisUnavailableError: when nothing answers and the URL is not a local one
            we could serve.

    """
    try:
        connect(url, socket_connect_timeout=1.0).close()
        return None
    except RedisUnavailableError as exc:
        if "refused the credentials" in str(exc):
            raise
    parsed = urlparse(url)
    if parsed.scheme != "redis" or (parsed.hostname or "") not in LOOPBACK:
        msg = f"no Redis answers at {redact(url)}, and it is not a local redis:// URL to start"
        raise RedisUnavailableError(msg)
    if parsed.username and parsed.username != "default":
        msg = f"no Redis answers at {redact(url)}; a local one is started only for the default user"
        raise RedisUnavailableError(msg)
    return LocalRedis(
        data_dir, parsed.port or 6379, password=parsed.password, die_with_parent=die_with_parent
    ).start()
