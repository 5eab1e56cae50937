"""The channel factory over the wire: retries, round_robin, default deadlines and their propagation."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from libs.interceptors import instrument
from libs.interceptors.deadlines import deadline_scope
from libs.runtime.channel import BalancedChannel, RetryPolicy, create_channel, normalize_target

# One event loop for the whole module: grpc.aio objects do not survive a switch between loops
# (each asyncio.run makes a new one), and a test after such a switch can hang.
run_in_loop = asyncio.Runner().run

SERVICE = "test.v1.Probe"


class Backend:
    """An in-process server counting calls; its behaviour per call is chosen by the request."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[bytes] = collections.Counter()
        self.remaining: list[float | None] = []
        self.front_channel: BalancedChannel | None = None
        self.server = grpc.aio.server()
        instrumented = instrument(self.server, "backend", registry=CollectorRegistry())
        handlers = {
            "Call": grpc.unary_unary_rpc_method_handler(self.call),
            "Forward": grpc.unary_unary_rpc_method_handler(self.forward),
        }
        instrumented.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs' grpc_health has no aio
        health_pb2_grpc.add_HealthServicer_to_server(self.health, instrumented)
        instrumented.finish()
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.attempts[request] += 1
        self.remaining.append(context.time_remaining())
        kind, _, argument = request.partition(b":")
        if kind == b"flaky" and self.attempts[request] < int(argument):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        if kind == b"invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad field")
        if kind == b"shed" and self.attempts[request] < int(argument):  # as LoadShedding answers
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", (("grpc-retry-pushback-ms", "30"),))
        if kind == b"quota":  # RESOURCE_EXHAUSTED that is no invitation to come back
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", (("grpc-retry-pushback-ms", "-1"),))
        if kind == b"sleep":
            await asyncio.sleep(float(argument))
        return b"ok"

    async def forward(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Calls Call on the next hop, as a service handling a request would."""
        assert self.front_channel is not None
        return await self.front_channel.unary_unary(f"/{SERVICE}/Call")(request)


async def started(*backends: Backend) -> None:
    for backend in backends:
        await backend.server.start()


async def stopped(*backends: Backend) -> None:
    for backend in backends:
        await backend.server.stop(None)


def call(channel: BalancedChannel, method: str = "Call") -> Callable[..., grpc.aio.UnaryUnaryCall[Any, Any]]:
    return channel.unary_unary(f"/{SERVICE}/{method}")


async def until_each_answers(channel: BalancedChannel, payload: bytes, *backends: Backend) -> None:
    """Calls with `payload` until each backend has answered one: round robin then picks among all of them
    (a subchannel joins once connected and its health says SERVING)."""
    give_up = time.monotonic() + 10
    while not all(backend.attempts[payload] for backend in backends):
        assert time.monotonic() < give_up, f"not every replica was called: {[b.attempts[payload] for b in backends]}"
        await call(channel)(payload)


async def until_skipped(channel: BalancedChannel, backend: Backend, streak: int = 4) -> None:
    """Calls until `streak` in a row went past `backend`: round robin, which alternates between the
    replicas it may pick, no longer picks it."""
    give_up = time.monotonic() + 10
    skipped = sent = 0
    while skipped < streak:
        assert time.monotonic() < give_up, f"the replica on port {backend.port} is still called"
        sent += 1
        probe = f"probe:{sent}".encode()
        await call(channel)(probe)
        skipped = 0 if backend.attempts[probe] else skipped + 1


def test_unavailable_is_retried_with_bounded_attempts() -> None:
    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None) as channel:
            assert await call(channel)(b"flaky:3") == b"ok"  # fails twice, third attempt succeeds
            assert backend.attempts[b"flaky:3"] == 3
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel)(b"flaky:10")
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert backend.attempts[b"flaky:10"] == RetryPolicy().max_attempts
        await stopped(backend)

    run_in_loop(main())


def test_a_shed_call_is_retried_after_the_servers_pushback_but_not_when_told_no() -> None:
    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None) as channel:
            begun = time.monotonic()
            assert await call(channel)(b"shed:2") == b"ok"
            waited = time.monotonic() - begun
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel)(b"quota:")
        assert backend.attempts[b"shed:2"] == 2
        assert waited >= 0.03  # the retry came after the 30 ms the server asked for
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert backend.attempts[b"quota:"] == 1  # a negative pushback means: do not retry
        await stopped(backend)

    run_in_loop(main())


def test_retries_are_throttled_when_most_calls_fail() -> None:
    """gRPC's retry throttling: under sustained failure the channel stops retrying (no retry storm)."""

    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None) as channel:
            for n in range(20):
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(channel)(f"flaky:99:{n}".encode())
        attempts = sum(count for request, count in backend.attempts.items() if request.startswith(b"flaky:99"))
        assert attempts < 20 * RetryPolicy().max_attempts / 2  # most calls were not retried at all
        await stopped(backend)

    run_in_loop(main())


def test_invalid_argument_is_never_retried() -> None:
    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel)(b"invalid:")
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert backend.attempts[b"invalid:"] == 1
        await stopped(backend)

    run_in_loop(main())


