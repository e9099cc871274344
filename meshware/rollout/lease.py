"""Leader election for the rollout controller: one Redis lease, with a fencing token.

Every instance that may drive rollouts (``MESHWARE_ROLLOUT_CONTROLLER=1``, and the signing
key when config is signed) competes for one key, ``meshware:<mesh>:rollout-lease``:

- **acquire**: a Lua script that, only if the key is absent, increments the fence counter
  and sets the key to ``"<fence>:<holder>"`` with a TTL (``SET NX PX`` plus the counter, in
  one atomic step);
- **renew**: a Lua script that extends the TTL only if the key still holds our token;
- **release**: deletes it only if it holds our token (a clean shutdown hands over at once
  instead of after a TTL).

The *fence* is a number that grows with every acquisition. Each write a leader makes checks
the token first, atomically with the write (state: a Lua script, see
:mod:`meshware.rollout.storage`; config: inside the config transaction, see
:mod:`meshware.rollout.writer`), so a leader that was paused past its TTL and replaced
cannot write any more; and every VirtualService the controller writes carries its fence,
so a write by an older fence after a newer one is refused too.

The holder also stops considering itself leader on its own clock ``safety`` before the TTL
runs out, so it stops acting before anyone else may start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from meshware.config.connection import text, translate_errors
from meshware.config.keys import Keys

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local fence = redis.call('INCR', KEYS[2])
local token = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def fence_of(token: str) -> int:
    """The fence number of a lease token (``"17:reviews-v1-ab12"`` → 17); 0 if malformed."""
    head, _, _ = token.partition(":")
    return int(head) if head.isdigit() else 0


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds the lease now, for ``meshware rollout status``."""

    token: str
    ttl: float

    @property
    def holder(self) -> str:
        return self.token.partition(":")[2]

    @property
    def fence(self) -> int:
        return fence_of(self.token)


def read_holder(client: redis.Redis, keys: Keys, *, url: str = "redis") -> LeaseHolder | None:
    with translate_errors(url):
        pipe = client.pipeline(transaction=False)
        pipe.get(keys.rollout_lease)
        pipe.pttl(keys.rollout_lease)
        token, pttl = pipe.execute()
    if not token:
        return None
    return LeaseHolder(text(token), max(0.0, float(pttl or 0) / 1000.0))


class Lease:
    """This controller's view of the lease (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        holder: str,
        *,
        ttl: float = 10.0,
        url: str = "redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.client = client
        self.keys = keys
        self.holder = holder
        self.ttl = ttl
        self.url = url
        self.safety = min(1.0, ttl / 5)
        """Seconds before the TTL at which we stop trusting our own lease."""
        self._clock = clock
        self.token = ""
        self._valid_until = 0.0
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def fence(self) -> int:
        return fence_of(self.token)

    @property
    def held(self) -> bool:
        """True while we hold the lease by our own clock (renewed recently enough)."""
        return bool(self.token) and self._clock() < self._valid_until

    @property
    def renew_due(self) -> bool:
        """Renew at a third of the TTL, so two renewals can fail before it runs out."""
        return (
            bool(self.token) and self._clock() >= self._valid_until + self.safety - self.ttl * 2 / 3
        )

    def ensure(self) -> bool:
        """Acquire the lease or renew ours; True if we hold it afterwards."""
        if self.token:
            if not self.renew_due and self.held:
                return True
            if self.renew():
                return True
        return self.acquire()

    def keep(self) -> bool:
        """Renew our lease if due, never acquiring a new one: True while it is still ours.

        Used between the actions of one tick: a lease that was lost and acquired again (under
        a new fence) would mean another controller may have acted meanwhile, so the state read
        at the start of the tick can no longer be trusted.
        """
        if not self.token:
            return False
        if self.renew_due or not self.held:
            return self.renew()
        return True

    def acquire(self) -> bool:
        started = self._clock()
        with translate_errors(self.url):
            token = self._acquire(
                keys=[self.keys.rollout_lease, self.keys.rollout_fence],
                args=[self.holder, int(self.ttl * 1000)],
            )
        if not token:
            self.token = ""
            return False
        self.token = text(token)
        self._valid_until = started + self.ttl - self.safety
        return True

    def renew(self) -> bool:
        if not self.token:
            return False
        started = self._clock()
        with translate_errors(self.url):
            renewed = self._renew(
                keys=[self.keys.rollout_lease], args=[self.token, int(self.ttl * 1000)]
            )
        if renewed:
            self._valid_until = started + self.ttl - self.safety
            return True
        self.token = ""
        return False

    def verify(self) -> bool:
        """Does Redis still hold our token right now? (One GET; used inside writes.)"""
        if not self.token:
            return False
        with translate_errors(self.url):
            current = self.client.get(self.keys.rollout_lease)
        return current is not None and text(current) == self.token

    def release(self) -> None:
        if not self.token:
            return
        token, self.token = self.token, ""
        with translate_errors(self.url):
            self._release(keys=[self.keys.rollout_lease], args=[token])
