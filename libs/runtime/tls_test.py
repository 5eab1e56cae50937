"""TlsFiles.read: what a misconfigured deployment gets told, before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from libs.runtime.tls import TlsConfigError, TlsFiles
from tools.certs.certs import mint_all


@pytest.fixture(scope="module")
def minted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    mint_all(out, services=("orders", "shop"))
    return out


def files(out: Path, cert: str = "orders.pem", key: str = "orders.key", ca: str = "ca.pem") -> TlsFiles:
    return TlsFiles(out / cert, out / key, out / ca)


def test_a_matching_pair_and_ca_are_read(minted: Path) -> None:
    cert, key, ca = files(minted).read()
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in key
    assert ca != cert


def test_a_missing_file_is_named(minted: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"cannot read TLS CA .*nope\.pem"):
        files(minted, ca="nope.pem").read()


def test_a_file_that_is_not_a_certificate_is_named(minted: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"TLS certificate .*orders\.key is not a PEM certificate"):
        files(minted, cert="orders.key").read()


def test_a_key_of_another_certificate_is_refused(minted: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"shop\.key is not a PEM private key matching .*orders\.pem"):
        files(minted, key="shop.key").read()


def test_an_encrypted_key_is_refused_without_prompting(minted: Path, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key((minted / "orders.key").read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "encrypted.key").write_bytes(encrypted)
    with pytest.raises(TlsConfigError, match=r"encrypted\.key is not a PEM private key matching"):
        TlsFiles(minted / "orders.pem", tmp_path / "encrypted.key", minted / "ca.pem").read()
