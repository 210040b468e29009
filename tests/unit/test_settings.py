"""Unit tests for ``sidecar.settings``: defaults, parsing, the TOML file, errors and masking."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sidecar.crypto import Kek, encode_kek, parse_kek
from sidecar.errors import ConfigError
from sidecar.settings import Secret, Settings

# A fixed, recognisable key, spelled three ways, so that leaks are easy to search for.
KEY = bytes(range(1, 33))
KEY_HEX = KEY.hex()
KEY_B64URL = base64.urlsafe_b64encode(KEY).rstrip(b"=").decode()
KEY_B64 = base64.b64encode(KEY).decode()
OTHER_KEY = bytes(range(101, 133))
THIRD_KEY = bytes(range(201, 233))

SIGN_TOKEN = "sign-token-0123456789-abcdef"
REDIS_PASSWORD = "hunter2"
REDIS_URL = f"redis://:{REDIS_PASSWORD}@redis.example:6379/0"


def key_spellings(key: bytes) -> list[str]:
    """Every way a key's bytes could leak into text."""
    return [
        key.hex(),
        key.hex().upper(),
        base64.urlsafe_b64encode(key).rstrip(b"=").decode(),
        base64.b64encode(key).decode(),
        repr(key),
    ]


def write_toml(tmp_path: Path, text: str) -> dict[str, str]:
    """Write ``text`` as a TOML config file and return the environment that names it."""
    path = tmp_path / "sidecar.toml"
    path.write_text(text, encoding="utf-8")
    return {"SIDECAR_CONFIG": str(path)}


# Defaults


def test_defaults() -> None:
    """An empty environment gives the documented defaults of every setting."""
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert (settings.xrpc_host, settings.xrpc_port) == ("0.0.0.0", 8080)
    assert (settings.sign_host, settings.sign_port) == ("127.0.0.1", 8081)
    assert (settings.ops_host, settings.ops_port) == ("0.0.0.0", 9090)
    assert settings.kek is None
    assert settings.kek_previous == ()
    assert settings.kek_configured is False
    assert settings.api_keys_file is None
    assert settings.data_dir == Path(".data")
    assert settings.log_level == "info"
    assert settings.log_format == "auto"
    assert settings.redis_timeout_ms == 500
    assert settings.redis_timeout_s == 0.5
    assert settings.sign_max_bytes == 1024 * 1024
    assert settings.sign_token is None
    assert settings.xrpc_max_bytes == 64 * 1024
    assert settings.audit_log_max_len == 1000
    assert settings.dev_did == "did:web:localhost"
    assert settings.redis_cluster is False
    assert settings.redis_ca_file is None
    assert settings.redis_connect_timeout_s == 10
    assert settings.start_without_redis is False
    assert settings.shutdown_grace_s == 20
    # Changes wait for no replica, and for the primary's fsync wherever it can give one.
    assert (settings.durable_replicas, settings.durable_fsync) == (0, "auto")
    assert settings.durable_timeout_ms == 500


def test_empty_variable_counts_as_unset() -> None:
    """A variable set to the empty string leaves the default in place."""
    settings = Settings.from_env({"SIDECAR_XRPC_PORT": "", "REDIS_URL": "", "SIDECAR_KEK": ""})
    assert settings.xrpc_port == 8080
    assert settings.redis_url is None
    assert settings.kek is None


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after parsing."""
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.xrpc_port = 1  # type: ignore[misc]


# Listeners


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("SIDECAR_XRPC_PORT", "xrpc_port"),
        ("SIDECAR_SIGN_PORT", "sign_port"),
        ("SIDECAR_OPS_PORT", "ops_port"),
    ],
)
@pytest.mark.parametrize(("text", "port"), [("1", 1), ("9000", 9000), ("65535", 65535)])
def test_port_is_parsed(variable: str, attribute: str, text: str, port: int) -> None:
    """Each port variable is parsed as an integer."""
    settings = Settings.from_env({variable: text})
    assert getattr(settings, attribute) == port


@pytest.mark.parametrize("variable", ["SIDECAR_XRPC_PORT", "SIDECAR_SIGN_PORT", "SIDECAR_OPS_PORT"])
@pytest.mark.parametrize("text", ["70000", "65536", "abc", "-1", "+80", "0x50", "80.0", "8 080"])
def test_bad_port_is_rejected(variable: str, text: str) -> None:
    """A port outside its range (0 only for sign, which means "no TCP listener") or not a
    plain decimal number raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: text})
    assert info.value.setting == variable
    low = 0 if variable == "SIDECAR_SIGN_PORT" else 1
    assert str(info.value) == f"{variable}: must be a whole number from {low} to 65535"


@pytest.mark.parametrize("text", ["\u00b2", "80\u00b9"])
def test_superscript_digits_are_a_config_error(text: str) -> None:
    """A port spelled with superscript digits raises ConfigError, not ValueError."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_XRPC_PORT": text})
    assert info.value.setting == "SIDECAR_XRPC_PORT"


@pytest.mark.parametrize("text", ["\u0668\u0660\u0668\u0660", "\uff18\uff10\uff18\uff10"])
def test_non_ascii_digits_are_rejected(text: str) -> None:
    """A port spelled with Arabic-Indic or full-width digits raises ConfigError."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_XRPC_PORT": text})
    assert info.value.setting == "SIDECAR_XRPC_PORT"


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("SIDECAR_XRPC_HOST", "xrpc_host"),
        ("SIDECAR_SIGN_HOST", "sign_host"),
        ("SIDECAR_OPS_HOST", "ops_host"),
    ],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "sidecar.internal"])
