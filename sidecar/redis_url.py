"""The forms ``REDIS_URL`` takes, parsed and checked without talking to Redis.

::

    redis://[[user]:password@]host[:port][/db]          one server
    rediss://...                                         one server, over TLS
    unix://[[user]:password@]/path/to.sock[?db=N]        one server, on a local socket
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master>[/db]
    rediss+sentinel://...                                Sentinel and data nodes over TLS

With ``SIDECAR_REDIS_CLUSTER=1``, a ``redis://`` or ``rediss://`` URL names one
seed node of a Redis Cluster; the client finds the others.

In a Sentinel URL the credentials are those of the data nodes (the primary and
its replicas); sentinel ports default to 26379. No URL may carry query options
other than ``db``: redis-py lets them override keyword arguments, and a
``?socket_timeout=`` in a URL must not undo the deadline every Redis call runs
under.

Settings checks the URL at start with this module, and the store connects with
it; neither imports the other. Error messages never repeat the URL, because it
may hold a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

SENTINEL_PORT: Final = 26379
SCHEMES: Final = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")


@dataclass(frozen=True, slots=True)
class ServerTarget:
    """One server, or the seed node of a cluster: the URL goes to redis-py as it is."""

    url: str = field(repr=False)
    tls: bool
    cluster: bool


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A primary found through Sentinel, by the name the sentinels monitor it under."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


RedisTarget = ServerTarget | SentinelTarget


def parse_redis_url(url: str, *, cluster: bool = False) -> RedisTarget:
    """Check ``url`` and say how to reach it; ``ValueError`` with a message safe to show."""
    scheme, sep, _ = url.partition("://")
    if not sep or f"{scheme}://" not in SCHEMES:
        raise ValueError("must start with " + ", ".join(SCHEMES[:-1]) + " or " + SCHEMES[-1])
    if scheme.endswith("+sentinel"):
        if cluster:
            raise ValueError("a Sentinel URL cannot name a cluster (unset SIDECAR_REDIS_CLUSTER)")
        return _sentinel(url, tls=scheme == "rediss+sentinel")
    if scheme == "unix":
        if cluster:
            raise ValueError("a cluster is reached over TCP: use redis:// or rediss://")
        return _unix(url)
    return _server(url, tls=scheme == "rediss", cluster=cluster)


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    return parts


def _db_from_query(query: str) -> int | None:
    db: int | None = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "db":
            raise ValueError(
                "takes no query options but db: timeouts and TLS come from SIDECAR_REDIS_* settings"
            )
        db = _db(value)
    return db


def _db(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError("has a database number that is not a whole number")
    return int(text)


def _server(url: str, *, tls: bool, cluster: bool) -> ServerTarget:
    parts = _split(url)
    if not parts.hostname:
        raise ValueError("must name a host")
    try:
        parts.port  # noqa: B018  (reading .port is how urllib checks it)
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    db = _db_from_query(parts.query)
    db_path = parts.path.strip("/")
    if db_path:
        db = _db(db_path)
    if cluster and db:
        raise ValueError("a cluster has only database 0")
    return ServerTarget(url=url, tls=tls, cluster=cluster)


def _unix(url: str) -> ServerTarget:
    parts = _split(url)
    if not parts.path or parts.path == "/":
        raise ValueError("must name a socket path, as in unix:///run/redis.sock")
    _db_from_query(parts.query)
    return ServerTarget(url=url, tls=False, cluster=False)


def _sentinel(url: str, *, tls: bool) -> SentinelTarget:
    parts = _split(url)
    path = parts.path
    if parts.query:
        raise ValueError("takes no query options in a Sentinel URL; put the db in the path")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    segments = path.split("/")[1:] if path.startswith("/") else []
    if not segments or not segments[0]:
        raise ValueError(
            "must name the monitored primary, as in redis+sentinel://host:26379/mymaster"
        )
    if len(segments) > 2 or (len(segments) == 2 and not segments[1]):
        raise ValueError("must end in /<master-name> or /<master-name>/<db>")
    db = _db(segments[1]) if len(segments) == 2 else 0
    return SentinelTarget(
        sentinels=sentinels,
        service_name=unquote(segments[0]),
        db=db,
        tls=tls,
        username=username,
        password=password,
    )


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("has a malformed IPv6 sentinel address")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError("must list each sentinel as host or host:port, separated by commas")
    if not port_text:
        return host, SENTINEL_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError("has a sentinel port that is not a number from 1 to 65535")
    return host, int(port_text)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL, and any password in it, replaced by ``***``.

    For messages that quote a Redis client's error, whose wording we do not
    control, before they reach a log or a terminal.
    """
    secrets = [url]
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    if password:
        secrets += [password, unquote(password)]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
