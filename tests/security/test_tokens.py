"""Join tokens: minted and verified with the CA's key, refused for every reason by name,
single use across restarts, key files 0600."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from meshware.cli.main import cli
from meshware.security.ca import CertificateAuthority, load_pem_certificates
from meshware.security.identity import SpiffeId
from meshware.security.tokens import (
    PREFIX,
    TokenError,
    TokenKey,
    UsedTokens,
    decode_token,
    root_pins,
)

RATINGS = SpiffeId("cluster.local", "default", "ratings")
PIN = "ab" * 32


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def key(tmp_path: Path) -> TokenKey:
    return TokenKey.load_or_create(tmp_path)


def test_a_minted_token_verifies_and_says_what_it_grants(key: TokenKey) -> None:
    now = time.time()
    token = key.mint(RATINGS, 3600, (PIN,), now=now)
    assert token.startswith(f"{PREFIX}.") and token.count(".") == 2
    claims = key.verify(token, now=now + 3599)
    assert claims.subject == RATINGS
    assert claims.expires_at - claims.issued_at == 3600
    assert claims.pins == (PIN,)
    assert decode_token(token) == claims  # what a workload reads without the key
    assert key.mint(RATINGS, 3600, (PIN,)) != token  # every token has its own id


def test_an_expired_token_is_refused(key: TokenKey) -> None:
    now = time.time()
    token = key.mint(RATINGS, 60, (PIN,), now=now - 61)
    with pytest.raises(TokenError, match="expired") as refused:
        key.verify(token, now=now)
    assert refused.value.reason == "expired"
    # exactly at exp it is over
    fresh = key.mint(RATINGS, 60, (PIN,), now=now)
    with pytest.raises(TokenError, match="expired"):
        key.verify(fresh, now=now + 60)


def test_a_tampered_token_is_refused(key: TokenKey) -> None:
    token = key.mint(RATINGS, 600, (PIN,))
    prefix, payload, mac = token.split(".")
    claims = json.loads(unb64(payload))
    claims["sub"] = "spiffe://cluster.local/ns/default/sa/admin"
    forged = f"{prefix}.{b64(json.dumps(claims).encode())}.{mac}"
    with pytest.raises(TokenError) as refused:
        key.verify(forged)
    assert refused.value.reason == "bad signature"
    claims["sub"], claims["exp"] = RATINGS.uri, claims["exp"] + 10**6  # a longer life
    with pytest.raises(TokenError, match="bad signature"):
        key.verify(f"{prefix}.{b64(json.dumps(claims).encode())}.{mac}")
    flipped = bytearray(unb64(mac))
    flipped[0] ^= 1
    with pytest.raises(TokenError, match="bad signature"):
        key.verify(f"{prefix}.{payload}.{b64(bytes(flipped))}")


def test_a_token_of_another_ca_is_refused(key: TokenKey, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = TokenKey.load_or_create(tmp_path / "other")
    with pytest.raises(TokenError) as refused:
        key.verify(other.mint(RATINGS, 600, (PIN,)))
    assert refused.value.reason == "bad signature"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "mwjt1",
        "mwjt1..",
        "mwjt2.e30.AAAA",
        "mwjt1.e30",
        "mwjt1.e30.AAAA.AAAA",
        "mwjt1.not*base64.AAAA",
        "mwjt1.e30.AA AA",
        "Bearer mwjt1.e30.AAAA",
        "mwjt1." + "A" * 5000 + ".AAAA",
    ],
)
def test_malformed_tokens_are_refused_as_malformed(key: TokenKey, token: str) -> None:
    with pytest.raises(TokenError) as refused:
        key.verify(token)
    assert refused.value.reason == "malformed"
    with pytest.raises(TokenError, match="malformed"):
        decode_token(token)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"jti": "x", "sub": "spiffe://cluster.local/ns/default/sa/r", "iat": 1, "exp": 2}',
        b'{"jti": "x", "sub": "https://x", "iat": 1, "exp": 2, "pins": []}',
        b'{"jti": "x", "sub": "spiffe://cluster.local/ns/default/sa/r", "iat": 5, "exp": 2,'
        b' "pins": []}',
        b'{"jti": "x", "sub": "spiffe://cluster.local/ns/default/sa/r", "iat": 1, "exp": 2,'
        b' "pins": ["short"]}',
    ],
)
def test_a_correctly_signed_but_malformed_payload_is_refused(
    tmp_path: Path, key: TokenKey, payload: bytes
) -> None:
    """What a CA holding the key never mints: still refused, by name, never half-read."""
    import hmac

    secret = unb64((tmp_path / "token-key").read_text().strip())
    signed = f"{PREFIX}.{b64(payload)}"
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    with pytest.raises(TokenError) as refused:
        key.verify(f"{signed}.{b64(mac)}")
    assert refused.value.reason == "malformed"


def test_a_token_is_spent_once_and_remembered_until_it_expires(tmp_path: Path) -> None:
    key = TokenKey.load_or_create(tmp_path)
    now = time.time()
    first = key.verify(key.mint(RATINGS, 600, (PIN,), now=now), now=now)
    used = UsedTokens(tmp_path)
    used.claim(first, now=now)
    with pytest.raises(TokenError) as refused:
        used.claim(first, now=now + 1)
    assert refused.value.reason == "already used"
    # a restarted service (a new object on the same directory) still knows
    with pytest.raises(TokenError, match="already used"):
        UsedTokens(tmp_path).claim(first, now=now + 2)
    assert mode(tmp_path / "used-tokens.json") == 0o600
    # once expired, the entry is pruned by the next claim (the token is refused as expired
    # before anyone looks here)
    second = key.verify(key.mint(RATINGS, 600, (PIN,), now=now + 700), now=now + 700)
    used.claim(second, now=now + 700)
    assert first.token_id not in used
    assert second.token_id in used
    with pytest.raises(TokenError, match="expired"):
        key.verify(key.mint(RATINGS, 600, (PIN,), now=now), now=now + 700)


def test_an_unreadable_used_list_refuses_rather_than_forgets(tmp_path: Path) -> None:
    key = TokenKey.load_or_create(tmp_path)
    (tmp_path / "used-tokens.json").write_text("{broken")
    with pytest.raises(Exception, match="unreadable"):
        UsedTokens(tmp_path).claim(key.verify(key.mint(RATINGS, 600, (PIN,))))


def test_the_token_key_is_0600_and_created_once(tmp_path: Path) -> None:
    first = TokenKey.load_or_create(tmp_path)
    assert mode(tmp_path / "token-key") == 0o600
    content = (tmp_path / "token-key").read_bytes()
    second = TokenKey.load_or_create(tmp_path)
    assert (tmp_path / "token-key").read_bytes() == content
    assert second.verify(first.mint(RATINGS, 60, (PIN,))).subject == RATINGS
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".token-key")] == []


def test_pins_are_the_sha256_of_each_root(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    (root,) = load_pem_certificates(ca.bundle_pem)
    der = root.public_bytes(serialization.Encoding.DER)
    assert root_pins(ca.bundle_pem) == (hashlib.sha256(der).hexdigest(),)


def test_ca_token_command(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["ca", "init", "--dir", str(tmp_path / "ca")]).exit_code == 0
    assert mode(tmp_path / "ca" / "token-key") == 0o600
    result = runner.invoke(
        cli,
        ["ca", "token", "--dir", str(tmp_path / "ca"), "--service", "ratings", "--ttl", "1h"],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    claims = TokenKey.load_or_create(tmp_path / "ca").verify(token)
    assert claims.subject == RATINGS
    assert claims.expires_at - claims.issued_at == 3600
    assert claims.pins == root_pins((tmp_path / "ca" / "root-cert.pem").read_bytes())
    for bad, message in (
        (["--service", "ratings", "--ttl", "forever"], "duration"),
        (["--service", "Bad_Name"], "service"),
        (["--service", "meshware-ca", "--namespace", "meshware-system"], "own identity"),
        (["--service", "ratings", "--ttl", "30d"], "7 days"),
    ):
        result = runner.invoke(cli, ["ca", "token", "--dir", str(tmp_path / "ca"), *bad])
        assert result.exit_code != 0 and message in result.output, result.output
