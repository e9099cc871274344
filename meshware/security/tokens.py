"""Join tokens: short-lived, single-use credentials for a workload's first certificate.

``meshware ca token --service NAME --ttl 1h`` mints one; the workload hands it to the signing
service (``meshware ca serve``) with its first certificate signing request. A token is::

    mwjt1.<base64url JSON payload>.<base64url HMAC-SHA256 of "mwjt1.<payload>">

and its payload names the token (``jti``, random), the identity it grants (``sub``, a SPIFFE
ID), when it was made and when it expires (``iat``, ``exp``, epoch seconds), and the roots of
the CA's trust bundle when it was made (``pins``: SHA-256 of each root's DER encoding).

**Stateless, keyed by the CA.** The MAC key is ``token-key`` in the CA directory (0600,
created on first use or by ``ca init``); the service checks the MAC in constant time and
keeps no list of tokens it issued. Rotating ``token-key`` invalidates every outstanding token.

**Single use.** The service records the ids of used tokens with their expiry in
``used-tokens.json`` (0600, replaced atomically under a lock, pruned once expired): a second
use is refused even after a restart. An expired token never needs to be remembered.

**Pins authenticate the CA to the workload** (kubeadm's ``discovery-token-ca-cert-hash``): a
workload holding only a token has no trust bundle yet, so it fetches the bundle, keeps only
the roots whose hash the token pins, and talks to the service over TLS verified against
those roots alone, checking the service's SPIFFE ID, before it sends the token. The token
pins every root of the bundle at minting time, so a token minted during a root rotation
works on either side of it. The payload is readable by anyone holding the token (base64,
not encrypted): it holds nothing secret but the token itself.

Refusals name their reason (:attr:`TokenError.reason`): ``malformed``, ``bad signature``,
``expired``, ``already used``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import string
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshware.security.ca import CAError, fingerprint, load_pem_certificates, write_private
from meshware.security.identity import SpiffeId

__all__ = [
    "PREFIX",
    "JoinToken",
    "TokenError",
    "TokenKey",
    "UsedTokens",
    "decode_token",
    "root_pins",
]

PREFIX = "mwjt1"
KEY_FILE = "token-key"
USED_FILE = "used-tokens.json"
MAX_TOKEN_LENGTH = 4096
MAX_TTL = 7 * 24 * 3600
"""A join token is short-lived: a week at most (``--ttl 1h`` is the usual)."""

Reason = Literal["malformed", "bad signature", "expired", "already used"]


class TokenError(CAError):
    """A join token was refused; :attr:`reason` says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"join token {reason}: {message}")
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class JoinToken:
    """What a token says (checked only if it came from :meth:`TokenKey.verify`)."""

    token_id: str
    subject: SpiffeId
    issued_at: int
    expires_at: int
    pins: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {
            "jti": self.token_id,
            "sub": self.subject.uri,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "pins": list(self.pins),
        }


def root_pins(bundle_pem: bytes) -> tuple[str, ...]:
    """The pins of a trust bundle: the SHA-256 fingerprint of each root."""
    return tuple(fingerprint(root) for root in load_pem_certificates(bundle_pem))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_BASE64URL = frozenset(string.ascii_letters + string.digits + "-_")


