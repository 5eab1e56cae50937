"""What the built images hold and how they are configured, read from their OCI layouts (no runtime needed)."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

import pytest

from libs.processes.processes import runfile
from services.registry import REGISTRY
from tools.certs.certs import mint_ca
from tools.oci.layer import elf_needed, elf_section_names
from tools.oci.oci import MEDIA_TYPES, Tree, open_layer, read_layout, write_layer
from tools.oci.scan import scan_layer, scan_layout

IMAGES = {name: service.image for name, service in REGISTRY.items()}  # runfiles paths of the OCI layouts
ANY_IMAGE = next(iter(IMAGES.values()))  # for what the base layer holds: every image has the same one
LOCK = "tools/oci/debian_packages.lock"
NONROOT = 65532


def manifest_and_config(layout: Path) -> tuple[dict, dict]:
    image = read_layout(layout)
    return image.manifest, image.config


def layer(layout: Path, number: int) -> tarfile.TarFile:
    image = read_layout(layout)
    return open_layer(image.blob(image.manifest["layers"][number]["digest"]))


def layer_files(layout: Path, number: int) -> dict[str, tarfile.TarInfo]:
    with layer(layout, number) as tar:
        return {member.name: member for member in tar.getmembers()}


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_config_runs_the_service_as_the_non_root_user(service: str) -> None:
    _, config = manifest_and_config(runfile(IMAGES[service]))
    settings = config["config"]
    assert settings["User"] == f"{NONROOT}:{NONROOT}"
    package = REGISTRY[service].package
    assert settings["Entrypoint"] == ["/usr/bin/python3.11", f"/app/online_books/services/{package}/main.py"]
    assert settings["WorkingDir"] == "/app"
    assert "PYTHONDONTWRITEBYTECODE=1" in settings["Env"]
    assert any(env.startswith("PYTHONPATH=/app/online_books:") for env in settings["Env"])
    labels = settings["Labels"]
    assert labels["org.opencontainers.image.title"] == REGISTRY[service].repository
    assert labels["org.opencontainers.image.description"] == REGISTRY[service].description
    assert labels["org.opencontainers.image.base.name"]


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_exposes_the_ports_of_the_list_and_turns_probes_and_metrics_on(service: str) -> None:
    entry = REGISTRY[service]
    settings = manifest_and_config(runfile(IMAGES[service]))[1]["config"]
    assert settings["ExposedPorts"] == {f"{port}/tcp": {} for port in entry.ports.values()}
    if entry.kind == "grpc":
        assert f"{entry.env_prefix}_HEALTH_PORT={entry.ports['health']}" in settings["Env"]
        assert f"{entry.env_prefix}_METRICS_PORT={entry.ports['metrics']}" in settings["Env"]


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_three_layers_each_with_a_dated_history_entry(service: str) -> None:
    manifest, config = manifest_and_config(runfile(IMAGES[service]))
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == len(config["history"]) == 3
    assert all(entry["created"] and entry["created_by"] for entry in config["history"])
    assert [layer["mediaType"] for layer in manifest["layers"]] == [MEDIA_TYPES["zstd"]] * 3  # the default


def test_every_image_shares_one_base_layer() -> None:
    assert len({read_layout(runfile(layout)).manifest["layers"][0]["digest"] for layout in IMAGES.values()}) == 1


def test_base_layer_has_the_user_the_ca_bundle_and_the_pinned_packages() -> None:
    files = layer_files(runfile(ANY_IMAGE), 0)
    home = files["home/nonroot"]
    assert (home.uid, home.gid, home.mode) == (NONROOT, NONROOT, 0o700)
    assert files["tmp"].mode == 0o1777
    assert files["usr/lib/ssl/cert.pem"].linkname == "/etc/ssl/certs/ca-certificates.crt"
    assert files["etc/ssl/certs/ca-certificates.crt"].size > 100_000
    assert all(member.mtime == 0 for member in files.values())
    pinned = {line.split()[0] for line in runfile(LOCK).read_text().splitlines() if line and not line.startswith("#")}
    assert {name.removeprefix("var/lib/dpkg/status.d/") for name in files if "status.d/" in name} == pinned
    docs = [name for name, member in files.items() if member.isfile() and name.startswith("usr/share/doc/")]
    assert docs
    assert all(name.endswith("/copyright") for name in docs)
    assert not [name for name in files if name.startswith(("usr/share/man/", "usr/share/locale/"))]


def test_passwd_names_the_non_root_user() -> None:
    with layer(runfile(ANY_IMAGE), 0) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
    assert f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin" in passwd.splitlines()


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_wheel_ca_bundles_are_links_to_the_system_one(service: str) -> None:
    files = layer_files(runfile(IMAGES[service]), 1)
    for bundle in (
        "app/pypi/site-packages/certifi/cacert.pem",
        "app/pypi/site-packages/grpc/_cython/_credentials/roots.pem",
    ):
        assert files[bundle].issym()
        assert files[bundle].linkname == "/etc/ssl/certs/ca-certificates.crt"


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_no_layer_holds_a_private_key_or_a_certificate_but_the_system_bundle(service: str) -> None:
    assert scan_layout(runfile(IMAGES[service])) == []


def test_the_scanner_finds_keys_and_certificates(tmp_path: Path) -> None:
    """Control for the test above: a layer with what a careless Dockerfile would bake in."""
    minted = mint_ca()
    tree = Tree()
    tree.file("app/certs/service.pem", data=minted.cert_pem + minted.key_pem)
    tree.file("app/notes.txt", data=b"no secrets here")
    tree.file("etc/ssl/certs/ca-certificates.crt", data=minted.cert_pem)
    tree.file("home/nonroot/.ssh/id_ed25519", data=b"whatever is inside")
    write_layer(tree, tmp_path / "layer.tar.gz")
    assert scan_layer(tmp_path / "layer.tar.gz") == [
        "app/certs/service.pem: private key or key store",
        "home/nonroot/.ssh/id_ed25519: private key or key store",
    ]
    tree.entries.pop("app/certs/service.pem")
    tree.file("app/certs/ca.pem", data=minted.cert_pem)
    write_layer(tree, tmp_path / "layer.tar.gz")
    assert scan_layer(tmp_path / "layer.tar.gz") == [
        "app/certs/ca.pem: certificate outside the system CA bundle",
        "home/nonroot/.ssh/id_ed25519: private key or key store",
    ]


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_shared_objects_ship_without_debugging_information(service: str) -> None:
    with layer(runfile(IMAGES[service]), 1) as tar:
        shared = [
            member for member in tar.getmembers() if member.isfile() and ".so" in PurePosixPath(member.name).suffixes
        ]
        sections = {member.name: elf_section_names(tar.extractfile(member).read()) for member in shared}  # type: ignore[union-attr]
    assert any("uvloop" in name for name in sections)  # the one whose wheel ships them
    assert [name for name, names in sections.items() if ".debug_info" in names] == []
    assert all(".text" in names for names in sections.values())  # still whole shared objects


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_every_library_an_elf_file_needs_is_in_the_image(service: str) -> None:
    """What the base layer leaves out (tools/oci/layer.py: libmvec, the extension modules whose libraries
    are not in the list) is never needed: every DT_NEEDED of every ELF file of every layer is there."""
    image = read_layout(runfile(IMAGES[service]))
    names: set[str] = set()
    needed: dict[str, list[str]] = {}
    for entry in image.manifest["layers"]:
        with open_layer(image.blob(entry["digest"])) as tar:
            for member in tar.getmembers():
                names.add(PurePosixPath(member.name).name)
                if member.isfile():
                    needed[member.name] = elf_needed(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert needed["usr/bin/python3.11"], "the interpreter names its libraries"
    missing = {path: [name for name in wants if name not in names] for path, wants in needed.items()}
    assert {path: names for path, names in missing.items() if names} == {}
    assert not any("libmvec.so" in name for name in names)
    assert not any("/_curses." in path or "/readline." in path for path in needed)
