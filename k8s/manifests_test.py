"""The rendered manifests: schema-valid, hardened, and consistent with what the services really do.

Every test runs on the YAML that `//k8s:render` produces for each overlay (so on exactly what would be
applied). Schemas: kubernetes-validate --strict against Kubernetes 1.31. Policy: the pod-security
checks of checkov's Kubernetes framework, by their IDs (checkov itself would add 70 packages, numpy and
boto3 among them, to the one lock file and move our pins). Consistency: ports, probes, environment
variable names and TLS paths are compared with the services' own parsers, routes and images.
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from k8s.render import IMAGES, digests, render
from libs.processes.processes import runfile
from libs.runtime.config import flag_environment
from services.marketplace import app as marketplace_app
from services.marketplace import main as marketplace_main
from services.recommendations import main as recommendations_main
from services.recommendations.servicer import SERVICE_NAME
from services.registry import REGISTRY
from tools.certs.certs import service_dns_names
from tools.oci.oci import read_layout

KUBERNETES = "1.31.0"
IMAGE_REGISTRY = "registry.test/books"
NAMESPACE = "books"
OVERLAYS = ("dev", "prod")
SERVICES = ("recommendations", "marketplace")
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "recommendations": recommendations_main.parser,
    "marketplace": marketplace_main.parser,
}


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


def container(overlay: str, service: str) -> dict:
    (only,) = pod_spec(overlay, service)["containers"]
    return only


def environment(overlay: str, service: str) -> dict[str, str]:
    """What the container's process sees: its ConfigMaps (envFrom), then its own `env`."""
    spec = container(overlay, service)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(one(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({item["name"]: item["value"] for item in spec.get("env", [])})
    return env


def effective_flags(overlay: str, service: str, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The service's own parser, run with the manifest's environment: what it will listen on."""
    for name in flag_environment(PARSERS[service]()):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment(overlay, service).items():
        monkeypatch.setenv(name, value)
    return PARSERS[service]().parse_args([])


def ports(overlay: str, service: str) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(overlay, service)["ports"]}


def image_config(service: str) -> dict:
    return read_layout(runfile(f"services/{service}/image")).config["config"]


# --- every overlay renders and validates -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_images_pinned_by_the_built_digests(overlay: str) -> None:
    built = digests()
    for service in SERVICES:
        name = f"online-books/{service}"
        assert container(overlay, service)["image"] == f"{IMAGE_REGISTRY}/{name}@{built[name]}"
    assert set(IMAGES) == {f"online-books/{service}" for service in SERVICES}
    assert all(o["metadata"].get("namespace", NAMESPACE) == NAMESPACE for o in objects(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly_against_the_pinned_kubernetes(overlay: str) -> None:
    for document in objects(overlay):
        if document["apiVersion"].startswith("cert-manager.io/"):
            continue  # a CRD: no schema in kubernetes-validate; test_certificates_* checks it
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Control for the test above: a misspelt field must not pass silently."""
    broken = copy.deepcopy(one("prod", "Deployment", "recommendations"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"grpc": {"port": 50052}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


# --- policy: checkov's Kubernetes pod checks ------------------------------------------------------------

# checkov ID → why it does not apply here. Nothing else may be waived.
WAIVERS = {
    "CKV_K8S_15": "imagePullPolicy Always: images are pinned by digest, so IfNotPresent can only reuse the same bytes",
}

POD_CHECKS: dict[str, tuple[str, Callable[[dict, dict], bool]]] = {
    "CKV_K8S_8": ("liveness probe", lambda c, p: "livenessProbe" in c),
    "CKV_K8S_9": ("readiness probe", lambda c, p: "readinessProbe" in c),
    "CKV_K8S_10": ("CPU request", lambda c, p: "cpu" in c["resources"]["requests"]),
    "CKV_K8S_11": ("CPU limit", lambda c, p: "cpu" in c["resources"]["limits"]),
    "CKV_K8S_12": ("memory request", lambda c, p: "memory" in c["resources"]["requests"]),
    "CKV_K8S_13": ("memory limit", lambda c, p: "memory" in c["resources"]["limits"]),
    "CKV_K8S_14": ("image not :latest", lambda c, p: not c["image"].endswith(":latest") and "@sha256:" in c["image"]),
    "CKV_K8S_15": ("imagePullPolicy Always", lambda c, p: c.get("imagePullPolicy") == "Always"),
    "CKV_K8S_16": ("not privileged", lambda c, p: not c["securityContext"].get("privileged", False)),
    "CKV_K8S_17": ("no hostPID", lambda c, p: not p.get("hostPID", False)),
    "CKV_K8S_18": ("no hostIPC", lambda c, p: not p.get("hostIPC", False)),
    "CKV_K8S_19": ("no hostNetwork", lambda c, p: not p.get("hostNetwork", False)),
    "CKV_K8S_20": ("no privilege escalation", lambda c, p: c["securityContext"]["allowPrivilegeEscalation"] is False),
    "CKV_K8S_22": ("read-only root file system", lambda c, p: c["securityContext"]["readOnlyRootFilesystem"] is True),
    "CKV_K8S_23": ("not root", lambda c, p: p["securityContext"]["runAsNonRoot"] is True),
    "CKV_K8S_25": ("no added capabilities", lambda c, p: not c["securityContext"]["capabilities"].get("add")),
    "CKV_K8S_28": ("NET_RAW dropped", lambda c, p: "ALL" in c["securityContext"]["capabilities"]["drop"]),
    "CKV_K8S_29": ("pod securityContext", lambda c, p: bool(p.get("securityContext"))),
    "CKV_K8S_30": ("container securityContext", lambda c, p: bool(c.get("securityContext"))),
    "CKV_K8S_31": (
        "seccomp RuntimeDefault",
        lambda c, p: p["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
    ),
    "CKV_K8S_37": ("all capabilities dropped", lambda c, p: c["securityContext"]["capabilities"]["drop"] == ["ALL"]),
    "CKV_K8S_38": ("no service account token", lambda c, p: p["automountServiceAccountToken"] is False),
    "CKV_K8S_40": ("high uid (>= 10000)", lambda c, p: p["securityContext"]["runAsUser"] >= 10000),
    "CKV_K8S_43": ("image by digest", lambda c, p: "@sha256:" in c["image"]),
    "CKV_K8S_35": (
        "secrets as files, not env",
        lambda c, p: not any("secretKeyRef" in str(e) for e in c.get("env", [])),
    ),
    "CKV2_K8S_6": ("hostPath volumes", lambda c, p: not any("hostPath" in volume for volume in p.get("volumes", []))),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_pods_pass_the_policy_checks(overlay: str, service: str) -> None:
    spec = pod_spec(overlay, service)
    failing = [
        f"{check} ({what})" for check, (what, ok) in POD_CHECKS.items() if not ok(container(overlay, service), spec)
    ]
    assert sorted(failing) == sorted(f"{check} ({POD_CHECKS[check][0]})" for check in WAIVERS)
    assert spec["securityContext"]["runAsUser"] == 65532
    assert (
        one(overlay, "Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    )


def test_prod_has_replicas_autoscaling_budgets_default_deny_and_ingress() -> None:
    for service in SERVICES:
        assert one("prod", "Deployment", service)["spec"]["replicas"] >= 3
        hpa = one("prod", "HorizontalPodAutoscaler", service)
        assert hpa["spec"]["scaleTargetRef"]["name"] == service
        assert hpa["spec"]["minReplicas"] >= 3
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        labels = one("prod", "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        budget = one("prod", "PodDisruptionBudget", service)["spec"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
    deny = one("prod", "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    ingress = one("prod", "Ingress", "marketplace")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert ingress["name"] == "marketplace"


def test_dev_runs_one_plaintext_replica_each() -> None:
    for service in SERVICES:
        assert one("dev", "Deployment", service)["spec"]["replicas"] == 1
    assert environment("dev", "recommendations")["RECOMMENDATIONS_INSECURE"] == "true"
    assert environment("dev", "marketplace")["MARKETPLACE_INSECURE"] == "true"
    assert not find("dev", "NetworkPolicy")
    assert not find("dev", "Certificate")


# --- consistency with the services ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_set_is_one_the_service_reads(overlay: str, service: str) -> None:
    known = flag_environment(PARSERS[service]())
    unknown = sorted(set(environment(overlay, service)) - set(known))
    assert not unknown, f"{service} does not read {unknown}; it reads {sorted(known)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_recommendations_ports_probes_and_metrics_match_what_it_listens_on(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = effective_flags(overlay, "recommendations", monkeypatch)
    declared = ports(overlay, "recommendations")
    assert declared == {"grpc": flags.port, "grpc-health": flags.health_port, "metrics": flags.metrics_port}
    spec = container(overlay, "recommendations")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == flags.health_port, probe
        assert spec[probe]["grpc"].get("service", "") in ("", SERVICE_NAME), probe
    annotations = one(overlay, "Deployment", "recommendations")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == flags.metrics_port
    exposed = image_config("recommendations")["ExposedPorts"]
    assert {f"{port}/tcp" for port in declared.values()} == set(exposed)
    grace = pod_spec(overlay, "recommendations")["terminationGracePeriodSeconds"]
    assert grace > float(flags.drain_seconds) + float(flags.shutdown_grace)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_marketplace_port_and_probe_paths_match_its_app(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flags = effective_flags(overlay, "marketplace", monkeypatch)
    assert ports(overlay, "marketplace") == {"http": int(flags.port)}
    routes = {route.path for route in marketplace_app.create_app(None, 0.3).routes}  # type: ignore[arg-type]
    spec = container(overlay, "marketplace")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"]["path"] in routes, probe
        assert spec[probe]["httpGet"]["port"] in ("http", int(flags.port)), probe
    annotations = one(overlay, "Deployment", "marketplace")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes
    assert int(annotations["prometheus.io/port"]) == int(flags.port)
    assert set(image_config("marketplace")["ExposedPorts"]) == {f"{flags.port}/tcp"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_their_pods_and_name_real_ports(overlay: str) -> None:
    for service in SERVICES:
        spec = one(overlay, "Service", service)["spec"]
        labels = one(overlay, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"].items() <= labels.items()
        for port in spec["ports"]:
            assert port["targetPort"] in ports(overlay, service), port
    assert one(overlay, "Service", "recommendations")["spec"]["clusterIP"] == "None"  # headless: per-request balancing


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_marketplace_calls_the_recommendations_service_by_its_dns_name(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = effective_flags(overlay, "marketplace", monkeypatch)
    match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", flags.recommendations_addr)
    assert match, flags.recommendations_addr
    name, namespace, port = match.groups()
    grpc_port = next(p for p in one(overlay, "Service", name)["spec"]["ports"] if p["name"] == "grpc")
    assert (namespace, int(port)) == (NAMESPACE, grpc_port["port"])
    assert flags.recommendations_tls_name == name


def test_mtls_files_are_the_mounted_secret_of_each_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in SERVICES:
        flags = effective_flags("prod", service, monkeypatch)
        certificate = one("prod", "Certificate", service)["spec"]
        (mount,) = [m for m in container("prod", service)["volumeMounts"] if m["name"] == "tls"]
        (volume,) = [v for v in pod_spec("prod", service)["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == certificate["secretName"]
        assert mount["readOnly"] is True
        files = {flags.tls_cert, flags.tls_key, flags.tls_ca}
        assert files == {str(Path(mount["mountPath"]) / key) for key in ("tls.crt", "tls.key", "ca.crt")}
        assert not flags.insecure


def test_certificates_name_the_identities_the_services_authorise() -> None:
    for service in SERVICES:
        certificate = one("prod", "Certificate", service)["spec"]
        assert certificate["dnsNames"] == [n for n in service_dns_names(service, NAMESPACE) if n != "localhost"]
        assert certificate["commonName"] == service
        assert {"server auth", "client auth"} <= set(certificate["usages"])
    callers = set(REGISTRY["recommendations"].callers)
    assert callers <= {one("prod", "Certificate", s)["spec"]["dnsNames"][0] for s in SERVICES}


def test_network_policy_opens_exactly_the_grpc_port_to_the_marketplace(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = effective_flags("prod", "recommendations", monkeypatch)
    (rule,) = one("prod", "NetworkPolicy", "recommendations-from-marketplace")["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [flags.port]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "marketplace"}
    marketplace = effective_flags("prod", "marketplace", monkeypatch)
    (from_ingress,) = one("prod", "NetworkPolicy", "marketplace-from-ingress")["spec"]["ingress"]
    assert [p["port"] for p in from_ingress["ports"]] == [int(marketplace.port)]
    scraped = {
        p["port"] for p in one("prod", "NetworkPolicy", "metrics-from-prometheus")["spec"]["ingress"][0]["ports"]
    }
    assert scraped == {flags.metrics_port, int(marketplace.port)}
