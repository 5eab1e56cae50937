"""--processes N: one service in N forked processes sharing its ports, as it behaves with one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.processes.processes import ChildProcess, free_port, runfile
from libs.runtime.channel import BalancedChannel, create_channel
from libs.runtime.metrics_sum import ChildrenMetrics, serve_child_metrics, socket_directory
from libs.runtime.server import SERVING
from libs.runtime.supervisor import RestartPolicy, Supervisor, available_cpus, parse_processes
from libs.runtime.testing.echo import ECHO, EchoProcess, running_echo, sample_sum
from tools.certs.certs import mint_all

PROCESSES = 2


def scrape(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


def handled_echo_calls(metrics_port: int) -> float:
    return sample_sum(scrape(metrics_port), "grpc_server_handled_total", grpc_method="Echo", grpc_code="OK")


def echo_server(*launcher: str, serving: str = "aio") -> contextlib.AbstractContextManager[EchoProcess]:
    """The echo server with --processes 2, started through `launcher` (a command prefix) if given; it
    keeps every line but the access log's."""
    flags = (f"--processes={PROCESSES}", "--drain-seconds=1", "--access-log-interval=0.01", f"--serving={serving}")
    return running_echo(*flags, launcher=launcher, keep=lambda line: '"method":' not in line, stop_timeout=30)


@pytest.fixture(params=list(SERVING))
def server(request: pytest.FixtureRequest) -> Iterator[EchoProcess]:
    with echo_server(serving=request.param) as started:
        yield started


def test_every_process_serves_the_port_and_the_health_port(server: EchoProcess) -> None:
    pids = server.serving_pids(PROCESSES)
    assert server.process.pid not in pids  # the supervisor itself serves nothing
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    text = scrape(server.metrics_port)
    assert sample_sum(text, "supervised_processes") == PROCESSES


def test_metrics_are_the_sum_over_processes_and_access_lines_stay_whole(server: EchoProcess) -> None:
    calls = 60
    pids = []
    for _ in range(calls):  # each on a new connection: both processes answer some
        pids.append(server.pid_of_one_connection())
    assert len(set(pids)) == PROCESSES
    # Every call counted once, whichever process served it (the access log says it was flushed).
    deadline = time.monotonic() + 30
    while handled_echo_calls(server.metrics_port) < calls:
        assert time.monotonic() < deadline, "the calls never all showed in /metrics"
        time.sleep(0.05)
    assert handled_echo_calls(server.metrics_port) == calls
    text = scrape(server.metrics_port)
    one_process_memory = sample_sum(text, "process_resident_memory_bytes") / PROCESSES
    assert one_process_memory > 10e6  # summed: each child reports its own, tens of MB
    assert sample_sum(text, "python_info") == 1  # an information metric is not multiplied
    # Both processes write to one pipe; their lines never mix (libs/runtime/logs.py).
    deadline = time.monotonic() + 10
    while sum('"method":"/test.v1.Echo/Echo"' in line for line in list(server.process.lines)) < calls:
        assert time.monotonic() < deadline, "access lines missing"
        time.sleep(0.05)
    access = [json.loads(line) for line in list(server.process.lines) if '"method":"/test.v1.Echo/Echo"' in line]
    assert len(access) == calls
    assert {entry["code"] for entry in access} == {"OK"}


