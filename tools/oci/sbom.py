"""An image's SBOM, SPDX 2.3 JSON, from the build's own pins: what `spdx_sbom` runs beside `image.digest`.

    sbom.py --layout IMAGE_LAYOUT --deb A.deb --deb B.deb ... --debian-lock tools/oci/debian_packages.lock \
        --python-lock requirements_lock.txt --output image.spdx.json

Its subject is the image (the package the document describes, with the manifest digest as its checksum and
version), which CONTAINS:
- every Debian package of the base layer: name, version, architecture, the .deb's SHA256 (the lock's),
  its source package, and the licences its copyright file names (Debian's names, in licenseComments:
  they are not all SPDX identifiers);
- every Python distribution in site-packages: name, version, the tags of the wheel installed, the lock's
  SHA256 of every file of that version (the wheel installed is one of them: which one, the image cannot
  tell, so none is given as the package's checksum), the licence its metadata declares (PEP 639's
  License-Expression as licenseDeclared; otherwise in licenseComments);
- code generated in the build from another Bazel repository's .proto files (protoc-gen-validate's);
- the files the image assembly writes (tools/oci/layer.py: /etc/passwd, /etc/group, nsswitch.conf);
- the first-party code: the app layer, its digest as the checksum.
Every regular file of every layer is an SPDX file (SHA1 and SHA256) contained by exactly one package:
a Debian file by the package whose .deb holds it (the CA bundle by ca-certificates, whose certificates
it joins; a status.d entry by its package), a site-packages file by the distribution whose RECORD lists
it, a compiled .pyc by the owner of its .py. A file nothing accounts for fails the build.

Why SPDX rather than CycloneDX: files with checksums, and a package CONTAINS-relationship per file, are
first-class in SPDX 2.3 (CycloneDX 1.5 lists files as components with no owner but nesting), and that is
what lets a test prove the SBOM accounts for every file. The same image gives the same bytes: no clock
(creationInfo.created is the image's own fixed epoch), no random namespace (derived from the digest).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tools.oci.layer import SYSTEM_CA_BUNDLE, add_system_files, ar_members, kept, open_member
from tools.oci.oci import EPOCH, Tree, open_layer, read_layout

# Where wheels are installed in an image: app/<repository>/site-packages/, @pypi's, or under arm64 each
# distribution's own @pypi_arm64_<name> (tools/pip).
SITE_PACKAGES = re.compile(r"^app/[^/]+/site-packages/")
FIRST_PARTY = "app/online_books/"
STATUS_D = "var/lib/dpkg/status.d/"
NAMESPACE = "https://online-books.invalid/spdx"  # not fetched: SPDX wants a URI unique to the document


@dataclass
class Package:
    spdx_id: str
    fields: dict
    files: list[str] = field(default_factory=list)  # image paths


@dataclass(frozen=True)
class LayerFile:
    path: str
    data: bytes


def layer_files(layout: Path) -> Iterator[tuple[int, LayerFile]]:
    """(layer index, file) for every regular file of every layer, in order."""
    image = read_layout(layout)
    for index, layer in enumerate(image.manifest["layers"]):
        with open_layer(image.blob(layer["digest"])) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    yield index, LayerFile(member.name, tar.extractfile(member).read())  # type: ignore[union-attr]


def normalize(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def python_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """`name==version` with its `--hash=sha256:` lines, by normalized name."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line):
            current = normalize(match.group(1))
            pins[current] = (match.group(2), [])
        elif current and (match := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current][1].append(match.group(1))
        elif not line.startswith((" ", "\t")):
            current = None
    return pins


def debian_lock(text: str) -> dict[tuple[str, str], str]:
    """The .deb's SHA256 by package name and architecture (`name version architecture size sha256` lines):
    the lock pins a package once per architecture, "all" once for every one."""
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {(row[0], row[2]): row[4] for row in rows}


def control_fields(text: str) -> dict[str, str]:
    return {key: value.strip() for key, value in email.parser.Parser().parsestr(text).items()}


def copyright_licences(text: str) -> list[str]:
    """The licence names of a machine-readable Debian copyright file (DEP-5), in order of appearance."""
    names: list[str] = []
    for match in re.finditer(r"^License:[ \t]*(\S[^\n]*)$", text, re.M):
        for name in re.split(r"\s+(?:or|and)\s+|\s*[|,]\s*", match.group(1).strip()):
            if name and name not in names:
                names.append(name)
    return names