def _b64decode(text: str) -> bytes:
    if not text or not _BASE64URL.issuperset(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _split(token: str) -> tuple[str, bytes, bytes]:
    """``(signed part, payload bytes, mac)`` or TokenError("malformed")."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed", "too long")
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("malformed", f"expected {PREFIX}.<payload>.<mac>")
    try:
        payload, mac = _b64decode(parts[1]), _b64decode(parts[2])
    except (ValueError, binascii.Error):
        raise TokenError("malformed", "a part is not base64url") from None
    return f"{parts[0]}.{parts[1]}", payload, mac


def _parse_payload(payload: bytes) -> JoinToken:
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        pins = data["pins"]
        if not isinstance(pins, list) or not all(isinstance(p, str) and len(p) == 64 for p in pins):
            raise TypeError("pins must be a list of SHA-256 hex digests")
        token = JoinToken(
            token_id=str(data["jti"]),
            subject=SpiffeId.parse(str(data["sub"])),
            issued_at=int(data["iat"]),
            expires_at=int(data["exp"]),
            pins=tuple(pins),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise TokenError("malformed", f"bad payload ({exc})") from None
    if not token.token_id or token.expires_at <= token.issued_at:
        raise TokenError("malformed", "bad payload (id or validity)")
    return token


def decode_token(token: str) -> JoinToken:
    """Read a token *without* checking its MAC: what a workload needs (subject, pins) to
    approach the CA, which alone can verify it. Raises TokenError("malformed")."""
    _, payload, _ = _split(token)
    return _parse_payload(payload)


class TokenKey:
    """The CA's token MAC key: mints and verifies join tokens."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise CAError("a token key needs at least 32 bytes")
        self._key = key

    @classmethod
    def load_or_create(cls, ca_directory: str | os.PathLike[str]) -> TokenKey:
        """``token-key`` of a CA directory, created (0600, 32 random bytes) if missing.

        Creation is race-free: the key is written to a temporary file and linked into place
        only if no other process did so first; everyone then reads the same key.
        """
        path = Path(ca_directory) / KEY_FILE
        if not path.parent.is_dir():
            raise CAError(f"{path.parent} is not a directory")
        if not path.exists():
            fd, tmp = tempfile.mkstemp(prefix=".token-key.", dir=path.parent)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(_b64encode(secrets.token_bytes(32)).encode() + b"\n")
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        try:
            return cls(_b64decode(path.read_text().strip()))
        except (OSError, ValueError, binascii.Error) as exc:
            raise CAError(f"{path}: unreadable token key: {exc}") from None

    def _mac(self, signed: str) -> bytes:
        return hmac.new(self._key, signed.encode("ascii"), hashlib.sha256).digest()

    def mint(
        self,
        subject: SpiffeId,
        ttl: float,
        pins: tuple[str, ...],
        *,
        now: float | None = None,
    ) -> str:
        """A token granting ``subject`` for ``ttl`` seconds, pinning the given roots."""
        if not 0 < ttl <= MAX_TTL:
            raise CAError(f"a join token lives from 1 s to {MAX_TTL // 86400} days")
        if not pins:
            raise CAError("a join token must pin at least one root")
        issued = int(time.time() if now is None else now)
        token = JoinToken(
            token_id=_b64encode(secrets.token_bytes(16)),
            subject=subject,
            issued_at=issued,
            expires_at=issued + max(1, int(ttl)),
            pins=pins,
        )
        body = _b64encode(json.dumps(token.payload(), separators=(",", ":")).encode())
        signed = f"{PREFIX}.{body}"
        return f"{signed}.{_b64encode(self._mac(signed))}"

    def verify(self, token: str, *, now: float | None = None) -> JoinToken:
        """The token's claims if its MAC is ours and it has not expired; else TokenError.

        Single use is checked separately (:meth:`UsedTokens.claim`), once the request that
        carries the token has been found acceptable.
        """
        signed, payload, mac = _split(token)
        if not hmac.compare_digest(mac, self._mac(signed)):
            raise TokenError("bad signature", "not issued by this CA (or altered)")
        claims = _parse_payload(payload)
        current = time.time() if now is None else now
        if current >= claims.expires_at:
            raise TokenError(
                "expired",
                f"token {claims.token_id} expired "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(claims.expires_at))}",
            )
        return claims


class UsedTokens:
    """The ids of join tokens already spent, in ``used-tokens.json`` of the CA directory."""

    def __init__(self, ca_directory: str | os.PathLike[str]) -> None:
        directory = Path(ca_directory)
        self.path = directory / USED_FILE
        self._lock_path = directory / ".used-tokens.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Across processes (several services on one CA directory) and threads."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # refusing every token is safer than forgetting which ones were used
            raise CAError(f"{self.path}: unreadable ({exc}); fix or remove it") from None
        if not isinstance(data, dict):
            raise CAError(f"{self.path}: not a JSON object; fix or remove it")
        return {str(k): int(v) for k, v in data.items()}

    def claim(self, token: JoinToken, *, now: float | None = None) -> None:
        """Mark ``token`` used; TokenError("already used") if it was. Expired entries are
        dropped on the way (an expired token is refused without looking here)."""
        current = time.time() if now is None else now
        with self._locked():
            used = self._read()
            if token.token_id in used:
                raise TokenError("already used", f"token {token.token_id} was already spent")
            kept = {jti: exp for jti, exp in used.items() if exp > current}
            kept[token.token_id] = token.expires_at
            write_private(self.path, json.dumps(kept, indent=0).encode())

    def __contains__(self, token_id: object) -> bool:
        with self._locked():
            return token_id in self._read()
