"""Serves a web (ASGI) service the way libs/runtime/server.py serves a gRPC one.

The same settings where the idea is the same (`ProcessConfig`: address, `--processes`, event loop, logs,
mTLS to the services it calls, `--drain-seconds`, `--shutdown-grace`), the same supervisor model
(`--processes N`: N forked children, each binding the port with SO_REUSEPORT and running its own event
loop; a dead child is restarted; /metrics of any of them is the sum over all), and the same stop: on
SIGTERM/SIGINT /readyz answers 503 for `--drain-seconds` while requests are still served, then uvicorn
stops accepting and open requests get `--shutdown-grace` seconds. A second signal stops at once.

uvicorn serves, with httptools and libs/http/protocol.py's limits on headers, bodies and unread answers.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from libs.http.access_log import AccessLog
from libs.http.app import ServingState, serving_state
from libs.http.protocol import TIMEOUT, HttpLimits, limited_protocol
from libs.interceptors.batched_lines import flush_all
from libs.runtime import event_loop
from libs.runtime.config import ProcessConfig
from libs.runtime.settings import PORT, between, setting, settings_group
from libs.runtime.supervisor import Supervisor, reserve_port


@dataclass(frozen=True)
class HttpConfig(ProcessConfig):
    """A web service's settings: uvicorn's own where it has them, libs/http/protocol.py's limits."""

    port: int = setting(8080, "HTTP port; 0 picks a free one", check=PORT)
    access_log: bool = setting(True, "log each HTTP request (a JSON line, batched: libs/http/access_log.py)")
    keep_alive_timeout: float = setting(5.0, "seconds an idle keep-alive connection stays open", check=TIMEOUT)
    limit_concurrency: int = setting(
        500, "connections + requests in progress per process; more requests get 503", check=between(2, 100_000)
    )
    forwarded_allow_ips: str = setting(
        "127.0.0.1", "proxies whose X-Forwarded-Proto/For are believed (comma-separated, or *)"
    )
    limits: HttpLimits = settings_group(HttpLimits)


AppFactory = Callable[[HttpConfig], AbstractAsyncContextManager[Starlette]]
"""Makes the service's app (libs/http/app.py's web_app) in the process that serves it, and closes what it
opened (gRPC channels) when serving ends: a channel must not cross a fork."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining before it stops and exiting with code 0 after a graceful stop.

    uvicorn stops accepting at the first SIGTERM, while a load balancer may still send new requests
    until it sees the pod unready; and it re-raises the signal once stopped, so the process would end
    "killed by SIGTERM" although it stopped cleanly, which orchestrators and //:dev read as a failure."""

    def __init__(self, config: uvicorn.Config, state: ServingState, drain_seconds: float, logger: logging.Logger):
        super().__init__(config)
        self._state = state
        self._drain_seconds = drain_seconds
        self._logger = logger
        self._stop_at: float | None = None
        self._announced = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        originals = {signum: signal.signal(signum, self._signalled) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in originals.items():
                signal.signal(signum, handler)

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        if self._state.draining:  # a second signal: stop now
            self.should_exit = True
            return
        self._state.draining = True
        self._stop_at = time.monotonic() + self._drain_seconds

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and not self._announced:  # logged here: not from the signal handler
            self._announced = True
            self._logger.info("/readyz answers 503; draining %.1fs before stopping", self._drain_seconds)
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening socket on `host:port`; with `reuse_port`, one of several processes' sharing it (the
    kernel spreads connections over them)."""
    sock = reserve_port(host, port, reuse_port=reuse_port)
    sock.listen(2048)
    return sock


async def _serve_app(
    name: str, config: HttpConfig, make_app: AppFactory, sock: socket.socket, sums: Path | None, logger: logging.Logger
) -> None:
    async with make_app(config) as app:
        state = serving_state(app)
        state.metrics_sums = sums
        served = AccessLog(app, name, interval=config.access_log_interval) if config.access_log else app
        server = DrainingServer(
            uvicorn.Config(
                served,
                http=limited_protocol(config.limits),  # httptools, with limits on headers, bodies and unread answers
                lifespan="off",
                log_config=None,
                access_log=False,  # ours instead: batched, JSON fields, the request id
                # uvicorn annotates these int; it hands them to asyncio, which takes fractions of seconds.
                timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]
                timeout_graceful_shutdown=config.shutdown_grace,  # type: ignore[arg-type]
                limit_concurrency=config.limit_concurrency,
                proxy_headers=True,
                forwarded_allow_ips=config.forwarded_allow_ips,
            ),
            state,
            config.drain_seconds,
            logger,
        )
        try:
            await server.serve(sockets=[sock])
        finally:
            flush_all()


def _serve_here(
    name: str,
    config: HttpConfig,
    make_app: AppFactory,
    logger: logging.Logger,
    sums: Path | None = None,
    reuse_port: bool = False,
) -> int:
    try:
        sock = listening_socket(config.host, config.port, reuse_port=reuse_port)
    except OSError as error:
        logger.error("cannot listen on %s:%d: %s", config.host, config.port, error)
        return 1
    with sock:
        logger.info("serving HTTP on %s:%d", config.host, sock.getsockname()[1])
        event_loop.run(_serve_app(name, config, make_app, sock, sums, logger), config.event_loop)
    return 0


def serve_http(name: str, config: HttpConfig, make_app: AppFactory, logger: logging.Logger) -> int:
    """Serves the app `make_app` makes until SIGTERM/SIGINT and returns the exit code: in this process, or
    in `config.processes` forked children sharing the port (libs/runtime/supervisor.py). `name`: the
    service's, for the supervisor's files and the access log."""
    if config.processes == 1:
        return _serve_here(name, config, make_app, logger)
    try:
        reserved = reserve_port(config.host, config.port)
    except OSError as error:
        logger.error("cannot listen on %s:%d: %s", config.host, config.port, error)
        return 1
    with reserved:
        children = replace(config, port=reserved.getsockname()[1])  # 0 became a real port
        supervisor = Supervisor(
            config.processes,
            lambda index: _serve_here(name, children, make_app, logger, supervisor.sums, reuse_port=True),
            logger,
            name=name,
            stop_timeout=config.drain_seconds + config.shutdown_grace + 5,
            inherited=[reserved],
        )
        return supervisor.run()
