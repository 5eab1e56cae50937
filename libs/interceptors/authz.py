"""Per-method authorisation on the caller's mTLS identity.

The identity of a caller is the set of DNS names in the SAN of the client certificate it presented
(verified by the TLS handshake against our CA), read from `context.auth_context()`. A policy maps
methods to the identities allowed to call them. Health checking and reflection are open to every
verified caller; any method without a rule is denied (PERMISSION_DENIED), so a new RPC is closed
until someone says who may call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from grpc_interceptor.exceptions import PermissionDenied, Unauthenticated

from libs.interceptors.core import Call, Middleware

ANY_IDENTITY = "*"
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


def peer_identities(context: Any) -> list[str]:
    """The DNS names in the SAN of the verified client certificate, in the certificate's order; empty
    without mTLS. Only DNS names: gRPC's `x509_subject_alternative_name` mixes in URI, email and IP SANs,
    and a certificate with only `URI:marketplace` must not pass for the marketplace."""
    return [name.decode() for name in context.auth_context().get("peer_dns", [])]


class AccessPolicy:
    """Who may call which method. Keys are full method paths or bare method names (`Recommend`)."""

    def __init__(self, rules: Mapping[str, Iterable[str]]) -> None:
        self._rules = {method: frozenset(identities) for method, identities in rules.items()}

    def with_overrides(self, overrides: Mapping[str, Iterable[str]]) -> AccessPolicy:
        """A policy where each overridden method's rule is replaced (matched by full path or bare name)."""
        rules = dict(self._rules)
        for method, identities in overrides.items():
            for key in [k for k in rules if _same_method(k, method)]:
                del rules[key]
            rules[method] = frozenset(identities)
        return AccessPolicy(rules)

    def allowed(self, method: str) -> frozenset[str] | None:
        """The identities allowed on `method` ('/pkg.Service/Method'); None if it has no rule."""
        for key, identities in self._rules.items():
            if _same_method(key, method):
                return identities
        return None

    def permitted_as(self, method: str, identities: list[str]) -> str | None:
        """The identity (of the caller's, in certificate order) under which `method` is allowed; None if
        none is. Open services and `*` rules admit the first one."""
        if method.lstrip("/").split("/", 1)[0] in OPEN_SERVICES:
            return identities[0]
        allowed = self.allowed(method)
        if allowed is None:
            return None
        return next((name for name in identities if ANY_IDENTITY in allowed or name in allowed), None)


def _same_method(key: str, method: str) -> bool:
    return key == method or ("/" not in key and method.rsplit("/", 1)[-1] == key)


class Authorization(Middleware):
    """Enforces an AccessPolicy on the verified client certificate; use it only with mTLS."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    def begin(self, call: Call) -> None:
        if call.context is None:
            return  # an unregistered method: gRPC answers UNIMPLEMENTED
        identities = peer_identities(call.context)
        if not identities:
            raise Unauthenticated("a client certificate with a DNS SAN is required")
        # Logs name the caller by the identity authorisation went by (not the certificate's CN, which
        # nothing checks): the allowed name, or for a refusal the certificate's first DNS name.
        permitted_as = self._policy.permitted_as(call.rpc.method, identities)
        call.peer = permitted_as or identities[0]
        if permitted_as is None:
            raise PermissionDenied(f"{call.peer} may not call {call.rpc.method}")