def test_host_is_parsed(variable: str, attribute: str, host: str) -> None:
    """Each host variable is taken as given."""
    assert getattr(Settings.from_env({variable: host}), attribute) == host


@pytest.mark.parametrize("variable", ["SIDECAR_XRPC_HOST", "SIDECAR_SIGN_HOST", "SIDECAR_OPS_HOST"])
@pytest.mark.parametrize("host", [" ", "local host", "localhost\n", "\t127.0.0.1"])
def test_bad_host_is_rejected(variable: str, host: str) -> None:
    """A host that is blank or holds whitespace raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: host})
    assert info.value.setting == variable


# Simple values


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", "debug"), ("INFO", "info"), ("Warning", "warning"), (" error ", "error")],
)
def test_log_level_is_case_insensitive(text: str, level: str) -> None:
    """The log level is matched case-insensitively and stored in lower case."""
    assert Settings.from_env({"SIDECAR_LOG_LEVEL": text}).log_level == level


@pytest.mark.parametrize("text", ["auto", "JSON", "Console"])
def test_log_format_is_parsed(text: str) -> None:
    """The log format is matched case-insensitively and stored in lower case."""
    assert Settings.from_env({"SIDECAR_LOG_FORMAT": text}).log_format == text.lower()


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("SIDECAR_LOG_LEVEL", "verbose"),
        ("SIDECAR_LOG_LEVEL", "warn"),
        ("SIDECAR_LOG_FORMAT", "text"),
    ],
)
def test_bad_choice_is_rejected(variable: str, text: str) -> None:
    """A log level or format outside its options raises ConfigError listing the options."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: text})
    assert info.value.setting == variable
    assert "must be one of" in str(info.value)


def test_data_dir_is_parsed(tmp_path: Path) -> None:
    """The data directory is taken as a path, and need not exist yet."""
    target = tmp_path / "not-yet"
    assert Settings.from_env({"SIDECAR_DATA_DIR": str(target)}).data_dir == target


@pytest.mark.parametrize(
    ("variable", "attribute", "text", "value"),
    [
        ("SIDECAR_REDIS_TIMEOUT_MS", "redis_timeout_ms", "1", 1),
        ("SIDECAR_REDIS_TIMEOUT_MS", "redis_timeout_ms", "60000", 60_000),
        ("SIDECAR_SIGN_MAX_BYTES", "sign_max_bytes", "2048", 2048),
        ("SIDECAR_SIGN_MAX_BYTES", "sign_max_bytes", str(64 * 1024 * 1024), 64 * 1024 * 1024),
        ("SIDECAR_AUDIT_LOG_MAX_LEN", "audit_log_max_len", "5", 5),
        ("SIDECAR_REDIS_CONNECT_TIMEOUT_S", "redis_connect_timeout_s", "1", 1),
        ("SIDECAR_REDIS_CONNECT_TIMEOUT_S", "redis_connect_timeout_s", "3600", 3600),
        ("SIDECAR_SHUTDOWN_GRACE_S", "shutdown_grace_s", "1", 1),
        ("SIDECAR_SHUTDOWN_GRACE_S", "shutdown_grace_s", "3600", 3600),
        ("SIDECAR_DURABLE_REPLICAS", "durable_replicas", "0", 0),
        ("SIDECAR_DURABLE_REPLICAS", "durable_replicas", "100", 100),
        ("SIDECAR_DURABLE_TIMEOUT_MS", "durable_timeout_ms", "1", 1),
        ("SIDECAR_DURABLE_TIMEOUT_MS", "durable_timeout_ms", "60000", 60_000),
    ],
)
def test_bounded_integer_is_parsed(variable: str, attribute: str, text: str, value: int) -> None:
    """Bounded integer settings accept their bounds and values between."""
    assert getattr(Settings.from_env({variable: text}), attribute) == value


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("SIDECAR_REDIS_TIMEOUT_MS", "0"),
        ("SIDECAR_REDIS_TIMEOUT_MS", "60001"),
        ("SIDECAR_REDIS_TIMEOUT_MS", "0.5"),
        ("SIDECAR_SIGN_MAX_BYTES", "0"),
        ("SIDECAR_SIGN_MAX_BYTES", str(64 * 1024 * 1024 + 1)),
        ("SIDECAR_SIGN_MAX_BYTES", "1MiB"),
        ("SIDECAR_AUDIT_LOG_MAX_LEN", "0"),
        ("SIDECAR_AUDIT_LOG_MAX_LEN", "10000001"),
        ("SIDECAR_REDIS_CONNECT_TIMEOUT_S", "0"),
        ("SIDECAR_REDIS_CONNECT_TIMEOUT_S", "3601"),
        ("SIDECAR_REDIS_CONNECT_TIMEOUT_S", "1.5"),
        ("SIDECAR_SHUTDOWN_GRACE_S", "0"),
        ("SIDECAR_SHUTDOWN_GRACE_S", "3601"),
        ("SIDECAR_DURABLE_REPLICAS", "-1"),
        ("SIDECAR_DURABLE_REPLICAS", "101"),
        ("SIDECAR_DURABLE_REPLICAS", "one"),
        # 0 would make WAIT block for ever.
        ("SIDECAR_DURABLE_TIMEOUT_MS", "0"),
        ("SIDECAR_DURABLE_TIMEOUT_MS", "60001"),
    ],
)
def test_bounded_integer_out_of_range_is_rejected(variable: str, text: str) -> None:
    """A bounded integer outside its range, or not an integer, raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: text})
    assert info.value.setting == variable


def test_redis_timeout_seconds_follows_milliseconds() -> None:
    """``redis_timeout_s`` is the configured milliseconds in seconds."""
    assert Settings.from_env({"SIDECAR_REDIS_TIMEOUT_MS": "1500"}).redis_timeout_s == 1.5


@pytest.mark.parametrize("did", ["did:plc:abc123", "did:web:sidecar.example.com"])
def test_dev_did_is_parsed(did: str) -> None:
    """The development DID is taken as given when it is a DID."""
    assert Settings.from_env({"SIDECAR_DEV_DID": did}).dev_did == did


@pytest.mark.parametrize("did", ["localhost", "did:web:", "did:web:a{b}"])
def test_bad_dev_did_is_rejected(did: str) -> None:
    """A development DID that is not a DID raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_DEV_DID": did})
    assert info.value.setting == "SIDECAR_DEV_DID"


