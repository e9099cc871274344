"""Signed config: operator keys (Ed25519) sign every version, instances verify it.

Write access to Redis must not be enough to reroute or open traffic. ``meshware apply``
(and ``delete``, ``rollback``) sign each new version with an operator's private key; an
instance bootstrapped with trusted public keys (``MESHWARE_TRUSTED_KEYS``) NACKs a version
that is unsigned, does not verify, or is an older signed version copied back into Redis, and
keeps serving its last good one.

What is signed (:func:`signed_message`): a domain-separation prefix
``meshware-config-v1\\n`` followed by the canonical JSON of every field of the version but the
signature itself: mesh name, epoch, version number, the full SHA-256 of the canonical
documents, action, created_at, actor, summary and the list of changes. The short ``digest``
field is derived from the documents and checked against them, not trusted.

Replay rule (:meth:`ConfigVerifier.check_replay`): a correctly signed version is still refused
when it is older than the one the instance holds: in the same epoch, a lower version number;
in another epoch, a ``created_at`` more than :data:`REPLAY_SKEW` seconds before the held
version's (the allowance covers operators whose clocks disagree a little). Limits: an
instance with no last-known-good copy accepts any validly signed version, and a version from
another epoch signed within the allowance before the held one is accepted.

Key files: ``NAME.key`` is the private key (PKCS#8 PEM, mode 0600, never leaves the
operator's machine), ``NAME.pub`` the public key (SubjectPublicKeyInfo PEM) that instances
trust. A key's id is the first 16 hex digits of the SHA-256 of its raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshware.config.record import ConfigHead, ConfigRecord, canonical_json, documents_sha256
from meshware.errors import MeshwareError
from meshware.security.ca import write_private, write_public

__all__ = [
    "PRIVATE_SUFFIX",
    "PUBLIC_SUFFIX",
    "REPLAY_SKEW",
    "SIGNATURE_CONTEXT",
    "ConfigVerifier",
    "OperatorKey",
    "SigningError",
    "TrustedKey",
    "UntrustedConfigError",
    "key_id_of",
    "load_trusted_keys",
    "read_key_id",
    "signed_message",
    "trusted_key_files",
    "write_key_pair",
]

log = logging.getLogger("meshware.security")

SIGNATURE_CONTEXT = b"meshware-config-v1\n"
"""Domain separation: a signature over a config version can never mean anything else."""
REPLAY_SKEW = 300.0
"""Seconds a version from another epoch may predate the held one (operators' clock skew)."""
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SIGNATURE_BYTES = 64


class SigningError(MeshwareError):
    """An operator key file is missing, unreadable or not an Ed25519 key, or cannot be used."""


class UntrustedConfigError(SigningError):
    """A config version is unsigned, does not verify against the trusted keys, or is replayed."""


def key_id_of(public: Ed25519PublicKey) -> str:
    """16 hex digits of the SHA-256 of the raw public key: short, stable, printable."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_message(record: ConfigRecord, mesh: str) -> bytes:
    """The exact bytes an operator signs for ``record`` in ``mesh`` (see the module docstring)."""
    fields = {
        "mesh": mesh,
        "epoch": record.epoch,
        "version": record.version,
        "sha256": documents_sha256(record.documents),
        "action": record.action,
        "created_at": record.created_at,
        "actor": record.actor,
        "summary": record.summary,
        "changes": [list(change) for change in record.changes],
    }
    return SIGNATURE_CONTEXT + canonical_json(fields).encode()


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One operator public key an instance trusts, with where it was read from."""

    public: Ed25519PublicKey
    source: str = ""

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class OperatorKey:
    """An operator's private key: signs config versions. Load it where ``meshware apply`` runs."""

    def __init__(self, private: Ed25519PrivateKey, source: str = "") -> None:
        self._private = private
        self.public = TrustedKey(private.public_key(), source)
        self.source = source

    @classmethod
    def generate(cls) -> OperatorKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> OperatorKey:
        """Read a private key file (``NAME.key``); :class:`SigningError` says what is wrong."""
        path = Path(path)
        data = _read(path)
        if b"PUBLIC KEY-----" in data:
            raise SigningError(
                f"{path}: this is a public key; signing needs the private key "
                f"(the {PRIVATE_SUFFIX} file from 'meshware keys init')"
            )
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise SigningError(
                f"{path}: the private key is encrypted; meshware reads unencrypted PKCS#8 keys "
                "(protect the file with its 0600 mode or a secrets store)"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningError(f"{path}: not a PEM private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise SigningError(
                f"{path}: a {type(private).__name__.removeprefix('_')} key; operator keys are "
                "Ed25519 (create one with 'meshware keys init')"
            )
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "operator key %s is readable by others (mode %o); chmod 600 it",
                path,
                stat.S_IMODE(mode),
            )
        return cls(private, str(path))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, record: ConfigRecord, mesh: str) -> tuple[str, str]:
        """``(key_id, base64 signature)`` of ``record`` as a version of ``mesh``."""
        signature = self._private.sign(signed_message(record, mesh))
        return self.key_id, base64.b64encode(signature).decode("ascii")

    def sign_record(self, record: ConfigRecord, mesh: str) -> ConfigRecord:
        """``record`` with this key's id and signature filled in."""
        key_id, signature = self.sign(record, mesh)
        return dataclasses.replace(record, key_id=key_id, signature=signature)

    def __repr__(self) -> str:
        return f"<OperatorKey {self.key_id}>"