def debian_packages(debs: list[Path], shas: dict[tuple[str, str], str], files: dict[str, LayerFile]) -> list[Package]:
    packages = []
    for deb in sorted(debs):
        members = ar_members(deb.read_bytes())
        with open_member(members, "control") as control:
            fields = control_fields(control.extractfile("./control").read().decode())  # type: ignore[union-attr]
        name, version, architecture = fields["Package"], fields["Version"], fields["Architecture"]
        source = fields.get("Source", name).split(" ")[0]
        with open_member(members, "data") as data:
            owned = [p for m in data.getmembers() if m.isfile() and kept(p := m.name.removeprefix("./"))]
        owned.append(STATUS_D + name)
        if name == "ca-certificates":  # its certificates are joined into the one bundle (layer.py)
            owned.append(SYSTEM_CA_BUNDLE)
        copyright_file = files.get(f"usr/share/doc/{name}/copyright")
        licences = copyright_licences(copyright_file.data.decode(errors="replace")) if copyright_file else []
        purl = f"pkg:deb/debian/{name}@{version}?arch={architecture}&distro=debian-12"
        packages.append(
            Package(
                spdx_id("deb", name),
                {
                    "name": name,
                    "versionInfo": version,
                    "supplier": "Organization: Debian",
                    "downloadLocation": "NOASSERTION",
                    "sourceInfo": f"built from the Debian source package {source}",
                    "checksums": [{"algorithm": "SHA256", "checksumValue": shas[(name, architecture)]}],
                    "licenseConcluded": "NOASSERTION",
                    "licenseDeclared": "NOASSERTION",
                    "licenseComments": "Debian's copyright file names: " + ", ".join(licences)
                    if licences
                    else "Debian's copyright file names no licence in machine-readable form",
                    "copyrightText": "NOASSERTION",
                    "externalRefs": [
                        {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}
                    ],
                },
                [path for path in owned if path in files],
            )
        )
    return packages


def python_packages(files: dict[str, LayerFile], pins: dict[str, tuple[str, list[str]]]) -> list[Package]:
    packages = []
    for path in sorted(p for p in files if p.endswith(".dist-info/METADATA")):
        site = SITE_PACKAGES.match(path)
        if site is None:
            continue
        root = site.group(0)
        metadata = email.parser.Parser().parsestr(files[path].data.decode())
        name, version = metadata["Name"], metadata["Version"]
        locked_version, hashes = pins.get(normalize(name), ("", []))
        if locked_version != version:
            raise SystemExit(
                f"{name} {version} is in the image but requirements_lock.txt pins {locked_version or 'nothing'}"
            )
        record = files[path.removesuffix("METADATA") + "RECORD"].data.decode()
        owned = [root + line.split(",")[0].strip('"') for line in record.splitlines() if line.strip()]
        expression = metadata.get("License-Expression")
        stated = metadata.get("License") or "; ".join(
            c.removeprefix("License :: ") for c in metadata.get_all("Classifier", []) if c.startswith("License ::")
        )
        packages.append(
            Package(
                spdx_id("pypi", normalize(name)),
                {
                    "name": name,
                    "versionInfo": version,
                    "downloadLocation": f"https://pypi.org/project/{normalize(name)}/{version}/",
                    "sourceInfo": f"installed from its wheel tagged {wheel_tags(files, path)}",
                    "comment": "requirements_lock.txt's SHA256 of every file of this version (the wheel "
                    "installed is one of them): " + ", ".join(sorted(hashes)),
                    "licenseConcluded": "NOASSERTION",
                    "licenseDeclared": expression or "NOASSERTION",
                    **({} if expression or not stated else {"licenseComments": f"its metadata states: {stated[:500]}"}),
                    "copyrightText": "NOASSERTION",
                    "externalRefs": [
                        {
                            "referenceCategory": "PACKAGE-MANAGER",
                            "referenceType": "purl",
                            "referenceLocator": f"pkg:pypi/{normalize(name)}@{version}",
                        }
                    ],
                },
                [p for p in owned if p in files],
            )
        )
    return packages


def wheel_tags(files: dict[str, LayerFile], metadata_path: str) -> str:
    """The tags of the wheel a distribution was installed from (its WHEEL file), e.g. cp311-abi3-linux_x86_64."""
    wheel = files.get(metadata_path.removesuffix("METADATA") + "WHEEL")
    tags = [
        line.split(":", 1)[1].strip()
        for line in (wheel.data.decode() if wheel else "").splitlines()
        if line.startswith("Tag:")
    ]
    return ", ".join(tags) or "unknown (no WHEEL file)"


def own_package(spdx: str, name: str, comment: str, owned: list[str], checksum: str | None = None) -> Package:
    return Package(
        spdx,
        {
            "name": name,
            "versionInfo": checksum or "NOASSERTION",
            "downloadLocation": "NOASSERTION",
            **(
                {"checksums": [{"algorithm": "SHA256", "checksumValue": checksum.removeprefix("sha256:")}]}
                if checksum
                else {}
            ),
            "comment": comment,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        },
        owned,
    )


def assembly_files() -> list[str]:
    """The files layer.py writes into the base layer that no package holds (with an empty tree)."""
    tree = Tree()
    tree.file("usr/share/ca-certificates/placeholder.crt", b"")  # add_system_files requires one certificate
    add_system_files(tree, 0, "user")
    return sorted(p for p, e in tree.entries.items() if e.kind == "file" and p != SYSTEM_CA_BUNDLE)


