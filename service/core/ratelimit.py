"""Call limits of one replica: a token bucket per API key on calls, and a
cap on each tenant's concurrent reply streams.

Policy:

- Every authenticated call takes a token from its key's bucket, which holds
  ``burst`` tokens and refills at ``rate`` per second; an empty bucket is
  ``RateLimited`` with the time until the next token.
- ``SendMessage`` and ``SubmitToolOutputs`` streams also hold one of their
  tenant's ``streams`` slots until they end; none free is
  ``TooManyStreams`` with a short back-off.
- A tenant's overrides (``TenantLimits``, read with its key) replace the
  defaults field by field; 0 means unlimited.
- State lives in this process: N replicas allow N times the limits.

Everything runs on the server's event loop, so no locks are needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.core.errors import RateLimited, TooManyStreams
from service.core.ports import TenantLimits

__all__ = ["STREAM_RETRY_SECONDS", "Limiter", "Limits"]

# The back-off suggested to a caller over its stream cap: a reply takes
# seconds, so sooner would mostly be refused again.
STREAM_RETRY_SECONDS = 1.0
# Buckets kept before refilled ones are dropped.
_MAX_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Effective limits; 0 is unlimited."""

    rate: float = 0.0
    burst: int = 1
    streams: int = 0

    def overridden(self, overrides: TenantLimits) -> Limits:
        """These limits with a tenant's overrides applied."""
        return Limits(
            rate=self.rate if overrides.rate is None else overrides.rate,
            burst=self.burst if overrides.burst is None else overrides.burst,
            streams=self.streams if overrides.streams is None else overrides.streams,
        )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    rate: float = 0.0
    burst: int = 1

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.at) * self.rate >= self.burst


class Limiter:
    """Admits calls against the limits; ``defaults`` come from the settings."""

    def __init__(self, defaults: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.defaults = defaults
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}

    def admit(self, key_id: str, overrides: TenantLimits) -> None:
        """Take a token from the key's bucket.

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says for how long.
        """
        limits = self.defaults.overridden(overrides)
        if limits.rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._drop_full(now)
            bucket = self._buckets[key_id] = _Bucket(float(limits.burst), now)
        # A lowered burst applies at once; a raised one fills by the rate.
        bucket.tokens = min(limits.burst, bucket.tokens + (now - bucket.at) * limits.rate)
        bucket.at, bucket.rate, bucket.burst = now, limits.rate, limits.burst
        if bucket.tokens < 1:
            raise RateLimited(limits.rate, limits.burst, (1 - bucket.tokens) / limits.rate)
        bucket.tokens -= 1

    @contextmanager
    def stream(self, tenant: str, overrides: TenantLimits) -> Iterator[None]:
        """Hold one of the tenant's stream slots for the ``with`` block.

        Raises:
            TooManyStreams: every slot is taken.
        """
        cap = self.defaults.overridden(overrides).streams
        open_now = self._streams.get(tenant, 0)
        if 0 < cap <= open_now:
            raise TooManyStreams(cap, STREAM_RETRY_SECONDS)
        self._streams[tenant] = open_now + 1
        try:
            yield
        finally:
            left = self._streams[tenant] - 1
            if left:
                self._streams[tenant] = left
            else:
                del self._streams[tenant]

    def open_streams(self, tenant: str) -> int:
        """Streams the tenant has open on this replica."""
        return self._streams.get(tenant, 0)

    def _drop_full(self, now: float) -> None:
        # A bucket that has refilled is the same as a new one. Buckets exist
        # only for valid keys, so if none is full the map stays bounded.
        for key_id in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key_id]
