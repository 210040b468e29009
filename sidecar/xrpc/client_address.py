"""Which client a request comes from, for the per-address limit on refused credentials.

The socket peer is the client, unless it is one of the trusted proxies
(``SIDECAR_TRUSTED_PROXIES``): then ``X-Forwarded-For`` is read from its right
end, each hop a trusted proxy appended, and the first address that is not a
trusted proxy is the client. Anything an untrusted peer sends in that header
is ignored, so a caller cannot pick the address it is counted under.

An IPv6 client is counted by its /64: one host usually holds a whole /64, so
counting single addresses would let it take a fresh one per attempt.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

IPV6_PREFIX: Final = 64
UNKNOWN: Final = "unknown"


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def counted_as(address: Address) -> str:
    """The text an address is counted under: itself, or its /64 for IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))


class ClientAddresses:
    """Tells the client address of a request from its peer and ``X-Forwarded-For``."""

    def __init__(self, trusted_proxies: Sequence[Network] = ()) -> None:
        self._trusted = tuple(trusted_proxies)

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)

    def client(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The address ``peer``'s request is counted under (see the module docstring).

        ``forwarded_for`` holds every ``X-Forwarded-For`` header of the request,
        in order. A malformed hop ends the walk at the last trusted proxy, which
        is then counted as the client: better one shared count than a forged one.
        """
        current = _address(peer) if peer is not None else None
        if current is None:
            return UNKNOWN
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        while self._is_trusted(current) and hops:
            previous = _address(hops.pop())
            if previous is None:
                break
            current = previous
        return counted_as(current)
