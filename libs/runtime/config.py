"""One configuration surface for our processes: command-line flags with environment-variable fallbacks.

Every flag `--some-flag` of a service with prefix `RECOMMENDATIONS` falls back to the environment
variable `RECOMMENDATIONS_SOME_FLAG`, and `--help` names both. Invalid values are reported all at once
by `ConfigError`, before the process binds any port.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.runtime.event_loop import DEFAULT as DEFAULT_EVENT_LOOP
from libs.runtime.event_loop import EVENT_LOOPS
from libs.runtime.logs import FORMATS
from libs.runtime.supervisor import parse_processes
from libs.runtime.tls import TlsConfigError, TlsFiles

_TRUE = {"1", "true", "yes", "on"}


class ConfigError(ValueError):
    """One or more configuration values are invalid; the message lists each."""


def user_path(text: str) -> Path:
    """A path as the user meant it: `bazel run` starts programs in their runfiles, so a relative path
    is taken from where the user ran the command (BUILD_WORKING_DIRECTORY)."""
    path = Path(text)
    if path.is_absolute():
        return path
    return Path(os.environ.get("BUILD_WORKING_DIRECTORY", ".")) / path


def env_name(prefix: str, flag: str) -> str:
    """`--tls-cert` of `MARKETPLACE` → MARKETPLACE_TLS_CERT; a flag already named after the prefix
    keeps its name: `--recommendations-addr` of `RECOMMENDATIONS` → RECOMMENDATIONS_ADDR."""
    name = flag.lstrip("-").upper().replace("-", "_")
    return name if name.startswith(f"{prefix}_") else f"{prefix}_{name}"


def add_flag(parser: argparse.ArgumentParser, prefix: str, flag: str, default: Any, help: str, **kwargs: Any) -> None:
    """Adds `flag` whose default comes from its environment variable, then `default`."""
    env = env_name(prefix, flag)
    if kwargs.get("action") in ("store_true", argparse.BooleanOptionalAction):
        value: Any = os.environ.get(env, str(default)).strip().lower() in _TRUE
    else:
        value = os.environ.get(env, default)  # a string from the environment is parsed by `type`
    # argparse %-formats help texts: a literal % (in the text or a default) must reach it as %%.
    text = f"{help} (env {env}; default: {default})".replace("%", "%%")
    parser.add_argument(flag, default=value, help=text, **kwargs)


def flag_environment(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every environment variable `parser` reads → the argument it sets (for deployment checks)."""
    found = {}
    for action in parser._actions:
        match = re.search(r"\(env ([A-Z0-9_]+);", action.help or "")
        if match:
            found[match.group(1)] = action.dest
    return found


def add_tls_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    add_flag(parser, prefix, "--tls-cert", "", "PEM certificate of this service")
    add_flag(parser, prefix, "--tls-key", "", "PEM private key of this service")
    add_flag(parser, prefix, "--tls-ca", "", "PEM CA certificate that signs trusted peers")
    add_flag(
        parser, prefix, "--insecure", False, "use plaintext instead of mTLS (local work only)", action="store_true"
    )


def add_callee_flags(parser: argparse.ArgumentParser, callees: Mapping[str, int]) -> None:
    """How this process reaches each gRPC service it calls (name → default port): `--<callee>-addr` and
    `--<callee>-tls-name`, with the callee's own prefix (ORDER_HISTORY_ADDR, ORDER_HISTORY_TLS_NAME), the
    names //:dev and the Kubernetes manifests set for every service a process calls (services/services.bzl)."""
    for callee, default_port in callees.items():
        prefix = callee.replace("-", "_").upper()
        add_flag(
            parser,
            prefix,
            f"--{callee}-addr",
            f"localhost:{default_port}",
            "gRPC target: host:port, dns:///name:port (balanced over every address) or ip:port,ip:port",
        )
        add_flag(parser, prefix, f"--{callee}-tls-name", callee, f"name the {callee} certificate must carry")


def add_log_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    add_flag(parser, prefix, "--log-format", "json", "log lines as 'json' objects or 'text'", choices=FORMATS)


def tls_files(args: argparse.Namespace, problems: list[str]) -> TlsFiles | None:
    """The mTLS files, or None with --insecure; appends to `problems` what is wrong."""
    given = {name: getattr(args, name) for name in ("tls_cert", "tls_key", "tls_ca")}
    if args.insecure:
        if any(given.values()):
            problems.append("--insecure and --tls-* exclude each other")
        return None
    missing = [f"--{name.replace('_', '-')}" for name, value in given.items() if not value]
    if missing:
        problems.append(f"mTLS needs {', '.join(missing)} (or --insecure for plaintext local work)")
        return None
    files = TlsFiles(user_path(args.tls_cert), user_path(args.tls_key), user_path(args.tls_ca))
    try:
        files.read()
    except TlsConfigError as error:
        problems.append(str(error))
        return None
    return files