def write_key_pair(directory: str | Path, name: str = "operator") -> tuple[OperatorKey, Path, Path]:
    """Create ``DIR/NAME.key`` (0600) and ``DIR/NAME.pub``; never overwrites an existing key."""
    if not _KEY_NAME.match(name):
        raise SigningError(
            f"key name must be letters, digits, '.', '_' or '-' (no path), got {name!r}"
        )
    directory = Path(directory)
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(
                f"{path} already exists; refusing to replace an operator key "
                "(choose another --name, e.g. for a rotation)"
            )
    key = OperatorKey(Ed25519PrivateKey.generate(), str(private_path))
    try:
        write_private(private_path, key.private_pem())
        write_public(public_path, key.public.public_pem())
    except OSError as exc:
        raise SigningError(f"cannot write the key pair in {directory}: {exc}") from exc
    return key, private_path, public_path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise SigningError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the key file ({exc.strerror or exc})") from None


def load_public_key(path: str | Path) -> TrustedKey:
    """Read an operator public key (``NAME.pub``); a private key file is refused."""
    path = Path(path)
    data = _read(path)
    if b"PRIVATE KEY-----" in data:
        raise SigningError(
            f"{path}: this is a private key; instances trust public keys only "
            f"(the {PUBLIC_SUFFIX} file beside it)"
        )
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise SigningError(
            f"{path}: a {type(public).__name__.removeprefix('_')} key; operator keys are "
            "Ed25519 (create one with 'meshware keys init')"
        )
    return TrustedKey(public, str(path))


def read_key_id(path: str | Path) -> str:
    """The key id of a private (``.key``) or public (``.pub``) operator key file."""
    data = _read(Path(path))
    if b"PRIVATE KEY-----" in data:
        return OperatorKey.load(path).key_id
    return load_public_key(path).key_id


def trusted_key_files(paths: Iterable[str | Path]) -> list[Path]:
    """The public key files named by ``paths``: files as given, directories' ``*.pub``."""
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.glob(f"*{PUBLIC_SUFFIX}") if p.is_file())
            if not found:
                raise SigningError(f"{path}: no *{PUBLIC_SUFFIX} files in this directory")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise SigningError(f"{path}: no such file or directory")
    return files


def load_trusted_keys(paths: Iterable[str | Path]) -> tuple[TrustedKey, ...]:
    """Every public key named by ``paths`` (files, or directories of ``*.pub``), deduplicated."""
    keys: dict[str, TrustedKey] = {}
    for path in trusted_key_files(paths):
        key = load_public_key(path)
        keys.setdefault(key.key_id, key)
    return tuple(keys.values())