def test_sign_token_is_parsed() -> None:
    """The sign token is held as a Secret that reveals the configured value."""
    settings = Settings.from_env({"SIDECAR_SIGN_TOKEN": SIGN_TOKEN})
    assert settings.sign_token is not None
    assert settings.sign_token.reveal() == SIGN_TOKEN


def test_short_sign_token_is_rejected_without_echo() -> None:
    """A sign token under 16 characters raises ConfigError that does not repeat it."""
    token = "short-tok-123"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_SIGN_TOKEN": token})
    assert info.value.setting == "SIDECAR_SIGN_TOKEN"
    assert token not in str(info.value)


# Redis URL


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        REDIS_URL,
        "rediss://user:pw@redis.example:6380",
        "unix:///run/redis.sock",
        f"redis+sentinel://:{REDIS_PASSWORD}@s1:26379,s2:26379/mymaster",
        "rediss+sentinel://s1,s2,s3/mymaster/2",
    ],
)
def test_redis_url_schemes_are_accepted(url: str) -> None:
    """REDIS_URL accepts each documented scheme and keeps the URL exactly."""
    settings = Settings.from_env({"REDIS_URL": url})
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == url


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{REDIS_PASSWORD}@h",
        f"redis:/:{REDIS_PASSWORD}@h",
        f"valkey://:{REDIS_PASSWORD}@h",
        f":{REDIS_PASSWORD}@h:6379",
        f"sentinel://:{REDIS_PASSWORD}@h:26379/mymaster",
    ],
)
def test_redis_url_of_another_scheme_is_rejected_without_echo(url: str) -> None:
    """A REDIS_URL of another scheme raises ConfigError that repeats neither URL nor password."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": url})
    assert info.value.setting == "REDIS_URL"
    assert REDIS_PASSWORD not in str(info.value)
    assert REDIS_PASSWORD not in repr(info.value)
    assert str(info.value) == (
        "REDIS_URL: must start with redis://, rediss://, unix://, redis+sentinel:// "
        "or rediss+sentinel://"
    )


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{REDIS_PASSWORD}@h:99999/0",
        f"redis://:{REDIS_PASSWORD}@h:6379/zero",
        f"redis://:{REDIS_PASSWORD}@h:6379/0?socket_timeout=60",
        f"redis://:{REDIS_PASSWORD}@:6379/0",
        f"unix://:{REDIS_PASSWORD}@",
        f"redis+sentinel://:{REDIS_PASSWORD}@s1:26379",
        f"redis+sentinel://:{REDIS_PASSWORD}@s1:port/mymaster",
        f"redis+sentinel://:{REDIS_PASSWORD}@s1,,s2/mymaster",
        f"redis+sentinel://:{REDIS_PASSWORD}@s1/mymaster/0/extra",
    ],
)
def test_malformed_redis_url_is_rejected_without_echo(url: str) -> None:
    """A REDIS_URL of a known scheme but a bad shape raises ConfigError without the password."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": url})
    assert info.value.setting == "REDIS_URL"
    assert REDIS_PASSWORD not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# Redis topology and lifecycle switches


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        (" True ", True),
        ("0", False),
        ("false", False),
        ("FALSE", False),
    ],
)
@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("SIDECAR_REDIS_CLUSTER", "redis_cluster"),
        ("SIDECAR_START_WITHOUT_REDIS", "start_without_redis"),
    ],
)
def test_boolean_settings_accept_1_0_true_false(
    variable: str, attribute: str, text: str, value: bool
) -> None:
    """Boolean settings accept 1, 0, true and false in any case."""
    settings = Settings.from_env({"REDIS_URL": "redis://h:6379", variable: text})
    assert getattr(settings, attribute) is value


