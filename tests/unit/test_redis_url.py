"""Unit tests for ``sidecar.redis_url``: the REDIS_URL forms, and scrubbing quoted errors."""

from __future__ import annotations

import pytest

from sidecar.redis_url import SentinelTarget, ServerTarget, parse_redis_url, scrub

PASSWORD = "s3cr%40t"  # percent-encoded "s3cr@t"


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("redis://localhost:6379/0", False),
        ("redis://h", False),
        ("rediss://user:pw@h:6380/1", True),
        ("unix:///run/redis.sock?db=2", False),
    ],
)
def test_server_urls_pass_through_unchanged(url: str, tls: bool) -> None:
    """A one-server URL is kept as given for redis-py, with its TLS flag read off the scheme."""
    assert parse_redis_url(url) == ServerTarget(url=url, tls=tls, cluster=False)


def test_cluster_seed_is_marked() -> None:
    """With cluster=True a redis:// URL becomes a cluster seed."""
    assert parse_redis_url("rediss://h:7000", cluster=True) == ServerTarget(
        url="rediss://h:7000", tls=True, cluster=True
    )


def test_sentinel_url_lists_sentinels_master_and_db() -> None:
    """A Sentinel URL gives every sentinel (26379 by default), the master name and the db."""
    target = parse_redis_url("redis+sentinel://s1:26380,s2,[::1]:26381/my-master/3")
    assert target == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        service_name="my-master",
        db=3,
        tls=False,
    )


def test_sentinel_credentials_are_decoded_for_the_data_nodes() -> None:
    """user:password@ in a Sentinel URL is percent-decoded; the db defaults to 0."""
    target = parse_redis_url(f"rediss+sentinel://app:{PASSWORD}@s1/mymaster")
    assert isinstance(target, SentinelTarget)
    assert (target.username, target.password) == ("app", "s3cr@t")
    assert (target.tls, target.db) == (True, 0)


def test_sentinel_password_without_user() -> None:
    """:password@ gives a password and no username, as in redis:// URLs."""
    target = parse_redis_url("redis+sentinel://:pw@s1/mymaster")
    assert isinstance(target, SentinelTarget)
    assert (target.username, target.password) == (None, "pw")


@pytest.mark.parametrize(
    "url", [f"redis://:{PASSWORD}@h:6379", f"redis+sentinel://u:{PASSWORD}@s1/m"]
)
def test_repr_never_shows_the_password(url: str) -> None:
    """Neither target's repr holds the URL's password, encoded or decoded."""
    text = repr(parse_redis_url(url))
    assert PASSWORD not in text
    assert "s3cr@t" not in text


@pytest.mark.parametrize(
    ("url", "cluster", "message"),
    [
        ("redis://h?socket_timeout=60", False, "takes no query options but db"),
        ("redis://h#frag", False, "must not have a #fragment"),
        ("redis+sentinel://s1/m?db=1", False, "takes no query options in a Sentinel URL"),
        ("redis+sentinel://s1/m", True, "cannot name a cluster"),
        ("unix:///run/redis.sock", True, "a cluster is reached over TCP"),
        ("redis+sentinel://s1:0/m", False, "sentinel port"),
        ("redis+sentinel://[::1]x/m", False, "malformed IPv6"),
        ("redis+sentinel://s1/", False, "must name the monitored primary"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, cluster: bool, message: str) -> None:
    """Each malformed URL raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url, cluster=cluster)


def test_scrub_removes_the_url_and_its_password_in_both_spellings() -> None:
    """scrub replaces the whole URL and its password, raw or percent-decoded, with ***."""
    url = f"redis://app:{PASSWORD}@h:6379/0"
    text = f"failed {url}; AUTH s3cr@t; AUTH {PASSWORD}; host h:6379"
    assert scrub(text, url) == "failed ***; AUTH ***; AUTH ***; host h:6379"


def test_scrub_leaves_text_alone_without_a_password() -> None:
    """A URL without a password only has the URL itself removed."""
    assert scrub("Error 111 connecting to h:6379.", "redis://h:6379") == (
        "Error 111 connecting to h:6379."
    )
