"""Each image's SBOM (tools/oci/sbom.py, `<image>.spdx.json`): valid SPDX 2.3 by spdx-tools' own validator,
the image's digest as its subject, the build's pins as its packages, and every file of every layer in it,
with the same SHA256, contained by a package. Reads the layers here, not through the generator's code.
Run for each architecture's images (sbom_test, sbom_arm64_test): DEBS names that architecture's .deb files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from libs.processes.processes import runfile
from services.registry import REGISTRY
from tools.oci.oci import open_layer, read_layout
from tools.oci.sbom import debian_lock, python_lock, render, sbom

IMAGES = {name: service.image for name, service in REGISTRY.items()}
DEBIAN_LOCK = "tools/oci/debian_packages.lock"
PYTHON_LOCK = "requirements_lock.txt"
DEBS = os.environ.get("DEBS", "../debian/debs")  # @debian//:debs (or @debian_arm64//:debs) in the runfiles


def sbom_of(service: str) -> dict:
    return json.loads(runfile(IMAGES[service] + ".spdx.json").read_text())


def image_files(layout: Path) -> dict[str, str]:
    """SHA256 of every regular file of the image (a later layer's file replaces an earlier one's)."""
    image = read_layout(layout)
    files = {}
    for layer in image.manifest["layers"]:
        with open_layer(image.blob(layer["digest"])) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    files[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()  # type: ignore[union-attr]
    return files


def purls(sbom: dict, kind: str) -> dict[str, str]:
    """name → version of the packages whose purl is of `kind` (deb, pypi)."""
    found = {}
    for package in sbom["packages"]:
        for ref in package.get("externalRefs", []):
            if ref["referenceLocator"].startswith(f"pkg:{kind}/"):
                found[package["name"]] = package["versionInfo"]
    return found


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_spdx_tools_finds_the_sbom_valid(service: str) -> None:
    document = parse_file(str(runfile(IMAGES[service] + ".spdx.json")))
    problems = validate_full_spdx_document(document)
    assert not problems, [problem.validation_message for problem in problems[:5]]


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_its_subject_is_the_image_and_its_packages_are_the_pins(service: str) -> None:
    sbom = sbom_of(service)
    image = read_layout(runfile(IMAGES[service]))
    assert sbom["documentDescribes"] == ["SPDXRef-image"]
    subject = next(p for p in sbom["packages"] if p["SPDXID"] == "SPDXRef-image")
    assert subject["checksums"] == [{"algorithm": "SHA256", "checksumValue": image.manifest_digest.split(":")[1]}]
    assert subject["primaryPackagePurpose"] == "CONTAINER"

    pinned = {}  # the lock's lines for the image's architecture: each package's own build, or its "all" one
    for line in runfile(DEBIAN_LOCK).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version, architecture, _, sha256 = line.split()
            if architecture in (image.config["architecture"], "all"):
                pinned[name] = (version, sha256)
    debs = {p["name"]: p for p in sbom["packages"] if p["SPDXID"].startswith("SPDXRef-deb-")}
    assert {name: (p["versionInfo"], p["checksums"][0]["checksumValue"]) for name, p in debs.items()} == pinned
    fetched = {deb.stem: hashlib.sha256(deb.read_bytes()).hexdigest() for deb in runfile(DEBS).glob("*.deb")}
    assert {name: p["checksums"][0]["checksumValue"] for name, p in debs.items()} == fetched  # the files themselves
    assert all(p["sourceInfo"].startswith("built from the Debian source package ") for p in debs.values())

    lock = dict(re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)", runfile(PYTHON_LOCK).read_text(), re.M))
    lock = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in lock.items()}
    python = {re.sub(r"[-_.]+", "-", name).lower(): v for name, v in purls(sbom, "pypi").items()}
    assert python, "no Python distribution listed"
    assert {name: lock.get(name) for name in python} == python  # each at the version the lock pins

    first_party = next(p for p in sbom["packages"] if p["SPDXID"] == "SPDXRef-first-party")
    assert first_party["checksums"][0]["checksumValue"] == image.manifest["layers"][-1]["digest"].split(":")[1]


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_every_file_of_the_image_is_in_it_and_belongs_to_a_package(service: str) -> None:
    sbom = sbom_of(service)
    listed = {f["fileName"].removeprefix("./"): f for f in sbom["files"]}
    sha256 = {
        path: next(c["checksumValue"] for c in f["checksums"] if c["algorithm"] == "SHA256")
        for path, f in listed.items()
    }
    packages = {p["SPDXID"] for p in sbom["packages"]}
    owners: dict[str, list[str]] = {}
    for relation in sbom["relationships"]:
        if relation["relationshipType"] == "CONTAINS" and relation["spdxElementId"] in packages:
            owners.setdefault(relation["relatedSpdxElement"], []).append(relation["spdxElementId"])
    files = image_files(runfile(IMAGES[service]))
    assert set(files) == set(listed)
    assert {path for path in files if files[path] != sha256[path]} == set()
    unowned = [path for path, f in listed.items() if len(owners.get(f["SPDXID"], [])) != 1]
    assert unowned == [], f"{len(unowned)} files without exactly one package, e.g. {unowned[:5]}"


@pytest.mark.parametrize("service", sorted(IMAGES))
def test_made_again_from_the_same_inputs_elsewhere_it_is_the_same_bytes(service: str, tmp_path: Path) -> None:
    """No clock, no random identifier, no path of the build in it: two clones write the same SBOM."""
    layout = tmp_path / "elsewhere" / "image"
    shutil.copytree(runfile(IMAGES[service]), layout)
    debs = sorted(runfile(DEBS).glob("*.deb"))
    again = sbom(
        layout, debs, debian_lock(runfile(DEBIAN_LOCK).read_text()), python_lock(runfile(PYTHON_LOCK).read_text())
    )
    assert render(again) == runfile(IMAGES[service] + ".spdx.json").read_text()
