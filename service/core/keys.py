"""API keys: creation, verification and revocation, and the tenant's
overrides of the call limits that come with a verified key.

A key is ``loom_<key id>_<secret>``; only its SHA-256 digest is stored. The
secret has 256 bits of entropy, so a fast digest is safe to store (there is
nothing to brute-force), and the digest is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field

from service.core.clock import now
from service.core.errors import InvalidArgument, Unauthenticated
from service.core.limits import MAX_TENANT
from service.core.ports import ApiKey, ApiKeyStore, TenantLimits

__all__ = ["CACHE_SECONDS", "Caller", "CreatedKey", "KeyService"]

_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# How long a verified key (and its tenant's limits) is trusted without a
# database read: the bound on revocation and on a limits change, per replica.
CACHE_SECONDS = 5.0


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_tenant(tenant: str) -> None:
    if not tenant or len(tenant) > MAX_TENANT or not set(tenant) <= _TENANT_CHARS:
        raise InvalidArgument(
            f"tenant must be 1 to {MAX_TENANT} characters of letters, digits, '-', '_' or '.'",
            field="tenant",
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a verified key, its tenant and the tenant's limits."""

    tenant: str
    key_id: str
    limits: TenantLimits = field(default_factory=TenantLimits)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: the secret is shown once and never stored."""

    key: ApiKey
    secret: str


class KeyService:
    """Creates, checks and revokes API keys.

    Verified keys are cached for a few seconds so that a stream of calls does
    not cost a database round trip each; a revocation (or a change of the
    tenant's limits) therefore takes effect within ``CACHE_SECONDS``.
    """

    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[Caller, float]] = {}

    async def create(self, tenant: str) -> CreatedKey:
        """Create a key for ``tenant``.

        Raises:
            InvalidArgument: the tenant name is empty, long or has odd characters.
        """
        _check_tenant(tenant)
        key_id = secrets.token_hex(6)
        secret = f"loom_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id=key_id, tenant=tenant, prefix=secret[:17], create_time=now())
        await self._store.insert(key, _digest(secret))
        return CreatedKey(key=key, secret=secret)

    async def register(self, secret: str, tenant: str) -> ApiKey:
        """Register a caller-chosen key (``LOOM_DEV_API_KEY``); idempotent."""
        digest = _digest(secret)
        key = ApiKey(key_id=f"dev-{digest[:12]}", tenant=tenant, prefix="(dev)", create_time=now())
        await self._store.upsert(key, digest)
        return key

    async def authenticate(self, secret: str | None) -> Caller:
        """Return the caller the key identifies: its tenant and limits.

        Raises:
            Unauthenticated: no key, an unknown key or a revoked one.
        """
        if not secret:
            raise Unauthenticated(
                "missing API key: send it in the 'x-api-key' metadata",
                reason="API_KEY_MISSING",
            )
        digest = _digest(secret)
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        found = await self._store.find(digest)
        if found is None or not hmac.compare_digest(found[1], digest):
            raise Unauthenticated("the API key is not valid")
        key = found[0]
        if key.revoke_time is not None:
            raise Unauthenticated("the API key has been revoked")
        caller = Caller(key.tenant, key.key_id, await self._store.limits(key.tenant))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (caller, time.monotonic() + CACHE_SECONDS)
        return caller

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys, oldest first, of one tenant or all."""
        return await self._store.list_keys(tenant)

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such unrevoked key."""
        return await self._store.revoke(key_id, now())

    async def limits(self, tenant: str) -> TenantLimits:
        """The tenant's overrides of the call limits."""
        return await self._store.limits(tenant)

    async def set_limits(
        self,
        tenant: str,
        *,
        rate: float | None = None,
        burst: int | None = None,
        streams: int | None = None,
        reset: bool = False,
    ) -> TenantLimits:
        """Override the tenant's limits (the fields given; 0 is unlimited),
        or with ``reset`` drop every override first; returns the overrides
        now stored. Replicas apply them within ``CACHE_SECONDS``.

        Raises:
            InvalidArgument: a malformed tenant name, a negative or non-finite
                rate, a burst under 1, a negative stream count.
        """
        _check_tenant(tenant)
        if rate is not None and not (math.isfinite(rate) and rate >= 0):
            raise InvalidArgument(
                "rate must be a number of calls per second, 0 or more", field="rate"
            )
        if burst is not None and burst < 1:
            raise InvalidArgument("burst must be at least 1 call", field="burst")
        if streams is not None and streams < 0:
            raise InvalidArgument("streams must be 0 (unlimited) or more", field="streams")
        current = TenantLimits() if reset else await self._store.limits(tenant)
        updated = TenantLimits(
            rate=current.rate if rate is None else rate,
            burst=current.burst if burst is None else burst,
            streams=current.streams if streams is None else streams,
        )
        await self._store.set_limits(tenant, updated)
        return updated