@pytest.mark.parametrize("text", ["yes", "no", "2", "on", "t"])
@pytest.mark.parametrize("variable", ["SIDECAR_REDIS_CLUSTER", "SIDECAR_START_WITHOUT_REDIS"])
def test_bad_boolean_is_rejected(variable: str, text: str) -> None:
    """A boolean setting that is not 1, 0, true or false raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis://h:6379", variable: text})
    assert str(info.value) == f"{variable}: must be 0, 1, true or false"


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("auto", "auto"),
        (" AUTO ", "auto"),
        ("on", "on"),
        ("off", "off"),
        # The flag spellings it had before auto existed keep their meaning.
        ("1", "on"),
        ("true", "on"),
        ("True", "on"),
        ("0", "off"),
        ("false", "off"),
        ("FALSE", "off"),
    ],
)
def test_durable_fsync_takes_auto_on_off_and_its_old_flag_values(text: str, mode: str) -> None:
    """SIDECAR_DURABLE_FSYNC takes auto, on and off, and still 1/true (on) and 0/false (off)."""
    settings = Settings.from_env({"REDIS_URL": "redis://h:6379", "SIDECAR_DURABLE_FSYNC": text})
    assert settings.durable_fsync == mode


@pytest.mark.parametrize("text", ["yes", "no", "2", "t", "always"])
def test_a_bad_durable_fsync_is_rejected(text: str) -> None:
    """A SIDECAR_DURABLE_FSYNC that is no mode and no old flag value is refused, naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis://h:6379", "SIDECAR_DURABLE_FSYNC": text})
    assert str(info.value) == (
        "SIDECAR_DURABLE_FSYNC: must be auto, on or off (or 1, 0, true, false)"
    )


def test_toml_booleans_set_boolean_settings(tmp_path: Path) -> None:
    """TOML true and false set boolean settings (they reach the parser as "true"/"false")."""
    environ = write_toml(
        tmp_path,
        'redis_url = "redis://h:6379"\nredis_cluster = true\nstart_without_redis = false\n'
        "durable_fsync = true\n",
    )
    settings = Settings.from_env(environ)
    assert settings.redis_cluster is True
    assert settings.start_without_redis is False
    # A file written before durable_fsync took auto/on/off still means what it did.
    assert settings.durable_fsync == "on"


def test_cluster_needs_a_redis_url() -> None:
    """SIDECAR_REDIS_CLUSTER without REDIS_URL is refused: the embedded Valkey is one server."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_REDIS_CLUSTER": "1"})
    assert info.value.setting == "SIDECAR_REDIS_CLUSTER"


@pytest.mark.parametrize(
    "url",
    [
        "unix:///run/redis.sock",
        "redis+sentinel://s1:26379/mymaster",
        f"redis://:{REDIS_PASSWORD}@h:6379/3",
    ],
)
def test_cluster_needs_a_tcp_seed_on_database_0(url: str) -> None:
    """With SIDECAR_REDIS_CLUSTER, a unix, Sentinel or non-zero-database URL is refused."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": url, "SIDECAR_REDIS_CLUSTER": "true"})
    assert info.value.setting == "REDIS_URL"
    assert REDIS_PASSWORD not in str(info.value)


@pytest.mark.parametrize("url", ["rediss://h:6380", "rediss+sentinel://s1/mymaster"])
def test_ca_file_is_taken_with_a_tls_url(tmp_path: Path, url: str) -> None:
    """SIDECAR_REDIS_CA_FILE names an existing file and goes with a TLS URL."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings.from_env({"REDIS_URL": url, "SIDECAR_REDIS_CA_FILE": str(ca)})
    assert settings.redis_ca_file == ca


@pytest.mark.parametrize("url", [None, "redis://h:6379", "redis+sentinel://s1/mymaster"])
def test_ca_file_without_tls_is_refused(tmp_path: Path, url: str | None) -> None:
    """A CA file with a URL that does not use TLS is refused: the operator expects TLS."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    environ = {"SIDECAR_REDIS_CA_FILE": str(ca)}
    if url is not None:
        environ["REDIS_URL"] = url
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert info.value.setting == "SIDECAR_REDIS_CA_FILE"


def test_sentinel_password_goes_with_a_sentinel_url_and_stays_masked() -> None:
    """SIDECAR_REDIS_SENTINEL_PASSWORD is kept as a Secret; repr never shows it."""
    password = "sentinel-only-pw"
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis+sentinel://s1,s2/mymaster",
            "SIDECAR_REDIS_SENTINEL_PASSWORD": password,
        }
    )
    assert settings.redis_sentinel_password is not None
    assert settings.redis_sentinel_password.reveal() == password
    assert password not in repr(settings)


@pytest.mark.parametrize("url", [None, "redis://h:6379", "rediss://h:6380"])
def test_sentinel_password_without_sentinel_is_refused(url: str | None) -> None:
    """A sentinel password with a URL that names no sentinels is a mistake: say so."""
    environ = {"SIDECAR_REDIS_SENTINEL_PASSWORD": "sentinel-only-pw"}
    if url is not None:
        environ["REDIS_URL"] = url
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert info.value.setting == "SIDECAR_REDIS_SENTINEL_PASSWORD"
    assert "sentinel-only-pw" not in str(info.value)


