"""The client's address behind trusted reverse proxies (server.trusted_proxies). Pure.

X-Forwarded-For lists every hop's view, the nearest last: walking it from the right, the first address
that is not a trusted proxy is the client (anything left of it could have been written by the client
itself). X-Real-IP (nginx's `proxy_set_header X-Real-IP $remote_addr`) is taken when there is no
X-Forwarded-For. A request from an untrusted address keeps its socket address whatever its headers say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

__all__ = ["ClientAddress"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    __slots__ = ("_trusted",)

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted: tuple[_Network, ...] = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)

    def __bool__(self) -> bool:
        return bool(self._trusted)

    def _is_trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in net for net in self._trusted if net.version == ip.version)

    def of(self, remote: str | None, headers: Mapping[str, str]) -> str | None:
        """The client's address: `remote` unless it is a trusted proxy that says who it forwards for."""
        if remote is None or not self._is_trusted(remote):
            return remote
        forwarded = headers.get("X-Forwarded-For")
        if forwarded:
            hops = [h.strip() for h in forwarded.split(",") if h.strip()]
            for hop in reversed(hops):
                if not self._is_trusted(hop):
                    return _valid(hop) or remote
            return _valid(hops[0]) or remote if hops else remote
        real = headers.get("X-Real-IP")
        return _valid(real.strip()) or remote if real else remote


def _valid(addr: str) -> str | None:
    try:
        return str(ipaddress.ip_address(addr.strip("[]")))
    except ValueError:
        return None
