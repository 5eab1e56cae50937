"""What the image tests ask of a service running in a container, wherever it runs (`podman run` in
container_test, `podman kube play` of the rendered overlays in //tests/kube): its API and allow rules
under mTLS, its HTTP answers, and how its processes really run (user, capabilities, children).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from libs.runtime.reflection_client import ReflectionClient
from libs.runtime.tls import TlsFiles, channel_credentials
from services.registry import Service

NONROOT = 65532  # the images' user (tools/oci)
INTRUDER = "intruder"  # a certificate from our CA whose name no `allow` lists


def wait_for_http(url: str, timeout: float = 30) -> bytes:
    """The body of the first answer of `url`, retried until it answers (HTTPError: it answered non-2xx)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def reflection_client(certs: Path, identity: str, target: str) -> tuple[grpc.Channel, ReflectionClient]:
    """A channel presenting `identity`'s certificate (certs/<identity>.pem, .key and ca.pem)."""
    files = TlsFiles(certs / f"{identity}.pem", certs / f"{identity}.key", certs / "ca.pem")
    channel = grpc.secure_channel(target, channel_credentials(files))
    return channel, ReflectionClient(channel)


def check_allow_rules(service: Service, certs: Path, target: str) -> None:
    """Every method of `service` at `target`: its API found by reflection, and PERMISSION_DENIED for the
    intruder only (an allowed caller's empty request may be refused, but never by the allowlist)."""
    for method, callers in service.allow.items():
        for identity in [*callers, INTRUDER]:
            channel, client = reflection_client(certs, identity, target)
            with channel:
                assert service.grpc_service in client.services()
                empty: dict[str, Any] | list[dict[str, Any]] = {}
                if client.method(service.grpc_service, method).client_streaming:
                    empty = [{}]
                try:
                    client.call(service.grpc_service, method, empty)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
            assert (code == grpc.StatusCode.PERMISSION_DENIED) == (identity == INTRUDER), (method, identity, code)


def check_refuses_a_client_without_certificate(target: str, ca: Path) -> None:
    """mTLS: a client that trusts the server but shows no certificate never gets a call through."""
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes())) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
            ready = True
        except grpc.FutureTimeoutError:
            ready = False
    assert not ready, f"{target} accepted a TLS client without a certificate"


@dataclass(frozen=True)
class ProcessState:
    """A container's first process as the kernel sees it, in the container's own ids."""

    uids: list[int]  # real, effective, saved, file system
    gids: list[int]
    effective_capabilities: int
    no_new_privileges: bool
    children: int


def process_state(host_pid: int) -> ProcessState:
    """The state of the process with `host_pid`: ids mapped back through its user namespace (identity for
    rootful podman), its effective capability set and no_new_privs flag, and how many children it has."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{host_pid}/status").read_text().splitlines() if ":" in line
    )

    def inside(ids: list[int], map_file: str) -> list[int]:
        rows = [list(map(int, line.split())) for line in Path(f"/proc/{host_pid}/{map_file}").read_text().splitlines()]
        return [next(i - out + start for start, out, count in rows if out <= i < out + count) for i in ids]

    children = Path(f"/proc/{host_pid}/task/{host_pid}/children").read_text().split()
    return ProcessState(
        uids=inside([int(n) for n in status["Uid"].split()], "uid_map"),
        gids=inside([int(n) for n in status["Gid"].split()], "gid_map"),
        effective_capabilities=int(status["CapEff"].strip(), 16),
        no_new_privileges=status["NoNewPrivs"].strip() == "1",
        children=len(children),
    )


def check_runs_as_the_pod_spec_says(host_pid: int, processes: int) -> None:
    """As the overlays' securityContext says: the non-root user, no capability, no privilege escalation;
    and `processes` serving processes (a supervisor over that many children when more than one)."""
    state = process_state(host_pid)
    assert state.uids == [NONROOT] * 4
    assert state.gids == [NONROOT] * 4
    assert state.effective_capabilities == 0
    assert state.no_new_privileges
    assert state.children == (processes if processes > 1 else 0), state
