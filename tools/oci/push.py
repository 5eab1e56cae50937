"""Pushes an OCI image layout to a registry by digest with skopeo, and prints REGISTRY/REPO@DIGEST.

Run through an `oci_push` target: `./bazelw run //services/order_history:push -- REGISTRY [--tag T]...
[--insecure]`. The manifest is pushed as built (`--preserve-digests`), so the digest that comes out is
the one `:image.digest` (or `:index.digest`) holds and that the Kubernetes manifests deploy; the script
reads it back from the registry and fails if the registry holds anything else. Credentials are skopeo's
(`skopeo login REGISTRY`, or REGISTRY_AUTH_FILE).

An image index (`oci_image_index`) is pushed with every image it lists. The artifacts its layout holds
about those images (their SBOMs) are pushed as OCI 1.1 referrers: each artifact manifest by digest, then
the referrers tag schema (`<alg>-<hex>` of the subject, an index of its referrers), which every registry
serves, including those without the referrers API (distribution 2.8); a registry that has the API
indexes the artifacts' `subject` as well. Each one is read back.

`--sign-by FINGERPRINT` signs what is pushed (the index and each image) with that GPG key, as
containers/image's "simple signing" (skopeo's --sign-by), which podman, CRI-O and skopeo verify with a
`signedBy` policy. The signatures go to the lookaside store registries.d configures for the registry, or
to `--signature-store URL` (e.g. file:///srv/sigstore). Debian's skopeo cannot make sigstore (cosign)
signatures: README, "Signing", says where cosign plugs in instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.oci.oci import INDEX, REF_NAME, canonical_json, digest, write_layout

LOG = logging.getLogger("push")


def skopeo(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"skopeo {' '.join(args)} failed:\n{result.stderr.decode(errors='replace')}")
    return result


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", type=Path, required=True, help="OCI image layout directory")
    parser.add_argument("--repository", required=True, help="path in the registry")
    parser.add_argument("registry", help="host[:port] of the registry, e.g. registry.example.com or 127.0.0.1:5000")
    parser.add_argument("--tag", action="append", default=[], help="also point these tags at the pushed digest")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP / unverified TLS (a local registry)")
    parser.add_argument("--sign-by", metavar="FINGERPRINT", help="sign with this GPG key (GNUPGHOME's keyring)")
    parser.add_argument(
        "--signature-store", metavar="URL", help="where signatures go (lookaside-staging), e.g. file:///dir"
    )
    args = parser.parse_args()
    if not shutil.which("skopeo"):
        raise SystemExit("skopeo is not installed (Debian: apt-get install skopeo)")

    entries = json.loads((args.layout / "index.json").read_text())["manifests"]
    main_entry, referrers = entries[0], [entry for entry in entries[1:] if "artifactType" in entry]
    source = source_reference(args.layout, main_entry)
    registry = Registry(f"{args.registry}/{args.repository}", args.insecure)
    with tempfile.TemporaryDirectory() as registries_d:
        signing = ["--sign-by", args.sign_by] if args.sign_by else []
        if args.sign_by and args.signature_store:
            write_registries_d(Path(registries_d), args.registry, {"lookaside-staging": args.signature_store})
            signing += ["--registries.d", registries_d]
        reference = registry.push(source, main_entry["digest"], main_entry["mediaType"] == INDEX, signing)
    if args.sign_by:
        LOG.info("signed %s and every image it lists with GPG key %s", reference, args.sign_by)
    for tag in args.tag:
        registry.copy(source, f"{registry.repository}:{tag}", all_images=main_entry["mediaType"] == INDEX)
    LOG.info("pushed %s%s", reference, "".join(f", tagged {tag}" for tag in args.tag))
    for entry in referrers:
        attach(registry, args.layout, entry)
    print(reference)
    return 0


def source_reference(layout: Path, entry: dict) -> str:
    """skopeo's name of one manifest of a layout: by its ref name when the layout holds several."""
    name = entry.get("annotations", {}).get(REF_NAME)
    return f"oci:{layout.resolve()}" + (f":{name}" if name else "")


def write_registries_d(directory: Path, registry: str, settings: dict[str, str]) -> None:
    """A registries.d configuration (containers-registries.d(5)) for one registry."""
    lines = [f"  {registry}:"] + [f"    {key}: {value}" for key, value in settings.items()]
    (directory / "registry.yaml").write_text("docker:\n" + "\n".join(lines) + "\n")


