"""What every process of ours is configured with, declared once (libs/runtime/settings.py).

`ProcessConfig` is what any serving process takes (address, processes, event loop, logs, mTLS and how to
reach each service it calls); `ServerConfig` adds gRPC's limits, libs/runtime/web.py's `HttpConfig` those
of HTTP. `add_config_flags` makes their flags, each with its environment variable (`--some-flag` of
prefix ORDER_HISTORY → ORDER_HISTORY_SOME_FLAG), and `read_config` checks them all at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from libs.runtime.event_loop import DEFAULT as DEFAULT_EVENT_LOOP
from libs.runtime.event_loop import EVENT_LOOPS
from libs.runtime.logs import FORMATS, configure_logging
from libs.runtime.settings import (
    PORT,
    ConfigError,
    above,
    add_flag,
    add_settings,
    at_least,
    between,
    read_settings,
    setting,
)
from libs.runtime.supervisor import parse_processes
from libs.runtime.tls import TlsConfigError, TlsFiles


def user_path(text: str) -> Path:
    """A path as the user meant it: `bazel run` starts programs in their runfiles, so a relative path
    is taken from where the user ran the command (BUILD_WORKING_DIRECTORY)."""
    path = Path(text)
    if path.is_absolute():
        return path
    return Path(os.environ.get("BUILD_WORKING_DIRECTORY", ".")) / path


def flag_environment(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every environment variable `parser` reads → the argument it sets (for deployment checks)."""
    found = {}
    for action in parser._actions:
        match = re.search(r"\(env ([A-Z0-9_]+);", action.help or "")
        if match:
            found[match.group(1)] = action.dest
    return found


@dataclass(frozen=True)
class TlsSettings:
    """The mTLS files every process presents and checks its peers with."""

    tls_cert: str = setting("", "PEM certificate of this service")
    tls_key: str = setting("", "PEM private key of this service")
    tls_ca: str = setting("", "PEM CA certificate that signs trusted peers")
    insecure: bool = setting(False, "use plaintext instead of mTLS (local work only)")

    def files(self, problems: list[str]) -> TlsFiles | None:
        """The files, or None with --insecure; appends to `problems` what is wrong."""
        given = {"tls_cert": self.tls_cert, "tls_key": self.tls_key, "tls_ca": self.tls_ca}
        if self.insecure:
            if any(given.values()):
                problems.append("--insecure and --tls-* exclude each other")
            return None
        missing = [f"--{name.replace('_', '-')}" for name, value in given.items() if not value]
        if missing:
            problems.append(f"mTLS needs {', '.join(missing)} (or --insecure for plaintext local work)")
            return None
        files = TlsFiles(user_path(self.tls_cert), user_path(self.tls_key), user_path(self.tls_ca))
        try:
            files.read()
        except TlsConfigError as error:
            problems.append(str(error))
            return None
        return files


@dataclass(frozen=True)
class Callee:
    """How this process reaches one gRPC service it calls."""

    address: str
    tls_name: str
    timeout: float


DEFAULT_CALL_TIMEOUT = 0.3


def add_callee_flags(parser: argparse.ArgumentParser, callees: Mapping[str, int]) -> None:
    """How this process reaches each gRPC service it calls (name → default port): `--<callee>-addr`,
    `--<callee>-tls-name` and `--<callee>-timeout`, with the callee's own prefix (ORDER_HISTORY_ADDR, ...),
    the names //:dev and the Kubernetes manifests set for every service a process calls (services/services.bzl)."""
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
        add_flag(
            parser,
            prefix,
            f"--{callee}-timeout",
            DEFAULT_CALL_TIMEOUT,
            f"seconds each request may spend on {callee} (a deadline its callers' own can only shorten)",
            type=float,
        )


def read_callees(args: argparse.Namespace, callees: Sequence[str], problems: list[str]) -> dict[str, Callee]:
    from libs.runtime.channel import normalize_target  # grpc only where a process calls one

    found = {}
    for callee in callees:
        dest = callee.replace("-", "_")
        address, timeout = getattr(args, f"{dest}_addr"), getattr(args, f"{dest}_timeout")
        try:
            normalize_target(address)
        except ValueError as error:
            problems.append(f"--{callee}-addr: {error}")
        if not timeout > 0:
            problems.append(f"--{callee}-timeout must be positive, got {timeout}")
        found[callee] = Callee(address, getattr(args, f"{dest}_tls_name"), timeout)
    return found


PROCESSES_HELP = (
    "processes serving the same ports (SO_REUSEPORT), one core each; 'auto' = the CPUs this process may use, "
    "cgroup quota included"
)


@dataclass(frozen=True)
class ProcessConfig:
    """What every serving process takes, gRPC or HTTP. `tls` and `callees` come from their own flags."""

    host: str = setting("0.0.0.0", "address to listen on")
    port: int = setting(8080, "port; 0 picks a free one", check=PORT)
    processes: int = setting(1, PROCESSES_HELP, parse=parse_processes)
    event_loop: str = setting(DEFAULT_EVENT_LOOP, "the event loop the server runs on", choices=EVENT_LOOPS)
    log_format: str = setting("json", "log lines as 'json' objects or 'text'", choices=FORMATS)
    drain_seconds: float = setting(
        5.0, "on SIGTERM, seconds to keep serving while the readiness probe says no", check=at_least(0)
    )
    shutdown_grace: float = setting(10.0, "then seconds in-flight requests get to finish", check=at_least(0))
    access_log_interval: float = setting(
        0.05,
        "seconds between writes of the batched access log (longer: less CPU, later lines)",
        check=above(0, 60, "seconds"),
    )
    tls: TlsFiles | None = None
    callees: Mapping[str, Callee] = field(default_factory=lambda: MappingProxyType({}))

    def problems(self) -> list[str]:
        """What is wrong between settings that are each right on their own."""
        return []


