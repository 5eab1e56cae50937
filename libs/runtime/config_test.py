"""The configuration surface: flag names, environment fallbacks, and validation messages."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.runtime.config import (
    ConfigError,
    ProcessConfig,
    ServerConfig,
    add_config_flags,
    flag_environment,
    read_config,
    user_path,
)
from libs.runtime.settings import add_settings, between, env_name, read_settings, setting
from libs.runtime.web import HttpConfig


@pytest.mark.parametrize(
    ("prefix", "flag", "env"),
    [
        ("SHOP", "--tls-cert", "SHOP_TLS_CERT"),
        ("ORDERS", "--port", "ORDERS_PORT"),
        ("ORDERS", "--orders-addr", "ORDERS_ADDR"),
    ],
)
def test_env_names(prefix: str, flag: str, env: str) -> None:
    assert env_name(prefix, flag) == env


def test_flags_fall_back_to_the_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_ADDR", "dns:///orders:50051")
    monkeypatch.setenv("ORDERS_TIMEOUT", "0.5")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, ProcessConfig, "SHOP", callees={"orders": 50051})
    args = parser.parse_args([])
    assert (args.orders_addr, args.orders_timeout) == ("dns:///orders:50051", 0.5)
    assert parser.parse_args(["--orders-timeout", "0.2"]).orders_timeout == 0.2
    assert "env ORDERS_ADDR" in " ".join(parser.format_help().split())
    config = read_config(ProcessConfig, parser.parse_args(["--insecure"]), ["orders"])
    assert config.callees["orders"].address == "dns:///orders:50051"
    assert config.callees["orders"].timeout == 0.5


def test_boolean_flags_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_INSECURE", "true")
    monkeypatch.setenv("ECHO_ACCESS_LOG", "off")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, HttpConfig, "ECHO", 0)
    args = parser.parse_args([])
    assert (args.insecure, args.access_log) == (True, False)
    assert parser.parse_args(["--access-log"]).access_log is True


def parse(*argv: str, cls: type[ProcessConfig] = ServerConfig) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls, "ECHO", 0, {"orders": 50060})
    return parser.parse_args(list(argv))


def test_every_problem_is_reported_at_once() -> None:
    args = parse(
        "--port", "-1", "--keepalive-time", "0", "--blocking-workers", "0", "--allow", "nonsense",
        "--processes", "many", "--orders-addr", " ", "--orders-timeout", "0",
    )  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        read_config(ServerConfig, args, ["orders"])
    message = str(raised.value)
    for expected in (
        "--port must be between 0 and 65535, got -1",
        "--keepalive-time must be at least 1 second, got 0.0",
        "--blocking-workers must be between 1 and 256, got 0",
        "mTLS needs --tls-cert, --tls-key, --tls-ca (or --insecure for plaintext local work)",
        "--allow 'nonsense' must look like Method=identity[,identity]",
        "--processes must be 'auto' or a number, got 'many'",
        "--orders-addr: empty gRPC target",
        "--orders-timeout must be positive, got 0.0",
    ):
        assert expected in message


def test_a_value_from_the_environment_is_checked_like_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_EVENT_LOOP", "trio")  # argparse checks `choices` of flags, not of defaults
    monkeypatch.setenv("ECHO_MAX_HEADERS", "2")
    with pytest.raises(ConfigError) as raised:
        read_config(HttpConfig, parse("--insecure", cls=HttpConfig))
    assert "--event-loop must be one of uvloop, asyncio, got trio" in str(raised.value)
    assert "--max-headers must be between 8 and 1000, got 2" in str(raised.value)


def test_insecure_excludes_tls_files_and_ports_must_differ() -> None:
    with pytest.raises(ConfigError) as raised:
        read_config(
            ServerConfig, parse("--insecure", "--tls-cert", "x.pem", "--port", "9000", "--metrics-port", "9000")
        )
    assert "--insecure and --tls-* exclude each other" in str(raised.value)
    assert "--port, --health-port and --metrics-port must differ" in str(raised.value)


def test_allow_rules_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = read_config(ServerConfig, parse("--insecure", "--allow", "Place=shop, admin;PlaceEach=*"))
    assert config.allow == {"Place": frozenset({"shop", "admin"}), "PlaceEach": frozenset({"*"})}
    monkeypatch.setenv("ECHO_ALLOW", "Place=admin")
    assert read_config(ServerConfig, parse("--insecure")).allow == {"Place": frozenset({"admin"})}


def test_a_setting_is_one_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flag, variable, help, default, check and the dataclass value all come from one field."""

    @dataclass(frozen=True)
    class Shelf:
        shelf_size: int = setting(12, "books per shelf", check=between(1, 100))

    parser = argparse.ArgumentParser()
    add_settings(parser, Shelf, "LIBRARY")
    assert "books per shelf (env LIBRARY_SHELF_SIZE; default: 12)" in " ".join(parser.format_help().split())
    assert read_settings(Shelf, parser.parse_args([])) == Shelf(12)
    assert read_settings(Shelf, parser.parse_args(["--shelf-size", "30"])).shelf_size == 30
    monkeypatch.setenv("LIBRARY_SHELF_SIZE", "0")
    parser = argparse.ArgumentParser()
    add_settings(parser, Shelf, "LIBRARY")
    with pytest.raises(ConfigError, match="--shelf-size must be between 1 and 100, got 0"):
        read_settings(Shelf, parser.parse_args([]))


def test_relative_paths_are_taken_from_where_bazel_run_was_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", "/home/me/project")
    assert user_path("certs/ca.pem") == Path("/home/me/project/certs/ca.pem")
    assert user_path("/etc/ssl/ca.pem") == Path("/etc/ssl/ca.pem")
    monkeypatch.delenv("BUILD_WORKING_DIRECTORY")
    assert user_path("certs/ca.pem") == Path("certs/ca.pem")


def test_flag_environment_lists_every_variable_a_parser_reads() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, ServerConfig, "ORDERS", 50052)
    found = flag_environment(parser)
    assert found["ORDERS_PORT"] == "port"
    assert found["ORDERS_HEALTH_PORT"] == "health_port"
    assert found["ORDERS_TLS_CERT"] == "tls_cert"
    assert found["ORDERS_ALLOW"] == "allow"
    assert all(name.startswith("ORDERS_") for name in found)
