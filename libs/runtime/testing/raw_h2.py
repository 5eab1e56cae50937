"""A raw HTTP/2 client for hostile-input tests: it sends what no gRPC client would (header bytes grpcio
refuses to send, no SETTINGS acknowledgement, PING floods) and reads what the server answers.

    with RawH2("127.0.0.1", port) as client:
        stream = client.call("/test.v1.Echo/Echo", b"hi", [(b"x-request-id", b"abc123\\n")])
        headers, trailers, data = client.answer(stream)
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from types import TracebackType

import h2.config
import h2.connection
import h2.events


class RawH2:
    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, acknowledge_settings: bool = True
    ) -> None:
        """`acknowledge_settings` False: the server's SETTINGS are never acknowledged."""
        sock = socket.create_connection((host, port), timeout=10)
        self.sock: socket.socket = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.connection = h2.connection.H2Connection(config=config)
        self.acknowledge_settings = acknowledge_settings
        self.connection.initiate_connection()
        self.flush()
        self.events: list[h2.events.Event] = []
        self.closed = False

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.connection.data_to_send()
        if data:
            self.sock.sendall(data)

    def call(self, path: str, message: bytes, metadata: list[tuple[bytes, bytes]] = (), end: bool = True) -> int:  # type: ignore[assignment]
        """Starts a gRPC call on a new stream with `metadata` as given, byte for byte; returns the stream."""
        stream = self.connection.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *metadata,
        ]
        self.connection.send_headers(stream, headers, end_stream=False)
        if end:
            self.connection.send_data(stream, struct.pack(">BI", 0, len(message)) + message, end_stream=True)
        self.flush()
        return stream

    def send_header_blocks(self, streams: int, size: int) -> None:
        """On a fresh connection, starts `streams` calls whose headers carry `size` bytes of metadata each,
        and no message. Written as frames of HPACK literals: h2's encoder takes seconds for megabytes."""
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.v1.Echo/Echo")]
        fields += [(b":authority", b"localhost"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
        value = b"x" * 4000
        fields += [(b"x-filler-%d" % n, value) for n in range(max(size // len(value), 1))]
        block = b"".join(b"\x00" + _literal(name) + _literal(value) for name, value in fields)  # without indexing
        frames = [block[start : start + 16384] for start in range(0, len(block), 16384)]
        for stream in range(1, 2 * streams, 2):
            for index, payload in enumerate(frames):
                kind = 0x1 if index == 0 else 0x9  # HEADERS, then CONTINUATION
                end_headers = 0x4 if index == len(frames) - 1 else 0
                header = struct.pack(">I", len(payload))[1:] + bytes([kind, end_headers]) + struct.pack(">I", stream)
                self.sock.sendall(header + payload)

    def receive(self, timeout: float = 10.0) -> bool:
        """Reads once (up to `timeout`); False once the server has closed the connection."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.connection.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged) and not self.acknowledge_settings:
                continue
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if self.acknowledge_settings:
            self.flush()
        return True

    def answer(self, stream: int, timeout: float = 10.0) -> tuple[dict[bytes, bytes], dict[bytes, bytes], bytes]:
        """The stream's response headers, trailers and data, once it has ended."""
        deadline = time.monotonic() + timeout
        while not any(
            isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) and e.stream_id == stream for e in self.events
        ):
            if time.monotonic() > deadline or not self.receive(max(deadline - time.monotonic(), 0.01)):
                raise TimeoutError(f"stream {stream} did not end")
        headers: dict[bytes, bytes] = {}
        trailers: dict[bytes, bytes] = {}
        data = b""
        for event in self.events:
            if getattr(event, "stream_id", None) != stream:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                data += event.data
        return headers, trailers or headers, data


def _literal(string: bytes) -> bytes:
    """An HPACK string, not Huffman-coded."""
    length = len(string)
    prefix = bytes([length]) if length < 127 else bytes([127]) + _varint(length - 127)
    return prefix + string


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes(out) + bytes([value])
