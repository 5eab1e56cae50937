"""The services of this repository: the one list everything else reads.

Bazel loads it (services/defs.bzl: //:dev's data, the image targets, the tests' data), and Python reads it
as a literal (services/registry.py: //:dev, //tools/certs, //k8s:render, the tests). So SERVICES must stay
a plain literal of dicts, lists, strings, numbers and booleans: no variables, calls or comprehensions.
`./bazelw run //tools/new_service -- NAME` adds an entry; `services/registry.py` documents and checks
every field (`//services:registry_test`).

Each entry:
  name         lowercase DNS label: Kubernetes names, the certificate's identity, the image name. Its Python
               package is the name with "-" turned into "_" (order-history → services/order_history/).
  kind         "grpc" (libs/runtime's server) or "http" (a web app).
  ports        grpc: {"grpc", "health", "metrics"}; http: {"http"}. Distinct across all services, so that
               //:dev runs everything on one host; in Kubernetes each pod listens on the same numbers.
  description  one line, for the image label and the manifests.
  grpc_service grpc only: the full name of the proto service it serves (health probes, reflection).
  allow        grpc only: method → the services that may call it under mTLS. Who calls whom follows from
               it: a service listed here gets this one's address (//:dev, Kubernetes) and a NetworkPolicy.
  public       http only, optional: the paths the prod overlay's Ingress routes to it from the outside world
               ("/" exactly, any other as a prefix of whole segments: "/api" routes /api/x). Never the
               probes or /metrics; no path of two services.
  settings     optional: values of its settings by name (forwarded_allow_ips: libs/runtime/settings.py), which
               the Kubernetes ConfigMap sets as their variables (MARKETPLACE_FORWARDED_ALLOW_IPS).
  serving      grpc only, optional: "aio" (the default: grpc.aio on an event loop, handlers are coroutines,
               for handlers that wait on other services) or "threads" (grpc's sync server, `--threads`
               workers per process, handlers are plain functions: for short unary work, more calls
               per CPU-second; bench/RESULTS.md). libs/runtime/server.py serves both alike.
  gateway      http only, optional: true for the service that serves every gRPC API of the list as JSON
               over HTTP, from its google.api.http annotations (services/gateway): the methods whose
               `allow` lists it are reachable through it; //tools/new_service lets it call a new service.
  slo          optional: its objectives, from which monitoring/rules.py makes its SLO rules and alerts and
               monitoring/dashboards.py its burn-rate panels: availability_percent of calls without a
               server-side error (default 99.9), latency_percent of calls within latency_ms (default 99
               within 250 ms for grpc, 500 ms for http; a bucket of the service's latency histogram).
"""

SERVICES = [
    {
        "name": "recommendations",
        "kind": "grpc",
        "ports": {
            "grpc": 50051,
            "health": 50052,
            "metrics": 9090,
        },
        "description": "Book recommendations over gRPC (books.recommendations.v1)",
        "grpc_service": "books.recommendations.v1.RecommendationService",
        "serving": "threads",
        "allow": {
            "Recommend": ["marketplace", "gateway"],
            "RecommendEach": ["marketplace", "gateway"],
        },
        "slo": {
            "availability_percent": 99.9,
            "latency_percent": 99,
            "latency_ms": 250,
        },
    },
    {
        "name": "marketplace",
        "kind": "http",
        "ports": {
            "http": 8080,
        },
        "description": "The bookstore's web pages, backed by Recommendations",
        "public": [
            "/",
            "/category",
            "/api",
            "/static",
        ],
        "slo": {
            "availability_percent": 99.9,
            "latency_percent": 99,
            "latency_ms": 500,
        },
        "settings": {
            # Behind the Ingress (the only way in, by NetworkPolicy): believe its X-Forwarded-Proto.
            "forwarded_allow_ips": "*",
        },
    },
    {
        "name": "gateway",
        "kind": "http",
        "ports": {
            "http": 8090,
        },
        "description": "JSON over HTTP for the gRPC APIs of the list, from their google.api.http annotations",
        "public": [
            "/v1",
        ],
        "gateway": True,
    },
]
