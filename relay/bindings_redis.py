"""Response bindings (relay.bindings) in Redis, for limits.backend: redis: one key per response id under
`<prefix>resp:`, holding "account uid|key id" and expiring with the binding."""

from __future__ import annotations

from redis import asyncio as aioredis

__all__ = ["RedisBindings"]


class RedisBindings:
    def __init__(self, url: str, prefix: str, timeout: float = 0.5) -> None:
        self._prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
        )

    async def bind_response(self, response_id: str, account: str, key_id: str, ttl: float) -> None:
        await self._redis.set(self._prefix + response_id, f"{account}|{key_id}", px=int(ttl * 1000))

    async def response_binding(self, response_id: str) -> tuple[str, str] | None:
        raw = await self._redis.get(self._prefix + response_id)
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        account, _, key_id = text.partition("|")
        return account, key_id

    async def unbind_response(self, response_id: str) -> None:
        await self._redis.delete(self._prefix + response_id)

    async def close(self) -> None:
        await self._redis.aclose()
