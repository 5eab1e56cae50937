"""What a cluster resolves between the rendered objects (k8s/references.py), on both overlays.

Every overlay must come out with no unresolved reference, for every service of the list; and for each
kind of reference a break is planted in a copy of the prod overlay, which must be reported by a message
naming the objects at both ends (and which //k8s:render then refuses to print).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import yaml

from k8s.references import Object, unresolved
from k8s.render import OVERLAYS, render

IMAGE_REGISTRY = "registry.test/books"


@functools.cache
def rendered(overlay: str) -> tuple[Object, ...]:
    return tuple(doc for doc in yaml.safe_load_all(render(overlay, IMAGE_REGISTRY)) if doc)


def first(objects: list[Object], kind: str) -> Object:
    return next(o for o in objects if o["kind"] == kind)


def container(objects: list[Object], name: str) -> dict:
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    containers: list[dict] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_of_the_overlay_resolves(overlay: str) -> None:
    objects = list(rendered(overlay))
    assert unresolved(objects) == []
    namespace = first(objects, "Namespace")["metadata"]["name"]
    assert all(o["metadata"].get("namespace") == namespace for o in objects if o["kind"] != "Namespace")


# Each: what is broken, how (on a copy of the prod objects), and what the message must name: both ends.
Break = Callable[[list[Object]], tuple[str, str]]


def namespace_dropped(objects: list[Object]) -> tuple[str, str]:
    policy = first(objects, "NetworkPolicy")
    del policy["metadata"]["namespace"]
    return f"NetworkPolicy/{policy['metadata']['name']}", f"Namespace/{first(objects, 'Namespace')['metadata']['name']}"


def namespace_other(objects: list[Object]) -> tuple[str, str]:
    hpa = first(objects, "HorizontalPodAutoscaler")
    hpa["metadata"]["namespace"] = "default"
    return f"HorizontalPodAutoscaler/{hpa['metadata']['name']}", "Namespace/"


def autoscaler_target(objects: list[Object]) -> tuple[str, str]:
    hpa = first(objects, "HorizontalPodAutoscaler")
    hpa["spec"]["scaleTargetRef"]["name"] += "-old"
    return f"HorizontalPodAutoscaler/{hpa['metadata']['name']}", f"Deployment/{hpa['metadata']['name']}-old"


def budget_selector(objects: list[Object]) -> tuple[str, str]:
    budget = first(objects, "PodDisruptionBudget")
    budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "nothing"
    return f"PodDisruptionBudget/{budget['metadata']['name']}", f"Deployment/{budget['metadata']['name']}"


def service_selector(objects: list[Object]) -> tuple[str, str]:
    service = first(objects, "Service")
    service["spec"]["selector"] = {"app": service["metadata"]["name"]}
    return f"Service/{service['metadata']['name']}", f"Deployment/{service['metadata']['name']}"


def service_target_port(objects: list[Object]) -> tuple[str, str]:
    service = first(objects, "Service")
    service["spec"]["ports"][0]["targetPort"] = "htttp"
    return f"Service/{service['metadata']['name']}", f"Deployment/{service['metadata']['name']}"


def policy_pod_selector(objects: list[Object]) -> tuple[str, str]:
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"])
    policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] += "-v2"
    return f"NetworkPolicy/{policy['metadata']['name']}", f"Deployment/{policy['metadata']['name']}"


def policy_from(objects: list[Object]) -> tuple[str, str]:
    """A caller's pods renamed in the policy: the callee's pods would refuse it."""
    peers = [
        (policy, peer)
        for policy in objects
        if policy["kind"] == "NetworkPolicy"
        for rule in policy["spec"].get("ingress", [])
        for peer in rule["from"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]
    policy, peer = peers[0]
    peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] = "market-place"
    return f"NetworkPolicy/{policy['metadata']['name']}", "market-place"


def policy_to_port(objects: list[Object]) -> tuple[str, str]:
    """A call let out to a port the callee does not listen on."""
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["spec"].get("egress"))
    rule = next(r for r in policy["spec"]["egress"] if "namespaceSelector" not in r["to"][0])
    rule["ports"][0]["port"] = 50999
    callee = rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
    return f"NetworkPolicy/{policy['metadata']['name']}", f"Deployment/{callee}"


def policy_other_namespace(objects: list[Object]) -> tuple[str, str]:
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["spec"].get("ingress"))
    peer = next(p for r in policy["spec"]["ingress"] for p in r["from"] if "namespaceSelector" in p)
    peer["namespaceSelector"] = {"matchLabels": {"name": "monitoring"}}
    return f"NetworkPolicy/{policy['metadata']['name']}", "kubernetes.io/metadata.name"


def monitor_selector(objects: list[Object]) -> tuple[str, str]:
    monitor = first(objects, "PodMonitor")
    monitor["spec"]["selector"]["matchLabels"] = {"app": monitor["metadata"]["name"]}
    return f"PodMonitor/{monitor['metadata']['name']}", f"Deployment/{monitor['metadata']['name']}"


def monitor_port(objects: list[Object]) -> tuple[str, str]:
    monitor = first(objects, "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = "prometheus"
    return f"PodMonitor/{monitor['metadata']['name']}", f"Deployment/{monitor['metadata']['name']}"


def ingress_backend(objects: list[Object]) -> tuple[str, str]:
    ingress = first(objects, "Ingress")
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    path["backend"]["service"]["name"] = "no-such-service"
    return f"Ingress/{ingress['metadata']['name']}", "Service/no-such-service"


def ingress_port(objects: list[Object]) -> tuple[str, str]:
    ingress = first(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][-1]["backend"]["service"]
    backend["port"] = {"name": "https"}
    return f"Ingress/{ingress['metadata']['name']}", f"Service/{backend['name']}"


def certificate_secret(objects: list[Object]) -> tuple[str, str]:
    """The Certificate writes another Secret than the pod mounts: the pod never starts."""
    certificate = first(objects, "Certificate")
    certificate["spec"]["secretName"] += "-v2"
    name = certificate["metadata"]["name"]
    return f"Deployment/{name}", f"Secret/{name}-tls"


def certificate_unused(objects: list[Object]) -> tuple[str, str]:
    certificate = copy.deepcopy(first(objects, "Certificate"))
    certificate["metadata"]["name"] = "spare"
    certificate["spec"]["secretName"] = "spare-tls"
    objects.append(certificate)
    return "Certificate/spare", "Secret/spare-tls"


def config_map(objects: list[Object]) -> tuple[str, str]:
    deployment = first(objects, "Deployment")
    name = deployment["metadata"]["name"]
    container(objects, name)["envFrom"][0]["configMapRef"]["name"] = f"{name}-config"
    return f"Deployment/{name}", f"ConfigMap/{name}-config"


def service_account(objects: list[Object]) -> tuple[str, str]:
    deployment = first(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = "builder"
    return f"Deployment/{deployment['metadata']['name']}", "ServiceAccount/builder"


def image_tag(objects: list[Object]) -> tuple[str, str]:
    deployment = first(objects, "Deployment")
    spec = container(objects, deployment["metadata"]["name"])
    spec["image"] = spec["image"].split("@")[0] + ":latest"
    return f"Deployment/{deployment['metadata']['name']}", ":latest"


BREAKS: list[Break] = [
    namespace_dropped,
    namespace_other,
    autoscaler_target,
    budget_selector,
    service_selector,
    service_target_port,
    policy_pod_selector,
    policy_from,
    policy_to_port,
    policy_other_namespace,
    monitor_selector,
    monitor_port,
    ingress_backend,
    ingress_port,
    certificate_secret,
    certificate_unused,
    config_map,
    service_account,
    image_tag,
]


@pytest.mark.parametrize("plant", BREAKS, ids=[plant.__name__ for plant in BREAKS])
def test_a_planted_break_is_reported_naming_both_ends(plant: Break) -> None:
    objects = copy.deepcopy(list(rendered("prod")))
    one_end, other_end = plant(objects)
    problems = unresolved(objects)
    assert problems, f"{plant.__name__}: nothing reported"
    assert any(one_end in problem and other_end in problem for problem in problems), problems
