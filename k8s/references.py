"""What a cluster resolves between the objects of a rendered overlay, checked before anything is applied.

`kubectl apply` accepts each object on its own; the cluster then joins them by name, label selector and
port, and a reference that leads nowhere fails quietly: an autoscaler with no target, a Service without
endpoints, a policy that selects no pod, a pod waiting forever for a Secret no Certificate writes, or an
object left in whatever namespace the kubectl context has. `unresolved(objects)` lists every such
reference, each problem naming the objects at both ends. //k8s:render refuses to print an overlay with any,
and //k8s:references_test plants one break of each kind to show each is caught.

What lies outside the overlay (another namespace's pods, ClusterIssuers, the Ingress controller, kube-dns)
is taken on trust, but a selector of another namespace must name it by `kubernetes.io/metadata.name`,
the label every namespace carries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CLUSTER_SCOPED = {
    "ClusterIssuer",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
    "ValidatingWebhookConfiguration",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
NAMESPACE_NAME = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

Object = dict[str, Any]


def ref(obj: Object) -> str:
    """How problems name an object: Kind/name."""
    return f"{obj['kind']}/{obj['metadata']['name']}"


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions; {} selects everything) picks `labels`."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


@dataclass(frozen=True)
class Workload:
    """An object with a pod template: its pods' labels, spec and named and numbered container ports."""

    obj: Object

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.obj["spec"]["template"]["metadata"].get("labels", {})
        return labels

    @property
    def pod(self) -> dict[str, Any]:
        pod: dict[str, Any] = self.obj["spec"]["template"]["spec"]
        return pod

    def containers(self) -> list[dict[str, Any]]:
        return [*self.pod.get("initContainers", []), *self.pod["containers"]]

    def has_port(self, port: int | str) -> bool:
        """A container port by name, or by number (a number no container declares may still be listened on,
        but nothing here listens on an undeclared port: the images' tests check what is declared)."""
        key = "name" if isinstance(port, str) else "containerPort"
        return any(declared.get(key) == port for c in self.containers() for declared in c.get("ports", []))


class Overlay:
    """The objects of one rendered overlay, indexed the way a cluster looks them up."""

    def __init__(self, objects: list[Object]) -> None:
        self.objects = [obj for obj in objects if obj]
        self.workloads = [Workload(obj) for obj in self.objects if obj["kind"] in WORKLOADS]
        namespaces = [obj for obj in self.objects if obj["kind"] == "Namespace"]
        self.namespace = namespaces[0] if len(namespaces) == 1 else None

    def named(self, kind: str, name: str) -> Object | None:
        return next((o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name), None)

    def of_kind(self, *kinds: str) -> Iterator[Object]:
        return (obj for obj in self.objects if obj["kind"] in kinds)

    def selected(self, selector: dict[str, Any] | None) -> list[Workload]:
        return [workload for workload in self.workloads if selects(selector, workload.labels)]

    def is_own_namespace(self, selector: dict[str, Any]) -> bool:
        if self.namespace is None:
            return False
        name = self.namespace["metadata"]["name"]
        return selects(selector, {**self.namespace["metadata"].get("labels", {}), NAMESPACE_NAME: name})


def unresolved(objects: list[Object]) -> list[str]:
    """Every reference between `objects` (one rendered overlay) that a cluster would resolve to nothing."""
    overlay = Overlay(objects)
    return [
        *_namespaces(overlay),
        *_workloads(overlay),
        *_scale_targets(overlay),
        *_budgets(overlay),
        *_services(overlay),
        *_network_policies(overlay),
        *_pod_monitors(overlay),
        *_ingresses(overlay),
        *_secrets(overlay),
    ]


def _namespaces(overlay: Overlay) -> Iterator[str]:
    if overlay.namespace is None:
        kinds = sorted(ref(o) for o in overlay.of_kind("Namespace"))
        yield f"an overlay renders exactly one Namespace, its own; this one renders {kinds or 'none'}"
        return
    name = overlay.namespace["metadata"]["name"]
    for obj in overlay.objects:
        if obj["kind"] in CLUSTER_SCOPED:
            continue
        found = obj["metadata"].get("namespace")
        if found is None:
            yield f"{ref(obj)} has no namespace: kubectl would put it in its context's, not in {ref(overlay.namespace)}"
        elif found != name:
            yield f"{ref(obj)} is in namespace {found!r}, not in {ref(overlay.namespace)}"


