"""The rendered manifests: schema-valid, hardened, and consistent with what the services really do.

Every test runs on the YAML that `//k8s:render` produces for each overlay (so on exactly what would be
applied), for every service of services/services.bzl. Schemas: kubernetes-validate --strict against
Kubernetes 1.31. Consistency: ports, probes, environment variable names, TLS paths, certificates and
network policies are compared with the list and with the services' own parsers, routes and images.
Beside this: what a cluster resolves between the objects (references_test), checkov itself
(checkov_test), and the overlays run under podman kube play (//tests/kube:kube_play_test).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import math
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from k8s.quantities import cpus, downward_value, mebibytes
from k8s.render import compose, digests, render
from libs.http.app import PROBES
from libs.processes.processes import runfile
from libs.runtime.config import flag_environment
from services.registry import REGISTRY, Service
from tools.certs.certs import service_dns_names
from tools.oci.oci import read_layout

KUBERNETES = "1.31.0"
IMAGE_REGISTRY = "registry.test/books"
NAMESPACE = "books"
OVERLAYS = ("dev", "prod")
SERVICES = list(REGISTRY)
GRPC = [name for name in SERVICES if REGISTRY[name].kind == "grpc"]
HTTP = [name for name in SERVICES if REGISTRY[name].kind == "http"]


def parser(service: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"services.{REGISTRY[service].package}.main").parser()


@functools.cache
def objects(overlay: str) -> tuple[dict, ...]:
    return tuple(doc for doc in yaml.safe_load_all(render(overlay, IMAGE_REGISTRY)) if doc)


def find(overlay: str, kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects(overlay) if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(overlay: str, kind: str, name: str) -> dict:
    (found,) = find(overlay, kind, name)
    return found


def pod_spec(overlay: str, service: str) -> dict:
    return one(overlay, "Deployment", service)["spec"]["template"]["spec"]


def pod_labels(overlay: str, service: str) -> dict:
    return one(overlay, "Deployment", service)["spec"]["template"]["metadata"]["labels"]


def container(overlay: str, service: str) -> dict:
    (only,) = pod_spec(overlay, service)["containers"]
    return only


def environment(overlay: str, service: str) -> dict[str, str]:
    """What the container's process sees: its ConfigMaps (envFrom), then its own `env`."""
    spec = container(overlay, service)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(one(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update(
        {
            item["name"]: item.get("value") or downward_value(spec, item["valueFrom"]["resourceFieldRef"])
            for item in spec.get("env", [])
        }
    )
    return env


def effective_flags(overlay: str, service: str, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The service's own parser, run with the manifest's environment: what it will listen on."""
    for name in flag_environment(parser(service)):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment(overlay, service).items():
        monkeypatch.setenv(name, value)
    return parser(service).parse_args([])


def ports(overlay: str, service: str) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(overlay, service)["ports"]}


def image_config(service: str) -> dict:
    return read_layout(runfile(REGISTRY[service].image)).config["config"]


def selects(selector: dict, service: str) -> bool:
    """Whether a NetworkPolicy peer's podSelector picks `service`'s pods (and nothing else by accident)."""
    return selector.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": service}


# --- every overlay renders and validates -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_service_with_its_image_pinned_by_the_built_digest(overlay: str) -> None:
    built = digests()
    assert sorted(o["metadata"]["name"] for o in find(overlay, "Deployment")) == sorted(SERVICES)
    for service in SERVICES:
        repository = REGISTRY[service].repository
        assert container(overlay, service)["image"] == f"{IMAGE_REGISTRY}/{repository}@{built[repository]}"
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in objects(overlay) if o["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly_against_the_pinned_kubernetes(overlay: str) -> None:
    for document in objects(overlay):
        if document["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/")):
            continue  # CRDs: no schema in kubernetes-validate; test_certificates_* and test_monitoring_* check them
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Control for the test above: a misspelt field must not pass silently."""
    broken = copy.deepcopy(one("prod", "Deployment", SERVICES[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"grpc": {"port": 50052}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_kustomize_tree_can_be_kept_for_kubectl_apply_k(tmp_path: Path) -> None:
    top = compose("prod", IMAGE_REGISTRY, tmp_path)
    assert (top / "kustomization.yaml").is_file()
    generated = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("services.yaml"))
    assert generated == [
        "base/services.yaml",
        "components/cert-manager/services.yaml",
        "components/monitoring/services.yaml",
        "components/mtls/services.yaml",
        "components/network-policy/services.yaml",
        "components/plaintext/services.yaml",
        "overlays/prod/services.yaml",
    ]
    for path in tmp_path.rglob("services.yaml"):
        assert path.read_text().startswith("# Generated by k8s/generate.py")


# --- pod security: ours, beside checkov's (//k8s:checkov_test) --------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_pods_run_as_the_images_user_in_a_restricted_namespace(overlay: str, service: str) -> None:
    assert pod_spec(overlay, service)["securityContext"]["runAsUser"] == 65532
    assert (
        one(overlay, "Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_prod_runs_three_or_more_replicas_scaled_on_cpu_with_a_budget(service: str) -> None:
    assert one("prod", "Deployment", service)["spec"]["replicas"] >= 3
    hpa = one("prod", "HorizontalPodAutoscaler", service)["spec"]
    assert hpa["scaleTargetRef"]["name"] == service
    assert hpa["minReplicas"] >= 3
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    budget = one("prod", "PodDisruptionBudget", service)["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels("prod", service).items()


MEMORY_PER_PROCESS_MI = 128  # a serving process's resident memory is 40-80 MB (bench/RESULTS.md)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_one_serving_process_per_cpu_of_the_limit_with_memory_for_each(overlay: str, service: str) -> None:
    settings = container(overlay, service)
    (variable,) = [each for each in settings.get("env", []) if each["name"] == REGISTRY[service].processes_variable]
    assert variable["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu", "divisor": "1"}
    requests, limits = settings["resources"]["requests"], settings["resources"]["limits"]
    processes = math.ceil(cpus(limits["cpu"]))  # what the downward API gives for divisor 1
    assert mebibytes(limits["memory"]) >= processes * MEMORY_PER_PROCESS_MI
    if overlay == "prod":
        # Whole CPUs, requested as much as allowed: a core for each process, never throttled.
        assert processes >= 2
        assert cpus(requests["cpu"]) == cpus(limits["cpu"]) == processes
        target = one("prod", "HorizontalPodAutoscaler", service)["spec"]["metrics"][0]["resource"]["target"]
        assert target["type"] == "Utilization"
        assert 50 <= target["averageUtilization"] <= 80


@pytest.mark.parametrize("service", SERVICES)
def test_monitoring_scrapes_every_service_on_the_port_serving_its_metrics(service: str) -> None:
    monitor = one("prod", "PodMonitor", service)["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels("prod", service).items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    ports = {port["name"]: port["containerPort"] for port in container("prod", service)["ports"]}
    entry = REGISTRY[service]
    assert ports[endpoint["port"]] == (entry.ports["metrics"] if entry.kind == "grpc" else entry.port)
    assert endpoint["path"] == "/metrics"
    assert not find("dev", "PodMonitor")  # dev clusters have no prometheus-operator


def test_monitoring_rule_is_the_tested_rules_file_and_passes_promtool(tmp_path: Path) -> None:
    rendered = one("prod", "PrometheusRule", "online-books")["spec"]
    assert rendered == {"groups": yaml.safe_load(runfile("monitoring/rules.yaml").read_text())["groups"]}
    extracted = tmp_path / "rules.yaml"
    extracted.write_text(yaml.safe_dump(rendered))
    checked = subprocess.run(
        [str(runfile("tools/monitoring/promtool")), "check", "rules", str(extracted)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prod_denies_by_default_and_routes_the_ingress_only_to_public_services() -> None:
    deny = one("prod", "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    backends = {
        path["backend"]["service"]["name"]
        for ingress in find("prod", "Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {name for name in SERVICES if REGISTRY[name].public}


def ingress_backend(path: str) -> str | None:
    """The Service the prod Ingress sends `path` to (Kubernetes' Exact and Prefix matching), if any."""
    for ingress in find("prod", "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for entry in rule["http"]["paths"]:
                prefix = entry["path"].rstrip("/")
                if (entry["pathType"] == "Exact" and path == entry["path"]) or (
                    entry["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/") or not prefix)
                ):
                    return str(entry["backend"]["service"]["name"])
    return None


@pytest.mark.parametrize("path", [*PROBES, "/metrics/", "/healthz/x"])
def test_the_ingress_does_not_publish_metrics_or_probes(path: str) -> None:
    assert ingress_backend(path) is None


@pytest.mark.parametrize("service", [name for name in SERVICES if REGISTRY[name].public])
def test_the_ingress_routes_each_public_path_to_its_service_and_nothing_else(service: str) -> None:
    for path in REGISTRY[service].public:
        assert ingress_backend(path) == service
        if path != "/":  # Exact: "/" and nothing below it
            assert ingress_backend(f"{path}/x") == service
    assert ingress_backend("/no-public-service-has-this") is None


def test_dev_runs_one_plaintext_replica_of_every_service_with_prods_network_policies() -> None:
    for service in SERVICES:
        assert one("dev", "Deployment", service)["spec"]["replicas"] == 1
        assert environment("dev", service)[f"{REGISTRY[service].env_prefix}_INSECURE"] == "true"
    assert find("dev", "NetworkPolicy") == find("prod", "NetworkPolicy")
    assert not find("dev", "Certificate")


# --- consistency with the list and the services ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_set_is_one_the_service_reads(overlay: str, service: str) -> None:
    known = flag_environment(parser(service))
    unknown = sorted(set(environment(overlay, service)) - set(known))
    assert not unknown, f"{service} does not read {unknown}; it reads {sorted(known)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_no_variable_is_set_both_in_a_config_map_and_in_the_container(overlay: str, service: str) -> None:
    """Kubernetes lets the container's `env` win, podman kube play its ConfigMaps: set once, or the two differ."""
    spec = container(overlay, service)
    from_maps = {
        key for s in spec.get("envFrom", []) for key in one(overlay, "ConfigMap", s["configMapRef"]["name"])["data"]
    }
    assert not from_maps & {variable["name"] for variable in spec.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", GRPC)
def test_grpc_ports_probes_and_metrics_match_the_list_and_what_it_listens_on(
    overlay: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = REGISTRY[service]
    flags = effective_flags(overlay, service, monkeypatch)
    declared = ports(overlay, service)
    assert declared == {"grpc": flags.port, "grpc-health": flags.health_port, "metrics": flags.metrics_port}
    assert declared == {
        "grpc": entry.ports["grpc"],
        "grpc-health": entry.ports["health"],
        "metrics": entry.ports["metrics"],
    }
    spec = container(overlay, service)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == flags.health_port, probe
        assert spec[probe]["grpc"].get("service", "") in ("", entry.grpc_service), probe
    annotations = one(overlay, "Deployment", service)["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == flags.metrics_port
    assert {f"{port}/tcp" for port in declared.values()} == set(image_config(service)["ExposedPorts"])
    grace = pod_spec(overlay, service)["terminationGracePeriodSeconds"]
    assert grace > float(flags.drain_seconds) + float(flags.shutdown_grace)
    assert one(overlay, "Service", service)["spec"]["clusterIP"] == "None"  # headless: per-request balancing


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", HTTP)
def test_http_port_matches_the_list_what_it_listens_on_and_its_image(
    overlay: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = effective_flags(overlay, service, monkeypatch)
    assert ports(overlay, service) == {"http": int(flags.port)} == {"http": REGISTRY[service].port}
    spec = container(overlay, service)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"]["port"] in ("http", int(flags.port)), probe
    annotations = one(overlay, "Deployment", service)["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == int(flags.port)
    assert set(image_config(service)["ExposedPorts"]) == {f"{flags.port}/tcp"}
    grace = pod_spec(overlay, service)["terminationGracePeriodSeconds"]
    assert grace > float(flags.drain_seconds) + float(flags.shutdown_grace)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", HTTP)
def test_http_probe_and_metrics_paths_are_what_every_web_app_serves(overlay: str, service: str) -> None:
    """libs/http/app.py's web_app serves the probes and /metrics of every web service, whatever its routes."""
    spec = container(overlay, service)
    assert spec["startupProbe"]["httpGet"]["path"] == spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"  # 503 while draining before a stop
    annotations = one(overlay, "Deployment", service)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert {"/healthz", "/readyz", "/metrics"} == set(PROBES)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_the_service_selects_its_pods_and_names_real_ports(overlay: str, service: str) -> None:
    spec = one(overlay, "Service", service)["spec"]
    assert spec["selector"].items() <= pod_labels(overlay, service).items()
    for port in spec["ports"]:
        assert port["targetPort"] in ports(overlay, service), port


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", [name for name in SERVICES if REGISTRY.calls(name)])
def test_callers_reach_every_callee_by_its_dns_name_and_certificate_name(
    overlay: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = effective_flags(overlay, service, monkeypatch)
    for callee in (REGISTRY[name] for name in REGISTRY.calls(service)):
        grpc_port = next(p for p in one(overlay, "Service", callee.name)["spec"]["ports"] if p["name"] == "grpc")
        expected = f"dns:///{callee.name}.{NAMESPACE}.svc.cluster.local:{grpc_port['port']}"
        assert getattr(flags, f"{callee.package}_addr") == expected
        assert getattr(flags, f"{callee.package}_tls_name") == callee.name


@pytest.mark.parametrize("service", SERVICES)
def test_mtls_files_are_the_mounted_secret_of_its_certificate(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flags = effective_flags("prod", service, monkeypatch)
    certificate = one("prod", "Certificate", service)["spec"]
    (mount,) = [m for m in container("prod", service)["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in pod_spec("prod", service)["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == certificate["secretName"]
    assert mount["readOnly"] is True
    files = {flags.tls_cert, flags.tls_key, flags.tls_ca}
    assert files == {str(Path(mount["mountPath"]) / key) for key in ("tls.crt", "tls.key", "ca.crt")}
    assert not flags.insecure


@pytest.mark.parametrize("service", SERVICES)
def test_certificates_name_the_identities_the_services_authorise(service: str) -> None:
    certificate = one("prod", "Certificate", service)["spec"]
    assert certificate["dnsNames"] == [n for n in service_dns_names(service, NAMESPACE) if n != "localhost"]
    assert certificate["dnsNames"][0] == certificate["commonName"] == service  # the identity `allow` names
    assert {"server auth", "client auth"} <= set(certificate["usages"])


@pytest.mark.parametrize("service", SERVICES)
def test_network_policy_lets_in_exactly_the_callers_the_ingress_and_prometheus(service: str) -> None:
    entry: Service = REGISTRY[service]
    policy = one("prod", "NetworkPolicy", service)["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": service}
    allowed: set[tuple[str, int]] = set()
    for rule in policy["ingress"]:
        for peer in rule["from"]:
            names = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            source = names or peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            allowed |= {(source, port["port"]) for port in rule["ports"]}
    metrics = entry.ports["metrics"] if entry.kind == "grpc" else entry.port
    expected = {("monitoring", metrics)} | {(caller, entry.port) for caller in entry.callers}
    if entry.public:
        expected.add(("ingress-nginx", entry.port))
    assert allowed == expected


@pytest.mark.parametrize("service", SERVICES)
def test_network_policy_lets_out_exactly_the_calls_the_list_allows_and_dns(service: str) -> None:
    policy = one("prod", "NetworkPolicy", service)["spec"]
    calls = {(callee, REGISTRY[callee].port) for callee in REGISTRY.calls(service)}
    reached = {
        (peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name", "kube-dns"), port["port"])
        for rule in policy.get("egress", [])
        for peer in rule["to"]
        for port in rule["ports"]
    }
    assert reached == (calls | {("kube-dns", 53)} if calls else set())
    assert ("Egress" in policy["policyTypes"]) == bool(calls)
