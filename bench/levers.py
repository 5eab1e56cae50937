"""For a target //bench missed: where the server's Python time goes under that row's load, and the lever
that the largest share points at.

py-spy (the lock's wheel) samples the server's threads while they hold the GIL (`--gil`: a thread
waiting for it is not the cost) for `seconds`; with several processes, one of the children.
Each sample is charged to the innermost frame of a known kind (GROUPS, first match from the leaf), so
grpc's code called from our middleware counts as grpc's, and a handler's protobuf work as protobuf's.
"""

from __future__ import annotations

import collections
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import PIN_LOAD, py_spy, start_quiet


@dataclass(frozen=True)
class Group:
    name: str
    paths: tuple[str, ...]  # a frame is of this group when its file's path contains one of these
    lever: str  # what would cut this share, as far as we know it


GROUPS = (  # in this order: a frame of grpc.aio's Cython is grpc.aio's, the rest of grpc's Cython the sync server's
    Group(
        "asyncio and grpc.aio",
        ("/asyncio/", "grpc/aio/", "/_cygrpc/aio/", "/uvloop/"),
        "fewer awaits per call: a service with short unary handlers is served by threads "
        "(services/services.bzl); on grpc.aio each call is a task and several wake-ups of the loop",
    ),
    Group(
        "grpc's sync server (grpc/_server.py and its Cython layer)",
        ("grpc/_server.py", "grpc/_common.py", "grpc/_interceptor.py", "grpc/_utilities.py", "grpc/_cython/"),
        "fewer Python steps per call in the server loop: grpcio's sync server runs its per-call state "
        "machine in Python; a loop that hands gRPC core's events to handlers with less of it (grpcio offers "
        "none: it would be a C extension of ours built by Bazel, weighed against the upgrades it pins)",
    ),
    Group(
        "hand-offs between threads (threading, concurrent.futures, queue)",
        ("/threading.py", "/concurrent/futures/", "/queue.py"),
        "fewer thread wake-ups per call: the polling thread wakes a worker per call and the worker waits "
        "for the request message the polling thread delivers; fewer --threads wake fewer, a loop that "
        "answers short unary calls on the polling thread none (not possible in grpcio's sync server: the "
        "worker waits on events only the polling thread delivers)",
    ),
    Group(
        "ours: middleware, validation, handlers",
        # The workspace's own files, by their runfiles path: every path of a binary's runfiles tree, pip's
        # packages included, lies under bazel-bin/services/... too.
        ("/online_books/libs/", "/online_books/services/"),
        "less per-call work of ours: bench/interceptors measures each hook's instructions; compile the "
        "pipeline (mypyc) where a hook's share is worth a build step",
    ),
    Group(
        "web framework (uvicorn, Starlette, httptools)",
        ("/uvicorn/", "/starlette/", "/httptools/", "/h11/"),
        "fewer ASGI layers per request (each middleware wraps send and receive) or a server doing more "
        "of HTTP/1.1 in C; uvicorn with httptools already parses in C",
    ),
    Group(
        "page templates (Jinja2)",
        ("/jinja2/", "/markupsafe/"),
        "render less per page: shelves' HTML cached per category for the catalog's version",
    ),
    Group(
        "protobuf and JSON mapping",
        ("/google/protobuf/", "/json/"),
        "fewer messages built per call: responses assembled once per catalog version where they repeat",
    ),
    Group(
        "metrics and logging libraries",
        ("/prometheus_client/", "/logging/", "/opentelemetry/"),
        "fewer metric updates per call (labels resolved once per method) and batched log records",
    ),
)
OTHER = Group("other (interpreter start-up frames, the rest of the standard library)", (), "")


def group_of(frames: list[str]) -> Group:
    for frame in reversed(frames):
        path = frame.rpartition("(")[2]
        for group in GROUPS:
            if any(part in path for part in group.paths):
                return group
    return OTHER


def sample(pid: int, seconds: int) -> collections.Counter[Group]:
    """Samples per group of process `pid` over `seconds`, only while holding the GIL."""
    with tempfile.TemporaryDirectory() as temporary:
        raw = Path(temporary) / "samples.raw"
        command = [*PIN_LOAD, py_spy(), "record", "--gil", "--full-filenames", "-r", "200", "-d", str(seconds)]
        subprocess.run(
            [*command, "-f", "raw", "-o", str(raw), "-p", str(pid)],
            capture_output=True,
            check=True,
            timeout=seconds + 60,
        )
        groups: collections.Counter[Group] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            groups[group_of(stack.split(";"))] += int(count)
    return groups


def explain(groups: collections.Counter[Group]) -> list[str]:
    """The shares, largest first, and the largest known group's lever."""
    total = sum(groups.values()) or 1
    lines = [f"    {count / total:6.1%}  {group.name}" for group, count in groups.most_common()]
    known = [group for group, _ in groups.most_common() if group is not OTHER]
    if known:
        lines.append(f"    next lever ({known[0].name.split(' (')[0]}): {known[0].lever}")
    return lines


def first_child(pid: int) -> int:
    """A serving child of a supervisor (libs/runtime/supervisor.py): the children do the same work."""
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def profile_under_load(server: list, port: int, load: list, seconds: int, supervised: bool = False) -> list[str]:
    """Starts `server` (listening on `port`), runs `load` (a load generator running `seconds` + 4 s),
    samples the server (`supervised`: one of its children) while the load runs, and explains the samples."""
    process = start_quiet("profiled", server, port)
    try:
        running = subprocess.Popen(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)  # past the load's ramp-up
            groups = sample(first_child(process.pid) if supervised else process.pid, seconds)
        finally:
            running.wait(timeout=seconds + 120)
    finally:
        process.stop()
    return explain(groups)
