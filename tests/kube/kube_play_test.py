"""The rendered overlays run: `podman kube play` on the YAML that //k8s:render makes, both overlays.

A throwaway docker-registry (Debian's, pinned: //tools/registry) on 127.0.0.1 gets every service's image
from its `:push`, by digest; //k8s:render renders the overlay against it. Each service's Deployment, with
the ConfigMaps it reads, is played in start order (callees first) on a podman network the test makes; podman
pulls the images by digest. Then every pod must pass the probes its spec declares, run as its
securityContext says (uid 65532, no capability, no privilege escalation, read-only root) with as many
serving processes as its CPU limit gives, and never restart; every web service serves its page and reaches
each service it calls from its pod. In prod the pods mount the mTLS Secrets where their spec says, those calls
go over mTLS, and an intruder's certificate or none is refused. Everything the test made (pods,
network, secrets, registry) is removed. As root, or rootless as an ordinary user.

podman kube play (4.3, Debian bookworm) is not a cluster. Where it does not do what one does, the test
stands in for it, and each stand-in is printed with the results (STAND_INS says what and why).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k8s.quantities import downward_value, mebibytes
from k8s.render import render
from libs.processes.processes import ChildProcess, free_port, free_ports, runfile
from services.gateway.testing import check_every_route_reaches_its_method
from services.registry import REGISTRY
from tests.containers.running import (
    INTRUDER,
    check_allow_rules,
    check_refuses_a_client_without_certificate,
    check_runs_as_the_pod_spec_says,
    wait_for_http,
)
from tools.certs.certs import Issued, mint_ca, mint_leaf, write_leaf
from tools.oci.podman import logs, podman, rootless_problem

PLAYED = {"Deployment", "ConfigMap"}  # what the test gives kube play: the pods and what they read
STAND_INS = {
    "kinds": "kube play runs Deployments with their ConfigMaps and "
    "skips Namespace, Service and ServiceAccount; NetworkPolicy, HorizontalPodAutoscaler, PodDisruptionBudget, "
    "Certificate, PodMonitor, PrometheusRule and Ingress need a cluster's controllers: they are not played, "
    "and are checked offline instead (//k8s:references_test, checkov_test, manifests_test)",
    "Ingress": "there is no ingress controller: requests to the public site are routed as the controller "
    "would route them, by the rendered Ingress's rules (host, Prefix and Exact paths as networking.k8s.io/v1 "
    "defines them, the longest match winning) to the backend Service's port, its targetPort on the pod",
    "replicas": "kube play starts every replica on this one host, each publishing the same ports: the test "
    "plays one pod per Deployment (the replica counts are checked by //k8s:manifests_test)",
    "downward API": "kube play has none: an env var from resourceFieldRef gets the value the kubelet computes "
    "(the container's limit over the divisor, rounded up)",
    "Service DNS": "kube play has no Service DNS: a pod that calls <svc>.<namespace>.svc.cluster.local gets "
    "hostAliases with the address of <svc>'s pod, which is what a headless Service's DNS answers",
    "probes": "kube play turns probes into healthchecks run by systemd timers (there is no systemd here) and "
    "has no gRPC probes: the test runs every probe of the pod spec itself, as the kubelet would",
    "limits": "rootless podman cannot set resource limits on cgroup v1 (this machine kind): the test drops "
    "them, after the downward API's value is taken from them",
    "ports": "kube play publishes every containerPort on all host addresses: the test publishes each on "
    "127.0.0.1 at a free port (hostIP, hostPort) instead",
    "Secrets": "cert-manager's Secrets are minted by //tools/certs with each Certificate's names, and stored as "
    "podman secrets in the form kube play 4.3 reads (it mounts a Kubernetes Secret's data undecoded); it "
    "ignores defaultMode and fsGroup, so the key file's mode (0440, group 65532) is not checked here",
}


@dataclass
class Pod:
    """One played Deployment: its container's spec (after the stand-ins) and where its ports are."""

    service: str
    container: dict[str, Any]
    published: dict[int, int] = field(default_factory=dict)  # containerPort → 127.0.0.1 port
    address: str = ""  # on the test's podman network

    @property
    def name(self) -> str:
        """podman's name for the container: <deployment>-pod-0-<container>."""
        return f"{self.service}-pod-0-{self.container['name']}"

    def port(self, port: int | str) -> int:
        """The published port of a containerPort given by number or by name."""
        number = (
            port
            if isinstance(port, int)
            else next(p["containerPort"] for p in self.container["ports"] if p["name"] == port)
        )
        return self.published[number]

    def processes(self) -> int:
        variable = REGISTRY[self.service].processes_variable
        return int(next((e["value"] for e in self.container.get("env", []) if e["name"] == variable), "1"))