async def kill_one_during_load(
    port: int, metrics_port: int, calls: int, seconds: float, channels: int = 6
) -> tuple[int, float, list[str]]:
    """`calls` Echo calls over `channels` connections, two at a time on each, within `seconds`; a
    third of the way through, SIGKILL to a process serving one of them. Returns that
    process's pid, the calls /metrics counted just before, and the calls that failed."""
    failures: list[str] = []
    serving: list[int] = []
    done = 0
    deadline = time.monotonic() + seconds
    halfway = asyncio.Event()

    async def caller(channel: BalancedChannel) -> None:
        nonlocal done
        echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
        serving.append(int((await echo(b"pid", timeout=10)).removeprefix(b"pid:")))
        while done < calls and time.monotonic() < deadline:
            done += 1
            try:
                await echo(b"x", timeout=10)
            except grpc.RpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
            if done >= calls // 3:
                halfway.set()

    async def killer() -> tuple[int, float]:
        await halfway.wait()
        counted = await asyncio.to_thread(handled_echo_calls, metrics_port)
        os.kill(serving[0], signal.SIGKILL)
        return serving[0], counted

    # Our clients' channels (retries, reconnection), each with a connection of its own.
    opened = [create_channel(f"127.0.0.1:{port}", tls=None, own_connections=True) for _ in range(channels)]
    try:
        kill = asyncio.ensure_future(killer())
        await asyncio.gather(*(caller(channel) for channel in opened))
        victim, counted = await kill
    finally:
        await asyncio.gather(*(channel.close(None) for channel in opened))
    assert done >= calls, f"only {done} of {calls} calls within {seconds:.0f}s"
    return victim, counted, failures


def test_a_process_killed_under_load_fails_no_call_and_is_replaced(server: EchoProcess) -> None:
    victim, counted, failures = asyncio.run(kill_one_during_load(server.port, server.metrics_port, 1500, 60))
    assert failures == []
    assert counted >= 500
    replaced = server.serving_pids(PROCESSES)
    assert victim not in replaced
    # The dead process's calls still count: the sum never goes back, so rate() sees no reset.
    assert handled_echo_calls(server.metrics_port) >= counted
    assert sample_sum(scrape(server.metrics_port), "supervised_process_deaths_total") == 1
    assert any(f"pid {victim}) was killed by SIGKILL; restarting it" in line for line in server.lines)


def test_sigterm_drains_every_process_and_exits_zero(server: EchoProcess) -> None:
    pids = server.serving_pids(PROCESSES)
    server.process.signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    draining = [line for line in server.lines if "health NOT_SERVING; draining" in line]
    assert len(draining) == PROCESSES


def test_no_thread_of_the_supervisor_but_its_main_one_takes_its_signals(server: EchoProcess) -> None:
    """A process-wide signal goes to any thread not blocking it: a SIGCHLD taken by a logging thread left
    a child unreaped until the stop deadline, and the pod exited 1 after a clean drain."""
    supervisor = server.process.pid
    waited_for = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    threads = [task for task in Path(f"/proc/{supervisor}/task").iterdir() if int(task.name) != supervisor]
    assert threads  # the native-stderr relay and the metrics threads
    for task in threads:
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile (the metrics server's, per request)
            continue
        status = dict(line.split(":\t", 1) for line in text.splitlines())
        blocked = int(status["SigBlk"], 16)
        taken = {signum for signum in waited_for if not blocked & (1 << (signum - 1))}
        assert not taken, f"thread {task.name} ({status['Name']}) may take {sorted(map(signal.Signals, taken))}"


def pid_over_a_new_connection(port: int, credentials: grpc.ChannelCredentials) -> int:
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        answer: bytes = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)(
            b"pid", timeout=10
        )
    return int(answer.removeprefix(b"pid:"))


def client_credentials(certs: Path, ca: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (ca or certs / "ca.pem").read_bytes(),
        (certs / "shop.key").read_bytes(),
        (certs / "shop.pem").read_bytes(),
    )


