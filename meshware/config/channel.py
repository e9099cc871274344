"""The loops that feed a :class:`~meshware.config.watch.ConfigWatcher`: Redis and a local file.

The Redis loop treats pub/sub as a hint and the config hash as the truth: on every
(re)connect and every ``resync_interval`` it compares the announced (epoch, version) with
the held one, so an update published while disconnected is never lost. It also keeps the
instance's registry record alive (heartbeat + TTL) and reports each ACK/NACK. Losing Redis
never touches the held snapshot: the instance keeps serving and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import redis
import redis.asyncio

from meshware.config.connection import (
    aclose_quietly,
    async_client,
    for_hset,
    redact,
    text,
    text_map,
)
from meshware.config.keys import Keys
from meshware.config.parse import load_files
from meshware.config.record import ConfigRecord, digest_documents
from meshware.config.registry import InstanceRecord
from meshware.config.store import normalise_document
from meshware.config.watch import ConfigWatcher, Outcome
from meshware.errors import ConfigError

log = logging.getLogger("meshware.config")

LKG_SAVE_DELAY = 1.0


class Backoff:
    """Jittered exponential backoff: ``base * 2**n`` capped at ``cap``, full jitter above half."""

    def __init__(
        self, base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap, self.base * (2.0**self.attempt))
        self.attempt += 1
        jitter: float = self._rng.random()
        return delay / 2 + jitter * delay / 2

    def reset(self) -> None:
        self.attempt = 0


class RedisConfigChannel:
    """Keeps one instance in sync with the control plane in Redis; see the module docstring."""

    def __init__(
        self,
        *,
        url: str,
        keys: Keys,
        watcher: ConfigWatcher,
        record: Callable[[], InstanceRecord],
        heartbeat_interval: float = 2.0,
        resync_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.keys = keys
        self.watcher = watcher
        self._record = record
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff = Backoff(rng=self._rng)
        self.connected = asyncio.Event()
        self.synced_once = asyncio.Event()
        """Set after the first successful look at the control plane (config or none)."""
        self.last_error = ""
        self._save_pending: asyncio.TimerHandle | None = None
        self.closing = False
        """Set (from any thread) before the task is cancelled: loops stop even if a library
        turns the cancellation into a connection error."""

    async def run(self) -> None:
        """Run until cancelled; on cancellation deregister the instance (best effort)."""
        try:
            while not self.closing:
                client = async_client(self.url)
                try:
                    await self._session(client)
                except (redis.RedisError, OSError) as exc:
                    if self.connected.is_set() or not self.last_error:
                        log.warning("control plane %s unreachable: %s", redact(self.url), exc)
                    self.last_error = str(exc)
                finally:
                    self.connected.clear()
                    await aclose_quietly(client)
                await asyncio.sleep(self._backoff.next())
        finally:
            await self._deregister()

    async def _session(self, client: redis.asyncio.Redis) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.keys.events)
            await self.resync(client, full=True)
            await self._publish_record(client)
            await self.announce(client, "registered")
            self.connected.set()
            self.synced_once.set()
            self._backoff.reset()
            self.last_error = ""
            now = self._clock()
            next_heartbeat = now + self._jittered(self.heartbeat_interval)
            next_resync = now + self._jittered(self.resync_interval)
            while not self.closing:
                timeout = max(0.0, min(next_heartbeat, next_resync) - self._clock())
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                if message is not None:
                    await self._on_event(client, message.get("data"))
                now = self._clock()
                if now >= next_resync:
                    await self.resync(client, full=False)
                    next_resync = now + self._jittered(self.resync_interval)
                if now >= next_heartbeat:
                    await self._publish_record(client)
                    next_heartbeat = now + self._jittered(self.heartbeat_interval)
        finally:
            await aclose_quietly(pubsub)

    async def _on_event(self, client: redis.asyncio.Redis, data: object) -> None:
        try:
            event = json.loads(data) if isinstance(data, str) else {}
            epoch, version = str(event["epoch"]), int(event["version"])
            digest = str(event.get("digest", ""))
        except (ValueError, KeyError, TypeError):
            await self.resync(client, full=True)  # an unreadable hint still means "look"
            return
        if not self.watcher.wants(epoch, version, digest):
            return
        if "documents" in event:
            # Small versions travel inside the event, written in the same transaction as
            # the hash: applying it saves a round trip. The periodic resync compares the
            # digest too, so an event that disagreed with the hash would still be corrected.
            try:
                record = ConfigRecord.from_hash({k: str(v) for k, v in event.items()})
            except ValueError:
                await self.resync(client, full=True)
                return
            await self._report(client, self.watcher.offer(record), record)
            return
        await self.resync(client, full=True)

    async def resync(self, client: redis.asyncio.Redis, *, full: bool) -> None:
        """Compare with the control plane and fetch + apply the current version if it differs."""
        if not full:
            raw_epoch, raw_version, raw_digest = await client.hmget(
                self.keys.config, ["epoch", "version", "digest"]
            )
            if raw_epoch is None:
                return  # nothing applied (or Redis emptied): keep serving what we hold
            try:
                version = int(text(raw_version) or 0)
                if not self.watcher.wants(text(raw_epoch), version, text(raw_digest)):
                    return
            except ValueError:
                pass
        data = text_map(await client.hgetall(self.keys.config))
        if not data:
            return
        try:
            record = ConfigRecord.from_hash(data)
        except ValueError as exc:
            epoch = data.get("epoch", "")
            version = int(data["version"]) if data.get("version", "").isdigit() else 0
            if self.watcher.wants(epoch, version):
                nack = self.watcher.reject(epoch, version, str(exc))
                await self._publish_record(client, ack=("nack", nack.epoch, nack.version))
            return
        if not self.watcher.wants(record.epoch, record.version, record.digest):
            return
        outcome = self.watcher.offer(record)
        await self._report(client, outcome, record)

    async def _report(
        self, client: redis.asyncio.Redis, outcome: Outcome, record: ConfigRecord
    ) -> None:
        if outcome.result == "unchanged":
            return
        await self._publish_record(client, ack=(outcome.result, record.epoch, record.version))
        if outcome.result == "ack":
            self._schedule_save()

    def _jittered(self, interval: float, spread: float = 0.2) -> float:
        """``interval`` ± ``spread``: instances started together must not tick together."""
        factor: float = 1.0 + spread * (2.0 * self._rng.random() - 1.0)
        return interval * factor

    def _schedule_save(self) -> None:
        """Write last-known-good shortly after an ACK, off the path that reports it."""
        if self._save_pending is None:
            loop = asyncio.get_running_loop()
            delay = self._jittered(LKG_SAVE_DELAY, spread=0.5)
            self._save_pending = loop.call_later(delay, self._save_now)

    def _save_now(self) -> None:
        # A few kB written on the runtime's own loop (never the application's): cheaper than
        # a thread hand-off, and only the latest version is written when several arrive.
        self._save_pending = None
        self.watcher.save_last_known_good()

    async def _publish_record(
        self, client: redis.asyncio.Redis, ack: tuple[str, str, int] | None = None
    ) -> None:
        """Heartbeat: write this instance's whole record, renew its TTL and its index entry.

        With ``ack``, write only the config fields and announce the ACK/NACK: the path that
        reports propagation stays short (the next heartbeat rewrites the rest anyway).
        """
        record = self._record()
        key = self.keys.instance(record.instance)
        ttl_ms = int(record.ttl * 1000)
        if ack is None:
            pipe = client.pipeline(transaction=True)
            pipe.hset(key, mapping=for_hset(record.to_hash()))
            pipe.pexpire(key, ttl_ms)
            pipe.zadd(self.keys.instances, {record.instance: int(time.time() * 1000)})
        else:
            result, epoch, version = ack
            event = {
                "instance": record.instance,
                "result": result,
                "epoch": epoch,
                "version": version,
            }
            pipe = client.pipeline(transaction=False)
            pipe.hset(key, mapping=for_hset(record.config_fields()))
            pipe.pexpire(key, ttl_ms)
            pipe.publish(self.keys.acks, json.dumps(event))
        await pipe.execute()

    async def publish_now(self, what: str) -> None:
        """Write the record at once and hint every endpoint watcher (e.g. on draining)."""
        client = async_client(self.url, timeout=2.0)
        try:
            await self._publish_record(client)
            await self.announce(client, what)
        finally:
            await aclose_quietly(client)

    async def announce(self, client: redis.asyncio.Redis, what: str) -> None:
        """Hint every instance's endpoint watcher to refresh now (registered, draining, ...)."""
        record = self._record()
        await client.publish(
            self.keys.instance_events, json.dumps({"instance": record.instance, "event": what})
        )

    async def _deregister(self) -> None:
        if self._save_pending is not None:
            self._save_pending.cancel()
            self._save_pending = None
        # Unconditionally: a stop may cancel the ACK report before it scheduled the save.
        self.watcher.save_last_known_good()
        record = self._record()
        client = async_client(self.url, timeout=1.0)
        try:
            pipe = client.pipeline(transaction=True)
            pipe.delete(self.keys.instance(record.instance))
            pipe.zrem(self.keys.instances, record.instance)
            pipe.publish(
                self.keys.instance_events,
                json.dumps({"instance": record.instance, "event": "deregistered"}),
            )
            await asyncio.wait_for(pipe.execute(), timeout=2.0)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.debug(
                "could not deregister %s: %s (its record expires by itself)", record.instance, exc
            )
        finally:
            await aclose_quietly(client)


class FileConfigSource:
    """Runs one process from a local YAML file (``MESHWARE_CONFIG``), reloaded when it changes."""

    def __init__(self, path: Path, watcher: ConfigWatcher, *, interval: float = 0.5) -> None:
        self.path = path
        self.watcher = watcher
        self.interval = interval
        self._stamp: tuple[int, int, int] | None = None
        self._version = 0
        self.closing = False

    def _read_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> Outcome | None:
        """Reload if the file changed since the last poll; returns what happened, if anything."""
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            if stamp is None and self._stamp is not None:
                log.warning("config file %s disappeared; keeping the current config", self.path)
                self._stamp = None
            return None
        self._stamp = stamp
        self._version += 1
        try:
            documents = tuple(normalise_document(d.body) for d in load_files([self.path]))
        except ConfigError as exc:
            nack = self.watcher.reject("file", self._version, str(exc))
            return Outcome("nack", self.watcher.snapshot, nack)
        record = ConfigRecord(
            epoch="file",
            version=self._version,
            documents=documents,
            digest=digest_documents(documents),
        )
        return self.watcher.offer(record, source="file")

    async def run(self) -> None:
        while not self.closing:
            await asyncio.to_thread(self.poll)
            await asyncio.sleep(self.interval)
