"""The trust bundle in Redis: published by the CA service, a *hint* to workloads.

``meshware ca serve`` keeps the bundle (root certificates only, re-encoded from the parsed
certificates, so nothing else can slip in) under :attr:`Keys.trust_bundle` and announces
each change on :attr:`Keys.trust_bundle_events` with the bundle's SHA-256.

Trust never comes from Redis: anyone who can write to it could publish a bundle. A workload
that sees a digest different from its own bundle's only *renews early*, and takes the new
bundle from the CA service's answer over authenticated TLS. Hints are rate-limited on the
workload side, so a flood of them costs the CA at most one renewal per workload per
:data:`MIN_HINT_INTERVAL`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

import redis

from meshware.config.connection import redact, sync_client
from meshware.config.keys import Keys
from meshware.security.ca import CAError, certificates_pem, load_pem_certificates

__all__ = ["BundleHintWatcher", "BundlePublisher", "bundle_digest"]

log = logging.getLogger("meshware.security")

REPUBLISH_INTERVAL = 10.0
"""The publisher re-checks the key this often (Redis may have restarted empty)."""


def bundle_digest(bundle_pem: bytes) -> str:
    """SHA-256 of a bundle's certificates in canonical PEM (comments and order of bytes
    outside the certificates do not matter)."""
    return hashlib.sha256(certificates_pem(load_pem_certificates(bundle_pem))).hexdigest()


class BundlePublisher:
    """Keeps the CA's bundle in Redis; a failure is logged once and retried on the next call."""

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self._client = sync_client(redis_url)
        self._published = ""
        self._checked = 0.0
        self._failing = False

    def publish(self, bundle_pem: bytes, *, now: float | None = None) -> bool:
        """Store ``bundle_pem`` and announce it if it changed (or Redis lost it); True when
        Redis holds it now."""
        canonical = certificates_pem(load_pem_certificates(bundle_pem))
        digest = hashlib.sha256(canonical).hexdigest()
        current = time.monotonic() if now is None else now
        if digest == self._published and current - self._checked < REPUBLISH_INTERVAL:
            return True
        try:
            stored = self._client.get(self.keys.trust_bundle)
            if stored != canonical.decode("ascii"):
                self._client.set(self.keys.trust_bundle, canonical.decode("ascii"))
                self._client.publish(self.keys.trust_bundle_events, digest)
                log.info("trust bundle %s published to %s", digest[:12], redact(self.redis_url))
        except (redis.RedisError, OSError) as exc:
            if not self._failing:
                log.warning(
                    "cannot publish the trust bundle to %s (will retry): %s",
                    redact(self.redis_url),
                    exc,
                )
            self._failing = True
            return False
        self._failing = False
        self._published, self._checked = digest, current
        return True

    def close(self) -> None:
        self._client.close()


class BundleHintWatcher:
    """Calls ``on_change()`` when Redis announces a bundle whose digest is not ``current()``.

    Runs in its own daemon thread; reconnects with capped backoff; checks the stored bundle
    after each (re)connection, since announcements made while disconnected are lost.
    """

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        *,
        current: Callable[[], str],
        on_change: Callable[[], None],
    ) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self._current = current
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="meshware-bundle-hints", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _check(self, digest: str) -> None:
        if digest and digest != self._current():
            log.info("the trust bundle changed (%s): renewing early", digest[:12])
            self._on_change()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            client = sync_client(self.redis_url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.keys.trust_bundle_events)
                stored = client.get(self.keys.trust_bundle)
                if stored:
                    self._check(bundle_digest(str(stored).encode("ascii")))
                backoff = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._check(str(message.get("data", "")))
            except (redis.RedisError, OSError, ValueError, CAError) as exc:
                log.debug("bundle hints from %s unavailable: %s", redact(self.redis_url), exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                pubsub.close()
                client.close()
