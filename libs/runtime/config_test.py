"""The configuration surface: flag names, environment fallbacks, and validation messages."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from libs.runtime.config import (
    ConfigError,
    add_flag,
    add_server_flags,
    env_name,
    flag_environment,
    server_config,
    user_path,
)


@pytest.mark.parametrize(
    ("prefix", "flag", "env"),
    [
        ("MARKETPLACE", "--tls-cert", "MARKETPLACE_TLS_CERT"),
        ("RECOMMENDATIONS", "--port", "RECOMMENDATIONS_PORT"),
        ("RECOMMENDATIONS", "--recommendations-addr", "RECOMMENDATIONS_ADDR"),
    ],
)
def test_env_names(prefix: str, flag: str, env: str) -> None:
    assert env_name(prefix, flag) == env


def test_flags_fall_back_to_the_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOMMENDATIONS_ADDR", "dns:///recommendations:50051")
    monkeypatch.setenv("RECOMMENDATIONS_TIMEOUT", "0.5")
    parser = argparse.ArgumentParser()
    add_flag(parser, "RECOMMENDATIONS", "--recommendations-addr", "localhost:50051", "target")
    add_flag(parser, "RECOMMENDATIONS", "--recommendations-timeout", 0.3, "seconds", type=float)
    args = parser.parse_args([])
    assert (args.recommendations_addr, args.recommendations_timeout) == ("dns:///recommendations:50051", 0.5)
    assert parser.parse_args(["--recommendations-timeout", "0.2"]).recommendations_timeout == 0.2
    assert "env RECOMMENDATIONS_ADDR" in parser.format_help()


def test_boolean_flags_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_INSECURE", "true")
    parser = argparse.ArgumentParser()
    add_server_flags(parser, "ECHO", 0)
    assert parser.parse_args([]).insecure is True


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_server_flags(parser, "ECHO", 0)
    return parser.parse_args(list(argv))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    args = parse("--port", "-1", "--keepalive-time", "0", "--blocking-workers", "0", "--allow", "nonsense")
    with pytest.raises(ConfigError) as raised:
        server_config(args)
    message = str(raised.value)
    for expected in (
        "--port must be between 0 and 65535, got -1",
        "--keepalive-time must be at least 1 second, got 0.0",
        "--blocking-workers must be between 1 and 256, got 0",
        "mTLS needs --tls-cert, --tls-key, --tls-ca (or --insecure for plaintext local work)",
        "--allow 'nonsense' must look like Method=identity[,identity]",
    ):
        assert expected in message


def test_insecure_excludes_tls_files_and_ports_must_differ() -> None:
    with pytest.raises(ConfigError) as raised:
        server_config(parse("--insecure", "--tls-cert", "x.pem", "--port", "9000", "--metrics-port", "9000"))
    assert "--insecure and --tls-* exclude each other" in str(raised.value)
    assert "--port, --health-port and --metrics-port must differ" in str(raised.value)


def test_allow_rules_are_parsed() -> None:
    config = server_config(parse("--insecure", "--allow", "Recommend=marketplace, admin;RecommendEach=*"))
    assert config.allow == {"Recommend": frozenset({"marketplace", "admin"}), "RecommendEach": frozenset({"*"})}


def test_relative_paths_are_taken_from_where_bazel_run_was_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", "/home/me/project")
    assert user_path("certs/ca.pem") == Path("/home/me/project/certs/ca.pem")
    assert user_path("/etc/ssl/ca.pem") == Path("/etc/ssl/ca.pem")
    monkeypatch.delenv("BUILD_WORKING_DIRECTORY")
    assert user_path("certs/ca.pem") == Path("certs/ca.pem")


def test_flag_environment_lists_every_variable_a_parser_reads() -> None:
    parser = argparse.ArgumentParser()
    add_server_flags(parser, "ORDERS", 50052)
    found = flag_environment(parser)
    assert found["ORDERS_PORT"] == "port"
    assert found["ORDERS_HEALTH_PORT"] == "health_port"
    assert found["ORDERS_TLS_CERT"] == "tls_cert"
    assert found["ORDERS_ALLOW"] == "allow"
    assert all(name.startswith("ORDERS_") for name in found)
