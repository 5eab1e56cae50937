"""What Kubernetes makes of a container's resource figures: quantities, and the downward API's values.

The manifest tests compare the figures with what the services need, and //tests/kube gives a container
under podman kube play (which has no downward API) the value the kubelet would.
"""

from __future__ import annotations

import math
from typing import Any


def cpus(quantity: str) -> float:
    """A CPU quantity: "2", "0.5" or "250m"."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> float:
    """A memory quantity in Ki, Mi or Gi."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def downward_value(container: dict[str, Any], reference: dict[str, Any]) -> str:
    """The value of an env var from `resourceFieldRef` (a CPU figure here): the container's request or
    limit over the divisor, rounded up, as the kubelet writes it."""
    kind, resource = reference["resource"].split(".")
    assert resource == "cpu", f"only CPU figures are expected in the environment, not {resource}"
    return str(math.ceil(cpus(container["resources"][kind]["cpu"]) / cpus(reference.get("divisor", "1"))))
