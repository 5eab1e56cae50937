"""Composes per-architecture image layouts into one OCI image index, with their SBOMs as referrers.

index.py --image LAYOUT [--image ...] [--referrer LAYOUT ARTIFACT_TYPE FILE ...] --layout DIR --digest FILE

The `oci_image_index` rule's action. DIR gets every blob of the images, the image index (each manifest
with its platform, from the image's config, in the order given) and, per referrer, an OCI 1.1 artifact
manifest whose `subject` is the image of LAYOUT and whose one layer is FILE (e.g. an SPDX SBOM,
`application/spdx+json`). index.json names the image index "index" and each artifact "referrer-<n>", the
names tools/oci/push.py reads. The index's digest goes to FILE of --digest. Everything is canonical JSON,
so the same inputs give the same digest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.oci.oci import INDEX, MANIFEST, REF_NAME, canonical_json, digest, read_layout, write_layout

EMPTY = "application/vnd.oci.empty.v1+json"  # OCI 1.1's config of an artifact that needs none
INDEX_REF = "index"


def descriptor(media_type: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def artifact_manifest(subject: dict, artifact_type: str, content: bytes, title: str) -> bytes:
    """An OCI 1.1 artifact: empty config, `content` as its one layer, `subject` the manifest it is about."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(EMPTY, b"{}"),
        "layers": [descriptor(artifact_type, content, annotations={"org.opencontainers.image.title": title})],
        "subject": subject,
    }
    return canonical_json(manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="append", required=True, metavar="LAYOUT")
    parser.add_argument("--referrer", nargs=3, action="append", default=[], metavar=("LAYOUT", "TYPE", "FILE"))
    parser.add_argument("--layout", type=Path, required=True)
    parser.add_argument("--digest", type=Path, required=True)
    args = parser.parse_args()

    blobs: dict[str, bytes | Path] = {}
    manifests: list[dict] = []
    subjects: dict[str, dict] = {}
    for layout in args.image:
        image = read_layout(Path(layout))
        for path in (image.layout / "blobs/sha256").iterdir():
            blobs["sha256:" + path.name] = path
        entry = dict(image.index["manifests"][0])
        subjects[layout] = dict(entry)
        platform = {"architecture": image.config["architecture"], "os": image.config["os"]}
        if platform in [manifest["platform"] for manifest in manifests]:
            raise SystemExit(f"{layout}: a second image for {platform}")
        manifests.append(dict(entry, platform=platform))
    index_bytes = canonical_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests})
    blobs[digest(index_bytes)] = index_bytes
    entries = [descriptor(INDEX, index_bytes, annotations={REF_NAME: INDEX_REF})]

    for number, (layout, artifact_type, file) in enumerate(args.referrer):
        if layout not in subjects:
            raise SystemExit(f"referrer {file}: its subject {layout} is not one of the --image layouts")
        content = Path(file).read_bytes()
        manifest = artifact_manifest(subjects[layout], artifact_type, content, Path(file).name)
        blobs.update({digest(b"{}"): b"{}", digest(content): content, digest(manifest): manifest})
        entries.append(
            descriptor(MANIFEST, manifest, artifactType=artifact_type, annotations={REF_NAME: f"referrer-{number}"})
        )

    write_layout(args.layout, {"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}, blobs)
    args.digest.write_text(digest(index_bytes) + "\n")


if __name__ == "__main__":
    main()
