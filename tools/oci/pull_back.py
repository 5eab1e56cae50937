"""Checks what a registry serves against a built layout: `pull_back.py --layout DIR REGISTRY/REPO@DIGEST`.

The registry is a local one over plain HTTP (CI's).

CI runs it after `:push` (.ci/run, publish_images): the manifest or image index at DIGEST must be the
layout's own bytes; for an index, every image it lists must be served as built; and every artifact the
layout attaches to those images (their SBOMs) must be listed by its subject's referrers tag and pulled
back with skopeo into a fresh layout with the same bytes. With `--gpg-key KEY --signature-store URL`, skopeo
pulls every image again under a policy that accepts only signatures by that key (`signedBy`, as podman and
CRI-O enforce it). Exits non-zero naming the first difference or the refusal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.oci.oci import blob_path, digest


def skopeo(*args: str) -> bytes:
    result = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"skopeo {' '.join(args)} failed:\n{result.stderr.decode(errors='replace')}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", type=Path, required=True)
    parser.add_argument("reference", help="REGISTRY/REPO@sha256:... as :push printed it")
    parser.add_argument("--gpg-key", type=Path, help="require signatures by this public key (exported, binary)")
    parser.add_argument("--signature-store", help="where the signatures are (lookaside), e.g. file:///dir")
    args = parser.parse_args()
    repository, pushed = args.reference.rsplit("@", 1)
    entries = json.loads((args.layout / "index.json").read_text())["manifests"]

    def served(reference: str) -> bytes:
        return skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{repository}{reference}")

    main_bytes = served(f"@{pushed}")
    if digest(main_bytes) != entries[0]["digest"]:
        raise SystemExit(f"{args.reference} is {digest(main_bytes)}, the layout's is {entries[0]['digest']}")
    listed = json.loads(main_bytes).get("manifests", [])
    for image in listed:
        if digest(served(f"@{image['digest']}")) != image["digest"]:
            raise SystemExit(f"{repository}@{image['digest']} ({image['platform']}) differs from the build")
    print(
        f"{args.reference}: as built, {len(listed)} images ({', '.join(i['platform']['architecture'] for i in listed)})"
    )

    for entry in entries[1:]:
        artifact = json.loads((args.layout / blob_path(entry["digest"])).read_bytes())
        subject, layer = artifact["subject"]["digest"], artifact["layers"][0]
        referrers = json.loads(served(f":{subject.replace(':', '-')}"))["manifests"]
        if entry["digest"] not in [item["digest"] for item in referrers]:
            raise SystemExit(f"the referrers of {subject} do not list {entry['digest']}")
        with tempfile.TemporaryDirectory() as scratch:
            skopeo(
                "copy",
                "--quiet",
                "--preserve-digests",
                "--src-tls-verify=false",
                f"docker://{repository}@{entry['digest']}",
                f"oci:{scratch}:pulled",
            )
            pulled = Path(scratch, blob_path(layer["digest"])).read_bytes()
        if pulled != (args.layout / blob_path(layer["digest"])).read_bytes():
            raise SystemExit(f"{entry['artifactType']} of {subject} pulled back differs from the build")
        print(f"  {subject}: its {entry['artifactType']} ({len(pulled):,} bytes) pulled back as built")
    if args.gpg_key:
        check_signed(args.reference, args.gpg_key.resolve(), args.signature_store)
        print(f"{args.reference}: every image signed by {args.gpg_key.name}")
    return 0


def check_signed(reference: str, key: Path, store: str | None) -> None:
    """Pulls `reference` (every image of an index) under a policy that requires signatures by `key`."""
    repository = reference.rsplit("@", 1)[0]
    registry = repository.split("/", 1)[0]
    policy = {
        "default": [{"type": "reject"}],
        "transports": {"docker": {repository: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}]}},
    }
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch, "policy.json").write_text(json.dumps(policy))
        options = ["--policy", f"{scratch}/policy.json"]
        if store:
            Path(scratch, "registries.d").mkdir()
            Path(scratch, "registries.d/registry.yaml").write_text(f"docker:\n  {registry}:\n    lookaside: {store}\n")
            options += ["--registries.d", f"{scratch}/registries.d"]
        skopeo(
            *options,
            "copy",
            "--quiet",
            "--remove-signatures",
            "--multi-arch",
            "all",
            "--src-tls-verify=false",
            f"docker://{reference}",
            f"oci:{scratch}/pulled:signed",
        )


if __name__ == "__main__":
    sys.exit(main())