def test_missing_ca_file_is_refused(tmp_path: Path) -> None:
    """SIDECAR_REDIS_CA_FILE that names no file raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {"REDIS_URL": "rediss://h:6380", "SIDECAR_REDIS_CA_FILE": str(tmp_path / "absent")}
        )
    assert info.value.setting == "SIDECAR_REDIS_CA_FILE"


# KEKs


@pytest.mark.parametrize("text", [KEY_HEX, KEY_HEX.upper(), KEY_B64URL, KEY_B64, f"  {KEY_HEX}\n"])
def test_kek_in_each_encoding(text: str) -> None:
    """SIDECAR_KEK accepts 64 hex, 43 base64url or 44 base64 characters for the same key."""
    settings = Settings.from_env({"SIDECAR_KEK": text})
    assert settings.kek == Kek(KEY)
    assert settings.kek is not None
    assert settings.kek.key == KEY
    assert settings.kek_configured is True


def test_kek_as_printed_by_encode_kek() -> None:
    """The spelling ``encode_kek`` prints is accepted as SIDECAR_KEK."""
    assert encode_kek(KEY) == KEY_B64URL
    assert Settings.from_env({"SIDECAR_KEK": encode_kek(KEY)}).kek == Kek(KEY)


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "", "\n\n"])
def test_kek_file_is_read(tmp_path: Path, suffix: str) -> None:
    """SIDECAR_KEK_FILE names a file whose content, less trailing newlines, is the KEK."""
    path = tmp_path / "kek"
    path.write_text(KEY_B64URL + suffix, encoding="utf-8", newline="")
    settings = Settings.from_env({"SIDECAR_KEK_FILE": str(path)})
    assert settings.kek == Kek(KEY)


def test_missing_kek_file_is_rejected(tmp_path: Path) -> None:
    """A SIDECAR_KEK_FILE that does not exist raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_KEK_FILE": str(tmp_path / "absent")})
    assert info.value.setting == "SIDECAR_KEK_FILE"


def test_non_utf8_kek_file_is_rejected(tmp_path: Path) -> None:
    """A SIDECAR_KEK_FILE holding raw bytes, not UTF-8 text, raises ConfigError naming it."""
    path = tmp_path / "kek"
    path.write_bytes(b"\xff" * 32)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_KEK_FILE": str(path)})
    assert info.value.setting == "SIDECAR_KEK_FILE"


def test_bad_kek_file_content_is_not_echoed(tmp_path: Path) -> None:
    """A SIDECAR_KEK_FILE with a malformed key raises ConfigError that does not repeat it."""
    content = KEY_HEX[:-1] + "g"
    path = tmp_path / "kek"
    path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_KEK_FILE": str(path)})
    assert info.value.setting == "SIDECAR_KEK_FILE"
    assert content not in str(info.value)
    assert content[:16] not in str(info.value)


def test_kek_and_kek_file_together_are_rejected(tmp_path: Path) -> None:
    """Setting both SIDECAR_KEK and SIDECAR_KEK_FILE raises ConfigError."""
    path = tmp_path / "kek"
    path.write_text(KEY_HEX, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_KEK": KEY_HEX, "SIDECAR_KEK_FILE": str(path)})
    assert info.value.setting == "SIDECAR_KEK"
    assert "SIDECAR_KEK_FILE" in str(info.value)
    assert KEY_HEX not in str(info.value)


BAD_KEKS = [
    pytest.param("not-a-key-at-all", id="short"),
    pytest.param(KEY_HEX[:-1], id="63-hex"),
    pytest.param(KEY_HEX + "0", id="65-hex"),
    pytest.param(KEY_HEX[:-1] + "z", id="64-not-hex"),
    pytest.param(KEY_B64URL[:-1] + "+", id="43-not-base64url"),
    pytest.param(KEY_B64URL[:-1] + "B", id="43-non-canonical"),
    pytest.param(KEY_B64.replace("=", "A"), id="44-no-padding"),
    pytest.param("0" * 64, id="all-zero"),
]


@pytest.mark.parametrize("text", BAD_KEKS)
def test_bad_kek_is_rejected_without_echo(text: str) -> None:
    """A malformed SIDECAR_KEK raises ConfigError naming it that does not repeat the value."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_KEK": text})
    assert info.value.setting == "SIDECAR_KEK"
    assert text not in str(info.value)
    assert text not in repr(info.value)


def test_previous_keks_are_parsed() -> None:
    """SIDECAR_KEK_PREVIOUS is a comma list of keys in any encoding, blanks and spaces ignored."""
    text = f" {KEY_HEX} ,{base64.b64encode(OTHER_KEY).decode()},, {encode_kek(THIRD_KEY)},"
    settings = Settings.from_env({"SIDECAR_KEK_PREVIOUS": text})
    assert settings.kek_previous == (Kek(KEY), Kek(OTHER_KEY), Kek(THIRD_KEY))
    assert settings.kek is None
    assert settings.kek_configured is True


@pytest.mark.parametrize("bad", BAD_KEKS)
def test_bad_previous_kek_is_rejected_without_echo(bad: str) -> None:
    """One malformed key in SIDECAR_KEK_PREVIOUS raises ConfigError repeating no key."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_KEK_PREVIOUS": f"{KEY_HEX},{bad}"})
    assert info.value.setting == "SIDECAR_KEK_PREVIOUS"
    assert bad not in str(info.value)
    assert KEY_HEX not in str(info.value)


# API keys file