def sbom(
    layout: Path, debs: list[Path], debian_shas: dict[tuple[str, str], str], pins: dict[str, tuple[str, list[str]]]
) -> dict:
    image = read_layout(layout)
    indexed = list(layer_files(layout))
    files = {f.path: f for _, f in indexed}  # a later layer's file replaces an earlier one's
    app_layer = image.manifest["layers"][-1]["digest"]
    title = image.config.get("config", {}).get("Labels", {}).get("org.opencontainers.image.title", "image")
    packages = debian_packages(debs, debian_shas, files) + python_packages(files, pins)
    packages.append(
        own_package(
            "SPDXRef-image-assembly",
            "image assembly (tools/oci/layer.py)",
            "files the image's build writes: the users and groups, name service switch",
            [path for path in assembly_files() if path in files],
        )
    )
    external = sorted(
        {
            p.split("/")[1]
            for p in files
            if p.startswith("app/") and not SITE_PACKAGES.match(p) and not p.startswith(FIRST_PARTY)
        }
    )
    for repository in external:
        packages.append(
            own_package(
                spdx_id("generated", repository),
                repository,
                f"code generated in the build from the .proto files of the Bazel repository @{repository} "
                "(WORKSPACE pins its source)",
                [p for p in files if p.startswith(f"app/{repository}/")],
            )
        )
    packages.append(
        own_package(
            "SPDXRef-first-party",
            "online_books",
            "this repository's code: the image's app layer, whose digest is the checksum",
            [p for p in files if p.startswith(FIRST_PARTY)],
            app_layer,
        )
    )
    owner: dict[str, Package] = {}
    for package in packages:
        for path in package.files:
            owner.setdefault(path, package)
    for path in files:  # compiled modules belong to whoever holds their source
        pure = PurePosixPath(path)
        if path not in owner and pure.parent.name == "__pycache__" and pure.suffix == ".pyc":
            source = str(pure.parent.parent / (pure.name.split(".")[0] + ".py"))
            if source in owner:
                owner[path] = owner[source]
    unowned = sorted(set(files) - set(owner))
    if unowned:
        raise SystemExit(f"{len(unowned)} files of the image belong to no package, e.g. {unowned[:5]}")

    digest = image.manifest_digest
    document_files, relationships = (
        [],
        [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-image"}],
    )
    for package in packages:
        relationships.append(
            {"spdxElementId": "SPDXRef-image", "relationshipType": "CONTAINS", "relatedSpdxElement": package.spdx_id}
        )
    for number, path in enumerate(sorted(files)):
        data = files[path].data
        file_id = f"SPDXRef-File-{number}"
        document_files.append(
            {
                "fileName": "./" + path,
                "SPDXID": file_id,
                "checksums": [
                    {"algorithm": "SHA1", "checksumValue": hashlib.sha1(data).hexdigest()},  # noqa: S324 (SPDX requires it)
                    {"algorithm": "SHA256", "checksumValue": hashlib.sha256(data).hexdigest()},
                ],
                "licenseConcluded": "NOASSERTION",
                "copyrightText": "NOASSERTION",
            }
        )
        relationships.append(
            {"spdxElementId": owner[path].spdx_id, "relationshipType": "CONTAINS", "relatedSpdxElement": file_id}
        )
    image_package = {
        "SPDXID": "SPDXRef-image",
        "name": title,
        "versionInfo": digest,
        "primaryPackagePurpose": "CONTAINER",
        "downloadLocation": "NOASSERTION",
        "checksums": [{"algorithm": "SHA256", "checksumValue": digest.removeprefix("sha256:")}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "filesAnalyzed": False,
        "externalRefs": [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": f"pkg:oci/{title.rsplit('/', 1)[-1]}@{digest.replace(':', '%3A')}",
            }
        ],
    }
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{title}@{digest}",
        "documentNamespace": f"{NAMESPACE}/{title}/{digest}",
        "creationInfo": {"created": EPOCH, "creators": ["Tool: online-books-tools-oci-sbom"]},
        "documentDescribes": ["SPDXRef-image"],
        "packages": [image_package]
        + [{"SPDXID": p.spdx_id, **p.fields, **analysis(p, owner, files)} for p in packages],
        "files": document_files,
        "relationships": relationships,
    }


def analysis(package: Package, owner: dict[str, Package], files: dict[str, LayerFile]) -> dict:
    """SPDX's fields for a package whose files are listed: the verification code over their SHA1s."""
    sha1s = sorted(hashlib.sha1(files[path].data).hexdigest() for path, p in owner.items() if p is package)  # noqa: S324
    if not sha1s:
        return {"filesAnalyzed": False}
    code = hashlib.sha1("".join(sha1s).encode()).hexdigest()  # noqa: S324 (SPDX 2.3, 7.9: SHA1 by definition)
    return {"filesAnalyzed": True, "packageVerificationCode": {"packageVerificationCodeValue": code}}


def render(document: dict) -> str:
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", type=Path, required=True, help="the image's OCI layout directory")
    parser.add_argument("--deb", type=Path, action="append", default=[], help="a .deb of the base layer")
    parser.add_argument("--debian-lock", type=Path, required=True)
    parser.add_argument("--python-lock", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    document = sbom(
        args.layout, args.deb, debian_lock(args.debian_lock.read_text()), python_lock(args.python_lock.read_text())
    )
    args.output.write_text(render(document))


if __name__ == "__main__":
    main()
