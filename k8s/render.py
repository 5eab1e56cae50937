"""Renders an overlay with every image pinned by digest: `./bazelw run //k8s:render -- prod --registry R`.

The digests are the ones the image index targets just built (`//services/<svc>:image_index.digest`, the
amd64 and arm64 images of the service), so what is
deployed is exactly what was tested; push them first with `./bazelw run //services/<svc>:push -- R`.
kustomize runs on a copy of k8s/ with the per-service files generated into it (k8s/generate.py, from
services/services.bzl) and one more kustomization on top of the overlay, whose `images:` maps
`online-books/<svc>` to `R/online-books/<svc>@sha256:...`. `--kustomize-dir DIR` keeps that tree (for
`kubectl apply -k DIR/rendered` or a GitOps repository). It refuses to print an overlay whose objects a
cluster could not join up: an object outside the namespace, a selector or name that finds nothing, an
image not pinned by digest (k8s/references.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from k8s.generate import GENERATED, generate
from k8s.references import unresolved
from libs.processes.processes import runfile
from libs.runtime.config import user_path
from services.registry import REGISTRY

OVERLAYS = ("dev", "prod")
_REGISTRY = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$")


class RenderError(Exception):
    """The overlay cannot be rendered as asked; the message says why."""


def digests() -> dict[str, str]:
    """Each service's image repository → the digest of the image index Bazel built for it."""
    return {s.repository: runfile(f"{s.image_index}.digest").read_text().strip() for s in REGISTRY.values()}


def compose(overlay: str, registry: str, into: Path) -> Path:
    """Writes the kustomize tree for `overlay` into `into`: k8s/ with the generated per-service files, and
    `rendered/kustomization.yaml` pinning the images. Returns the `rendered` directory."""
    if overlay not in OVERLAYS:
        raise RenderError(f"unknown overlay {overlay!r}; choose one of {', '.join(OVERLAYS)}")
    if not _REGISTRY.match(registry):
        raise RenderError(f"--registry {registry!r} is not host[:port][/path], e.g. registry.example.com:5000/team")
    images = [
        {"name": name, "newName": f"{registry}/{name}", "digest": digest} for name, digest in sorted(digests().items())
    ]
    # A real copy: kustomize refuses files whose real path (runfiles are symlinks) is outside the tree.
    shutil.copytree(runfile("k8s"), into, ignore=shutil.ignore_patterns("*.py", GENERATED), dirs_exist_ok=True)
    generate(into)
    top = into / "rendered"
    top.mkdir(exist_ok=True)
    (top / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [f"../overlays/{overlay}"], "images": images}, sort_keys=False)
    )
    return top


def render(overlay: str, registry: str, kustomize_dir: Path | None = None) -> str:
    """The overlay's YAML with images at `registry`, pinned by the digests Bazel built; the kustomize
    tree is kept in `kustomize_dir` if given."""
    with tempfile.TemporaryDirectory() as scratch:
        top = compose(overlay, registry, kustomize_dir or Path(scratch) / "k8s")
        result = subprocess.run(
            [str(runfile("../kustomize/kustomize")), "build", str(top)], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        raise RenderError(f"kustomize build failed:\n{result.stderr}")
    problems = unresolved([document for document in yaml.safe_load_all(result.stdout) if document])
    if problems:
        raise RenderError("the overlay's objects do not fit together in a cluster:\n  " + "\n  ".join(problems))
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overlay", choices=OVERLAYS)
    parser.add_argument(
        "--registry",
        default=os.environ.get("REGISTRY", ""),
        help="where :push put the images, e.g. registry.example.com/team (env REGISTRY)",
    )
    parser.add_argument("--output", type=user_path, help="file to write (default: stdout)")
    parser.add_argument(
        "--kustomize-dir",
        type=user_path,
        help="also keep the kustomize tree here (kubectl apply -k DIR/rendered); made if missing",
    )
    args = parser.parse_args(argv)
    if not args.registry:
        parser.error(
            "say where the images are: --registry HOST[:PORT][/PATH] (the one given to :push), or env REGISTRY"
        )
    try:
        rendered = render(args.overlay, args.registry, args.kustomize_dir)
    except RenderError as error:
        print(f"render: {error}", file=sys.stderr)
        return 1
    if args.output:
        args.output.write_text(rendered)
    else:
        sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