def test_api_keys_file_must_exist(tmp_path: Path) -> None:
    """SIDECAR_API_KEYS_FILE is accepted when it names a file, and rejected otherwise."""
    path = tmp_path / "keys"
    path.write_text("", encoding="utf-8")
    assert Settings.from_env({"SIDECAR_API_KEYS_FILE": str(path)}).api_keys_file == path
    for absent in (tmp_path / "absent", tmp_path):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"SIDECAR_API_KEYS_FILE": str(absent)})
        assert info.value.setting == "SIDECAR_API_KEYS_FILE"


# atproto service auth


def test_service_auth_defaults() -> None:
    """Unset, service auth is off, with the public PLC directory and a 300 s cache."""
    settings = Settings.from_env({})
    assert settings.service_did is None
    assert settings.service_endpoint is None
    assert (settings.service_id, settings.service_type) == ("wisp_sidecar", "WispSidecar")
    assert settings.plc_url == "https://plc.directory"
    assert settings.did_web_allow_http_loopback is False
    assert settings.did_cache_ttl_s == 300
    assert settings.allowed_dids is None


def test_service_auth_settings_are_parsed() -> None:
    """Each service-auth variable is parsed into its typed setting."""
    settings = Settings.from_env(
        {
            "SIDECAR_SERVICE_DID": "did:web:sidecar.example.com",
            "SIDECAR_SERVICE_ENDPOINT": "https://sidecar.example.com/",
            "SIDECAR_SERVICE_ID": "wisp_sidecar_eu",
            "SIDECAR_SERVICE_TYPE": "WispSidecarEu",
            "SIDECAR_PLC_URL": "http://127.0.0.1:2582/",
            "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": "1",
            "SIDECAR_DID_CACHE_TTL_S": "60",
            "SIDECAR_ALLOWED_DIDS": " did:plc:abc , did:web:ops.example.com,did:plc:abc,",
        }
    )
    assert settings.service_did == "did:web:sidecar.example.com"
    assert settings.service_endpoint == "https://sidecar.example.com"
    assert (settings.service_id, settings.service_type) == ("wisp_sidecar_eu", "WispSidecarEu")
    assert settings.plc_url == "http://127.0.0.1:2582"
    assert settings.did_web_allow_http_loopback is True
    assert settings.did_cache_ttl_s == 60
    assert settings.allowed_dids == frozenset({"did:plc:abc", "did:web:ops.example.com"})


@pytest.mark.parametrize("did", ["sidecar.example.com", "did:web:", "did:web:x#svc", "did:web:a b"])
def test_bad_service_did_is_rejected(did: str) -> None:
    """A service DID that is not a DID (a fragment included) raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_SERVICE_DID": did})
    assert info.value.setting == "SIDECAR_SERVICE_DID"


@pytest.mark.parametrize(
    "url",
    [
        "plc.directory",
        "ftp://plc.directory",
        "https://",
        "https://plc.directory?x=1",
        "https://plc.directory#top",
        "https://user:pass@plc.directory",
        "https://plc.directory:99999",
        "https://plc.directory:port",
    ],
)
def test_bad_plc_url_is_rejected(url: str) -> None:
    """A PLC URL that is not a plain http(s) URL raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_PLC_URL": url})
    assert info.value.setting == "SIDECAR_PLC_URL"
    assert "pass" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "flag"),
    [("1", True), ("true", True), ("TRUE", True), (" 0 ", False), ("false", False)],
)
def test_loopback_flag_is_parsed(text: str, flag: bool) -> None:
    """The loopback flag takes 0, 1, true or false, in any case."""
    settings = Settings.from_env({"SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": text})
    assert settings.did_web_allow_http_loopback is flag


@pytest.mark.parametrize("text", ["yes", "on", "2", "-1", "enabled"])
def test_bad_loopback_flag_is_rejected(text: str) -> None:
    """Anything but 0, 1, true or false raises ConfigError naming the flag."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": text})
    assert info.value.setting == "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK"


@pytest.mark.parametrize(
    ("text", "ok"), [("1", True), ("86400", True), ("0", False), ("86401", False), ("5m", False)]
)
def test_did_cache_ttl_bounds(text: str, ok: bool) -> None:
    """The DID cache TTL is a whole number of seconds from 1 to 86400."""
    if ok:
        assert Settings.from_env({"SIDECAR_DID_CACHE_TTL_S": text}).did_cache_ttl_s == int(text)
    else:
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"SIDECAR_DID_CACHE_TTL_S": text})
        assert info.value.setting == "SIDECAR_DID_CACHE_TTL_S"


def test_allow_list_entry_that_is_no_did_is_rejected_without_echo() -> None:
    """An allow-list entry that is not a DID is named by position, never repeated."""
    pasted = "wsa_pasted-into-the-wrong-setting-000000000000"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_ALLOWED_DIDS": f"did:plc:abc,{pasted}"})
    assert info.value.setting == "SIDECAR_ALLOWED_DIDS"
    assert "entry 2" in str(info.value)
    assert pasted not in str(info.value)


def test_allow_list_from_toml(tmp_path: Path) -> None:
    """The allow-list may be a TOML list; an empty list is refused rather than guessed at."""
    listed = write_toml(tmp_path, 'allowed_dids = ["did:plc:abc", "did:web:x.example"]\n')
    assert Settings.from_env(listed).allowed_dids == frozenset({"did:plc:abc", "did:web:x.example"})
    empty = write_toml(tmp_path, "allowed_dids = []\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_env(empty)
    assert info.value.setting == "SIDECAR_ALLOWED_DIDS"


def test_loopback_flag_from_a_toml_boolean(tmp_path: Path) -> None:
    """A TOML boolean sets the loopback flag."""
    environ = write_toml(tmp_path, "did_web_allow_http_loopback = true\n")
    assert Settings.from_env(environ).did_web_allow_http_loopback is True


# The TOML file


def test_toml_file_is_read(tmp_path: Path) -> None:
    """Keys of the SIDECAR_CONFIG file are variable names in lower case without the prefix."""
    environ = write_toml(
        tmp_path,
        f"""
