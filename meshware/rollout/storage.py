"""Rollout state, history and operator commands in Redis.

Only the lease holder writes a rollout's state, and :meth:`RolloutStorage.save` makes that a
rule rather than a hope: one Lua script compares the lease key with the caller's token and,
only if it matches, replaces the state, pushes the history events and publishes a hint, all
atomically. A deposed leader's save changes nothing and raises :class:`LeaseLostError`.

Commands (:meth:`command`) go to a separate hash that anyone may write; the controller reads
them on every tick (see :class:`~meshware.rollout.state.Control`).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from meshware.config.connection import text, text_map, translate_errors
from meshware.config.keys import Keys
from meshware.rollout.errors import LeaseLostError
from meshware.rollout.state import Control, Event, RolloutState

HISTORY_LIMIT = 500

_SAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
for i = 5, #ARGV do
  redis.call('LPUSH', KEYS[3], ARGV[i])
end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
redis.call('PUBLISH', KEYS[4], ARGV[4])
return 1
"""

COMMANDS = ("pause", "resume", "promote", "promote-full", "abort", "retry")


class RolloutStorage:
    """Read and (fenced) write the rollout records of one mesh."""

    def __init__(self, client: redis.Redis, keys: Keys, *, url: str = "redis") -> None:
        self.client = client
        self.keys = keys
        self.url = url
        self._save = client.register_script(_SAVE)

    def load(self, namespace: str, name: str) -> RolloutState | None:
        with translate_errors(self.url):
            raw = self.client.get(self.keys.rollout_state(namespace, name))
        if raw is None:
            return None
        try:
            return RolloutState.from_json(text(raw))
        except ValueError:
            return None

    def save(self, state: RolloutState, events: Sequence[Event], token: str) -> None:
        """Store ``state`` and append ``events`` if ``token`` still holds the lease."""
        keys = self.keys
        with translate_errors(self.url):
            stored = self._save(
                keys=[
                    keys.rollout_lease,
                    keys.rollout_state(state.namespace, state.name),
                    keys.rollout_history(state.namespace, state.name),
                    keys.rollout_events,
                ],
                args=[
                    token,
                    state.to_json(),
                    HISTORY_LIMIT,
                    f"{state.namespace}/{state.name}",
                    *(event.to_json() for event in events),
                ],
            )
        if not stored:
            raise LeaseLostError(
                f"not saving rollout {state.namespace}/{state.name}: this controller no longer "
                "holds the rollout lease"
            )

    def history(self, namespace: str, name: str, limit: int = HISTORY_LIMIT) -> list[Event]:
        """Events, newest first (unreadable entries skipped)."""
        with translate_errors(self.url):
            raw = self.client.lrange(self.keys.rollout_history(namespace, name), 0, limit - 1)
        events: list[Event] = []
        for entry in raw:
            try:
                events.append(Event.from_json(text(entry)))
            except ValueError:
                continue
        return events

    def control(self, namespace: str, name: str) -> Control:
        with translate_errors(self.url):
            data = self.client.hgetall(self.keys.rollout_control(namespace, name))
        return Control.from_hash(text_map(data))

    def command(self, namespace: str, name: str, command: str) -> Control:
        """Record an operator command (one of :data:`COMMANDS`); the new controls."""
        key = self.keys.rollout_control(namespace, name)
        with translate_errors(self.url):
            if command == "pause":
                self.client.hset(key, "paused", "1")
            elif command == "resume":
                self.client.hset(key, "paused", "0")
            elif command in ("promote", "promote-full", "abort", "retry"):
                self.client.hincrby(key, command.replace("-", "_"), 1)
                if command == "retry":
                    self.client.hset(key, "paused", "0")
            else:
                raise ValueError(f"unknown rollout command {command!r}")
            self.client.publish(self.keys.rollout_events, f"{namespace}/{name}")
        return self.control(namespace, name)
