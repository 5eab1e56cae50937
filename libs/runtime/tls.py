"""mTLS material on disk, for servers (reloaded on change) and clients.

Files are PEM: the service's certificate and key, and the CA that signs the peers it trusts. Servers
re-read them when any file's modification time or size changes, on the next TLS handshake, so a
rotated certificate takes effect without a restart (cert-manager and `//tools/certs` both replace
files in place).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """The TLS files are missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, ca) PEM bytes, checked to parse, or TlsConfigError naming the bad file."""
        contents = []
        for label, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            try:
                contents.append(path.read_bytes())
            except OSError as error:
                raise TlsConfigError(f"cannot read TLS {label} {path}: {error.strerror}") from error
        cert, key, ca = contents
        # The stdlib's OpenSSL checks the PEM and that key and certificate belong together; this keeps
        # the `cryptography` wheel (15 MB) out of every image.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for label, path, data in (("certificate", self.cert, cert), ("CA", self.ca, ca)):
            try:
                context.load_verify_locations(cadata=data.decode("ascii"))
            except (ssl.SSLError, ValueError) as error:
                raise TlsConfigError(f"TLS {label} {path} is not a PEM certificate") from error
        try:
            # An encrypted key must fail here, not make OpenSSL prompt for a passphrase on the terminal.
            context.load_cert_chain(self.cert, self.key, password=lambda: b"")
        except ssl.SSLError as error:
            raise TlsConfigError(
                f"TLS key {self.key} is not a PEM private key matching {self.cert}: {error.reason}"
            ) from error
        return cert, key, ca

    def fingerprint(self) -> tuple[tuple[int, int], ...]:
        """Changes whenever any of the files is replaced or rewritten."""
        stats = [os.stat(path) for path in (self.cert, self.key, self.ca)]
        return tuple((stat.st_mtime_ns, stat.st_size) for stat in stats)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that require and verify client certificates, reloading `files` when they change."""
    lock = threading.Lock()
    cert, key, ca = files.read()
    state = {"fingerprint": files.fingerprint()}

    def configuration(cert: bytes, key: bytes, ca: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC on every new handshake: a stat() of three files, and a read only on change.
        with lock:
            try:
                fingerprint = files.fingerprint()
                if fingerprint == state["fingerprint"]:
                    return None
                new = files.read()
            except (OSError, TlsConfigError) as error:
                logger.error("keeping the current TLS certificate: %s", error)
                return None
            state["fingerprint"] = fingerprint
            logger.info("reloaded TLS certificate %s", files.cert)
            return configuration(*new)

    # grpc-stubs types the fetcher as never returning None; gRPC documents None as "keep the current one".
    return grpc.dynamic_ssl_server_credentials(
        configuration(cert, key, ca),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials presenting our certificate and trusting only `files.ca`."""
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
