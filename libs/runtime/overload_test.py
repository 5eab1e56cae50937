"""A live server process under more than it may take: every call is answered with a clear status and is
in the metrics and the access log, whether it was served, shed, cancelled, expired or cut off by shutdown.

The server is libs/runtime's echo service (`sleep:<s>` holds a call that long), run as a process with
JSON logs (access lines on stdout) and /metrics. Each test makes a bounded number of calls and compares
what the clients saw with what the server counted and logged: nothing may go unaccounted.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest

from libs.processes.processes import ChildProcess, free_ports
from libs.runtime.testing.echo import echo_command

ECHO = "/test.v1.Echo/Echo"
PUSHBACK = "grpc-retry-pushback-ms"


class Echo:
    """The echo server process, its address, its metrics and its access lines."""

    def __init__(self, *flags: str) -> None:
        self.port, self.metrics_port = free_ports(2)
        argv = echo_command(self.port, f"--metrics-port={self.metrics_port}", "--log-format=json", "--drain-seconds=0")
        argv += flags
        self.process = ChildProcess("echo", argv, on_line=lambda line: None).start()
        # The service port listens from the moment it is bound; /metrics opens a little later, just before
        # the server starts serving.
        self.process.wait_for_port(self.port)
        self.process.wait_for_port(self.metrics_port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def started(self) -> float:
        match = re.search(r'^grpc_server_started_total{[^}]*grpc_method="Echo"[^}]*} (\S+)$', self.metrics(), re.M)
        return float(match.group(1)) if match else 0.0

    def handled(self) -> dict[str, float]:
        """grpc_server_handled_total of Echo, by code."""
        text = self.metrics()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and 'grpc_method="Echo"' in line:
                code = line.split('grpc_code="')[1].split('"')[0]
                found[code] = float(line.rsplit(" ", 1)[1])
        return found

    def access_codes(self) -> collections.Counter[str]:
        codes: collections.Counter[str] = collections.Counter()
        for line in list(self.process.lines):
            if line.startswith("{") and '"method"' in line:
                entry = json.loads(line)
                if entry.get("method") == ECHO:
                    codes[entry["code"]] += 1
        return codes

    def wait_for_access_lines(self, count: int, timeout: float = 30) -> collections.Counter[str]:
        """The access codes once `count` lines arrived (they are written in batches, up to 50 ms late)."""
        give_up = time.monotonic() + timeout
        while sum(self.access_codes().values()) < count and time.monotonic() < give_up:
            time.sleep(0.02)
        return self.access_codes()

    async def until_started(self, count: int, timeout: float = 30) -> None:
        """Until `count` calls reached a handler (they are in flight, unless they ended already); the event
        loop runs meanwhile, for the calls being made."""
        give_up = time.monotonic() + timeout
        while (started := self.started()) < count:
            assert time.monotonic() < give_up, f"only {started} of {count} calls started"
            await asyncio.sleep(0.02)

    def stopped(self) -> int:
        """The exit code of the process, once it has exited by itself and all its output is read."""
        code = self.process.wait(timeout=30)
        self.process.stop()  # nothing left to stop: waits for the output to be read to the end
        return code


@pytest.fixture
def echo_factory() -> Iterator[Callable[..., Echo]]:
    started: list[Echo] = []

    def make(*flags: str) -> Echo:
        started.append(Echo(*flags))
        return started[-1]

    yield make
    for echo in started:
        echo.process.stop()


async def concurrent_calls(target: str, requests: list[bytes], timeout: float) -> list[tuple[str, dict]]:
    """Every request at once on one plain channel (no retries), once it is connected (so the calls' deadlines
    are spent on the calls alone): each call's code and trailers."""
    async with grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)

        async def one(request: bytes) -> tuple[str, dict]:
            try:
                await echo(request, timeout=timeout)
                return "OK", {}
            except grpc.aio.AioRpcError as error:
                # grpc-stubs types the trailers as the sync API's _Metadatum objects; aio gives (key, value) pairs.
                return error.code().name, dict(error.trailing_metadata() or ())  # type: ignore[arg-type]

        return await asyncio.gather(*(one(request) for request in requests))


