"""PING floods from clients that never read, beside a normal client: what they cost the server.

    python ping_flood.py PORT SERVER_PID --connections 3 --seconds 20

Each flooding connection acknowledges the server's SETTINGS blindly, then sends PING frames as fast as
the socket takes them and reads nothing. Prints the server's CPU seconds over the run, how long each
flooding connection lasted before the server closed it, and the latency of a normal client calling
/test.v1.Echo/Echo every 10 ms meanwhile.
"""

import argparse
import json
import socket
import threading
import time

import grpc
import psutil

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, SETTINGS_ACK = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
PINGS = (b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"01234567") * 512


def flood(port: int, until: float, lasted: list[float]) -> None:
    opened = time.monotonic()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(1)
        sock.sendall(PREFACE + SETTINGS + SETTINGS_ACK)
        while time.monotonic() < until:
            try:
                sock.send(PINGS)
            except TimeoutError:
                continue
            except OSError:
                break
    lasted.append(round(time.monotonic() - opened, 1))


def normal(port: int, until: float, latencies: list[float], connected: threading.Event) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/test.v1.Echo/Echo")
        echo(b"x", timeout=5)  # connected before the flood starts
        connected.set()
        while time.monotonic() < until:
            began = time.perf_counter()
            echo(b"x", timeout=5)
            latencies.append(time.perf_counter() - began)
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("server_pid", type=int)
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    server = psutil.Process(args.server_pid)
    cpu_before = sum(server.cpu_times()[:2])
    until = time.monotonic() + args.seconds
    lasted: list[float] = []
    latencies: list[float] = []
    connected = threading.Event()
    threads = [threading.Thread(target=normal, args=(args.port, until, latencies, connected))]
    threads[0].start()
    connected.wait(10)
    threads += [threading.Thread(target=flood, args=(args.port, until, lasted)) for _ in range(args.connections)]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    print(
        json.dumps(
            {
                "server_cpu_s": round(sum(server.cpu_times()[:2]) - cpu_before, 1),
                "flooding_connections_lasted_s": lasted,
                "normal_calls": len(latencies),
                "normal_ms": {
                    "p50": round(latencies[len(latencies) // 2] * 1000, 2),
                    "max": round(latencies[-1] * 1000),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
