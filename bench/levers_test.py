"""Samples are charged to the innermost frame of a known kind, with py-spy's frame format."""

from __future__ import annotations

import collections

from bench.levers import GROUPS, OTHER, explain, group_of

# Paths as py-spy --full-filenames gives them for a Bazel binary: pip's packages live in its runfiles tree
# too, under bazel-bin/services/..., and the standard library in the interpreter's own directory.
BIN = "/root/.cache/bazel/_bazel_root/x/execroot/online_books/bazel-out/k8-fastbuild/bin"
RUNFILES = f"{BIN}/services/recommendations/recommendations.runfiles"
SITE = f"{RUNFILES}/pypi/site-packages"
OURS = f"{RUNFILES}/online_books"
STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"


def frames(*paths: str) -> list[str]:
    return [f"f{index} ({path}:{index + 1})" for index, path in enumerate(paths)]


def named(name: str):
    return next(group for group in GROUPS if group.name.startswith(name))


def test_the_innermost_known_frame_decides() -> None:
    worker = (f"{STDLIB}/threading.py", f"{SITE}/grpc/_server.py", f"{OURS}/libs/interceptors/core.py")
    assert group_of(frames(*worker)) is named("ours")
    assert group_of(frames(*worker, f"{SITE}/google/protobuf/json_format.py")) is named("protobuf")
    assert group_of(frames(*worker[:2])) is named("grpc's sync server")
    assert group_of(frames(*worker, f"{STDLIB}/concurrent/futures/thread.py")) is named("hand-offs")
    assert group_of(frames(*worker, f"{OURS}/services/recommendations/servicer.py")) is named("ours")
    assert group_of(frames(*worker, f"{SITE}/prometheus_client/metrics.py")) is named("metrics")
    aio = f"{SITE}/grpc/_cython/_cygrpc/aio/server.pyx.pxi"
    assert group_of(frames(f"{SITE}/grpc/_cython/_cygrpc/channel.pyx.pxi")) is named("grpc's sync server")
    assert group_of(frames(aio)) is named("asyncio")
    assert group_of(frames("<frozen importlib._bootstrap>")) is OTHER


def test_explain_gives_shares_largest_first_and_the_lever_of_the_largest_known_group() -> None:
    samples = collections.Counter({OTHER: 60, named("hand-offs"): 30, named("ours"): 10})
    lines = explain(samples)
    assert [line.split("%")[0].strip() for line in lines[:3]] == ["60.0", "30.0", "10.0"]
    assert lines[-1].startswith("    next lever (hand-offs between threads):")
    assert named("hand-offs").lever in lines[-1]
