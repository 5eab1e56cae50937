"""Assembles an OCI image layout (and a loadable archive of it) from built layers.

image.py --spec SPEC.json --layout DIR --archive IMAGE.tar --digest DIGEST_FILE

SPEC holds the layers' blobs and info files (from layer.py) in order, and the image config: user,
working directory, entrypoint, environment, exposed ports, labels and the reference name. The
layout is what `skopeo copy oci:DIR` and `umoci` read; the archive is the same layout in one
deterministic tar, with a Docker-style manifest.json beside index.json so that both `podman load`
and `docker load` accept it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tools.oci.oci import EPOCH, Tree, blob_path, canonical_json, digest

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def build(spec: dict) -> tuple[dict[str, bytes | Path], dict, dict, str]:
    """The blobs (digest -> bytes or file), index.json, the manifest and its digest for a spec."""
    blobs: dict[str, bytes | Path] = {}
    layers, diff_ids, history = [], [], []
    for layer in spec["layers"]:
        info = json.loads(Path(layer["info"]).read_text())
        blobs[info["digest"]] = Path(layer["blob"])
        layers.append({"mediaType": LAYER, "digest": info["digest"], "size": info["size"]})
        diff_ids.append(info["diff_id"])
        history.append({"created": EPOCH, "created_by": info["created_by"], "comment": "; ".join(info["notes"])})
    config = {
        "architecture": spec["architecture"],
        "os": "linux",
        "created": EPOCH,
        "config": {
            "User": spec["user"],
            "WorkingDir": spec["workdir"],
            "Entrypoint": spec["entrypoint"],
            "Env": [f"{key}={value}" for key, value in sorted(spec["env"].items())],
            "ExposedPorts": {f"{port}/tcp": {} for port in sorted(spec["ports"])},
            "Labels": spec["labels"],
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config_bytes = canonical_json(config)
    blobs[digest(config_bytes)] = config_bytes
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": digest(config_bytes), "size": len(config_bytes)},
        "layers": layers,
        "annotations": {key: value for key, value in spec["labels"].items() if key.startswith("org.opencontainers")},
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = digest(manifest_bytes)
    blobs[manifest_digest] = manifest_bytes
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": f"{spec['repository']}:{spec['tag']}"},
            }
        ],
    }
    return blobs, index, manifest, manifest_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--layout", type=Path, required=True)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--digest", type=Path, required=True)
    args = parser.parse_args()

    spec = json.loads(args.spec.read_text())
    blobs, index, manifest, manifest_digest = build(spec)
    docker_manifest = [
        {
            "Config": blob_path(manifest["config"]["digest"]),
            "RepoTags": [f"{spec['repository']}:{spec['tag']}"],
            "Layers": [blob_path(layer["digest"]) for layer in manifest["layers"]],
        }
    ]
    files: dict[str, bytes | Path] = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(index),
        "manifest.json": canonical_json(docker_manifest),
    }
    files.update({blob_path(d): blob for d, blob in blobs.items()})

    archive = Tree()
    for name, content in files.items():
        target = args.layout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
            archive.file(name, source=content)
        else:
            target.write_bytes(content)
            archive.file(name, data=content)
    with args.archive.open("wb") as out:
        archive.write_tar(out)
    args.digest.write_text(manifest_digest + "\n")


if __name__ == "__main__":
    main()
