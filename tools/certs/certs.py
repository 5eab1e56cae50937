"""Mints a private CA and one key/certificate pair per service for mTLS.

`./bazelw run //tools/certs -- OUT_DIR` writes ca.pem (+ ca.key, kept to mint more later) and, for each
service in services/services.bzl, <service>.pem and <service>.key. Each leaf certificate names its
service in DNS SANs — the bare name (the caller identity servers authorise on), the Kubernetes service
names, and localhost with 127.0.0.1/::1 for local work — and is valid for both server and client
authentication. Keys are ECDSA P-256, written with mode 0600. Lifetimes are short by default; mint
again to rotate (servers reload changed files without a restart).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.registry import REGISTRY

DEFAULT_SERVICES = tuple(REGISTRY)
"""Every service in services/services.bzl."""


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def mint_ca(common_name: str = "Online Books For You dev CA", hours: float = 24 * 30) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The bare name first: servers take it as the caller's identity."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
    ]


def mint_leaf(
    ca: Issued, service: str, namespace: str = "books", hours: float = 48, common_name: str | None = None
) -> Issued:
    """A key and certificate for `service`; `common_name` defaults to the service's name (servers go by
    the DNS names, never by the CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in service_dns_names(service, namespace)]
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or service)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(hours=hours), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def _write(path: Path, data: bytes, mode: int) -> None:
    # Write then rename, so a server reloading on change never reads half a file.
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def write_leaf(out_dir: Path, service: str, issued: Issued) -> None:
    _write(out_dir / f"{service}.key", issued.key_pem, 0o600)
    _write(out_dir / f"{service}.pem", issued.cert_pem, 0o644)


def service_flags(out_dir: Path, service: str) -> list[str | Path]:
    """The --tls-* flags that make one of our programs use `service`'s pair from a minted `out_dir`."""
    cert, key, ca = out_dir / f"{service}.pem", out_dir / f"{service}.key", out_dir / "ca.pem"
    return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]


def mint_all(
    out_dir: Path,
    services: tuple[str, ...] = DEFAULT_SERVICES,
    namespace: str = "books",
    hours: float = 48,
    ca_hours: float = 24 * 30,
) -> Issued:
    """Writes a new CA and a pair per service into `out_dir`; returns the CA."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ca = mint_ca(hours=ca_hours)
    _write(out_dir / "ca.key", ca.key_pem, 0o600)
    _write(out_dir / "ca.pem", ca.cert_pem, 0o644)
    for service in services:
        write_leaf(out_dir, service, mint_leaf(ca, service, namespace, hours))
    return ca


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="directory to write into (relative paths: from where you ran bazel)")
    parser.add_argument("--services", default=",".join(DEFAULT_SERVICES), help="comma-separated service names")
    parser.add_argument("--namespace", default="books", help="Kubernetes namespace in the DNS SANs (default: books)")
    parser.add_argument("--hours", type=float, default=48, help="leaf certificate lifetime in hours (default: 48)")
    parser.add_argument("--ca-hours", type=float, default=24 * 30, help="CA lifetime in hours (default: 720)")
    args = parser.parse_args(argv)
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    if not services or args.hours <= 0 or args.ca_hours <= 0:
        parser.error("need at least one service and positive lifetimes")
    out_dir = args.out_dir
    if not out_dir.is_absolute():
        out_dir = Path(os.environ.get("BUILD_WORKING_DIRECTORY", ".")) / out_dir
    mint_all(out_dir, services, args.namespace, args.hours, args.ca_hours)
    print(f"wrote ca.pem, ca.key and {', '.join(f'{s}.pem/{s}.key' for s in services)} to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
