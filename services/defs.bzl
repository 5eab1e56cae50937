"""Bazel's view of services/services.bzl: the labels of every service's targets, and its image.

    load("//services:defs.bzl", "service_image", "service_targets")
    data = service_targets()                 # every service's binary: //services/<package>:<package>
    deps = service_targets("{package}_lib")  # every service's library
    data = service_targets("image")          # every service's OCI layout
    service_image(name = "image", service = "order-history")   # in services/order_history/BUILD.bazel

A service's Bazel package is its name with "-" turned into "_" (services/registry.py `package_of`).
"""

load("//tools/oci:defs.bzl", "oci_image", "oci_image_index", "spdx_sbom")
load(":services.bzl", "SERVICES")

IMAGE_PREFIX = "online-books"

def _package(name):
    return name.replace("-", "_")

def _entry(name):
    for entry in SERVICES:
        if entry["name"] == name:
            return entry
    fail("no service %r in services/services.bzl" % name)

def service_targets(target = "{package}", kind = None):
    """The label of a target in every service's package.

    Args:
      target: the target's name in each package, where "{package}" stands for the package: the binary
        by default, "{package}_lib" the library, "image" the image.
      kind: only services of this kind ("grpc" or "http"); all by default.

    Returns:
      `//services/<package>:<target>` for each service, in list order.
    """
    return [
        "//services/%s:%s" % (_package(entry["name"]), target.format(package = _package(entry["name"])))
        for entry in SERVICES
        if kind in (None, entry["kind"])
    ]

def service_grpc_libraries():
    """The generated gRPC stubs of every gRPC service: //proto/books/<package>/v1:<package>_py_pb2_grpc."""
    return [
        "//proto/books/%s/v1:%s_py_pb2_grpc" % (_package(entry["name"]), _package(entry["name"]))
        for entry in SERVICES
        if entry["kind"] == "grpc"
    ]

def service_proto_libraries():
    """The API of every gRPC service: //proto/books/<package>/v1:<package>_proto."""
    return [
        "//proto/books/%s/v1:%s_proto" % (_package(entry["name"]), _package(entry["name"]))
        for entry in SERVICES
        if entry["kind"] == "grpc"
    ]

def callee_proto_libraries(caller):
    """The generated messages of every gRPC service a caller may call (whose `allow` lists it).

    A web service calls them by their descriptors (libs/http/grpc_json.py).

    Args:
      caller: the calling service's name in services/services.bzl.

    Returns:
      `//proto/books/<package>/v1:<package>_py_pb2` of each such service, in list order.
    """
    found = []
    for entry in SERVICES:
        callers = [name for names in entry.get("allow", {}).values() for name in names]
        if entry["kind"] == "grpc" and caller in callers:
            found.append("//proto/books/%s/v1:%s_py_pb2" % (_package(entry["name"]), _package(entry["name"])))
    return found

def image_repository(service):
    """The image's name in registries: `<IMAGE_PREFIX>/<name>`, as k8s/render.py names it."""
    return "%s/%s" % (IMAGE_PREFIX, _entry(service)["name"])

def service_image(name, service, tars, **kwargs):
    """The oci_image of a service on the Python base, configured from its entry in services/services.bzl.

    Exposed ports, description and title come from the entry; a gRPC service's image turns its health and
    metrics ports on (<PREFIX>_HEALTH_PORT, <PREFIX>_METRICS_PORT).

    Args:
      name: the image target, conventionally "image" (and `<name>.digest`; `<name>_sbom` writes
        `<name>.spdx.json`, its SBOM; `<name>_index` is the OCI image index of the image built for amd64
        and arm64, each with its SBOM attached, and `<name>_index.digest` what deployments pin).
      service: the service's name in services/services.bzl.
      tars: its layers, e.g. a py_layers target of its binary.
      **kwargs: passed to oci_image (visibility, env, labels, ...).
    """
    entry = _entry(service)
    ports = entry["ports"]
    env = {}
    if entry["kind"] == "grpc":
        prefix = _package(service).upper()
        env = {
            prefix + "_HEALTH_PORT": str(ports["health"]),
            prefix + "_METRICS_PORT": str(ports["metrics"]),
        }
    described = {
        "org.opencontainers.image.description": entry["description"],
        "org.opencontainers.image.title": image_repository(service),
        "org.opencontainers.image.vendor": "Online Books For You",
    }
    oci_image(
        name = name,
        base = "//tools/oci:python_base",
        tars = tars,
        exposed_ports = ["%d/tcp" % port for port in sorted(ports.values())],
        env = dict(env, **kwargs.pop("env", {})),
        labels = dict(described, **kwargs.pop("labels", {})),
        annotations = described,
        **kwargs
    )
    visibility = {"visibility": kwargs["visibility"]} if "visibility" in kwargs else {}
    spdx_sbom(
        name = name + "_sbom",
        image = ":" + name,
        **visibility
    )
    oci_image_index(
        name = name + "_index",
        images = [":" + name],
        referrers = [":" + name + "_sbom"],
        **visibility
    )