def require_tools() -> None:
    missing = [tool for tool in ("podman", "runc", "skopeo") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"needs {', '.join(missing)} (Debian: apt-get install podman runc skopeo; ./bazelw does this)")
    problem = rootless_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry on 127.0.0.1 holding every service's image, pushed by digest with its `:push`."""
    require_tools()
    storage = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    config = storage / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(storage / "data")}},
                "http": {"addr": address},
            }
        )
    )
    # No credentials for it: an auth file of the test's own (skopeo's default path may be root's /run/containers).
    no_credentials = {**os.environ, "REGISTRY_AUTH_FILE": str(storage / "auth.json")}
    with ChildProcess("registry", [runfile("tools/registry/docker_registry"), "serve", config]) as server:
        server.wait_for_port(int(address.split(":")[1]))
        for service in REGISTRY.values():
            pushed = subprocess.run(
                [str(runfile(f"services/{service.package}/push")), address, "--insecure"],
                cwd=runfile("."),
                env=no_credentials,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert pushed.returncode == 0, f":push of {service.name} failed:\n{pushed.stderr}"
        yield address


def downward_api(container: dict[str, Any], used: set[str]) -> None:
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("resourceFieldRef")
        if reference:
            variable["value"] = downward_value(container, reference)
            del variable["valueFrom"]
            used.add("downward API")


def service_dns(pod: dict[str, Any], environment: dict[str, str], played: dict[str, Pod], used: set[str]) -> None:
    """hostAliases for every <svc>.<ns>.svc.cluster.local the pod's environment names."""
    names = {
        match for value in environment.values() for match in re.findall(r"([a-z0-9.-]+\.svc\.cluster\.local)", value)
    }
    aliases: dict[str, list[str]] = {}
    for name in sorted(names):
        callee = played.get(name.split(".")[0])
        assert callee, f"{name} names a service the test has not played (start order?)"
        aliases.setdefault(callee.address, []).append(name)
    if aliases:
        pod["hostAliases"] = [{"ip": ip, "hostnames": hostnames} for ip, hostnames in aliases.items()]
        used.add("Service DNS")


def publish_on_loopback(container: dict[str, Any], used: set[str]) -> dict[int, int]:
    ports = container.get("ports", [])
    for port, free in zip(ports, free_ports(len(ports)), strict=True):
        port["hostIP"], port["hostPort"] = "127.0.0.1", free
        used.add("ports")
    return {port["containerPort"]: port["hostPort"] for port in ports}


def certificate_secrets(objects: list[dict[str, Any]], out: Path, used: set[str], made: list[str]) -> None:
    """podman secrets for every Certificate of the overlay, minted by //tools/certs, each name added to
    `made`; the PEM files are also kept in `out` for the test's own clients (with an intruder's)."""
    certificates = [o for o in objects if o["kind"] == "Certificate"]
    if not certificates:
        return
    ca: Issued = mint_ca()
    (out / "ca.pem").write_bytes(ca.cert_pem)
    write_leaf(out, INTRUDER, mint_leaf(ca, INTRUDER))
    for certificate in certificates:
        spec, namespace = certificate["spec"], certificate["metadata"]["namespace"]
        leaf = mint_leaf(ca, spec["commonName"], namespace)
        sans = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(spec["dnsNames"]) <= set(sans.get_values_for_type(x509.DNSName)), (
            "tools/certs and the Certificate differ"
        )
        write_leaf(out, spec["commonName"], leaf)
        data = {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode(), "ca.crt": ca.cert_pem.decode()}
        secret = out / f"{spec['secretName']}.yaml"
        secret.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "data": data}))
        podman("secret", "create", spec["secretName"], str(secret))
        made.append(spec["secretName"])
        used.add("Secrets")