def parse_allow(text: str) -> dict[str, frozenset[str]]:
    """`Method=id1,id2` entries, ';'-separated → {method: identities}."""
    rules: dict[str, frozenset[str]] = {}
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        method, sep, identities = entry.partition("=")
        if not sep or not method.strip():
            raise ValueError(f"{entry!r} must look like Method=identity[,identity]")
        rules[method.strip()] = frozenset(name.strip() for name in identities.split(",") if name.strip())
    return rules


SECONDS = between(0.1, 86400, "seconds")


@dataclass(frozen=True)
class ServerConfig(ProcessConfig):
    """A gRPC server's settings (libs/runtime/server.py); mostly gRPC's own limits (`server_options`)."""

    host: str = setting("[::]", "address to listen on")
    port: int = setting(50051, "gRPC port; 0 picks a free one", check=PORT)
    health_port: int = setting(0, "extra plaintext port serving only grpc.health.v1 (for probes); 0 = off", check=PORT)
    metrics_port: int = setting(0, "HTTP port serving Prometheus /metrics; 0 = off", check=PORT)
    max_message_bytes: int = setting(4 * 1024 * 1024, "largest message in or out", check=between(1024, 2**31 - 1))
    max_concurrent_rpcs: int = setting(
        1000,
        "calls in progress in this process; more are shed with RESOURCE_EXHAUSTED and a retry delay (0 = no limit)",
        check=at_least(0),
    )
    max_pending_calls: int = setting(
        300,
        "calls waiting to be picked up before gRPC starts refusing new ones (RESOURCE_EXHAUSTED; all at twice this)",
        check=between(1, 100_000),
    )
    keepalive_time: float = setting(30.0, "seconds between keepalive pings", check=at_least(1, "second"))
    keepalive_timeout: float = setting(
        3.0,
        "seconds to wait for a ping ack; also how long a client that floods pings and reads nothing is kept",
        check=above(0),
    )
    max_connection_idle: float = setting(300.0, "seconds a connection without calls stays open", check=SECONDS)
    max_connection_age: float = setting(
        600.0,
        "seconds (±10 %) before a connection is asked to go, so clients rebalance over new replicas",
        check=SECONDS,
    )
    max_connection_age_grace: float = setting(
        30.0,
        "then seconds its calls get before it is closed (bounds calls that never finish)",
        check=between(0, 3600, "seconds"),
    )
    max_streams_per_connection: int = setting(
        200, "calls open at once on one connection; a client queues the rest", check=between(1, 10_000)
    )
    handshake_timeout: float = setting(
        10.0, "seconds a new connection has to complete TLS and HTTP/2 setup", check=SECONDS
    )
    settings_timeout: float = setting(
        2.0,
        "seconds a client has to acknowledge our HTTP/2 settings before it is disconnected "
        "(until it does, gRPC applies none of our metadata limits)",
        check=SECONDS,
    )
    max_health_watches: int = setting(
        100, "grpc.health.v1 Watch streams open at once; more get RESOURCE_EXHAUSTED", check=between(1, 10_000)
    )
    blocking_workers: int = setting(4, "threads for blocking work (SQLite, CPU)", check=between(1, 256))
    threads: int = setting(
        10,
        "calls handled at once by a service served by threads (services/services.bzl: serving); the rest wait "
        "for a thread, up to --max-concurrent-rpcs",
        check=between(1, 1000),
    )
    allow: Mapping[str, frozenset[str]] = setting(
        MappingProxyType({}),
        "who may call a method, replacing the service's default rule: 'Method=identity[,identity]'; "
        "repeatable, or ';'-separated",
        parse=parse_allow,
        repeatable=True,
    )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def problems(self) -> list[str]:
        extra_ports = [port for port in (self.health_port, self.metrics_port) if port]
        if len(set(extra_ports)) != len(extra_ports) or self.port in extra_ports:
            return ["--port, --health-port and --metrics-port must differ"]
        return []


Config = TypeVar("Config", bound=ProcessConfig)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type[ProcessConfig],
    prefix: str,
    port: int | None = None,
    callees: Mapping[str, int] | None = None,
) -> None:
    """The flags of `cls` (`port`: this service's default), of mTLS, and of each service it calls
    (name → default port)."""
    add_settings(parser, cls, prefix, {"port": port} if port is not None else None)
    add_settings(parser, TlsSettings, prefix)
    add_callee_flags(parser, callees or {})


def read_config(cls: type[Config], args: argparse.Namespace, callees: Sequence[str] = ()) -> Config:
    """The checked configuration; raises ConfigError listing every problem."""
    problems: list[str] = []
    config: Config = read_settings(cls, args, problems)
    tls = read_settings(TlsSettings, args, problems).files(problems)
    config = dataclasses.replace(config, tls=tls, callees=MappingProxyType(read_callees(args, callees, problems)))
    problems += config.problems()
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def parse_config(
    parser: argparse.ArgumentParser, cls: type[Config], argv: Sequence[str] | None = None, callees: Sequence[str] = ()
) -> Config:
    """A program's start: parses `argv`, sets up logging as the flags say, and returns the checked
    configuration, or exits with code 2, the usage line and every problem, before binding anything."""
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    try:
        return read_config(cls, args, callees)
    except ConfigError as error:
        parser.error(str(error))
