"""``meshware ca serve`` as a real child process on 127.0.0.1, for tests."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from meshware.childproc import die_with_parent
from meshware.embedded_redis import free_port
from meshware.security.ca import CertificateAuthority
from meshware.security.identity import SpiffeId
from meshware.security.tokens import TokenKey, root_pins
from tests.helpers import ROOT


class CAServer:
    """One ``meshware ca serve --dir DIR`` process; :meth:`restart` keeps its port."""

    def __init__(
        self,
        directory: Path,
        log_path: Path,
        *,
        ttl: str = "1h",
        redis_url: str | None = None,
        mesh: str = "default",
    ) -> None:
        self.directory = directory
        self.log_path = log_path
        self.ttl = ttl
        self.redis_url = redis_url
        self.mesh = mesh
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def authority(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.directory)

    def token(
        self,
        service: str,
        *,
        ttl: float = 600,
        now: float | None = None,
        namespace: str = "default",
    ) -> str:
        """A join token minted with the CA directory's key (as ``meshware ca token`` does)."""
        authority = self.authority
        return TokenKey.load_or_create(self.directory).mint(
            SpiffeId(authority.trust_domain, namespace, service),
            ttl,
            root_pins(authority.bundle_pem),
            now=now,
        )

    def start(self, timeout: float = 30.0) -> CAServer:
        command = [sys.executable, "-m", "meshware"]
        if self.redis_url:
            command += ["--redis-url", self.redis_url, "--mesh", self.mesh]
        command += ["ca", "serve", "--dir", str(self.directory), "--port", str(self.port)]
        command += ["--ttl", self.ttl]
        if not self.redis_url:
            command.append("--no-publish")
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": python_path},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 (see meshware.childproc)
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None:
                raise RuntimeError(f"ca serve exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ca serve did not answer within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            return httpx.get(f"{self.url}/healthz", verify=context, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()