def stand_ins(
    deployment: dict[str, Any], configs: dict[str, dict[str, Any]], played: dict[str, Pod], used: set[str]
) -> tuple[list[dict[str, Any]], Pod]:
    """The ConfigMaps the Deployment reads, and its pod as kube play will run it: `deployment` changed in
    place where kube play needs a stand-in (each one named in `used`)."""
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    read = [configs[s["configMapRef"]["name"]] for s in container.get("envFrom", []) if "configMapRef" in s]
    if deployment["spec"].get("replicas", 1) != 1:
        deployment["spec"]["replicas"] = 1
        used.add("replicas")
    downward_api(container, used)
    if os.geteuid() != 0 and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        del container["resources"]
        used.add("limits")
    service_dns(spec, {key: value for config in read for key, value in config["data"].items()}, played, used)
    return read, Pod(deployment["metadata"]["name"], container, publish_on_loopback(container, used))


@contextlib.contextmanager
def played(overlay: str, registry: str, scratch: Path) -> Iterator[dict[str, Pod]]:
    """The overlay's pods, played with kube play, and everything made for them removed afterwards."""
    objects = [doc for doc in yaml.safe_load_all(render(overlay, registry)) if doc]
    configs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    used: set[str] = {"kinds", "probes"}
    network = f"obfy-kube-{uuid.uuid4().hex[:8]}"
    files: list[Path] = []
    secrets: list[str] = []
    pods: dict[str, Pod] = {}
    taken = sorted(set(podman("pod", "ps", "--format", "{{.Name}}").split()) & {f"{s}-pod-0" for s in REGISTRY})
    assert not taken, f"pods {taken} exist already; this test removes only what it made"
    podman("network", "create", network)
    try:
        certificate_secrets(objects, scratch, used, secrets)
        for service in REGISTRY.start_order():
            deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == service.name)
            read, pod = stand_ins(deployment, configs, pods, used)
            path = scratch / f"{overlay}-{service.name}.yaml"
            path.write_text(yaml.safe_dump_all([*read, deployment], sort_keys=False))
            files.append(path)
            podman("kube", "play", "--tls-verify=false", f"--network={network}", str(path))
            inspected = json.loads(podman("inspect", pod.name))[0]
            pod.address = inspected["NetworkSettings"]["Networks"][network]["IPAddress"]
            pods[service.name] = pod
        print(f"{overlay}: played {', '.join(pods)} from the rendered YAML; stand-ins:")
        for name in sorted(used):
            print(f"  {name}: {STAND_INS[name]}")
        yield pods
    finally:
        for pod in pods.values():
            print(f"--- {pod.name}\n{logs(pod.name)[-4000:]}")
        for path in reversed(files):
            podman("kube", "down", str(path), check=False)
        for secret in secrets:
            podman("secret", "rm", secret, check=False)
        podman("network", "rm", "--force", network, check=False)
        # The pulled images stay: they are the images //tests/containers loads (the same ID), which
        # `podman rmi` would take from under that test when both run at once.


def grpc_health(port: int, service: str = "") -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError):
        return False


def probe_passes(pod: Pod, probe: dict[str, Any]) -> bool:
    """One probe as the kubelet runs it, against the pod's published ports."""
    if "grpc" in probe:
        return grpc_health(pod.port(probe["grpc"]["port"]), probe["grpc"].get("service", ""))
    if "httpGet" in probe:
        return http_ok(pod.port(probe["httpGet"]["port"]), probe["httpGet"].get("path", "/"))
    if "tcpSocket" in probe:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", pod.port(probe["tcpSocket"]["port"])), 2),
        ):
            return True
        return False
    raise AssertionError(f"{pod.name}: a probe this test cannot run: {probe}")


def check_probes(pod: Pod) -> None:
    """The startup probe within the failures it is allowed (plus slack for a busy test machine), then the
    readiness and liveness probes."""
    startup = pod.container.get("startupProbe")
    if startup:
        deadline = time.monotonic() + startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) + 30
        while not probe_passes(pod, startup):
            assert time.monotonic() < deadline, f"{pod.name}: startupProbe never passed\n{logs(pod.name)[-3000:]}"
            time.sleep(0.2)
    for name in ("readinessProbe", "livenessProbe"):
        assert name in pod.container, f"{pod.name} has no {name}"
        assert probe_passes(pod, pod.container[name]), f"{pod.name}: {name} fails\n{logs(pod.name)[-3000:]}"


