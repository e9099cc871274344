"""Operator keys and config signatures, without Redis: sign, verify, tamper, rotate, replay."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from meshware.config.record import ConfigRecord, digest_documents
from meshware.config.watch import ConfigWatcher
from meshware.security.signing import (
    REPLAY_SKEW,
    SIGNATURE_CONTEXT,
    ConfigVerifier,
    OperatorKey,
    SigningError,
    UntrustedConfigError,
    key_id_of,
    load_trusted_keys,
    read_key_id,
    signed_message,
    write_key_pair,
)

MESH = "default"
VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "reviews"},
    "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
}


def record(version: int = 3, epoch: str = "20250101000000-aaaa", **fields: object) -> ConfigRecord:
    documents = fields.pop("documents", (VS,))
    assert isinstance(documents, tuple)
    base = ConfigRecord(
        epoch=epoch,
        version=version,
        documents=documents,
        digest=digest_documents(documents),
        created_at=1_750_000_000.25 + version,
        action="apply",
        actor="ops@host",
        summary="1 created",
        changes=(("created", "VirtualService/reviews"),),
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture
def key() -> OperatorKey:
    return OperatorKey.generate()


@pytest.fixture
def verifier(key: OperatorKey) -> ConfigVerifier:
    return ConfigVerifier([key.public], mesh=MESH)


def test_signed_record_verifies_and_survives_every_encoding(
    key: OperatorKey, verifier: ConfigVerifier
) -> None:
    signed = key.sign_record(record(), MESH)
    assert signed.key_id == key.key_id and len(key.key_id) == 16
    assert verifier.verify(signed).key_id == key.key_id
    # the Redis hash, a history entry and the pub/sub event all carry the signature
    assert verifier.verify(ConfigRecord.from_hash(signed.to_hash())) is not None
    assert verifier.verify(ConfigRecord.from_json(signed.to_json())) is not None
    assert ConfigRecord.from_hash(signed.to_hash()) == signed


def test_message_has_a_domain_prefix_and_binds_the_mesh(key: OperatorKey) -> None:
    r = record()
    message = signed_message(r, MESH)
    assert message.startswith(SIGNATURE_CONTEXT)
    assert signed_message(r, "other") != message
    signed = key.sign_record(r, MESH)
    with pytest.raises(UntrustedConfigError, match="signature does not verify"):
        ConfigVerifier([key.public], mesh="other").verify(signed)


TAMPERED = {
    "epoch": "20990101000000-bbbb",
    "version": 4,
    "documents": ({**VS, "spec": {**VS["spec"], "hosts": ["ratings"]}},),
    "created_at": 1_760_000_000.0,
    "action": "rollback to v1",
    "actor": "mallory@host",
    "summary": "nothing",
    "changes": (("deleted", "VirtualService/reviews"),),
}


@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_changing_any_field_breaks_the_signature(
    key: OperatorKey, verifier: ConfigVerifier, field: str
) -> None:
    signed = key.sign_record(record(), MESH)
    tampered = dataclasses.replace(signed, **{field: TAMPERED[field]})  # type: ignore[arg-type]
    if field == "documents":  # a careful forger keeps the short digest consistent
        tampered = dataclasses.replace(tampered, digest=digest_documents(tampered.documents))
    with pytest.raises(UntrustedConfigError, match=r"^signature does not verify \(tampered"):
        verifier.verify(tampered)


def test_digest_that_disagrees_with_the_documents_is_refused(
    key: OperatorKey, verifier: ConfigVerifier
) -> None:
    signed = key.sign_record(record(), MESH)
    with pytest.raises(UntrustedConfigError, match="digest field does not match"):
        verifier.verify(dataclasses.replace(signed, digest="0" * 16))


@pytest.mark.parametrize("signature", ["", "not base64!", "AAAA", "A" * 88])
def test_malformed_or_swapped_signatures_are_refused(
    key: OperatorKey, verifier: ConfigVerifier, signature: str
) -> None:
    signed = key.sign_record(record(), MESH)
    with pytest.raises(UntrustedConfigError, match="signature does not verify"):
        verifier.verify(dataclasses.replace(signed, signature=signature))
    other = key.sign_record(record(version=9), MESH)  # a real signature, of another version
    with pytest.raises(UntrustedConfigError, match="signature does not verify"):
        verifier.verify(dataclasses.replace(signed, signature=other.signature))


def test_unsigned_version_is_refused_naming_the_trusted_keys(
    key: OperatorKey, verifier: ConfigVerifier
) -> None:
    with pytest.raises(UntrustedConfigError) as info:
        verifier.verify(record())
    assert str(info.value).startswith(
        f"unsigned config version; this instance trusts keys [{key.key_id}]"
    )


def test_unknown_key_is_refused(verifier: ConfigVerifier) -> None:
    stranger = OperatorKey.generate()
    signed = stranger.sign_record(record(), MESH)
    with pytest.raises(UntrustedConfigError) as info:
        verifier.verify(signed)
    assert "untrusted key" in str(info.value) and stranger.key_id in str(info.value)
    # claiming a trusted key's id does not help
    claimed = dataclasses.replace(signed, key_id=verifier.key_ids[0])
    with pytest.raises(UntrustedConfigError, match="does not match the signature"):
        verifier.verify(claimed)


def test_two_trusted_keys_allow_a_rotation(tmp_path: Path) -> None:
    old, _, old_pub = write_key_pair(tmp_path, "old")
    new, _, new_pub = write_key_pair(tmp_path, "new")
    both = ConfigVerifier.from_paths([tmp_path], mesh=MESH)
    assert set(both.key_ids) == {old.key_id, new.key_id}
    assert both.verify(old.sign_record(record(1), MESH)).key_id == old.key_id
    assert both.verify(new.sign_record(record(2), MESH)).key_id == new.key_id
    only_new = ConfigVerifier.from_paths([new_pub], mesh=MESH)
    with pytest.raises(UntrustedConfigError, match="untrusted key"):
        only_new.verify(old.sign_record(record(3), MESH))
    assert old_pub.exists()


def test_directory_of_keys_is_reread_when_it_changes(tmp_path: Path) -> None:
    old, _, old_pub = write_key_pair(tmp_path, "old")
    verifier = ConfigVerifier.from_paths([tmp_path], mesh=MESH)
    new, _, _ = write_key_pair(tmp_path / "later", "new")
    signed_new = new.sign_record(record(), MESH)
    with pytest.raises(UntrustedConfigError):
        verifier.verify(signed_new)
    (tmp_path / "new.pub").write_bytes((tmp_path / "later" / "new.pub").read_bytes())
    assert verifier.verify(signed_new).key_id == new.key_id  # added without a restart
    old_pub.unlink()  # the retired key is dropped
    with pytest.raises(UntrustedConfigError, match="untrusted key"):
        verifier.verify(old.sign_record(record(), MESH))
    assert verifier.key_ids == (new.key_id,)


def test_replay_rules(key: OperatorKey, verifier: ConfigVerifier) -> None:
    held = key.sign_record(record(5), MESH)
    same_epoch_older = key.sign_record(record(4), MESH)
    with pytest.raises(UntrustedConfigError, match=r"^replayed: v4 is older than v5"):
        verifier.verify(same_epoch_older, held=held.head)
    # newer, or the same number (e.g. the same version re-read) pass
    assert verifier.verify(key.sign_record(record(6), MESH), held=held.head)
    assert verifier.verify(held, held=held.head)
    # nothing held (a fresh instance without a disk copy): any valid version is accepted
    assert verifier.verify(same_epoch_older, held=None)

    # another epoch: compared by created_at, with an allowance for clock skew
    def other_epoch(created_at: float) -> ConfigRecord:
        return key.sign_record(record(1, epoch="20990101-cccc", created_at=created_at), MESH)

    assert verifier.verify(other_epoch(held.created_at + 1), held=held.head)
    assert verifier.verify(other_epoch(held.created_at - REPLAY_SKEW + 1), held=held.head)
    with pytest.raises(UntrustedConfigError, match=r"^replayed: v1 of epoch 20990101-cccc"):
        verifier.verify(other_epoch(held.created_at - REPLAY_SKEW - 1), held=held.head)


def test_watcher_nacks_before_compiling_and_keeps_the_last_good(
    key: OperatorKey, verifier: ConfigVerifier, tmp_path: Path
) -> None:
    watcher = ConfigWatcher(verifier=verifier, lkg_path=tmp_path / "lkg.json")
    good = key.sign_record(record(2), MESH)
    assert watcher.offer(good).result == "ack"
    assert watcher.snapshot.key_id == key.key_id

    broken = {"kind": "VirtualService", "metadata": {"name": "x"}, "spec": {"bogus": 1}}
    unsigned = record(3, documents=(broken,))
    outcome = watcher.offer(unsigned)
    assert outcome.result == "nack" and outcome.nack is not None
    assert outcome.nack.reason.startswith("unsigned config version")  # not the parse error
    assert watcher.snapshot.version == 2
    # the forged v3 is not fetched again, but a genuine v3 (other content) is not blocked
    genuine = key.sign_record(record(3), MESH)
    assert not watcher.wants(good.epoch, 3, unsigned.digest)
    assert watcher.wants(good.epoch, 3, genuine.digest)

    replay = watcher.offer(key.sign_record(record(1), MESH))
    assert replay.nack is not None and replay.nack.reason.startswith("replayed")
    assert watcher.snapshot.version == 2
    assert watcher.offer(genuine).result == "ack"

    # the last-known-good copy keeps the signature and is verified when loaded
    watcher.save_last_known_good()
    again = ConfigWatcher(verifier=verifier, lkg_path=tmp_path / "lkg.json")
    assert again.load_last_known_good() and again.snapshot.version == 3
    assert again.snapshot.source == "disk" and again.snapshot.key_id == key.key_id
    stranger = ConfigWatcher(
        verifier=ConfigVerifier([OperatorKey.generate().public], mesh=MESH),
        lkg_path=tmp_path / "lkg.json",
    )
    assert not stranger.load_last_known_good()
    assert not stranger.snapshot.loaded and stranger.nack is None


def test_without_a_verifier_unsigned_versions_are_accepted() -> None:
    watcher = ConfigWatcher()
    assert watcher.offer(record(1)).result == "ack"
    assert watcher.snapshot.key_id == ""


def test_local_file_source_is_not_verified(verifier: ConfigVerifier) -> None:
    watcher = ConfigWatcher(verifier=verifier)
    assert watcher.offer(record(1, epoch="file"), source="file").result == "ack"


# -- key files --------------------------------------------------------------------------


def test_key_pair_files_modes_and_ids(tmp_path: Path) -> None:
    key, private_path, public_path = write_key_pair(tmp_path / "keys", "ops")
    assert private_path == tmp_path / "keys" / "ops.key"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public_path.read_bytes()
    assert read_key_id(private_path) == read_key_id(public_path) == key.key_id
    assert OperatorKey.load(private_path).key_id == key.key_id
    assert key_id_of(load_trusted_keys([public_path])[0].public) == key.key_id
    with pytest.raises(SigningError, match="already exists"):
        write_key_pair(tmp_path / "keys", "ops")
    with pytest.raises(SigningError, match="key name"):
        write_key_pair(tmp_path, "../escape")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def test_malformed_private_keys_are_clear_errors(tmp_path: Path) -> None:
    _, _, public_path = write_key_pair(tmp_path, "ops")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    cases = {
        tmp_path / "missing.key": "no such key file",
        tmp_path: "is a directory",
        _write(tmp_path / "garbage.key", b"hello"): "not a PEM private key",
        _write(tmp_path / "ec.key", ec_pem): "operator keys are Ed25519",
        _write(tmp_path / "enc.key", encrypted): "encrypted",
        public_path: "this is a public key",
    }
    for path, message in cases.items():
        with pytest.raises(SigningError, match=message) as info:
            OperatorKey.load(path)
        assert str(path) in str(info.value)


def test_malformed_public_keys_are_clear_errors(tmp_path: Path) -> None:
    _, private_path, _ = write_key_pair(tmp_path / "ops", "ops")
    ec_pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "missing.pub": "no such file or directory",
        tmp_path / "empty": r"no \*\.pub files",
        _write(
            tmp_path / "garbage.pub", b"-----BEGIN PUBLIC KEY-----\nxx\n"
        ): "not a PEM public key",
        _write(tmp_path / "ec.pub", ec_pub): "operator keys are Ed25519",
        private_path: "this is a private key",
    }
    for path, message in cases.items():
        with pytest.raises(SigningError, match=message):
            ConfigVerifier.from_paths([path], mesh=MESH)


def test_readable_private_key_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, private_path, _ = write_key_pair(tmp_path, "ops")
    os.chmod(private_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="meshware.security"):
        OperatorKey.load(private_path)
    assert "chmod 600" in caplog.text


def test_the_disk_copy_is_written_once_per_record(tmp_path: Path) -> None:
    lkg = tmp_path / "lkg.json"
    watcher = ConfigWatcher(lkg_path=lkg)
    assert watcher.offer(record(2)).result == "ack"
    watcher.save_last_known_good()
    lkg.write_text("marker")  # a second save of the same record leaves the file alone
    watcher.save_last_known_good()
    assert lkg.read_text() == "marker"
    assert watcher.offer(record(3)).result == "ack"
    watcher.save_last_known_good()
    assert ConfigRecord.from_hash(json.loads(lkg.read_text())["record"]).version == 3