xrpc_port = 9000
sign_host = "127.0.0.2"
redis_url = "{REDIS_URL}"
log_level = "DEBUG"
kek = "{KEY_HEX}"
kek_previous = ["{encode_kek(OTHER_KEY)}", "{encode_kek(THIRD_KEY)}"]
redis_timeout_ms = 250
""",
    )
    settings = Settings.from_env(environ)
    assert settings.xrpc_port == 9000
    assert settings.sign_host == "127.0.0.2"
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == REDIS_URL
    assert settings.log_level == "debug"
    assert settings.kek == Kek(KEY)
    assert settings.kek_previous == (Kek(OTHER_KEY), Kek(THIRD_KEY))
    assert settings.redis_timeout_ms == 250
    assert settings.ops_port == 9090


def test_environment_wins_over_toml(tmp_path: Path) -> None:
    """A variable set in the environment overrides the same key in the TOML file."""
    environ = write_toml(tmp_path, 'xrpc_port = 9000\nredis_url = "redis://from-file"\n')
    environ |= {"SIDECAR_XRPC_PORT": "9001", "REDIS_URL": "redis://from-env"}
    settings = Settings.from_env(environ)
    assert settings.xrpc_port == 9001
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == "redis://from-env"


def test_bad_value_in_toml_names_the_variable(tmp_path: Path) -> None:
    """A bad value read from the TOML file raises ConfigError naming its variable."""
    environ = write_toml(tmp_path, "ops_port = 70000\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert info.value.setting == "SIDECAR_OPS_PORT"


@pytest.mark.parametrize(
    ("text", "variable"),
    [
        ("xrpc_port = 80.5\n", "SIDECAR_XRPC_PORT"),
        ("xrpc_port = [80]\n", "SIDECAR_XRPC_PORT"),
        ("log_level = { name = 'info' }\n", "SIDECAR_LOG_LEVEL"),
    ],
)
def test_wrong_toml_type_names_the_variable(tmp_path: Path, text: str, variable: str) -> None:
    """A TOML value that is neither a string, an integer nor a string list names its variable."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(write_toml(tmp_path, text))
    assert info.value.setting == variable


def test_toml_boolean_is_not_an_integer(tmp_path: Path) -> None:
    """A TOML boolean given for an integer setting raises ConfigError rather than becoming 1."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(write_toml(tmp_path, "xrpc_port = true\n"))
    assert info.value.setting == "SIDECAR_XRPC_PORT"


@pytest.mark.parametrize(
    "text",
    [
        "xrpc_portt = 9000\n",
        "sidecar_xrpc_port = 9000\n",
        "XRPC_PORT = 9000\n",
        "config = 'other.toml'\n",
        "[xrpc]\nport = 9000\n",
    ],
)
def test_unknown_toml_key_is_rejected(tmp_path: Path, text: str) -> None:
    """A TOML key that names no setting raises ConfigError naming SIDECAR_CONFIG."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(write_toml(tmp_path, text))
    assert info.value.setting == "SIDECAR_CONFIG"
    assert "unknown setting" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "xrpc_port = \n",
        "xrpc_port 9000\n",
        "xrpc_port = 1\nxrpc_port = 2\n",
        f'kek = "{KEY_HEX}\n',
    ],
)
def test_invalid_toml_is_rejected(tmp_path: Path, text: str) -> None:
    """A SIDECAR_CONFIG file that is not valid TOML raises ConfigError that holds no key."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(write_toml(tmp_path, text))
    assert info.value.setting == "SIDECAR_CONFIG"
    assert "not valid TOML" in str(info.value)
    assert KEY_HEX not in str(info.value)


def test_missing_toml_file_is_rejected(tmp_path: Path) -> None:
    """A SIDECAR_CONFIG that names no file raises ConfigError naming SIDECAR_CONFIG."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_CONFIG": str(tmp_path / "absent.toml")})
    assert info.value.setting == "SIDECAR_CONFIG"


def test_kek_file_in_environment_overrides_kek_in_toml(tmp_path: Path) -> None:
    """SIDECAR_KEK_FILE in the environment wins over a kek in the TOML file."""
    kek_path = tmp_path / "kek"
    kek_path.write_text(KEY_HEX, encoding="utf-8")
    environ = write_toml(tmp_path, f'kek = "{encode_kek(OTHER_KEY)}"\n')
    environ["SIDECAR_KEK_FILE"] = str(kek_path)
    settings = Settings.from_env(environ)
    assert settings.kek == parse_kek(KEY_HEX, setting="t")


# Masking