def _workloads(overlay: Overlay) -> Iterator[str]:
    """Each pod template: its own selector, the ConfigMaps, ServiceAccount and ports it names, its images."""
    for workload in overlay.workloads:
        obj, pod = workload.obj, workload.pod
        if not selects(obj["spec"].get("selector"), workload.labels):
            yield f"{ref(obj)}'s selector does not select its own pods (labels {workload.labels})"
        account = pod.get("serviceAccountName", "default")
        if account != "default" and overlay.named("ServiceAccount", account) is None:
            yield f"{ref(obj)} runs as ServiceAccount/{account}, which the overlay does not have"
        for config, key in _config_map_uses(pod):
            found = overlay.named("ConfigMap", config)
            if found is None:
                yield f"{ref(obj)} reads ConfigMap/{config}, which the overlay does not have"
            elif key is not None and key not in found.get("data", {}):
                yield f"{ref(obj)} reads key {key!r} of {ref(found)}, which has no such key"
        for container in workload.containers():
            if not _DIGEST.search(container["image"]):
                yield f"{ref(obj)} runs image {container['image']!r}, not pinned by digest (@sha256:...)"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = container.get(probe, {}).get(handler, {}).get("port")
                    if isinstance(port, str) and not workload.has_port(port):
                        yield f"{ref(obj)}'s {probe} uses port {port!r}, which none of its containers declares"