class ConfigVerifier:
    """Checks config versions against a set of trusted operator keys (several allow rotation).

    Built :meth:`from_paths`, it re-reads its files and directories when they change (checked
    on each verification, which only happens when a version arrives), so adding a new key or
    removing a retired one takes effect without a restart. A file that stops loading is
    dropped from the trusted set (fail closed) and logged.
    """

    def __init__(
        self,
        keys: Iterable[TrustedKey],
        *,
        mesh: str,
        sources: Sequence[str | Path] = (),
        skew: float = REPLAY_SKEW,
    ) -> None:
        self.mesh = mesh
        self.skew = skew
        self._keys = {key.key_id: key for key in keys}
        self._sources = tuple(Path(p) for p in sources)
        self._stamp = self._fingerprint() if self._sources else ()

    @classmethod
    def from_paths(
        cls, paths: Iterable[str | Path], *, mesh: str, skew: float = REPLAY_SKEW
    ) -> ConfigVerifier:
        """Trust every key in ``paths``; raises :class:`SigningError` if one cannot be read."""
        sources = [Path(p) for p in paths]
        if not sources:
            raise SigningError("no trusted keys given")
        return cls(load_trusted_keys(sources), mesh=mesh, sources=sources, skew=skew)

    @property
    def key_ids(self) -> tuple[str, ...]:
        self._refresh()
        return tuple(sorted(self._keys))

    # -- verification --------------------------------------------------------------------

    def verify(self, record: ConfigRecord, *, held: ConfigHead | None = None) -> TrustedKey:
        """Check the signature, then the replay rule against ``held``; the key that signed it.

        Raises :class:`UntrustedConfigError` with a reason fit for a NACK.
        """
        key = self.check_signature(record)
        self.check_replay(record, held)
        return key

    def check_signature(self, record: ConfigRecord) -> TrustedKey:
        """The trusted key whose signature ``record`` carries; raises if there is none."""
        self._refresh()
        trusted = ", ".join(sorted(self._keys)) or "none"
        if not record.signed:
            raise UntrustedConfigError(
                f"unsigned config version; this instance trusts keys [{trusted}] "
                "(sign with 'meshware apply --signing-key')"
            )
        sha256 = documents_sha256(record.documents)
        if record.digest and record.digest != sha256[:16]:
            raise UntrustedConfigError(
                "signature does not verify (tampered: the digest field does not match the "
                "documents)"
            )
        key = self._keys.get(record.key_id)
        if key is None:
            raise UntrustedConfigError(
                f"signature does not verify (tampered or signed by an untrusted key): key "
                f"{record.key_id or '(none)'} is not among the trusted keys [{trusted}]"
            )
        try:
            signature = base64.b64decode(record.signature, validate=True)
        except (binascii.Error, ValueError):
            signature = b""
        if len(signature) != _SIGNATURE_BYTES:
            raise UntrustedConfigError(
                "signature does not verify (tampered: the signature field is not a base64 "
                "Ed25519 signature)"
            )
        try:
            key.public.verify(signature, signed_message(record, self.mesh))
        except InvalidSignature:
            raise UntrustedConfigError(
                f"signature does not verify (tampered or signed by an untrusted key): "
                f"v{record.version} of mesh {self.mesh!r} does not match the signature "
                f"by key {key.key_id}"
            ) from None
        return key

    def check_replay(self, record: ConfigRecord, held: ConfigHead | None) -> None:
        """Refuse a version older than ``held`` (see the module docstring for the rule)."""
        if held is None:
            return
        if record.epoch == held.epoch:
            if record.version < held.version:
                raise UntrustedConfigError(
                    f"replayed: v{record.version} is older than v{held.version} of the same "
                    f"epoch {held.epoch}, which this instance holds (an old signed version "
                    "copied back into Redis; 'meshware rollback' stores a new version instead)"
                )
            return
        if record.created_at < held.created_at - self.skew:
            raise UntrustedConfigError(
                f"replayed: v{record.version} of epoch {record.epoch} was signed "
                f"{held.created_at - record.created_at:.0f} s before v{held.version} of epoch "
                f"{held.epoch}, which this instance holds (more than the {self.skew:g} s "
                "allowed for clock skew)"
            )

    # -- keeping the key set current -----------------------------------------------------

    def _fingerprint(self) -> tuple[object, ...]:
        stamp: list[object] = []
        for source in self._sources:
            try:
                if source.is_dir():
                    for path in sorted(source.glob(f"*{PUBLIC_SUFFIX}")):
                        st = path.stat()
                        stamp.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
                else:
                    st = source.stat()
                    stamp.append((str(source), st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append((str(source), None))
        return tuple(stamp)

    def _refresh(self) -> None:
        if not self._sources:
            return
        stamp = self._fingerprint()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        keys: dict[str, TrustedKey] = {}
        for source in self._sources:
            try:
                files = trusted_key_files([source])
            except SigningError as exc:
                log.error("trusted keys: %s; trusting none from there", exc)
                continue
            for path in files:
                try:
                    key = load_public_key(path)
                except SigningError as exc:
                    log.error("trusted keys: %s; not trusted", exc)
                    continue
                keys.setdefault(key.key_id, key)
        if set(keys) != set(self._keys):
            log.warning(
                "trusted operator keys changed: now [%s] (were [%s])",
                ", ".join(sorted(keys)),
                ", ".join(sorted(self._keys)),
            )
        self._keys = keys
