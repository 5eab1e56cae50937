"""The channel factory over the wire: retries, round_robin, default deadlines and their propagation."""

from __future__ import annotations

import asyncio
import collections
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from libs.interceptors import server_interceptors
from libs.interceptors.deadlines import deadline_scope
from libs.runtime.channel import RetryPolicy, create_channel, normalize_target

# One event loop for the whole module: grpc.aio objects do not survive a switch between loops
# (each asyncio.run makes a new one), and a test after such a switch can hang.
run_in_loop = asyncio.Runner().run

SERVICE = "test.v1.Probe"


class Backend:
    """An in-process server counting calls; its behaviour per call is chosen by the request."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[bytes] = collections.Counter()
        self.remaining: list[float | None] = []
        self.front_channel: grpc.aio.Channel | None = None
        self.server = grpc.aio.server(interceptors=server_interceptors("backend", registry=CollectorRegistry()))
        handlers = {
            "Call": grpc.unary_unary_rpc_method_handler(self.call),
            "Forward": grpc.unary_unary_rpc_method_handler(self.forward),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
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


def call(channel: grpc.aio.Channel, method: str = "Call"):
    return channel.unary_unary(f"/{SERVICE}/{method}")


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
            await asyncio.wait_for(channel.channel_ready(), 5)
            for _ in range(10):  # until both subchannels are connected, picks may favour the first
                await call(channel)(b"warm-up")
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
            for _ in range(10):
                await call(channel)(b"warm-up")
            await second.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(0.2)  # the Watch stream brings the change to the client
            for _ in range(20):
                await call(channel)(b"while-draining")
            await second.health.set("", health_pb2.HealthCheckResponse.SERVING)
            await asyncio.sleep(0.2)
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


async def wait_for_state(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity, timeout: float = 5) -> None:
    async def reached() -> None:
        while (state := channel.get_state()) != wanted:
            await channel.wait_for_state_change(state)

    await asyncio.wait_for(reached(), timeout)


def test_default_deadline_applies_to_calls_without_timeout() -> None:
    async def main() -> None:
        backend = Backend()
        await started(backend)
        async with create_channel(f"127.0.0.1:{backend.port}", tls=None, default_timeout=0.2) as channel:
            begun = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel)(b"sleep:2")
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - begun < 1.0
            assert 0 < backend.remaining[-1] <= 0.21  # grpc-timeout travels rounded to its unit
        await stopped(backend)

    run_in_loop(main())


def test_deadline_propagates_across_two_hops() -> None:
    async def main() -> None:
        front, back = Backend(), Backend()
        await started(front, back)
        # The front's own channel would allow 10 s; the caller's 0.3 s must win on the second hop.
        front.front_channel = create_channel(f"127.0.0.1:{back.port}", tls=None, default_timeout=10)
        async with create_channel(f"127.0.0.1:{front.port}", tls=None) as channel:
            begun = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel, "Forward")(b"sleep:3", timeout=0.3)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - begun < 1.0
        assert back.remaining, "the second hop was never called"
        assert back.remaining[-1] <= 0.31  # the caller's 0.3 s, not the front channel's 10 s
        await front.front_channel.close()
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
            with deadline_scope(5):
                assert await call(channel)(b"hello", timeout=1) == b"ok"
                assert 0.9 < backend.remaining[-1] <= 1.01  # the smaller of timeout and scope
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
