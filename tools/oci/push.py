"""Pushes an OCI image layout to a registry by digest with skopeo, and prints REGISTRY/REPO@DIGEST.

Run through an `oci_push` target: `./bazelw run //services/order_history:push -- REGISTRY [--tag T]...
[--insecure]`. The manifest is pushed as built (`--preserve-digests`), so the digest that comes out is
the one `:image.digest` holds and that the Kubernetes manifests deploy; the script reads it back from
the registry and fails if the registry holds anything else. Credentials are skopeo's
(`skopeo login REGISTRY`, or REGISTRY_AUTH_FILE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

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
    args = parser.parse_args()
    if not shutil.which("skopeo"):
        raise SystemExit("skopeo is not installed (Debian: apt-get install skopeo)")

    index = json.loads((args.layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    reference = f"{args.registry}/{args.repository}@{digest}"
    tls = [f"--dest-tls-verify={'false' if args.insecure else 'true'}"]
    source = f"oci:{args.layout.resolve()}"
    skopeo("copy", "--quiet", "--preserve-digests", *tls, source, f"docker://{reference}")
    for tag in args.tag:
        skopeo(
            "copy", "--quiet", "--preserve-digests", *tls, source, f"docker://{args.registry}/{args.repository}:{tag}"
        )

    src_tls = [f"--tls-verify={'false' if args.insecure else 'true'}"]
    pushed = skopeo("inspect", "--raw", *src_tls, f"docker://{reference}").stdout
    if "sha256:" + hashlib.sha256(pushed).hexdigest() != digest:
        raise SystemExit(f"the registry returned a different manifest for {reference}")
    LOG.info("pushed %s%s", reference, "".join(f", tagged {tag}" for tag in args.tag))
    print(reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