def _config_map_uses(pod: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(ConfigMap, key or None) for each non-optional use in a pod spec."""
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source and not source["configMapRef"].get("optional"):
                yield source["configMapRef"]["name"], None
        for variable in container.get("env", []):
            key_ref = variable.get("valueFrom", {}).get("configMapKeyRef")
            if key_ref and not key_ref.get("optional"):
                yield key_ref["name"], key_ref["key"]
    for volume in pod.get("volumes", []):
        if "configMap" in volume and not volume["configMap"].get("optional"):
            yield volume["configMap"]["name"], None


def _scale_targets(overlay: Overlay) -> Iterator[str]:
    for hpa in overlay.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if overlay.named(target["kind"], target["name"]) is None:
            yield f"{ref(hpa)} scales {target['kind']}/{target['name']}, which the overlay does not have"


def _namesake(overlay: Overlay, obj: Object) -> str:
    """The workload of the same name, as a hint in a problem about a selector that selects nothing."""
    same = [w for w in overlay.workloads if w.obj["metadata"]["name"] == obj["metadata"]["name"]]
    return f" ({ref(same[0].obj)}'s pods are labelled {same[0].labels})" if same else ""


def _undeclared(owner: Object, use: str, port: int | str, workload: Workload) -> Iterator[str]:
    if not workload.has_port(port):
        yield f"{ref(owner)} {use} {port!r}, which {ref(workload.obj)} does not declare"


def _budgets(overlay: Overlay) -> Iterator[str]:
    for budget in overlay.of_kind("PodDisruptionBudget"):
        if not overlay.selected(budget["spec"].get("selector")):
            yield f"{ref(budget)} selects no workload's pods{_namesake(overlay, budget)}"


def _services(overlay: Overlay) -> Iterator[str]:
    for service in overlay.of_kind("Service"):
        selector = service["spec"].get("selector")
        if not selector:
            continue  # endpoints managed by hand
        backends = overlay.selected({"matchLabels": selector})
        if not backends:
            yield f"{ref(service)} selects no workload's pods{_namesake(overlay, service)}"
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for backend in backends:
                yield from _undeclared(service, f"port {port.get('name', port['port'])} targets", target, backend)


def _peer_pods(overlay: Overlay, owner: Object, peer: dict[str, Any]) -> tuple[list[Workload] | None, list[str]]:
    """The workloads a NetworkPolicy peer selects in this overlay (None: pods of another namespace, or
    addresses), and the problems with it."""
    if "ipBlock" in peer:
        return None, []
    if "namespaceSelector" in peer and not overlay.is_own_namespace(peer["namespaceSelector"]):
        if NAMESPACE_NAME not in peer["namespaceSelector"].get("matchLabels", {}):
            return None, [f"{ref(owner)} names another namespace without {NAMESPACE_NAME}: {peer['namespaceSelector']}"]
        return None, []
    selected = overlay.selected(peer.get("podSelector"))
    if not selected:
        return selected, [
            f"{ref(owner)} lets traffic to or from pods selected by {peer.get('podSelector')}: no workload has them"
        ]
    return selected, []


def _network_policies(overlay: Overlay) -> Iterator[str]:
    for policy in overlay.of_kind("NetworkPolicy"):
        spec = policy["spec"]
        own = overlay.selected(spec.get("podSelector"))
        if spec.get("podSelector") and not own:
            yield f"{ref(policy)} applies to no pods{_namesake(overlay, policy)}"
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                yield from _peer_pods(overlay, policy, peer)[1]
            for port in (p["port"] for p in rule.get("ports", []) if "port" in p):
                for workload in own:
                    yield from _undeclared(policy, "lets in port", port, workload)
        for rule in spec.get("egress", []):
            for peer in rule.get("to", []):
                peers, problems = _peer_pods(overlay, policy, peer)
                yield from problems
                for port in (p["port"] for p in rule.get("ports", []) if "port" in p):
                    for workload in peers or []:
                        yield from _undeclared(policy, "lets out to port", port, workload)


def _pod_monitors(overlay: Overlay) -> Iterator[str]:
    for monitor in overlay.of_kind("PodMonitor"):
        scraped = overlay.selected(monitor["spec"].get("selector"))
        if not scraped:
            yield f"{ref(monitor)} selects no workload's pods{_namesake(overlay, monitor)}"
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            for workload in scraped:
                yield from _undeclared(monitor, "scrapes port", endpoint["port"], workload)


def _ingresses(overlay: Overlay) -> Iterator[str]:
    for ingress in overlay.of_kind("Ingress"):
        spec = ingress["spec"]
        backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
        backends += [
            path["backend"] for rule in spec.get("rules", []) for path in rule.get("http", {}).get("paths", [])
        ]
        for backend in (b["service"] for b in backends if "service" in b):
            service = overlay.named("Service", backend["name"])
            if service is None:
                yield f"{ref(ingress)} routes to Service/{backend['name']}, which the overlay does not have"
                continue
            wanted = backend["port"]
            if not any(wanted in ({"name": p.get("name")}, {"number": p["port"]}) for p in service["spec"]["ports"]):
                yield f"{ref(ingress)} routes to port {wanted} of {ref(service)}, which has no such port"
        issued = any(key.startswith("cert-manager.io/") for key in ingress["metadata"].get("annotations", {}))
        for tls in spec.get("tls", []):
            if not issued and not _secret_source(overlay, tls["secretName"]):
                yield f"{ref(ingress)} serves TLS from Secret/{tls['secretName']}, which nothing in the overlay writes"


def _secret_source(overlay: Overlay, name: str) -> Object | None:
    """The Secret, or the cert-manager Certificate that writes it."""
    secret = overlay.named("Secret", name)
    return secret or next((c for c in overlay.of_kind("Certificate") if c["spec"]["secretName"] == name), None)


def _secret_uses(pod: dict[str, Any]) -> Iterator[str]:
    for volume in pod.get("volumes", []):
        if "secret" in volume and not volume["secret"].get("optional"):
            yield volume["secret"]["secretName"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source and not source["secret"].get("optional"):
                yield source["secret"]["name"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for source in container.get("envFrom", []):
            if "secretRef" in source and not source["secretRef"].get("optional"):
                yield source["secretRef"]["name"]
        for variable in container.get("env", []):
            key_ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if key_ref and not key_ref.get("optional"):
                yield key_ref["name"]


def _secrets(overlay: Overlay) -> Iterator[str]:
    """Every Secret a pod needs is written by a Certificate (or is a Secret of the overlay); every
    Certificate's Secret is used, by a pod or an Ingress."""
    used: set[str] = set()
    for workload in overlay.workloads:
        for name in _secret_uses(workload.pod):
            used.add(name)
            if _secret_source(overlay, name) is None:
                yield f"{ref(workload.obj)} mounts Secret/{name}, which no Certificate or Secret of the overlay writes"
    used |= {tls["secretName"] for ingress in overlay.of_kind("Ingress") for tls in ingress["spec"].get("tls", [])}
    for certificate in overlay.of_kind("Certificate"):
        if certificate["spec"]["secretName"] not in used:
            yield f"{ref(certificate)} writes Secret/{certificate['spec']['secretName']}, which no pod mounts"
