"""Deterministic tar archives and OCI digests, shared by layer.py and image.py.

Every entry is written in path order with mtime 0, explicit owners and no user/group names, in GNU
format; gzip gets mtime 0 and no file name, zstd runs single-threaded at a fixed level with the lock's
zstandard. The same inputs therefore give the same bytes, and the same digests, on any machine and at
any time. `open_layer` reads a layer whatever its compression.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, cast

import zstandard

EPOCH = "1970-01-01T00:00:00Z"  # `created` of configs and history entries: fixed for reproducibility

# A layer's media type by its compression. zstd (level 19) makes layers about a quarter smaller than
# gzip -9 (bench/RESULTS.md, "Image size"); engines older than Docker 23 and containerd 1.5 cannot pull
# it, so gzip stays one build setting away (--//tools/oci:compression=gzip).
MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
ZSTD_LEVEL = 19
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"  # a manifest's name in an image layout's index.json
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Entry:
    """One tar entry: a directory, a regular file (bytes or a source path) or a symlink."""

    kind: str  # "dir", "file" or "symlink"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    data: bytes | None = None
    source: Path | None = None
    target: str = ""

    def content(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()  # type: ignore[union-attr]


class Tree:
    """The file system of a layer, keyed by path relative to / (no leading slash)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, path: str, entry: Entry) -> None:
        path = normalize(path)
        for parent in reversed(PurePosixPath(path).parents[:-1]):
            self.entries.setdefault(str(parent), Entry("dir"))
        self.entries[path] = entry

    def directory(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.add(path, Entry("dir", mode=mode, uid=uid, gid=gid))

    def file(self, path: str, data: bytes | None = None, source: Path | None = None, mode: int = 0o644) -> None:
        self.add(path, Entry("file", mode=mode, data=data, source=source))

    def symlink(self, path: str, target: str) -> None:
        self.add(path, Entry("symlink", mode=0o777, target=target))

    def write_tar(self, out: BinaryIO) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for path in sorted(self.entries):
                entry = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, 0
                info.uname = info.gname = ""
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, entry.target
                    tar.addfile(info)
                else:
                    data = entry.content()
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def normalize(path: str) -> str:
    path = path.removeprefix("./").strip("/")
    if not path or ".." in PurePosixPath(path).parts:
        raise ValueError(f"not a path inside the image: {path!r}")
    return path


class _Hashing(io.RawIOBase):
    """A write-only stream that counts and hashes what passes through to `sink`."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.sha256, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def write_layer(tree: Tree, path: Path, compression: str = "zstd") -> dict:
    """Writes tree as a compressed tar; returns its digest, diff_id, both sizes and its media type."""
    with path.open("wb") as raw:
        compressed = _Hashing(raw)
        if compression == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as zipped:
                uncompressed = _Hashing(cast(IO[bytes], zipped))
                tree.write_tar(cast(BinaryIO, uncompressed))  # a raw stream: what tarfile writes to
        else:
            # Single-threaded, with the content size in the frame header: the bytes depend only on the input.
            zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0)
            with zstd.stream_writer(cast(IO[bytes], compressed), closefd=False) as zipped:
                uncompressed = _Hashing(cast(IO[bytes], zipped))
                tree.write_tar(cast(BinaryIO, uncompressed))
    return {
        "digest": "sha256:" + compressed.sha256.hexdigest(),
        "size": compressed.size,
        "diff_id": "sha256:" + uncompressed.sha256.hexdigest(),
        "uncompressed_size": uncompressed.size,
        "media_type": MEDIA_TYPES[compression],
    }


def layer_tar_bytes(blob: Path) -> bytes:
    """The uncompressed tar of a layer blob, gzip or zstd (told apart by their magic numbers)."""
    data = blob.read_bytes()
    if data.startswith(_ZSTD_MAGIC):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return gzip.decompress(data)


def open_layer(blob: Path) -> tarfile.TarFile:
    """A layer blob as a tar archive, gzip or zstd."""
    return tarfile.open(fileobj=io.BytesIO(layer_tar_bytes(blob)))


def blob_path(blob_digest: str) -> str:
    """Where a blob lives inside an OCI layout."""
    return "blobs/" + blob_digest.replace(":", "/")


@dataclass(frozen=True)
class LayoutImage:
    """The one image of an OCI layout, as image.py writes it."""

    layout: Path
    index: dict
    manifest_digest: str
    manifest: dict
    config: dict

    def blob(self, blob_digest: str) -> Path:
        return self.layout / blob_path(blob_digest)


def read_layout(layout: Path) -> LayoutImage:
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / blob_path(manifest_digest)).read_bytes())
    config = json.loads((layout / blob_path(manifest["config"]["digest"])).read_bytes())
    return LayoutImage(layout, index, manifest_digest, manifest, config)


def write_layout(layout: Path, index: dict, blobs: Mapping[str, bytes | Path]) -> None:
    """Writes an OCI image layout: oci-layout, index.json and the blobs (bytes, or files to copy)."""
    files: dict[str, bytes | Path] = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical_json(index),
    }
    files.update({blob_path(d): blob for d, blob in blobs.items()})
    for name, content in files.items():
        target = layout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)


def canonical_json(value: object) -> bytes:
    """JSON with sorted keys and no insignificant whitespace: the bytes a digest is taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