@pytest.mark.parametrize("encoding", ["hex", "b64url", "b64"])
def test_repr_hides_every_secret(tmp_path: Path, encoding: str) -> None:
    """Neither ``repr`` nor ``str`` of settings shows a KEK, the sign token or a Redis password."""
    kek_text = {"hex": KEY_HEX, "b64url": KEY_B64URL, "b64": KEY_B64}[encoding]
    settings = Settings.from_env(
        {
            "SIDECAR_KEK": kek_text,
            "SIDECAR_KEK_PREVIOUS": encode_kek(OTHER_KEY),
            "SIDECAR_SIGN_TOKEN": SIGN_TOKEN,
            "REDIS_URL": REDIS_URL,
        }
    )
    for text in (repr(settings), str(settings)):
        for leak in [*key_spellings(KEY), *key_spellings(OTHER_KEY), SIGN_TOKEN, REDIS_PASSWORD]:
            assert leak not in text
        # The kid is public and helps an operator see which key is loaded.
        assert Kek(KEY).kid in text


def test_secret_masks_itself() -> None:
    """A Secret shows a mask in ``repr``, ``str`` and f-strings, and ``reveal`` gives the value."""
    secret = Secret("s3cret-value")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert "s3cret-value" not in text
        assert "**********" in text
    assert secret.reveal() == "s3cret-value"


def test_secret_equality() -> None:
    """Secrets compare and hash by value, and never equal a plain string."""
    assert Secret("a") == Secret("a")
    assert hash(Secret("a")) == hash(Secret("a"))
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"


# Errors


def test_config_error_names_the_setting() -> None:
    """A ConfigError's text starts with the setting's name, and ``setting`` holds it."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_SIGN_PORT": "abc"})
    assert info.value.setting == "SIDECAR_SIGN_PORT"
    assert str(info.value).startswith("SIDECAR_SIGN_PORT: ")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SIDECAR_SERVICE_ENDPOINT": "https://sidecar.example.com"}, "SIDECAR_SERVICE_DID"),
        (
            {
                "SIDECAR_SERVICE_DID": "did:web:sidecar.example.com",
                "SIDECAR_SERVICE_ENDPOINT": "http://sidecar.example.com",
                "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": "1",
            },
            "must be https",
        ),
        (
            {
                "SIDECAR_SERVICE_DID": "did:web:localhost%3A8080",
                "SIDECAR_SERVICE_ENDPOINT": "http://localhost:8080",
            },
            "must be https",
        ),
        (
            {
                "SIDECAR_SERVICE_DID": "did:web:sidecar.example.com",
                "SIDECAR_SERVICE_ENDPOINT": "https://sidecar.example.com/xrpc",
            },
            "without a path",
        ),
    ],
)
def test_service_endpoint_needs_a_service_did_and_must_be_an_https_origin(
    environ: dict[str, str], message: str
) -> None:
    """An endpoint needs a service DID and is an https origin (http only on allowed loopback)."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert info.value.setting == "SIDECAR_SERVICE_ENDPOINT"
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("did", "endpoint"),
    [
        ("did:web:localhost%3A8080", "http://localhost:8080"),
        ("did:web:127.0.0.1%3A8080", "http://127.0.0.1:8080"),
    ],
)
def test_http_endpoint_is_allowed_on_loopback_for_tests(did: str, endpoint: str) -> None:
    """With SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK, a loopback endpoint may be plain http."""
    settings = Settings.from_env(
        {
            "SIDECAR_SERVICE_DID": did,
            "SIDECAR_SERVICE_ENDPOINT": endpoint,
            "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": "1",
        }
    )
    assert settings.service_endpoint == endpoint


@pytest.mark.parametrize("did", ["did:plc:abc", "did:web:sidecar.example.com"])
def test_a_service_did_needs_no_endpoint(did: str) -> None:
    """Direct service-JWT calls need no published document: a service DID alone is a setting."""
    assert Settings.from_env({"SIDECAR_SERVICE_DID": did}).service_endpoint is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SIDECAR_SERVICE_ID", "#wisp_sidecar"),
        ("SIDECAR_SERVICE_ID", "wisp sidecar"),
        ("SIDECAR_SERVICE_ID", "9lives"),
        ("SIDECAR_SERVICE_ID", "x" * 65),
        ("SIDECAR_SERVICE_TYPE", "Wisp\tSidecar"),
    ],
)
def test_bad_service_id_or_type_is_rejected(variable: str, value: str) -> None:
    """A service id outside its alphabet, or a type with control characters, names its setting."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.setting == variable


def test_trusted_proxies_are_cidrs() -> None:
    """SIDECAR_TRUSTED_PROXIES takes comma-separated CIDRs, IPv4 and IPv6 alike."""
    settings = Settings.from_env({"SIDECAR_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"})
    assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.0/8", "fd00::/8"]
    assert Settings.from_env({}).trusted_proxies == ()


@pytest.mark.parametrize("value", ["10.0.0.1/8", "10.0.0.0/33", "proxy.internal", ","])
def test_a_bad_trusted_proxy_is_refused_by_name(value: str) -> None:
    """A host address with a prefix, a bad prefix, a name or an empty list is refused,
    naming the setting and the entry's position, not its text."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_TRUSTED_PROXIES": value})
    assert info.value.setting == "SIDECAR_TRUSTED_PROXIES"
