"""The image tools' own promises: same inputs give the same bytes; stale pins fail with the fix."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.oci import fetch_debs, layer
from tools.oci.oci import MEDIA_TYPES, Tree, layer_tar_bytes, open_layer, write_layer


@pytest.mark.parametrize("compression", sorted(MEDIA_TYPES))
def test_layer_bytes_do_not_depend_on_insertion_order_or_source_mtimes(tmp_path: Path, compression: str) -> None:
    source = tmp_path / "main.py"
    source.write_text("print('hello')\n")
    digests = []
    for order, mtime in ((("a/b.txt", "z.txt"), 1), (("z.txt", "a/b.txt"), 2_000_000_000)):
        os.utime(source, (mtime, mtime))
        tree = Tree()
        for path in order:
            tree.file(path, data=path.encode())
        tree.file("app/main.py", source=source)
        digests.append(write_layer(tree, tmp_path / f"{mtime}.tar", compression))
    assert digests[0] == digests[1]
    assert digests[0]["media_type"] == MEDIA_TYPES[compression]
    if compression == "gzip":
        header = (tmp_path / "1.tar").read_bytes()[:10]
        assert header[4:8] == b"\0\0\0\0"  # gzip mtime field: zero, not the build time


def test_parent_directories_are_added_and_paths_outside_the_image_refused() -> None:
    tree = Tree()
    tree.file("usr/lib/x.so", data=b"")
    assert sorted(tree.entries) == ["usr", "usr/lib", "usr/lib/x.so"]
    with pytest.raises(ValueError, match="not a path inside the image"):
        tree.file("../etc/passwd", data=b"")


def test_compiled_modules_are_unchecked_hash_pycs_python_uses(tmp_path: Path) -> None:
    tree = Tree()
    tree.file("pkg/mod.py", data=b"VALUE = {'b', 'a'}\n")
    assert layer.compile_python(tree, "") == 1
    pyc = tree.entries["pkg/__pycache__/mod.cpython-311.pyc"].content()
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, source not checked (PEP 552)
    for path, entry in tree.entries.items():
        if entry.kind == "file":
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(entry.content())
    os.utime(tmp_path / "pkg/mod.py", (0, 0))
    out = subprocess.run(
        [sys.executable, "-c", "import pkg.mod; print(sorted(pkg.mod.VALUE))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "['a', 'b']"


def test_a_pin_that_left_the_archive_fails_naming_the_update_command(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    lock = tmp_path / "debian_packages.lock"
    repin = "./bazelw run //tools/oci:update_packages -- --input x.in --lock x.lock (after `apt-get update`)."
    lock.write_text(f"# Pinned ...\n# Re-pin with: {repin}\nlibc6 0.0-gone-1 amd64 100 " + "0" * 64 + "\n")
    assert fetch_debs.main(lock, tmp_path / "debs") == 1
    message = capsys.readouterr().err
    assert "libc6=0.0-gone-1 is not offered by apt" in message
    assert f"To fix: {repin}" in message  # the lock's own command, whichever lock it is


@pytest.mark.parametrize("compression", sorted(MEDIA_TYPES))
def test_layers_decompress_to_the_reported_diff_id(tmp_path: Path, compression: str) -> None:
    tree = Tree()
    tree.file("etc/hostname", data=b"books\n")
    info = write_layer(tree, tmp_path / "layer", compression)
    data = layer_tar_bytes(tmp_path / "layer")
    assert info["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info["uncompressed_size"] == len(data)
    with open_layer(tmp_path / "layer") as tar:
        assert tar.extractfile("etc/hostname").read() == b"books\n"  # type: ignore[union-attr]


def test_records_drop_unshipped_scripts_whose_hashes_depend_on_the_build_path() -> None:
    tree = Tree()
    record = 'idna/__init__.py,sha256=abc,10\n../../bin/idna,sha256=depends-on-path,295\n"../../bin/x y",,\n'
    tree.file("app/pypi/site-packages/idna-3.20.dist-info/RECORD", data=record.encode())
    assert layer.trim_records(tree) == 2
    kept = tree.entries["app/pypi/site-packages/idna-3.20.dist-info/RECORD"].content()
    assert kept == b"idna/__init__.py,sha256=abc,10\n"
