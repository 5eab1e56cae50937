"""The per-service Kubernetes objects, generated from services/services.bzl and k8s/templates/.

Every directory of k8s/ that needs one object (or patch) per service gets a `services.yaml` next to its
hand-written kustomization.yaml, which lists it:

- base/services.yaml: ServiceAccount, ConfigMap, Deployment and Service (templates/grpc.yaml or http.yaml); the
  ConfigMap also carries the entry's `settings` and the address and TLS name of every service it calls.
- components/mtls/services.yaml: the TLS Secret mounted at /certs and the TLS flags pointing there (mtls.yaml).
- components/plaintext/services.yaml: <PREFIX>_INSECURE=true.
- components/cert-manager/services.yaml: a Certificate with the names tools/certs uses (certificate.yaml).
- components/monitoring/services.yaml: a PodMonitor per service, and the PrometheusRule of
  monitoring/rules.yaml.
- components/network-policy/services.yaml: a NetworkPolicy that lets in exactly its callers, the Ingress
  controller if it is public, and Prometheus, and lets out its calls and DNS.
- overlays/prod/services.yaml: autoscaler and disruption budget (scaling.yaml).

`//k8s:render` runs this on its copy of k8s/ before kustomize; the files are git-ignored, so the list is the
only place a service is named.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from libs.processes.processes import runfile
from services.registry import REGISTRY, Registry, Service
from tools.certs.certs import service_dns_names

GENERATED = "services.yaml"
NAME_LABEL = "app.kubernetes.io/name"
INGRESS_NAMESPACE = "ingress-nginx"  # where the Ingress controller runs (README: Deploy to Kubernetes)
PROMETHEUS_NAMESPACE = "monitoring"


def _template(tree: Path, name: str, service: Service, **extra: Any) -> list[dict]:
    values: dict[str, Any] = {"name": service.name, "prefix": service.env_prefix, "repository": service.repository}
    values.update({f"{role}_port": port for role, port in service.ports.items()})
    values.update({"grpc_service": service.grpc_service, **extra})
    text = string.Template((tree / "templates" / name).read_text()).substitute(values)
    return [document for document in yaml.safe_load_all(text) if document]


def _pods(name: str) -> dict:
    return {"podSelector": {"matchLabels": {NAME_LABEL: name}}}


def _namespace(name: str) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _tcp(port: int) -> dict:
    return {"port": port, "protocol": "TCP"}


def base_objects(tree: Path, registry: Registry, service: Service, namespace: str) -> list[dict]:
    objects = _template(tree, f"{service.kind}.yaml", service)
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config["data"].update(service.settings)
    for callee in (registry[name] for name in registry.calls(service.name)):
        config["data"][f"{callee.env_prefix}_ADDR"] = (
            f"dns:///{callee.name}.{namespace}.svc.cluster.local:{callee.port}"  # every ready pod, balanced per call
        )
        config["data"][f"{callee.env_prefix}_TLS_NAME"] = callee.name
    return objects


def plaintext_patch(service: Service) -> list[dict]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": service.name},
            "data": {f"{service.env_prefix}_INSECURE": "true"},
        }
    ]


def network_policy(registry: Registry, service: Service) -> list[dict]:
    """What may reach `service`'s pods and what they may reach; default-deny (hand-written) closes the rest."""
    metrics_port = service.ports["metrics"] if service.kind == "grpc" else service.port
    ingress = [{"from": [_namespace(PROMETHEUS_NAMESPACE)], "ports": [_tcp(metrics_port)]}]
    if service.callers:
        ingress.append({"from": [_pods(caller) for caller in service.callers], "ports": [_tcp(service.port)]})
    if service.public:
        ingress.append({"from": [_namespace(INGRESS_NAMESPACE)], "ports": [_tcp(service.port)]})
    egress = [
        {"to": [_pods(callee)], "ports": [_tcp(registry[callee].port)]} for callee in registry.calls(service.name)
    ]
    if egress:  # callers resolve dns:///<callee>... to the pod addresses
        dns = {**_namespace("kube-system"), "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
        egress.append({"to": [dns], "ports": [{"port": 53, "protocol": "UDP"}, _tcp(53)]})
    spec: dict[str, Any] = {"podSelector": _pods(service.name)["podSelector"], "policyTypes": ["Ingress"]}
    spec["ingress"] = ingress
    if egress:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": service.name},
            "spec": spec,
        }
    ]


def pod_monitor(service: Service) -> list[dict]:
    """The prometheus-operator's scrape of `service`'s pods: its metrics port (gRPC) or its HTTP port."""
    return [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": service.name},
            "spec": {
                "selector": _pods(service.name)["podSelector"],
                "podMetricsEndpoints": [
                    {"port": "metrics" if service.kind == "grpc" else "http", "path": "/metrics", "interval": "30s"}
                ],
            },
        }
    ]


def prometheus_rule(rules: Path) -> dict:
    """monitoring/rules.yaml as the prometheus-operator's PrometheusRule, groups unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "online-books"},
        "spec": {"groups": yaml.safe_load(rules.read_text())["groups"]},
    }


def generate(tree: Path, registry: Registry = REGISTRY, rules: Path | None = None) -> list[Path]:
    """Writes every services.yaml into the k8s/ tree at `tree`; returns their paths. `rules`: the
    Prometheus rules (monitoring/rules.yaml) for the monitoring component."""
    rules = rules or runfile("monitoring/rules.yaml")
    namespace = yaml.safe_load((tree / "base" / "namespace.yaml").read_text())["metadata"]["name"]
    dns_names = {
        s.name: [n for n in service_dns_names(s.name, namespace) if n != "localhost"] for s in registry.values()
    }
    per_service: dict[str, Callable[[Service], list[dict]]] = {
        "base": lambda s: base_objects(tree, registry, s, namespace),
        "components/mtls": lambda s: _template(tree, "mtls.yaml", s),
        "components/plaintext": plaintext_patch,
        "components/cert-manager": lambda s: _template(
            tree, "certificate.yaml", s, dns_names=json.dumps(dns_names[s.name])
        ),
        "components/network-policy": lambda s: network_policy(registry, s),
        "overlays/prod": lambda s: _template(tree, "scaling.yaml", s),
        "components/monitoring": pod_monitor,
    }
    shared = {"components/monitoring": [prometheus_rule(rules)]}
    written = []
    for directory, objects_of in per_service.items():
        documents = shared.get(directory, []) + [d for service in registry.values() for d in objects_of(service)]
        path = tree / directory / GENERATED
        header = "# Generated by k8s/generate.py from services/services.bzl and k8s/templates/: do not edit.\n"
        path.write_text(header + yaml.safe_dump_all(documents, sort_keys=False))
        written.append(path)
    return written