def test_calls_over_the_concurrency_cap_are_shed_counted_and_logged(echo_factory) -> None:
    echo = echo_factory("--max-concurrent-rpcs", "4")

    async def scenario() -> list[tuple[str, dict]]:
        # Four calls take every slot, and hold them while eight more arrive (on a connected channel, they
        # take milliseconds; the slots are held for seconds).
        held = asyncio.ensure_future(concurrent_calls(echo.target, [b"sleep:3"] * 4, timeout=30))
        await echo.until_started(4)
        return [*await concurrent_calls(echo.target, [b"sleep:3"] * 8, timeout=30), *await held]

    outcomes = asyncio.run(scenario())
    codes = collections.Counter(code for code, _ in outcomes)
    assert codes == {"OK": 4, "RESOURCE_EXHAUSTED": 8}
    shed_trailers = [trailers for code, trailers in outcomes if code == "RESOURCE_EXHAUSTED"]
    assert all(int(trailers[PUSHBACK]) > 0 for trailers in shed_trailers)  # clients are told when to retry
    assert echo.handled() == dict(codes)
    assert echo.wait_for_access_lines(12) == codes


def test_calls_whose_deadline_passes_are_counted_and_logged_as_such(echo_factory) -> None:
    echo = echo_factory()
    # Every call reaches the handler well within its deadline, and the handler outlasts it by far.
    outcomes = asyncio.run(concurrent_calls(echo.target, [b"sleep:60"] * 40, timeout=2))
    assert collections.Counter(code for code, _ in outcomes) == {"DEADLINE_EXCEEDED": 40}
    logged = echo.wait_for_access_lines(40)
    assert logged == echo.handled()
    assert sum(logged.values()) == 40
    # The server's own timer, or the client's cancellation when its deadline passed a moment earlier.
    assert set(logged) <= {"DEADLINE_EXCEEDED", "CANCELLED"}


def test_calls_cut_off_by_shutdown_are_counted_and_logged_before_exit(echo_factory) -> None:
    echo = echo_factory("--shutdown-grace", "0.3")

    async def scenario() -> list[tuple[str, dict]]:
        # 200 calls: as many as one connection may have open (--max-streams-per-connection), so all start.
        calls = asyncio.ensure_future(concurrent_calls(echo.target, [b"sleep:0.1"] * 5 + [b"sleep:60"] * 195, 50))
        await echo.until_started(200)  # every call reached a handler: the long ones are in flight
        give_up = time.monotonic() + 30
        while echo.handled().get("OK", 0) < 5:  # the short ones are answered
            assert time.monotonic() < give_up, echo.handled()
            await asyncio.sleep(0.02)
        echo.process.signal(signal.SIGTERM)
        return await calls

    outcomes = asyncio.run(scenario())
    assert echo.stopped() == 0
    seen = collections.Counter(code for code, _ in outcomes)
    assert seen["OK"] == 5
    cut = sum(seen.values()) - 5
    assert cut == 195
    logged = echo.wait_for_access_lines(200)
    print(f"clients saw {dict(seen)}; the server logged {dict(logged)}")
    assert logged["OK"] == 5
    assert sum(logged.values()) == 200  # the 195 cut off are in the log too, whatever the code


def test_calls_gRPC_refuses_before_any_handler_are_counted_and_logged(echo_factory) -> None:
    """A process that falls behind (here: a handler blocking it for 1 s) lets calls pile up in gRPC's own
    backlog; past --max-pending-calls gRPC refuses them itself. No handler sees those: they are counted
    from gRPC's channelz numbers and logged, where they used to vanish (the issue's 148 CANCELLED)."""
    echo = echo_factory("--max-pending-calls", "2")

    async def scenario() -> list[tuple[str, dict]]:
        blocker = asyncio.ensure_future(concurrent_calls(echo.target, [b"block:3"], timeout=30))
        # The handler has begun, and with it the block (/metrics is served by a thread of its own). The calls
        # below take milliseconds to arrive; the block lasts seconds.
        await echo.until_started(1)
        piled_up = await concurrent_calls(echo.target, [b"x"] * 30, timeout=30)
        return [*await blocker, *piled_up]

    outcomes = asyncio.run(scenario())
    # gRPC refuses with RST_STREAM(CANCEL): the callers see CANCELLED, with no detail, and do not retry.
    refused = sum(1 for code, _ in outcomes if code == "CANCELLED")
    assert refused > 0, outcomes
    found = re.search(r"^grpc_server_transport_started_total (\S+)$", echo.metrics(), re.M)
    assert found, echo.metrics()
    transport_started = float(found[1])
    assert transport_started == len(outcomes) == echo.started() + refused
    assert sum(echo.handled().values()) == echo.started()
    echo.process.signal(signal.SIGTERM)  # the drain's end logs what was dropped since the last report
    assert echo.stopped() == 0
    logged = "\n".join(echo.process.lines)
    assert re.search(rf"\d+ more calls reached gRPC but no handler .*; {refused} in all", logged), logged[-2000:]
