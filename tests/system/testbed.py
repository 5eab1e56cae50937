"""A multi-host test bed on one machine: network namespaces joined by a bridge, one per "host".

    with Testbed() as bed:
        rec1 = bed.host("rec1")            # its own namespace, address 10.77.0.1 on eth0
        process = rec1.spawn([...])        # `ip netns exec` it there
        bed.cut(rec1) / bed.mend(rec1)     # take its link down (packets vanish) and up again

The bridge lives in a namespace of its own ("hub"), so nothing is added to the machine's own network
and only addresses inside these namespaces are ever used. Every namespace carries this process's pid
in its name; leftovers of a test process that died are removed when the next test bed starts, and
everything is removed on exit, also after a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.processes.processes import ChildProcess

PREFIX = "obfy"
SUBNET = "10.77.0"
_OURS = re.compile(rf"^{PREFIX}-(\d+)-")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def remove_leftovers() -> None:
    """Deletes namespaces of test beds whose process is gone."""
    for name in namespaces():
        match = _OURS.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            ip("netns", "delete", name, check=False)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    port_on_bridge: str  # the veth end in the hub, which `cut` takes down
    processes: list[ChildProcess] = field(default_factory=list)

    def spawn(self, name: str, command: list[Any], **kwargs: Any) -> ChildProcess:
        """Starts command in this host's namespace; the pid is the program's own (ip netns exec execs it)."""
        process = ChildProcess(name, ["ip", "netns", "exec", self.namespace, *command], **kwargs).start()
        self.processes.append(process)
        return process

    def run(self, command: list[Any], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *map(str, command)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


class Testbed:
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self) -> None:
        self.tag = f"{PREFIX}-{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.hosts: list[Host] = []

    def __enter__(self) -> Testbed:
        remove_leftovers()
        ip("netns", "add", self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        return self

    def host(self, name: str) -> Host:
        number = len(self.hosts) + 1
        namespace, port = f"{self.tag}-{name}", f"p{number}"
        address = f"{SUBNET}.{number}"
        ip("netns", "add", namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, namespace, address, port)
        self.hosts.append(host)
        return host

    def cut(self, host: Host) -> None:
        """The cable is pulled: the host's bridge port goes down and packets vanish without a reset."""
        ip("-n", self.hub, "link", "set", host.port_on_bridge, "down")

    def mend(self, host: Host) -> None:
        ip("-n", self.hub, "link", "set", host.port_on_bridge, "up")

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts:
            for process in host.processes:
                process.stop()
        for name in namespaces():
            if name.startswith(self.tag + "-"):
                ip("netns", "delete", name, check=False)
