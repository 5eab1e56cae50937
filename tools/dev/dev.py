"""Starts the whole bookstore on loopback: `./bazelw run //:dev`.

Mints a throwaway CA and certificates into a temporary directory (services talk mTLS, as in
production; `--insecure` for plaintext), runs Recommendations and the Marketplace as child
processes, prefixes each log line with the service's name, prints the URL to open, and on Ctrl-C
(or SIGTERM) stops the Marketplace, then Recommendations. If either exits on its own, the other is
stopped too and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

from libs.processes.processes import ChildProcess, runfile
from tools.certs.certs import mint_all, service_flags

logger = logging.getLogger("dev")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address both services bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="Marketplace HTTP port (default: 8080)")
    parser.add_argument(
        "--recommendations-port", type=int, default=50051, help="Recommendations gRPC port (default: 50051)"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for each service to listen"
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC instead of mTLS")
    return parser.parse_args(argv)


def tls_flags(certs: Path | None, service: str) -> list[str | Path]:
    if certs is None:
        return ["--insecure"]
    return service_flags(certs, service)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)15s | %(message)s")
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="online-books-certs-") as temporary:
        certs = None
        if not args.insecure:
            certs = Path(temporary)
            mint_all(certs, hours=24)
            logger.info("minted a throwaway CA and mTLS certificates into %s", certs)
        return run(args, certs)


def run(args: argparse.Namespace, certs: Path | None) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    recommendations = ChildProcess(
        "recommendations",
        [
            runfile("services/recommendations/recommendations"),
            "--host",
            args.host,
            "--port",
            args.recommendations_port,
            "--drain-seconds",
            "0",  # nothing balances across a single local process: stop at once
            "--log-format",
            "text",
            *tls_flags(certs, "recommendations"),
        ],
    )
    marketplace = ChildProcess(
        "marketplace",
        [
            runfile("services/marketplace/marketplace"),
            "--host",
            args.host,
            "--port",
            args.port,
            "--recommendations-addr",
            f"{args.host}:{args.recommendations_port}",
            "--log-format",
            "text",
            *tls_flags(certs, "marketplace"),
        ],
    )
    started: list[ChildProcess] = []
    try:
        for child, port in ((recommendations, args.recommendations_port), (marketplace, args.port)):
            started.append(child.start())
            child.wait_for_port(port, args.host, args.startup_timeout)
        logger.info("Online Books For You is up: open http://%s:%d/  (Ctrl-C stops both)", args.host, args.port)
        while not stop.wait(0.2):
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
