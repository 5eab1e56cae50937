"""Writes the archive `podman load` and `docker load` take from an OCI image layout (the `oci_load` rule).

tarball.py --layout DIR --output IMAGE.tar [--repo-tag NAME:TAG ...]

The archive is the layout in one deterministic tar, its index naming the image by each repo tag, with a
Docker-style manifest.json beside index.json (what `docker load` reads; podman reads either).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.oci.oci import Tree, blob_path, canonical_json, read_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--repo-tag", action="append", default=[], help="a name the loaded image gets")
    args = parser.parse_args()

    image = read_layout(args.layout)
    [entry] = image.index["manifests"]
    named = [dict(entry, annotations={"org.opencontainers.image.ref.name": tag}) for tag in args.repo_tag]
    index = dict(image.index, manifests=named or [entry])
    docker_manifest = [
        {
            "Config": blob_path(image.manifest["config"]["digest"]),
            "RepoTags": args.repo_tag,
            "Layers": [blob_path(layer["digest"]) for layer in image.manifest["layers"]],
        }
    ]
    archive = Tree()
    archive.file("oci-layout", source=args.layout / "oci-layout")
    archive.file("index.json", data=canonical_json(index))
    archive.file("manifest.json", data=canonical_json(docker_manifest))
    for blob in sorted((args.layout / "blobs").rglob("*")):
        if blob.is_file():
            archive.file(str(blob.relative_to(args.layout)), source=blob)
    with args.output.open("wb") as out:
        archive.write_tar(out)


if __name__ == "__main__":
    main()