def parse_allow(entries: Sequence[str], problems: list[str]) -> dict[str, frozenset[str]]:
    """`Method=id1,id2` entries (also ';'-separated in one string) → {method: identities}."""
    rules: dict[str, frozenset[str]] = {}
    for entry in (part.strip() for text in entries for part in text.split(";")):
        if not entry:
            continue
        method, sep, identities = entry.partition("=")
        names = frozenset(name.strip() for name in identities.split(",") if name.strip())
        if not sep or not method.strip():
            problems.append(f"--allow {entry!r} must look like Method=identity[,identity]")
            continue
        rules[method.strip()] = names
    return rules


@dataclass(frozen=True)
class ServerConfig:
    host: str = "[::]"
    port: int = 50051
    health_port: int = 0
    tls: TlsFiles | None = None
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 1000
    max_pending_calls: int = 300
    keepalive_time: float = 30.0
    keepalive_timeout: float = 3.0
    max_connection_idle: float = 300.0
    max_connection_age: float = 600.0
    max_connection_age_grace: float = 30.0
    max_streams_per_connection: int = 200
    handshake_timeout: float = 10.0
    settings_timeout: float = 2.0
    max_health_watches: int = 100
    drain_seconds: float = 5.0
    shutdown_grace: float = 10.0
    blocking_workers: int = 4
    metrics_port: int = 0
    access_log_interval: float = 0.05
    processes: int = 1
    event_loop: str = DEFAULT_EVENT_LOOP
    allow: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def add_server_flags(parser: argparse.ArgumentParser, prefix: str, default_port: int) -> None:
    """The flags every gRPC server of ours takes; read them back with `server_config`."""
    defaults = ServerConfig()
    add_flag(parser, prefix, "--host", "[::]", "address to listen on")
    add_flag(parser, prefix, "--port", default_port, "gRPC port; 0 picks a free one", type=int)
    add_flag(
        parser,
        prefix,
        "--health-port",
        0,
        "extra plaintext port serving only grpc.health.v1 (for probes); 0 = off",
        type=int,
    )
    add_tls_flags(parser, prefix)
    add_flag(parser, prefix, "--max-message-bytes", defaults.max_message_bytes, "largest message in or out", type=int)
    add_flag(
        parser,
        prefix,
        "--max-concurrent-rpcs",
        defaults.max_concurrent_rpcs,
        "calls in progress in this process; more are shed with RESOURCE_EXHAUSTED and a retry delay (0 = no limit)",
        type=int,
    )
    add_flag(
        parser,
        prefix,
        "--max-pending-calls",
        defaults.max_pending_calls,
        "calls waiting to be picked up before gRPC starts refusing new ones (RESOURCE_EXHAUSTED; all at twice this)",
        type=int,
    )
    add_flag(parser, prefix, "--keepalive-time", defaults.keepalive_time, "seconds between keepalive pings", type=float)
    add_flag(
        parser,
        prefix,
        "--keepalive-timeout",
        defaults.keepalive_timeout,
        "seconds to wait for a ping ack; also how long a client that floods pings and reads nothing is kept",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--max-connection-idle",
        defaults.max_connection_idle,
        "seconds a connection without calls stays open",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--max-connection-age",
        defaults.max_connection_age,
        "seconds (±10 %) before a connection is asked to go, so clients rebalance over new replicas",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--max-connection-age-grace",
        defaults.max_connection_age_grace,
        "then seconds its calls get before it is closed (bounds calls that never finish)",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--max-streams-per-connection",
        defaults.max_streams_per_connection,
        "calls open at once on one connection; a client queues the rest",
        type=int,
    )
    add_flag(
        parser,
        prefix,
        "--handshake-timeout",
        defaults.handshake_timeout,
        "seconds a new connection has to complete TLS and HTTP/2 setup",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--settings-timeout",
        defaults.settings_timeout,
        "seconds a client has to acknowledge our HTTP/2 settings before it is disconnected "
        "(until it does, gRPC applies none of our metadata limits)",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--max-health-watches",
        defaults.max_health_watches,
        "grpc.health.v1 Watch streams open at once; more get RESOURCE_EXHAUSTED",
        type=int,
    )
    add_flag(
        parser,
        prefix,
        "--drain-seconds",
        defaults.drain_seconds,
        "on SIGTERM, seconds to keep serving while health says NOT_SERVING",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--shutdown-grace",
        defaults.shutdown_grace,
        "then seconds in-flight calls get to finish",
        type=float,
    )
    add_flag(
        parser,
        prefix,
        "--blocking-workers",
        defaults.blocking_workers,
        "threads for blocking work (SQLite, CPU)",
        type=int,
    )
    add_flag(parser, prefix, "--metrics-port", 0, "HTTP port serving Prometheus /metrics; 0 = off", type=int)
    add_flag(
        parser,
        prefix,
        "--processes",
        "1",
        "processes serving the same ports (SO_REUSEPORT), one core each; 'auto' = the CPUs this process "
        "may use, cgroup quota included",
    )
    add_flag(
        parser,
        prefix,
        "--event-loop",
        defaults.event_loop,
        "the event loop the server runs on",
        choices=EVENT_LOOPS,
    )
    add_flag(
        parser,
        prefix,
        "--access-log-interval",
        defaults.access_log_interval,
        "seconds between writes of the batched access log (longer: less CPU, later lines)",
        type=float,
    )
    add_log_flags(parser, prefix)
    allow_env = env_name(prefix, "--allow")
    parser.add_argument(
        "--allow",
        action="append",
        default=[os.environ[allow_env]] if os.environ.get(allow_env) else [],
        help="who may call a method, replacing the service's default rule: 'Method=identity[,identity]'; "
        f"repeatable, or ';'-separated (env {allow_env}; default: the service's rules)",
    )


