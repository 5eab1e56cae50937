"""Tests of the server interceptors against a real in-process grpc.aio server on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_interceptor.exceptions import InvalidArgument, NotFound

from libs.interceptors import (
    AccessPolicy,
    AuthorizationInterceptor,
    DeadlineServerInterceptor,
    ErrorLoggingInterceptor,
    ExceptionToStatusInterceptor,
    server_interceptors,
)
from libs.interceptors.exception_to_status import INTERNAL_ERROR_DETAILS

SERVICE = "test.Probe"


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Behaves as the request says: the interceptors see every kind of outcome."""
    if request == b"not-found":
        raise NotFound("no such book")
    if request == b"invalid":
        raise InvalidArgument("max_results must be between 1 and 20")
    if request == b"crash":
        raise RuntimeError("secret: /var/lib/catalog.db is corrupt")
    if request == b"abort":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler said no")
    return b"ok:" + request


async def stream(request: bytes, context: grpc.aio.ServicerContext):
    yield b"first"
    if request == b"crash":
        raise RuntimeError("secret stream failure")
    yield b"second"


HANDLERS = grpc.method_handlers_generic_handler(
    SERVICE,
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    },
)


def run(interceptors: list, scenario: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
    """Starts a server with `interceptors`, runs `scenario` against it, stops the server."""

    async def main() -> None:
        server = grpc.aio.server(interceptors=interceptors)
        server.add_generic_rpc_handlers((HANDLERS,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(channel)
        finally:
            await server.stop(None)

    asyncio.run(main())


async def call(channel: grpc.aio.Channel, request: bytes) -> bytes:
    return await channel.unary_unary(f"/{SERVICE}/Unary")(request, timeout=5)


async def collect(channel: grpc.aio.Channel, request: bytes, into: list[bytes]) -> None:
    async for message in channel.unary_stream(f"/{SERVICE}/Stream")(request, timeout=5):
        into.append(message)


async def expect_status(channel: grpc.aio.Channel, request: bytes) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, request)
    return raised.value


class TestExceptionToStatus:
    def test_ok_calls_pass_through(self) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            assert await call(channel, b"hello") == b"ok:hello"

        run([ExceptionToStatusInterceptor()], scenario)

    @pytest.mark.parametrize(
        ("request_bytes", "code", "details"),
        [
            (b"not-found", grpc.StatusCode.NOT_FOUND, "no such book"),
            (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, "max_results must be between 1 and 20"),
        ],
    )
    def test_named_exceptions_become_their_status(self, request_bytes, code, details) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            error = await expect_status(channel, request_bytes)
            assert (error.code(), error.details()) == (code, details)

        run([ExceptionToStatusInterceptor()], scenario)

    def test_unexpected_exception_is_internal_without_details(self) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            error = await expect_status(channel, b"crash")
            assert error.code() == grpc.StatusCode.INTERNAL
            assert error.details() == INTERNAL_ERROR_DETAILS
            assert "secret" not in (error.debug_error_string() or "")

        run([ExceptionToStatusInterceptor()], scenario)

    def test_handler_abort_keeps_its_status(self) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            error = await expect_status(channel, b"abort")
            assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "handler said no")

        run([ExceptionToStatusInterceptor()], scenario)

    def test_streaming_failure_after_first_message(self) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            received: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await collect(channel, b"crash", received)
            assert received == [b"first"]
            assert raised.value.code() == grpc.StatusCode.INTERNAL
            assert raised.value.details() == INTERNAL_ERROR_DETAILS

        run([ExceptionToStatusInterceptor()], scenario)


class TestErrorLogging:
    def test_unexpected_exception_logged_once_with_method_and_traceback(self, caplog) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            error = await expect_status(channel, b"crash")
            assert error.code() == grpc.StatusCode.INTERNAL

        with caplog.at_level(logging.ERROR):
            run(server_interceptors(), scenario)
        records = [r for r in caplog.records if r.name == "libs.interceptors.error_logging"]
        assert len(records) == 1
        assert records[0].getMessage() == f"unexpected exception in /{SERVICE}/Unary"
        assert records[0].exc_info
        assert records[0].exc_info[0] is RuntimeError
        assert "Traceback" in caplog.text
        assert "secret: /var/lib/catalog.db is corrupt" in caplog.text

    def test_streaming_exception_logged(self, caplog) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            with pytest.raises(grpc.aio.AioRpcError):
                await collect(channel, b"crash", [])

        with caplog.at_level(logging.ERROR):
            run(server_interceptors(), scenario)
        messages = [r.getMessage() for r in caplog.records if r.name == "libs.interceptors.error_logging"]
        assert messages == [f"unexpected exception in /{SERVICE}/Stream"]

    @pytest.mark.parametrize(
        ("request_bytes", "code"),
        [
            (b"not-found", grpc.StatusCode.NOT_FOUND),
            (b"invalid", grpc.StatusCode.INVALID_ARGUMENT),
            (b"abort", grpc.StatusCode.PERMISSION_DENIED),
        ],
    )
    def test_expected_failures_are_not_logged(self, caplog, request_bytes, code) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            assert await call(channel, b"fine") == b"ok:fine"
            assert (await expect_status(channel, request_bytes)).code() == code

        with caplog.at_level(logging.DEBUG):
            run(server_interceptors(), scenario)
        assert not [r for r in caplog.records if r.name == "libs.interceptors.error_logging"]

    def test_never_swallows_the_exception(self, caplog) -> None:
        # Alone, without ExceptionToStatus: the call must still fail, as grpc's own handling decides.
        async def scenario(channel: grpc.aio.Channel) -> None:
            error = await expect_status(channel, b"crash")
            assert error.code() == grpc.StatusCode.UNKNOWN

        with caplog.at_level(logging.ERROR):
            run([ErrorLoggingInterceptor()], scenario)
        assert len([r for r in caplog.records if r.name == "libs.interceptors.error_logging"]) == 1

    def test_uses_the_given_logger(self, caplog) -> None:
        async def scenario(channel: grpc.aio.Channel) -> None:
            await expect_status(channel, b"crash")

        with caplog.at_level(logging.ERROR):
            run(server_interceptors(logging.getLogger("recommendations")), scenario)
        assert [r.name for r in caplog.records if r.levelno == logging.ERROR].count("recommendations") == 1


def test_stack_order_maps_status_outside_logging() -> None:
    stack = server_interceptors()
    assert [type(i) for i in stack] == [
        ExceptionToStatusInterceptor,
        ErrorLoggingInterceptor,
        DeadlineServerInterceptor,
    ]
    with_policy = server_interceptors(policy=AccessPolicy({"Recommend": ["marketplace"]}))
    assert [type(i) for i in with_policy] == [
        ExceptionToStatusInterceptor,
        ErrorLoggingInterceptor,
        AuthorizationInterceptor,
        DeadlineServerInterceptor,
    ]
