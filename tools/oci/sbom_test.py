"""tools/oci/sbom.py on small images made here: who owns what, and what fails the build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.oci.image import build
from tools.oci.oci import Tree, blob_path, canonical_json, write_layer
from tools.oci.sbom import sbom

SITE = "app/pypi/site-packages"
DIST_INFO = f"{SITE}/foo-1.0.dist-info"


def layout_of(tmp_path: Path, *trees: Tree) -> Path:
    """An OCI layout of one image whose layers are `trees` (as image.py writes it)."""
    layers = []
    for number, tree in enumerate(trees):
        blob, info = tmp_path / f"{number}.tar.gz", tmp_path / f"{number}.json"
        info.write_text(json.dumps({**write_layer(tree, blob), "created_by": "test", "notes": []}))
        layers.append({"blob": str(blob), "info": str(info)})
    config = {"user": "", "workdir": "", "entrypoint": [], "cmd": [], "env": {}, "exposed_ports": [], "labels": {}}
    spec = {"layers": layers, "architecture": "amd64", "os": "linux", "config": config, "annotations": {}}
    blobs, index, _, _ = build(spec)
    layout = tmp_path / "image"
    for name, content in {"index.json": canonical_json(index), **{blob_path(d): b for d, b in blobs.items()}}.items():
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_bytes(content.read_bytes() if isinstance(content, Path) else content)
    return layout


def python_layer(version: str = "1.0") -> Tree:
    tree = Tree()
    tree.file(f"{DIST_INFO}/METADATA", f"Metadata-Version: 2.4\nName: foo\nVersion: {version}\n".encode())
    tree.file(
        f"{DIST_INFO}/RECORD", b"foo/__init__.py,sha256=x,0\nfoo-1.0.dist-info/METADATA,,\nfoo-1.0.dist-info/RECORD,,\n"
    )
    tree.file(f"{SITE}/foo/__init__.py", b"")
    tree.file(f"{SITE}/foo/__pycache__/__init__.cpython-311.pyc", b"compiled")
    return tree


def app_layer(*extra: str) -> Tree:
    tree = Tree()
    tree.file("app/online_books/main.py", b"print('hello')\n")
    for path in extra:
        tree.file(path, b"?")
    return tree


def owners(document: dict) -> dict[str, str]:
    """Image path → the SPDX id of the package containing it."""
    ids = {f["SPDXID"]: f["fileName"].removeprefix("./") for f in document["files"]}
    return {
        ids[r["relatedSpdxElement"]]: r["spdxElementId"]
        for r in document["relationships"]
        if r["relatedSpdxElement"] in ids
    }


def test_files_and_compiled_modules_belong_to_their_packages(tmp_path: Path) -> None:
    layout = layout_of(tmp_path, python_layer(), app_layer())
    document = sbom(layout, [], {}, {"foo": ("1.0", ["ab" * 32])})
    assert owners(document) == {
        f"{SITE}/foo/__init__.py": "SPDXRef-pypi-foo",
        f"{SITE}/foo/__pycache__/__init__.cpython-311.pyc": "SPDXRef-pypi-foo",  # by its source
        f"{DIST_INFO}/METADATA": "SPDXRef-pypi-foo",
        f"{DIST_INFO}/RECORD": "SPDXRef-pypi-foo",
        "app/online_books/main.py": "SPDXRef-first-party",
    }
    foo = next(p for p in document["packages"] if p["SPDXID"] == "SPDXRef-pypi-foo")
    assert "ab" * 32 in foo["comment"]  # the lock's hashes
    assert foo["filesAnalyzed"] is True


def test_a_file_no_package_holds_fails_the_build(tmp_path: Path) -> None:
    layout = layout_of(tmp_path, python_layer(), app_layer("etc/stray.conf"))
    with pytest.raises(SystemExit, match=r"1 files of the image belong to no package, e\.g\. \['etc/stray\.conf'\]"):
        sbom(layout, [], {}, {"foo": ("1.0", [])})


def test_a_distribution_the_lock_does_not_pin_at_that_version_fails_the_build(tmp_path: Path) -> None:
    layout = layout_of(tmp_path, python_layer("1.1"), app_layer())
    with pytest.raises(SystemExit, match="foo 1.1 is in the image but requirements_lock.txt pins 1.0"):
        sbom(layout, [], {}, {"foo": ("1.0", [])})