def server_config(args: argparse.Namespace) -> ServerConfig:
    """Validates the parsed flags; raises ConfigError listing every problem."""
    problems: list[str] = []

    def check(name: str, ok: Callable[[Any], bool], rule: str) -> None:
        value = getattr(args, name)
        if not ok(value):
            problems.append(f"--{name.replace('_', '-')} {rule}, got {value}")

    check("port", lambda v: 0 <= v <= 65535, "must be between 0 and 65535")
    check("health_port", lambda v: 0 <= v <= 65535, "must be between 0 and 65535")
    check("metrics_port", lambda v: 0 <= v <= 65535, "must be between 0 and 65535")
    check("max_message_bytes", lambda v: 1024 <= v <= 2**31 - 1, "must be between 1024 and 2147483647")
    check("max_concurrent_rpcs", lambda v: v >= 0, "must be 0 or more")
    check("max_pending_calls", lambda v: 1 <= v <= 100_000, "must be between 1 and 100000")
    check("keepalive_time", lambda v: v >= 1, "must be at least 1 second")
    check("keepalive_timeout", lambda v: v > 0, "must be positive")
    for name in ("max_connection_idle", "max_connection_age", "handshake_timeout", "settings_timeout"):
        check(name, lambda v: 0.1 <= v <= 86400, "must be from 0.1 to 86400 seconds")
    check("max_connection_age_grace", lambda v: 0 <= v <= 3600, "must be from 0 to 3600 seconds")
    check("max_streams_per_connection", lambda v: 1 <= v <= 10000, "must be between 1 and 10000")
    check("max_health_watches", lambda v: 1 <= v <= 10000, "must be between 1 and 10000")
    check("drain_seconds", lambda v: v >= 0, "must be 0 or more")
    check("shutdown_grace", lambda v: v >= 0, "must be 0 or more")
    check("blocking_workers", lambda v: 1 <= v <= 256, "must be between 1 and 256")
    check("access_log_interval", lambda v: 0 < v <= 60, "must be more than 0 and at most 60 seconds")
    check("event_loop", lambda v: v in EVENT_LOOPS, f"must be one of {', '.join(EVENT_LOOPS)}")
    extra_ports = [port for port in (args.health_port, args.metrics_port) if port]
    if len(set(extra_ports)) != len(extra_ports) or args.port in extra_ports:
        problems.append("--port, --health-port and --metrics-port must differ")
    tls = tls_files(args, problems)
    allow = parse_allow(args.allow, problems)
    processes = 1
    try:
        processes = parse_processes(str(args.processes))
    except ValueError as error:
        problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    return ServerConfig(
        host=args.host,
        port=args.port,
        health_port=args.health_port,
        tls=tls,
        max_message_bytes=args.max_message_bytes,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_pending_calls=args.max_pending_calls,
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
        max_connection_idle=args.max_connection_idle,
        max_connection_age=args.max_connection_age,
        max_connection_age_grace=args.max_connection_age_grace,
        max_streams_per_connection=args.max_streams_per_connection,
        handshake_timeout=args.handshake_timeout,
        settings_timeout=args.settings_timeout,
        max_health_watches=args.max_health_watches,
        drain_seconds=args.drain_seconds,
        shutdown_grace=args.shutdown_grace,
        blocking_workers=args.blocking_workers,
        metrics_port=args.metrics_port,
        access_log_interval=args.access_log_interval,
        processes=processes,
        event_loop=args.event_loop,
        allow=allow,
    )
