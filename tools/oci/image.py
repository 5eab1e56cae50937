"""Assembles an OCI image layout from built layers (the `oci_image` rule).

image.py --spec SPEC.json --layout DIR --digest DIGEST_FILE

SPEC holds the layers' blobs and info files (from layer.py) in order, the image config (user, working
directory, entrypoint, cmd, environment, exposed ports, labels) and the manifest's annotations. The
layout is what `skopeo copy oci:DIR` reads; tarball.py makes the archive `podman load` takes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tools.oci.oci import EPOCH, INDEX, MANIFEST, canonical_json, digest, write_layout

CONFIG = "application/vnd.oci.image.config.v1+json"


def build(spec: dict) -> tuple[dict[str, bytes | Path], dict, dict, str]:
    """The blobs (digest -> bytes or file), index.json, the manifest and its digest for a spec."""
    blobs: dict[str, bytes | Path] = {}
    layers, diff_ids, history = [], [], []
    for layer in spec["layers"]:
        info = json.loads(Path(layer["info"]).read_text())
        blobs[info["digest"]] = Path(layer["blob"])
        layers.append({"mediaType": info["media_type"], "digest": info["digest"], "size": info["size"]})
        diff_ids.append(info["diff_id"])
        history.append({"created": EPOCH, "created_by": info["created_by"], "comment": "; ".join(info["notes"])})
    settings = spec["config"]
    image_config = {
        "User": settings["user"],
        "WorkingDir": settings["workdir"],
        "Entrypoint": settings["entrypoint"],
        "Cmd": settings["cmd"],
        "Env": [f"{key}={value}" for key, value in sorted(settings["env"].items())],
        "ExposedPorts": {port if "/" in port else f"{port}/tcp": {} for port in sorted(settings["exposed_ports"])},
        "Labels": settings["labels"],
    }
    config = {
        "architecture": spec["architecture"],
        "os": spec["os"],
        "created": EPOCH,
        "config": {key: value for key, value in image_config.items() if value},
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
        "annotations": spec["annotations"],
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = digest(manifest_bytes)
    blobs[manifest_digest] = manifest_bytes
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{"mediaType": MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes)}],
    }
    return blobs, index, manifest, manifest_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--layout", type=Path, required=True)
    parser.add_argument("--digest", type=Path, required=True)
    args = parser.parse_args()

    blobs, index, _manifest, manifest_digest = build(json.loads(args.spec.read_text()))
    write_layout(args.layout, index, blobs)
    args.digest.write_text(manifest_digest + "\n")


if __name__ == "__main__":
    main()