def test_round_robin_over_a_replica_list() -> None:
    async def main() -> None:
        first, second = Backend(), Backend()
        await started(first, second)
        target = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        async with create_channel(target, tls=None) as channel:
            await until_each_answers(channel, b"warm-up", first, second)  # until then, picks may favour one
            for _ in range(20):
                await call(channel)(b"hello")
        assert (first.attempts[b"hello"], second.attempts[b"hello"]) == (10, 10)
        await stopped(first, second)

    run_in_loop(main())


def test_a_replica_whose_health_says_not_serving_gets_no_calls() -> None:
    """What a draining server relies on: clients stop picking it before it stops answering."""

    async def main() -> None:
        first, second = Backend(), Backend()
        await started(first, second)
        target = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        async with create_channel(target, tls=None) as channel:
            await until_each_answers(channel, b"warm-up", first, second)
            await second.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await until_skipped(channel, second)  # the Watch stream brought the change to the client
            for _ in range(20):
                await call(channel)(b"while-draining")
            await second.health.set("", health_pb2.HealthCheckResponse.SERVING)
            await until_each_answers(channel, b"serving again", second)
            for _ in range(20):
                await call(channel)(b"back")
        assert (first.attempts[b"while-draining"], second.attempts[b"while-draining"]) == (20, 0)
        assert (first.attempts[b"back"], second.attempts[b"back"]) == (10, 10)
        await stopped(first, second)

    run_in_loop(main())


def test_when_no_replica_says_serving_calls_go_to_the_draining_ones() -> None:
    """A single replica draining (health NOT_SERVING, still serving) keeps answering instead of every call
    failing UNAVAILABLE; once one says SERVING again, calls go back to the health-checked channel."""

    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None) as channel:
            assert await call(channel)(b"warm") == b"ok"
            await backend.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await wait_for_state(channel.serving, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
            answers = [await call(channel)(f"draining:{n}".encode()) for n in range(20)]
            assert answers == [b"ok"] * 20
            assert channel.fallback.get_state() == grpc.ChannelConnectivity.READY  # they went that way
            await backend.health.set("", health_pb2.HealthCheckResponse.SERVING)
            await wait_for_state(channel.serving, grpc.ChannelConnectivity.READY)
            assert await call(channel)(b"serving again") == b"ok"
        await stopped(backend)

    run_in_loop(main())


async def wait_for_state(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity, timeout: float = 10) -> None:
    async def reached() -> None:
        while (state := channel.get_state()) != wanted:
            await channel.wait_for_state_change(state)

    await asyncio.wait_for(reached(), timeout)


def test_default_deadline_applies_to_calls_without_timeout() -> None:
    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None, default_timeout=1.0) as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)  # the deadline is then spent on the call alone
            begun = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel)(b"sleep:30")
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - begun < 10  # the deadline ended it, not the handler
            remaining = backend.remaining[-1]
            assert remaining is not None
            assert 0 < remaining <= 1.5  # 1 s, give or take what gRPC's clocks and grpc-timeout's units add
        await stopped(backend)

    run_in_loop(main())


def test_deadline_propagates_across_two_hops() -> None:
    async def main() -> None:
        front, back = Backend(), Backend()
        await started(front, back)
        # The front's own channel would allow 10 s; the caller's 1 s must win on the second hop.
        front_channel = create_channel(f"127.0.0.1:{back.port}", tls=None, default_timeout=10)
        front.front_channel = front_channel
        async with create_channel(f"127.0.0.1:{front.port}", tls=None) as channel:
            # Both hops connected first: the caller's deadline is then spent on the calls alone.
            await asyncio.wait_for(asyncio.gather(channel.channel_ready(), front_channel.channel_ready()), 10)
            begun = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel, "Forward")(b"sleep:30", timeout=1.0)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - begun < 10  # the deadline ended it, not the handler
        assert back.remaining, "the second hop was never called"
        remaining = back.remaining[-1]
        assert remaining is not None
        assert remaining <= 1.5  # the caller's 1 s (and a few ms per hop), not the front channel's 10 s
        await front_channel.close()
        await stopped(front, back)

    run_in_loop(main())


def test_expired_scope_fails_without_sending() -> None:
    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None) as channel:
            with deadline_scope(0.05):
                await asyncio.sleep(0.1)
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(channel)(b"hello")
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with deadline_scope(30):
                assert await call(channel)(b"hello", timeout=10) == b"ok"
                remaining = backend.remaining[-1]
                assert remaining is not None
                # The smaller of timeout and scope (and not the channel's default of 5 s).
                assert 5 < remaining <= 10.5
        assert backend.attempts[b"hello"] == 1
        await stopped(backend)

    run_in_loop(main())


@pytest.mark.parametrize(
    ("target", "uri"),
    [
        ("localhost:50051", "dns:///localhost:50051"),
        (
            "dns:///recommendations.books.svc.cluster.local:50051",
            "dns:///recommendations.books.svc.cluster.local:50051",
        ),
        ("127.0.0.2:1, 127.0.0.3:1", "ipv4:127.0.0.2:1,127.0.0.3:1"),
        ("localhost:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
    ],
)
def test_targets(target: str, uri: str) -> None:
    assert normalize_target(target) == uri


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "empty gRPC target"),
        ("a.example:1,b.example:2", "must be IP addresses"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1,127.0.0.2:1", "needs host:port"),
    ],
)
def test_bad_targets(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_target(target)
