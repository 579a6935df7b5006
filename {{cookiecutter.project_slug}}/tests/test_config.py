"""Configuration comes from the environment, with safe defaults."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

from {{ cookiecutter.package_name }}.config import Config, ConfigError


def test_defaults_listen_on_every_interface_on_port_8000() -> None:
    config = Config.from_environ({})
    assert config.host is None  # every IPv4 and IPv6 interface
    assert config.port == 8000
    assert config.log_level == "INFO"
    assert config.shutdown_timeout == 20


def test_values_are_read_from_the_environment() -> None:
    environ = {"HOST": "::1", "PORT": "10000", "LOG_LEVEL": "debug"}
    config = Config.from_environ({**environ, "SHUTDOWN_TIMEOUT": "2.5"})
    assert (config.host, config.port, config.log_level) == ("::1", 10000, "DEBUG")
    assert config.shutdown_timeout == 2.5


@pytest.mark.skipif(find_spec("uvloop") is None, reason="uvloop is not installed")
def test_the_event_loop_is_uvloop_where_installed_and_compression_off() -> None:
    config = Config.from_environ({})
    assert (config.event_loop, config.compression) == ("uvloop", "off")


@pytest.mark.parametrize(
    ("environ", "event_loop", "compression"),
    [
        ({"EVENT_LOOP": "asyncio"}, "asyncio", "off"),
        ({"EVENT_LOOP": "AsyncIO", "COMPRESSION": "Deflate"}, "asyncio", "deflate"),
        ({"COMPRESSION": "off", "EVENT_LOOP": " asyncio "}, "asyncio", "off"),
    ],
)
def test_event_loop_and_compression_are_read_from_the_environment(
    environ: dict[str, str], event_loop: str, compression: str
) -> None:
    config = Config.from_environ(environ)
    assert (config.event_loop, config.compression) == (event_loop, compression)


def test_shutdown_timeout_stays_below_herokus_30_second_grace_period() -> None:
    assert Config.from_environ({}).shutdown_timeout < 30


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "0"),
        ("PORT", "8000.5"),
        ("SHUTDOWN_TIMEOUT", "0"),
        ("SHUTDOWN_TIMEOUT", "inf"),
        ("EVENT_LOOP", "trio"),
        ("COMPRESSION", "gzip"),
        ("COMPRESSION", "on"),
    ],
)
def test_out_of_range_values_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Config.from_environ({variable: value})


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MAX_MESSAGE_SIZE": "2000000"}, ("MAX_MESSAGE_SIZE", "MAX_SEND_BUFFER")),
        (
            {"MAX_MESSAGE_SIZE": "65536", "MAX_SEND_BUFFER": "65535"},
            ("MAX_MESSAGE_SIZE", "MAX_SEND_BUFFER"),
        ),
        ({"MAX_TEXT_LENGTH": "70000"}, ("MAX_TEXT_LENGTH", "MAX_MESSAGE_SIZE")),
        (
            {"MAX_SEND_BUFFER": "20000", "MAX_MESSAGE_SIZE": "20000"},
            ("MAX_TEXT_LENGTH", "MAX_SEND_BUFFER"),
        ),
    ],
    ids=[
        "message larger than the default send buffer",
        "message one byte larger than the send buffer",
        "text longer than a message",
        "largest frame relayed beyond the send buffer",
    ],
)
def test_contradictory_settings_are_refused_naming_both(
    environ: dict[str, str], named: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_environ(environ)
    message = str(refused.value)
    assert all(variable in message for variable in named)


def test_the_largest_message_may_equal_the_send_buffer() -> None:
    config = Config.from_environ({"MAX_MESSAGE_SIZE": "1048576"})
    assert config.max_message_size == config.max_send_buffer


def test_without_history_the_replay_budget_does_not_apply() -> None:
    environ = {"MAX_SEND_BUFFER": "30000", "MAX_MESSAGE_SIZE": "30000"}
    config = Config.from_environ({**environ, "HISTORY_SIZE": "0"})
    assert config.max_send_buffer == 30000


def test_log_format_is_text_unless_told_json() -> None:
    assert Config.from_environ({}).log_format == "text"
    assert Config.from_environ({"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT='xml' must be one of text, json"):
        Config.from_environ({"LOG_FORMAT": "xml"})
