"""Where a Recommend call's time goes: py-spy (native frames) on a server under h2load, main thread only.

    ./bazelw run //bench:profile -- [--seconds 10]

Each variant runs pinned to core 1 with h2load on core 0 (py-spy shares core 0), and its event loop's
thread is sampled; the samples are grouped: our code (middleware, validation, catalog, handler),
system calls by name, the rest of C (grpc's core and Cython layer, protobuf, CPython), the rest of
Python (asyncio, grpc's .py), and idle. Calls per CPU-second are of the whole server process over
the same window (py-spy's sampling costs a little of it).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    PIN_LOAD,
    PIN_SERVER,
    REQUEST,
    grpc_frame,
    h2load_command,
    parse_h2load,
    py_spy,
    start_quiet,
    tree_cpu_seconds,
)
from libs.processes.processes import free_port, runfile

IDLE = "idle (epoll_wait)"
SYSCALLS = ("write", "writev", "read", "recv", "recvmsg", "sendmsg", "getpid", "syscall", "epoll_wait")
OURS = re.compile(r"\((?:interceptors|runtime|recommendations)/|\((?:servicer|catalog)\.py")
VARIANTS = {
    "ours (uvloop)": [
        "services/recommendations/recommendations", "--insecure", "--host", "127.0.0.1", "--drain-seconds", "0",
    ],
    "ours (asyncio loop)": [
        "services/recommendations/recommendations", "--insecure", "--host", "127.0.0.1", "--drain-seconds", "0",
        "--event-loop", "asyncio",
    ],
    # Not the bare server on uvloop: sampled with native frames, it slows to a sixth of its rate
    # (//bench measures it unsampled).
    "bare ceiling (asyncio loop)": ["bench/baselines/bare_aio", "--serialise"],
}  # fmt: skip


def group(frames: list[str]) -> str:
    leaf = frames[-1].split(" (")[0]
    if any(OURS.search(frame) for frame in frames):
        return "ours: middleware, validation, catalog, handler"
    if leaf == "epoll_wait":
        return IDLE
    if leaf in SYSCALLS:
        return f"system call: {leaf}"
    if any(".py:" in frame for frame in frames[-3:]):
        return "Python: asyncio, grpc's .py"
    return "C: grpc core and Cython layer, protobuf, CPython"


def profile(argv: list, seconds: int, body: Path, raw: Path) -> tuple[collections.Counter[str], float, float]:
    port = free_port()
    server = start_quiet("server", [*PIN_SERVER, runfile(argv[0]), *argv[1:], "--port", port], port)
    try:
        warm = h2load_command(port, body, 8, 16, requests=5000)
        subprocess.run(warm, capture_output=True, check=True, timeout=300)
        load = subprocess.Popen(
            h2load_command(port, body, 8, 16, seconds=seconds + 2), stdout=subprocess.PIPE, text=True
        )
        cpu_before = tree_cpu_seconds(server.pid)
        record = [*PIN_LOAD, py_spy(), "record", "--native", "-r", "200", "-d", str(seconds), "-f", "raw"]
        subprocess.run([*record, "-o", str(raw), "-p", str(server.pid)], capture_output=True, check=True)
        cpu = tree_cpu_seconds(server.pid) - cpu_before
        output, _ = load.communicate(timeout=seconds + 120)
        result = parse_h2load(output)
    finally:
        server.stop()
    groups: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        if "Thread._bootstrap" in frames[0]:
            continue  # not the event loop's thread (grpc's poller, the access log's writer)
        groups[group(frames)] += int(count)
    # Calls the server answered while py-spy ran, from h2load's rate over its whole run.
    return groups, result.requests_per_second, result.requests_per_second * seconds / cpu if cpu else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="sampling time per variant (default 10)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        body = Path(temporary) / "request.bin"
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        results = {
            name: profile(command, args.seconds, body, Path(temporary) / f"{index}.raw")
            for index, (name, command) in enumerate(VARIANTS.items())
        }
    # Shares of the thread's busy time: how idle it was depends on the load generator, which shares
    # its core with py-spy, not on the server.
    busy = [sum(n for name, n in groups.items() if name != IDLE) for groups, _, _ in results.values()]
    names = sorted({name for groups, _, _ in results.values() for name in groups if name != IDLE and groups[name]})
    width = max(map(len, names))
    print(f"{'share of the event loop thread busy':<{width}}  " + "  ".join(f"{v:>27}" for v in results))
    for name in names:
        shares = [groups[name] / total * 100 for (groups, _, _), total in zip(results.values(), busy, strict=True)]
        print(f"{name:<{width}}  " + "  ".join(f"{share:>26.1f}%" for share in shares))
    print(f"{'calls/s while sampled':<{width}}  " + "  ".join(f"{rate:>27,.0f}" for _, rate, _ in results.values()))
    print(f"{'calls per CPU-second':<{width}}  " + "  ".join(f"{per:>27,.0f}" for _, _, per in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
