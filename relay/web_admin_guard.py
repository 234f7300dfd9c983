"""The admin token check every /admin route goes through (relay.web_admin, relay.web_admin_health)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import PermissionDenied, Unauthorized

__all__ = ["Handler", "admin_guard"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_guard(admin_token: str | None) -> Callable[[Handler], Handler]:
    """Wraps a handler: 403 `admin_disabled` without a configured token, 401 `invalid_admin_token` unless the
    request carries `Authorization: Bearer <admin_token>` (compared in constant time)."""
    token = admin_token.encode() if admin_token else None

    def guarded(handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if token is None:
                raise PermissionDenied(
                    "The admin API is disabled: set admin_token in the relay's config to enable it.",
                    code="admin_disabled",
                )
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            try:
                presented = given.strip().encode()
            except UnicodeEncodeError:  # undecodable header bytes: cannot be the token
                presented = b""
            if scheme.lower() != "bearer" or not presented or not hmac.compare_digest(presented, token):
                raise Unauthorized(
                    "The admin API needs 'Authorization: Bearer <admin_token>'; the token given is missing or wrong.",
                    code="invalid_admin_token",
                )
            return await handler(request)

        return handle

    return guarded