class Registry:
    """One repository of a registry, through skopeo."""

    def __init__(self, repository: str, insecure: bool) -> None:
        self.repository = repository
        self.dest_tls = f"--dest-tls-verify={'false' if insecure else 'true'}"
        self.src_tls = f"--tls-verify={'false' if insecure else 'true'}"

    def copy(
        self,
        source: str,
        destination: str,
        all_images: bool = False,
        preserve_digests: bool = True,
        signing: list[str] | None = None,
    ) -> None:
        options = (["--multi-arch", "all"] if all_images else []) + (["--preserve-digests"] if preserve_digests else [])
        skopeo(
            "copy",
            "--quiet",
            *options,
            *(signing or []),
            self.dest_tls,
            source,
            f"docker://{destination}",
        )

    def copy_out(self, manifest_digest: str, layout: Path) -> None:
        """Copies a manifest of the repository and its blobs into an OCI layout."""
        skopeo(
            "copy",
            "--quiet",
            "--preserve-digests",
            self.src_tls,
            f"docker://{self.repository}@{manifest_digest}",
            f"oci:{layout}:{manifest_digest.replace(':', '-')}",
        )

    def manifest(self, reference: str) -> bytes | None:
        """The raw manifest at `@digest` or `:tag`, or None when the registry has none."""
        result = subprocess.run(
            ["skopeo", "inspect", "--raw", self.src_tls, f"docker://{self.repository}{reference}"],
            capture_output=True,
            check=False,
        )
        return result.stdout if result.returncode == 0 else None

    def push(self, source: str, digest: str, all_images: bool = False, signing: list[str] | None = None) -> str:
        """Pushes by digest (signing with skopeo options `signing`), reads it back; returns REGISTRY/REPO@DIGEST."""
        reference = f"{self.repository}@{digest}"
        self.copy(source, reference, all_images, signing=signing)
        pushed = self.manifest(f"@{digest}")
        if pushed is None or "sha256:" + hashlib.sha256(pushed).hexdigest() != digest:
            raise SystemExit(f"the registry returned a different manifest for {reference}")
        return reference


def attach(registry: Registry, layout: Path, entry: dict) -> None:
    """Pushes one artifact and adds it to its subject's referrers tag (`sha256-<hex>`), keeping the others."""
    artifact = json.loads((layout / "blobs" / entry["digest"].replace(":", "/")).read_bytes())
    subject = artifact["subject"]["digest"]
    registry.push(source_reference(layout, entry), entry["digest"])
    tag = subject.replace(":", "-")
    existing = registry.manifest(f":{tag}")
    listed = json.loads(existing)["manifests"] if existing else []
    descriptor = {key: entry[key] for key in ("mediaType", "digest", "size", "artifactType")}
    if artifact.get("annotations"):
        descriptor["annotations"] = artifact["annotations"]
    listed = [item for item in listed if item["digest"] != entry["digest"]] + [descriptor]
    referrers = canonical_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": listed})
    with tempfile.TemporaryDirectory() as scratch:
        # skopeo pushes an index with its manifests: ours are in the layout, the others come from the registry.
        ours: dict[str, bytes | Path] = {"sha256:" + blob.name: blob for blob in (layout / "blobs/sha256").iterdir()}
        for item in listed:
            if item["digest"] not in ours:
                registry.copy_out(item["digest"], Path(scratch))
        index = {
            "schemaVersion": 2,
            "manifests": [{"mediaType": INDEX, "digest": digest(referrers), "size": len(referrers)}],
        }
        # Copies (not the layout's read-only files and directories, which an ordinary user cannot add to).
        write_layout(Path(scratch), index, {**ours, digest(referrers): referrers})
        # skopeo 1.9 refuses to keep an index of artifacts as it is (it wants to rewrite their list); the
        # tag's own digest does not matter, and what it lists is read back below.
        registry.copy(f"oci:{scratch}", f"{registry.repository}:{tag}", all_images=True, preserve_digests=False)
    served = registry.manifest(f":{tag}")
    if served is None or entry["digest"] not in [item["digest"] for item in json.loads(served)["manifests"]]:
        raise SystemExit(f"{registry.repository}:{tag} does not list {entry['digest']} after the push")
    LOG.info("attached %s %s to %s (referrers tag %s)", entry["artifactType"], entry["digest"], subject, tag)


if __name__ == "__main__":
    sys.exit(main())
