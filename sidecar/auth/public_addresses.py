"""DID documents are fetched from public addresses only.

A ``did:web`` names any host its author likes, so without this a JWT could
aim the sidecar at the pod network, the cloud's metadata service or the
sidecar's own sign port. The check runs after DNS, inside the HTTP client's
connector (``PublicOnlyResolver``): the addresses it lets through are the very
ones connected to, so a DNS answer that changes between a check and the
connection changes nothing. An IP literal never reaches a resolver (aiohttp
connects to it as it is), so ``DidResolver.document_url`` checks those with
``is_public`` before any request.

Two exceptions, both the operator's choice: the PLC directory's host (an
internal mirror may live on a private address), and loopback addresses for
loopback host names when ``SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK`` is set.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver

from sidecar.names import is_loopback_host

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class NonPublicAddress(OSError):
    """A host resolved to an address the sidecar does not fetch from.

    An ``OSError``, so aiohttp reports it as a failed connection (its
    ``os_error``) without trying any address.
    """


def is_public(address: Address) -> bool:
    """Whether ``address`` is globally routable: not private, shared, link-local,
    loopback, multicast, unspecified, reserved or documentation space."""
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:10.0.0.1 reaches 10.0.0.1; judge the address it stands for.
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_public(mapped)
    return address.is_global and not (
        address.is_multicast or address.is_unspecified or address.is_reserved
    )


class PublicOnlyResolver(AbstractResolver):
    """Wraps a resolver; refuses a host if any address it resolves to is not public."""

    def __init__(
        self,
        inner: AbstractResolver | None = None,
        *,
        trusted_hosts: frozenset[str] = frozenset(),
        allow_loopback: bool = False,
    ) -> None:
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()
        self._trusted_hosts = trusted_hosts
        self._allow_loopback = allow_loopback

    def _permitted(self, host: str, answer: ResolveResult) -> bool:
        address = ipaddress.ip_address(answer["host"].partition("%")[0])
        if is_public(address):
            return True
        return self._allow_loopback and is_loopback_host(host) and address.is_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if host in self._trusted_hosts:
            return answers
        # All or nothing: a host with one private answer is aimed, whatever else it says.
        if not answers or not all(self._permitted(host, answer) for answer in answers):
            raise NonPublicAddress(f"{host} resolves to an address that is not public")
        return answers

    async def close(self) -> None:
        await self._inner.close()


def did_session(resolver: PublicOnlyResolver) -> aiohttp.ClientSession:
    """The HTTP client DID documents are fetched with: every connection through ``resolver``.

    No proxy from the environment (trust_env stays off): a proxy would connect
    to the address for us, past the check.
    """
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver))
