"""services/defs.bzl (Bazel's view of the list) and services/registry.py (Python's) state some facts
each: the image repository's prefix, the package of a service's name, the labels of its targets and the
variables its image sets. Starlark cannot import Python, so this test runs defs.bzl's definitions as
Python (its functions are in the common subset) and fails when the two disagree."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from libs.runtime.settings import env_name
from services.registry import IMAGE_PREFIX, LIST_FILE, REGISTRY, package_of
from services.registry import _literal as services_literal

DEFS = LIST_FILE.with_name("defs.bzl")


class Fail(Exception):
    pass


def starlark_definitions() -> dict[str, Any]:
    """defs.bzl's globals, its load() statements left out and what they would bring stood in for:
    SERVICES from the list, oci_image, spdx_sbom and oci_image_index recording their arguments."""
    tree = ast.parse(DEFS.read_text())
    tree.body = [
        node for node in tree.body if not (isinstance(node, ast.Expr) and ast.unparse(node).startswith("load("))
    ]
    images: list[dict[str, Any]] = []
    sboms: list[dict[str, Any]] = []
    indexes: list[dict[str, Any]] = []

    def fail(message: str) -> None:
        raise Fail(message)

    namespace: dict[str, Any] = {
        "SERVICES": services_literal(LIST_FILE.read_text()),
        "oci_image": lambda **kwargs: images.append(kwargs),
        "spdx_sbom": lambda **kwargs: sboms.append(kwargs),
        "oci_image_index": lambda **kwargs: indexes.append(kwargs),
        "fail": fail,
        "images": images,
        "sboms": sboms,
        "indexes": indexes,
    }
    exec(compile(tree, str(DEFS), "exec"), namespace)
    return namespace


DEFINITIONS = starlark_definitions()


def test_the_image_prefix_is_the_same() -> None:
    assert DEFINITIONS["IMAGE_PREFIX"] == IMAGE_PREFIX


@pytest.mark.parametrize("name", [*REGISTRY, "order-history", "a-b-c"])
def test_a_name_has_the_same_package(name: str) -> None:
    assert DEFINITIONS["_package"](name) == package_of(name)


def test_target_labels_are_where_the_registry_says() -> None:
    def label(path: str) -> str:
        return f"//{Path(path).parent}:{Path(path).name}"

    assert DEFINITIONS["service_targets"]() == [label(s.binary) for s in REGISTRY.values()]
    assert DEFINITIONS["service_targets"]("image") == [label(s.image) for s in REGISTRY.values()]


@pytest.mark.parametrize("service", list(REGISTRY.values()), ids=list(REGISTRY))
def test_the_image_is_named_and_configured_as_the_registry_says(service: Any) -> None:
    DEFINITIONS["images"].clear()
    DEFINITIONS["sboms"].clear()
    DEFINITIONS["indexes"].clear()
    DEFINITIONS["service_image"](name="image", service=service.name, tars=[":layers"])
    (image,) = DEFINITIONS["images"]
    assert DEFINITIONS["sboms"] == [{"name": "image_sbom", "image": ":image"}]  # image.spdx.json beside it
    # what :push publishes and deployments pin: the image for each architecture, each with its SBOM
    assert DEFINITIONS["indexes"] == [{"name": "image_index", "images": [":image"], "referrers": [":image_sbom"]}]
    assert service.image_index == f"services/{service.package}/image_index"
    assert DEFINITIONS["image_repository"](service.name) == service.repository
    assert image["labels"]["org.opencontainers.image.title"] == service.repository
    assert image["base"] == "//tools/oci:python_base"
    assert image["exposed_ports"] == [f"{port}/tcp" for port in sorted(service.ports.values())]
    if service.kind == "grpc":
        assert image["env"] == {
            env_name(service.env_prefix, "--health-port"): str(service.ports["health"]),
            env_name(service.env_prefix, "--metrics-port"): str(service.ports["metrics"]),
        }


def test_an_unknown_service_fails() -> None:
    with pytest.raises(Fail, match="no service 'nope'"):
        DEFINITIONS["service_image"](name="image", service="nope", tars=[])


@pytest.mark.parametrize("caller", [*REGISTRY, "nobody"])
def test_a_callers_proto_libraries_hold_the_modules_the_registry_names(caller: str) -> None:
    modules = [REGISTRY[callee].proto_module for callee in REGISTRY.calls(caller)] if caller in REGISTRY else []
    packages = [module.rsplit(".", 1) for module in modules]  # books.x.v1, x_pb2
    labels = [f"//proto/{package.replace('.', '/')}:{name.removesuffix('_pb2')}_py_pb2" for package, name in packages]
    assert DEFINITIONS["callee_proto_libraries"](caller) == labels