def check_runs_as_specified(pod: Pod) -> None:
    state = json.loads(podman("inspect", pod.name))[0]
    assert state["State"]["Running"], state["State"]
    assert state["RestartCount"] == 0, f"{pod.name} restarted {state['RestartCount']} times\n{logs(pod.name)}"
    assert state["HostConfig"]["ReadonlyRootfs"] is pod.container["securityContext"]["readOnlyRootFilesystem"]
    check_runs_as_the_pod_spec_says(state["State"]["Pid"], pod.processes())
    if "resources" in pod.container:
        assert state["HostConfig"]["Memory"] == mebibytes(pod.container["resources"]["limits"]["memory"]) * 2**20
    assert "restarting it" not in logs(pod.name)


def check_web_services(pods: dict[str, Pod]) -> None:
    """Every web service serves its page, and its /readyz reports each service it calls SERVING: a call
    from its pod to theirs, through their Services, over mTLS where the overlay has it."""
    for name, pod in pods.items():
        if REGISTRY[name].kind == "http":
            wait_for_http(f"http://127.0.0.1:{pod.port('http')}/")
            ready = json.loads(wait_for_http(f"http://127.0.0.1:{pod.port('http')}/readyz"))
            assert ready == {"status": "ready", **{callee: "SERVING" for callee in REGISTRY.calls(name)}}, name


def check_pods(pods: dict[str, Pod]) -> None:
    for pod in pods.values():
        check_probes(pod)
    check_web_services(pods)
    time.sleep(2)  # a child that wrongly exits, or a container that crashes, shows by now
    for pod in pods.values():
        check_runs_as_specified(pod)


def test_dev_overlay_runs_and_serves_the_page(registry: str, tmp_path: Path) -> None:
    with played("dev", registry, tmp_path) as pods:
        check_pods(pods)


def path_matches(rule: dict[str, Any], path: str) -> bool:
    """Whether an Ingress path rule takes a request's path (networking.k8s.io/v1: Exact is the whole path;
    Prefix matches element by element, so /v1 takes /v1 and /v1/x but not /v1x)."""
    wanted, asked = rule["path"], path.split("?", 1)[0]
    if rule["pathType"] == "Exact":
        return asked == wanted
    prefix = [part for part in wanted.split("/") if part]
    return [part for part in asked.split("/") if part][: len(prefix)] == prefix


def through_the_ingress(objects: list[dict[str, Any]], pods: dict[str, Pod]) -> Callable[[str], str]:
    """url_of(path): where the public site's Ingress sends https://<its host><path>, as a URL of the
    backend Service's pod (its port's targetPort, published on loopback)."""
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}

    def url_of(path: str) -> str:
        taken = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"] if path_matches(p, path)]
        assert taken, f"the Ingress routes no rule to {path}"
        backend = max(taken, key=lambda p: len(p["path"]))["backend"]["service"]
        port = backend["port"]
        (service_port,) = [
            p
            for p in services[backend["name"]]["spec"]["ports"]
            if ("number" in port and p["port"] == port["number"]) or ("name" in port and p.get("name") == port["name"])
        ]
        target = pods[backend["name"]].port(service_port.get("targetPort", service_port["port"]))
        return f"http://127.0.0.1:{target}{path}"

    return url_of


def test_prod_overlay_runs_over_mtls_with_several_processes_per_pod(registry: str, tmp_path: Path) -> None:
    with played("prod", registry, tmp_path) as pods:
        assert all(pod.processes() >= 2 for pod in pods.values())  # the limit of 2 CPUs: a supervisor as pid 1
        check_pods(pods)
        for pod in pods.values():
            service = REGISTRY[pod.service]
            if service.kind == "grpc":
                target = f"127.0.0.1:{pod.port('grpc')}"
                check_allow_rules(service, tmp_path, target)
                check_refuses_a_client_without_certificate(target, tmp_path / "ca.pem")
        # The JSON API through the public site's routes: each gateway route, at the pod the Ingress picks.
        url_of = through_the_ingress([o for o in yaml.safe_load_all(render("prod", registry)) if o], pods)
        print(f"  Ingress: {STAND_INS['Ingress']}")
        for name in REGISTRY.gateways():
            check_every_route_reaches_its_method(f"http://127.0.0.1:{pods[name].port('http')}/", url_of)