def test_every_process_picks_up_rotated_certificates(tmp_path: Path) -> None:
    certs, rotated = tmp_path / "certs", tmp_path / "rotated"
    mint_all(certs, services=("orders", "shop"))
    mint_all(rotated, services=("orders", "shop"))  # a whole new CA
    port = free_port()
    tls = [
        f"--tls-{kind}={certs / name}"
        for kind, name in (("cert", "orders.pem"), ("key", "orders.key"), ("ca", "ca.pem"))
    ]
    with ChildProcess(
        "echo",
        [runfile("libs/runtime/echo_server"), "--host=127.0.0.1", f"--port={port}", f"--processes={PROCESSES}", *tls],
    ) as process:
        process.wait_for_port(port)
        before = {pid_over_a_new_connection(port, client_credentials(certs)) for _ in range(40)}
        assert len(before) == PROCESSES
        for name in ("orders.pem", "orders.key", "ca.pem"):
            shutil.copyfile(rotated / name, certs / f".{name}")
            os.replace(certs / f".{name}", certs / name)
        # Every process now wants the new CA on new connections: a client of it reaches both, the old one neither.
        after = {pid_over_a_new_connection(port, client_credentials(rotated)) for _ in range(40)}
        assert after == before
        stale = client_credentials(certs, ca=rotated / "ca.pem")  # certs/shop.* are of the old CA
        for _ in range(20):  # new connections, to either process
            with pytest.raises(grpc.RpcError) as refused:
                pid_over_a_new_connection(port, stale)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def as_pid_one_of_a_new_pid_namespace() -> list[str]:
    """A command prefix that runs a program as pid 1 of a PID namespace of its own, as in every container
    (an ordinary user through a user namespace); the test is skipped, saying why, where that is refused."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    prefix = ["unshare", *user, "--pid", "--fork", "--kill-child"]  # the namespace dies with the test
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(
            f"needs a PID namespace (`{' '.join(prefix)}`, user namespaces as an ordinary user): {probe.stderr}"
        )
    return prefix


def test_as_pid_one_every_process_serves_and_none_dies() -> None:
    """In a container the supervisor is pid 1: its children must not take their parent for dead."""
    with echo_server(*as_pid_one_of_a_new_pid_namespace()) as server:
        pids = server.serving_pids(PROCESSES)
        assert 1 not in pids  # pid 1 is the supervisor, which serves nothing
        time.sleep(1.5)  # a child that wrongly exits is noticed and restarted within 0.5 s
        text = scrape(server.metrics_port)
        assert sample_sum(text, "supervised_process_deaths_total") == 0, server.lines
        assert sample_sum(text, "supervised_processes") == PROCESSES
        assert server.serving_pids(PROCESSES) == pids
        # As the container runtime stops it: SIGTERM to pid 1, whose exit code unshare returns.
        (pid_one,) = map(
            int, Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        )
        os.kill(pid_one, signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert any("SIGTERM received: draining 2 processes" in line for line in server.lines), server.lines


def test_gives_up_with_a_non_zero_exit_when_children_keep_dying() -> None:
    import logging

    policy = RestartPolicy(first_delay=0.01, max_delay=0.02, max_failures=3, window=60)
    supervisor = Supervisor(2, lambda index: 3, logging.getLogger("test"), name="dying", stop_timeout=5, policy=policy)
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("4", 4), ("auto", min(available_cpus(), 64)), (" AUTO ", min(available_cpus(), 64))],
)
def test_process_counts(text: str, expected: int) -> None:
    assert parse_processes(text) == expected


@pytest.mark.parametrize("text", ["0", "65", "-1", "two", ""])
def test_bad_process_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        parse_processes(text)


def test_sums_keep_dead_childrens_counters_and_drop_their_gauges() -> None:
    with socket_directory("sums-test-") as directory:
        check_sums(Path(directory))


def check_sums(directory: Path) -> None:
    children = {101: CollectorRegistry(), 102: CollectorRegistry()}
    for pid, registry in children.items():
        Counter("calls", "Calls.", ["code"], registry=registry).labels("OK").inc(pid - 100)  # 1 and 2
        Gauge("in_flight", "In flight.", registry=registry).set(10)
        Gauge("build_info", "Build.", ["version"], registry=registry).labels("1.0").set(1)
        Gauge("process_start_time_seconds", "Start.", registry=registry).set(1000 + pid)
        serve_child_metrics(directory / f"{pid}.sock", registry)
    sums = ChildrenMetrics(directory)

    def sample(name: str) -> float:
        text = prometheus_client.generate_latest(sums.registry).decode()
        return sample_sum(text, name)

    assert sample("calls_total") == 3
    assert sample("in_flight") == 20
    assert sample("build_info") == 1  # an information metric is not multiplied
    assert sample("process_start_time_seconds") == 1101  # the earliest start
    (directory / "102.sock").unlink()  # as the supervisor does when it reaps a child
    sums.retire(102)
    assert sample("calls_total") == 3  # what the dead child counted stays in the sum
    assert sample("in_flight") == 10  # its gauges do not
