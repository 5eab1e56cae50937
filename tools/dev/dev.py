"""Starts the whole system on loopback: `./bazelw run //:dev`.

Every service in services/services.bzl runs as a child process, callees before their callers, each on the
port the list gives it (`--port NAME=PORT` moves one) and told where the services it calls listen. A
throwaway CA and certificates are minted into a temporary directory (services talk mTLS, as in
production; `--insecure` for plaintext). Each log line is prefixed with its service's name; the URL to
open is printed once everything listens. Ctrl-C (or SIGTERM) stops the services in reverse order. If one
exits on its own, the rest are stopped too and the exit code is non-zero. `--monitoring` also runs
Prometheus (from Debian, //tools/monitoring) scraping every service with monitoring/rules.yaml; its data
lives in the temporary directory, removed on exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

from libs.processes.processes import ChildProcess, free_port, runfile
from services.registry import REGISTRY, Service
from tools.certs.certs import mint_all, service_flags
from tools.monitoring.local import prometheus_command, wait_until_ready

logger = logging.getLogger("dev")


def port_override(text: str) -> tuple[str, int]:
    name, sep, port = text.partition("=")
    if not sep or name not in REGISTRY or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT with NAME one of {', '.join(REGISTRY)}, got {text!r}")
    return name, int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address every service binds (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        dest="ports",
        type=port_override,
        action="append",
        default=[],
        help="NAME=PORT: run service NAME on PORT instead of its port in services/services.bzl (repeatable)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for each service to listen"
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC instead of mTLS")
    parser.add_argument(
        "--monitoring",
        action="store_true",
        help="also run Prometheus scraping every service, with monitoring/rules.yaml, its UI on --prometheus-port",
    )
    parser.add_argument("--prometheus-port", type=int, default=9090, help="with --monitoring (default: 9090)")
    args = parser.parse_args(argv)
    args.ports = {service.name: service.port for service in REGISTRY.values()} | dict(args.ports)
    taken = [port for port in args.ports.values() if list(args.ports.values()).count(port) > 1]
    if taken:
        parser.error(f"two services on port {taken[0]}")
    # With --monitoring, every gRPC service serves /metrics on a free port Prometheus is told about.
    args.metrics_ports = (
        {s.name: free_port(args.host) for s in REGISTRY.values() if s.kind == "grpc"} if args.monitoring else {}
    )
    return args


def tls_flags(certs: Path | None, service: str) -> list[str | Path]:
    if certs is None:
        return ["--insecure"]
    return service_flags(certs, service)


def command(service: Service, args: argparse.Namespace, certs: Path | None) -> list[str | Path]:
    """How //:dev runs `service`: its binary on its port, told where its callees listen."""
    argv: list[str | Path] = [runfile(service.binary), "--host", args.host, "--port", str(args.ports[service.name])]
    # Nothing balances across a single local process: stop at once.
    argv += ["--log-format", "text", "--drain-seconds", "0", *tls_flags(certs, service.name)]
    if service.name in args.metrics_ports:
        argv += ["--metrics-port", str(args.metrics_ports[service.name])]
    for callee in REGISTRY.calls(service.name):
        argv += [REGISTRY[callee].address_flag(), f"{args.host}:{args.ports[callee]}"]
    return argv


def metrics_targets(args: argparse.Namespace) -> dict[str, list[str]]:
    """Where each service serves /metrics: a gRPC service's metrics port, the HTTP port of an HTTP one."""
    return {
        service.name: [f"{args.host}:{args.metrics_ports.get(service.name, args.ports[service.name])}"]
        for service in REGISTRY.values()
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)15s | %(message)s")
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="online-books-dev-") as temporary:
        certs = None
        if not args.insecure:
            certs = Path(temporary) / "certs"
            certs.mkdir()
            mint_all(certs, hours=24)
            logger.info("minted a throwaway CA and mTLS certificates into %s", certs)
        return run(args, certs, Path(temporary))


def run(args: argparse.Namespace, certs: Path | None, scratch: Path) -> int:
    # The handler only appends to a list: a threading.Event set from a signal handler can deadlock (the
    # handler runs in the main thread, possibly while that thread holds the Event's lock in wait()).
    signalled: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: signalled.append(signum))

    started: list[ChildProcess] = []
    try:
        for service in REGISTRY.start_order():
            child = ChildProcess(service.name, command(service, args, certs))
            started.append(child.start())
            child.wait_for_port(args.ports[service.name], args.host, args.startup_timeout)
        if args.monitoring:
            (scratch / "prometheus").mkdir()
            listen = f"{args.host}:{args.prometheus_port}"
            prometheus = ChildProcess(
                "prometheus", prometheus_command(scratch / "prometheus", metrics_targets(args), listen)
            )
            started.append(prometheus.start())
            prometheus.wait_for_port(args.prometheus_port, args.host, args.startup_timeout)  # fails fast if it exits
            wait_until_ready(listen, args.startup_timeout)  # then its UI and API answer 503 a moment longer
        for service in REGISTRY.values():
            scheme = "http" if service.kind == "http" else "grpc"
            logger.info("%s on %s://%s:%d", service.name, scheme, args.host, args.ports[service.name])
        if args.monitoring:
            logger.info(
                "Prometheus on http://%s:%d/ (graphs; rules and alerts of monitoring/rules.yaml; data in %s)",
                args.host,
                args.prometheus_port,
                scratch / "prometheus",
            )
        for service in (s for s in REGISTRY.values() if s.public):
            logger.info("up: open http://%s:%d/  (Ctrl-C stops everything)", args.host, args.ports[service.name])
        while not signalled:
            time.sleep(0.2)
            for child in started:
                if child.poll() is not None:
                    logger.error("%s exited with code %d; stopping the rest", child.name, child.poll())
                    return 1
        logger.info("stopping")
        return 0
    except (RuntimeError, TimeoutError) as error:
        logger.error("%s", error)
        return 1
    finally:
        codes = [f"{child.name}={child.stop()}" for child in reversed(started)]
        logger.info("stopped (exit codes: %s)", ", ".join(codes) or "none started")


if __name__ == "__main__":
    sys.exit(main())
