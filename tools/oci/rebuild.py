"""Rebuilds an image from the inputs Bazel used, somewhere else, and checks every digest matches.

Run by `oci_reproducibility_test` (tools/oci/defs.bzl) with --recipe: the layer.py arguments of each
layer (null for one the base image gave: the base's own test rebuilds those), the image spec, and a map
from the build's paths to runfiles paths. Layers are rebuilt in a fresh temporary directory, under another
umask and time zone, from the runfiles copies of the inputs (other paths, other mtimes): if any of that
leaked into the bytes, the digests would differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tools.oci import image
from tools.oci.oci import open_layer

RUNFILES = Path.cwd().parent  # tests run in <runfiles>/<main repository>


def rebuild_layer(args: list[str], paths: dict[str, str], out: Path) -> dict:
    def local(path: str) -> str:
        return str(RUNFILES / paths[path]) if path in paths else path

    rewritten = []
    for arg in args:
        if arg.startswith("--deb="):
            arg = "--deb=" + local(arg.removeprefix("--deb="))
        elif arg in paths and arg.endswith(".manifest.json"):
            entries = [[target, local(source)] for target, source in json.loads(Path(local(arg)).read_text())]
            arg = str(out.with_suffix(".manifest.json"))
            Path(arg).write_text(json.dumps(entries))
        rewritten.append(arg)
    info = out.with_suffix(".json")
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=os.pathsep.join(sys.path), TZ="Pacific/Kiritimati")
    subprocess.run(
        [sys.executable, "-m", "tools.oci.layer", *rewritten, "--output", str(out), "--info", str(info)],
        env=env,
        check=True,
    )
    return {"blob": str(out), "info": str(info)}


def differing_members(first: Path, second: Path, limit: int = 10) -> list[str]:
    """The entries whose header or content differ between two layer tarballs (for the failure message)."""

    def read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        extracted = tar.extractfile(member)
        assert extracted is not None, member.name  # a regular file always has content
        return extracted.read()

    def entries(path: Path) -> dict[str, tuple]:
        with open_layer(path) as tar:
            return {
                member.name: (member.get_info(), hashlib.sha256(read(tar, member)).hexdigest())
                if member.isfile()
                else (member.get_info(), "")
                for member in tar.getmembers()
            }

    one, other = entries(first), entries(second)
    names = sorted(name for name in one.keys() | other.keys() if one.get(name) != other.get(name))
    return [f"differs: {name}" for name in names[:limit]] + (["..."] if len(names) > limit else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, required=True)
    recipe = json.loads(parser.parse_args().recipe.read_text())
    paths = recipe["paths"]
    spec = json.loads((RUNFILES / recipe["spec"]).read_text())
    expected = (RUNFILES / recipe["digest"]).read_text().strip()

    os.umask(0o077)
    failures = []
    with tempfile.TemporaryDirectory() as scratch:
        rebuilt_layers = []
        for number, (args, built) in enumerate(zip(recipe["layers"], spec["layers"], strict=True)):
            if args is None:  # the base image's layer: the base's own test rebuilds it
                print(f"layer {number}: the base image's, as built")
                rebuilt_layers.append({key: str(RUNFILES / paths[built[key]]) for key in ("blob", "info")})
                continue
            rebuilt = rebuild_layer(args, paths, Path(scratch) / f"layer{number}.tar")
            before = json.loads((RUNFILES / paths[built["info"]]).read_text())["digest"]
            after = json.loads(Path(rebuilt["info"]).read_text())["digest"]
            print(f"layer {number}: built {before}, rebuilt {after}")
            if before != after:
                failures.append(f"layer {number} ({args[0]}) differs: {before} != {after}")
                built_blob = RUNFILES / paths[built["blob"]]
                failures += [f"  {line}" for line in differing_members(built_blob, Path(rebuilt["blob"]))]
            rebuilt_layers.append(rebuilt)
        *_, digest = image.build(dict(spec, layers=rebuilt_layers))
    print(f"image: built {expected}, rebuilt {digest}")
    if digest != expected:
        failures.append(f"image manifest differs: {expected} != {digest}")
    print("\n".join(failures) or "reproducible")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
