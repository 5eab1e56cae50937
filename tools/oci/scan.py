"""Scans every layer of an OCI image layout for secrets: `scan.py LAYOUT...` exits 1 on a finding.

A finding is any private key (PEM of any kind, or a file named like a key store), and any certificate
other than the system CA bundle: service certificates and keys are mounted at run time, never built
in. CA bundles of wheels are links to the system bundle (tools/oci/layer.py), so they pass.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

from tools.oci.oci import open_layer, read_layout

ALLOWED_CERTIFICATES = {"etc/ssl/certs/ca-certificates.crt"}
# A whole PEM block (base64 between the markers), not just a marker string in code such as ssl.py.
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]{64,}?-----END ")
_CERTIFICATE = re.compile(rb"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----[A-Za-z0-9+/=\s]{64,}?-----END ")
_KEY_STORE_NAMES = re.compile(r"(\.(key|p12|pfx|jks|keystore)|/id_(rsa|dsa|ecdsa|ed25519))$")
_CERT_NAMES = re.compile(r"\.(crt|cer|der)$")


def layers(layout: Path) -> Iterator[tuple[str, Path]]:
    """(digest, blob path) of each layer of the layout's image."""
    image = read_layout(layout)
    for layer in image.manifest["layers"]:
        yield layer["digest"], image.blob(layer["digest"])


def scan_layer(blob: Path) -> list[str]:
    """What in one layer tar breaks the rules, one line per file."""
    findings = []
    with open_layer(blob) as tar:
        for member in tar:
            if not member.isfile():
                continue
            path = member.name.removeprefix("./")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if _PRIVATE_KEY.search(data) or _KEY_STORE_NAMES.search("/" + path):
                findings.append(f"{path}: private key or key store")
            elif path not in ALLOWED_CERTIFICATES and (_CERTIFICATE.search(data) or _CERT_NAMES.search(path)):
                findings.append(f"{path}: certificate outside the system CA bundle")
    return findings


def scan_layout(layout: Path) -> list[str]:
    return [f"{digest[:19]} {finding}" for digest, blob in layers(layout) for finding in scan_layer(blob)]


def main(layouts: list[str]) -> int:
    failed = False
    for layout in layouts:
        findings = scan_layout(Path(layout))
        print(f"{layout}: {len(findings)} findings", *findings, sep="\n  ")
        failed = failed or bool(findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
