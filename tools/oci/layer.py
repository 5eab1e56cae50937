"""Builds one deterministic image layer: `layer.py debian ...` or `layer.py files ...`.

`debian`: the base layer, from .deb files unpacked without maintainer scripts (like distroless). Docs,
man pages, translations, and what nothing in the images can use (_DROPPED; extension modules whose
libraries are not in the layer) are left out (copyright files stay), and the steps the scripts would have
done are done here: the CA bundle is assembled, OpenSSL's default paths point at it, /etc/passwd and
/etc/group get root and the non-root user, and /var/lib/dpkg/status.d/ lists the packages so image
scanners know them. The standard library gets its .pyc files.

`files`: a layer of the files named in a JSON manifest ([image path, source path] pairs), as written
by the `py_layers` rule for a binary's runfiles, with .pyc files for the Python sources. CA bundles
shipped inside wheels become links to the system bundle: one trust store, updated with the base; RECORD
files lose the lines of console scripts, which are not shipped and whose hashes depend on the build path;
shared objects shipped with debugging information lose it (binutils' objcopy).

.pyc files are "unchecked-hash" ones (PEP 552): they do not depend on mtimes, which are all 0 here,
and Python uses them without stat'ing the source. Compiling runs in a process with PYTHONHASHSEED=0
so that the bytes are the same on every build.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import lzma
import marshal
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from tools.oci.oci import MEDIA_TYPES, Entry, Tree, write_layer

SYSTEM_CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
_DROPPED = (
    "usr/share/doc/",  # but the copyright files, see kept()
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/lintian/",
    "usr/share/locale/",
    "usr/lib/x86_64-linux-gnu/gconv/",  # glibc's iconv modules (8 MB); Python has its own codecs
    "usr/lib/aarch64-linux-gnu/gconv/",
    "usr/lib/python3.11/pydoc_data/",  # help() texts
    "usr/lib/python3.11/test/",  # regression-test support, not a runtime module
    "usr/share/zoneinfo/right/",  # leap-second variants of the posix zones, which stay
    # glibc's vector math library: only code compiled with OpenMP SIMD links it, and no ELF here does
    # (//tests/containers:image_content_test checks every library an ELF needs is in the image).
    "lib/x86_64-linux-gnu/libmvec.so.1",
    "lib/aarch64-linux-gnu/libmvec.so.1",
    # The CJK codecs (Shift JIS, EUC-KR, Big5, GB 18030, ...): the services speak UTF-8 only; without
    # them such a codec is an unknown encoding (LookupError), as Python defines it.
    *(
        f"usr/lib/python3.11/lib-dynload/_codecs_{name}.cpython-311-"
        for name in ("cn", "hk", "iso2022", "jp", "kr", "tw")
    ),
    "usr/lib/python3.11/lib-dynload/_multibytecodec.cpython-311-",
    *(
        f"usr/lib/python3.11/encodings/{name}"
        for name in (
            "big5",
            "cp932",
            "cp949",
            "cp950",
            "euc_j",
            "euc_kr",
            "gb18030",
            "gb2312",
            "gbk",
            "hz",
            "iso2022_",
            "johab",
            "shift_j",
        )
    ),
)
_KEPT_DOCS = "/copyright"
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def ar_members(deb: bytes) -> dict[str, bytes]:
    """The members of a .deb (an ar archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar magic)")
    members, offset = {}, 8
    while offset + 60 <= len(deb):
        header = deb[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = deb[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def open_member(members: dict[str, bytes], stem: str) -> tarfile.TarFile:
    for name, data in members.items():
        if name.startswith(stem + ".tar"):
            if name.endswith(".xz"):
                data = lzma.decompress(data)
            elif name.endswith(".gz"):
                data = gzip.decompress(data)
            elif not name.endswith(".tar"):
                raise ValueError(f"unsupported compression of {name}")
            return tarfile.open(fileobj=io.BytesIO(data))
    raise ValueError(f"no {stem}.tar member")


def kept(path: str) -> bool:
    if path.startswith("usr/share/doc/"):
        return path.endswith(_KEPT_DOCS)
    return not path.startswith(_DROPPED)


def add_deb(tree: Tree, deb: Path) -> str:
    """Unpacks one package into tree; returns its control file for status.d."""
    members = ar_members(deb.read_bytes())
    with open_member(members, "control") as control:
        control_text = control.extractfile("./control").read().decode()  # type: ignore[union-attr]
    with open_member(members, "data") as data:
        for info in data.getmembers():
            path = info.name.removeprefix("./").rstrip("/")
            if path in ("", ".") or not kept(path):
                continue
            if info.isdir():
                tree.add(path, Entry("dir", mode=info.mode))
            elif info.issym():
                tree.symlink(path, info.linkname)
            elif info.islnk():  # a hard link: store the bytes again, which a layer can always do
                target = data.getmember(info.linkname)
                tree.file(path, data.extractfile(target).read(), mode=info.mode)  # type: ignore[union-attr]
            elif info.isfile():
                tree.file(path, data.extractfile(info).read(), mode=info.mode)  # type: ignore[union-attr]
    return control_text


def add_system_files(tree: Tree, uid: int, user: str) -> None:
    """What maintainer scripts and a distroless base would provide."""
    certs = sorted(p for p in tree.entries if p.startswith("usr/share/ca-certificates/") and p.endswith(".crt"))
    if not certs:
        raise SystemExit("ca-certificates is not among the packages: the image would trust no CA")
    tree.file(SYSTEM_CA_BUNDLE, b"".join(tree.entries[p].content() for p in certs))
    for path in certs:  # the bundle is the only copy: one place to look, one place to scan
        del tree.entries[path]
    tree.symlink("usr/lib/ssl/cert.pem", "/" + SYSTEM_CA_BUNDLE)
    tree.symlink("usr/lib/ssl/certs", "/etc/ssl/certs")
    tree.symlink("usr/bin/python3", "python3.11")
    tree.file(
        "etc/passwd",
        f"root:x:0:0:root:/root:/sbin/nologin\n{user}:x:{uid}:{uid}:{user}:/home/{user}:/sbin/nologin\n".encode(),
    )
    tree.file("etc/group", f"root:x:0:\n{user}:x:{uid}:\n".encode())
    tree.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\nservices: files\n")
    tree.add(f"home/{user}", Entry("dir", mode=0o700, uid=uid, gid=uid))
    tree.directory("root", mode=0o700)
    tree.directory("tmp", mode=0o1777)


# Compiles (path, source) pairs read from stdin into hash-based .pyc bytes (None: not Python 3).
_COMPILER = """
import importlib.util, marshal, sys
from importlib._bootstrap_external import _code_to_hash_pyc  # the writer py_compile itself uses
compiled = []
for path, source in marshal.load(sys.stdin.buffer):
    try:
        code = compile(source, "/" + path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):  # e.g. lib2to3's Python 2 fixtures; Python would not import them either
        compiled.append((path, None))
        continue
    compiled.append((path, bytes(_code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False))))
marshal.dump(compiled, sys.stdout.buffer)
"""


def compile_python(tree: Tree, under: str) -> int:
    """Adds __pycache__/*.cpython-311.pyc beside every .py file under `under`; returns the count.

    In a fresh interpreter with nothing imported but what the compiler needs (-I -S): marshal writes an
    object once and refers back to it only when something else holds it too, so the bytes of a .pyc
    depend on which strings the compiling process has already interned. Compiled in the process that
    builds the layer, they differed between the build and the same build elsewhere (a test that
    imports other modules); a process that imports the same few modules makes the same bytes."""
    paths = sorted(p for p, e in tree.entries.items() if p.endswith(".py") and p.startswith(under) and e.kind == "file")
    sources = [(path, tree.entries[path].content()) for path in paths]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _COMPILER], input=marshal.dumps(sources), capture_output=True, check=True
    )
    count = 0
    for path, pyc in marshal.loads(result.stdout):
        if pyc is None:
            continue
        pure = PurePosixPath(path)
        tree.file(str(pure.parent / "__pycache__" / f"{pure.stem}.{sys.implementation.cache_tag}.pyc"), pyc)
        count += 1
    return count


# binutils' objcopy of each machine (ELF e_machine): Debian's binutils for the host's, and
# binutils-aarch64-linux-gnu for the arm64 images' (./bazelw and .ci/run install it).
OBJCOPY = {62: "objcopy", 183: "aarch64-linux-gnu-objcopy"}


def elf_machine(data: bytes) -> int:
    (machine,) = struct.unpack_from("<H", data, 18)
    return int(machine)


def elf_sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Section name -> (file offset, size) of a 64-bit little-endian ELF file; {} for anything else."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if not shoff or shstrndx >= shnum:
        return {}
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    return {data[names_offset + h[0] : data.index(b"\0", names_offset + h[0])].decode(): (h[4], h[5]) for h in headers}


def elf_section_names(data: bytes) -> list[str]:
    return list(elf_sections(data))


def elf_needed(data: bytes) -> list[str]:
    """The shared libraries an ELF file names as DT_NEEDED (what the dynamic loader must find)."""
    sections = elf_sections(data)
    if ".dynamic" not in sections or ".dynstr" not in sections:
        return []
    (dynamic, size), (strings, _) = sections[".dynamic"], sections[".dynstr"]
    needed = []
    for offset in range(dynamic, dynamic + size, 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == 1:  # DT_NEEDED
            needed.append(data[strings + value : data.index(b"\0", strings + value)].decode())
    return needed


def drop_unloadable(tree: Tree, under: str) -> list[str]:
    """Removes the extension modules under `under` that need a library no package here provides (the
    stdlib's readline, curses, dbm and nis bindings: their libraries are not in the list), which could
    never be imported. Returns what it removed, each with what was missing."""
    libraries = {PurePosixPath(path).name for path in tree.entries if ".so" in PurePosixPath(path).suffixes}
    removed = []
    for path, entry in sorted(tree.entries.items()):
        if path.startswith(under) and entry.kind == "file" and path.endswith(".so"):
            missing = [name for name in elf_needed(entry.content()) if name not in libraries]
            if missing:
                del tree.entries[path]
                removed.append(f"{path} (needs {', '.join(missing)})")
    return removed


def strip_debug_info(tree: Tree) -> list[str]:
    """Shared objects shipped with their debugging information (uvloop's wheel does) lose it,
    with binutils' `objcopy --strip-debug` for their machine (the code and its symbols stay: tracebacks
    and profilers keep their function names). Returns the paths stripped."""
    stripped = []
    for path, entry in sorted(tree.entries.items()):
        if entry.kind != "file" or ".so" not in PurePosixPath(path).suffixes:
            continue
        data = entry.content()
        if ".debug_info" not in elf_section_names(data):
            continue
        with tempfile.TemporaryDirectory() as temporary:
            original, result = Path(temporary, "in.so"), Path(temporary, "out.so")
            original.write_bytes(data)
            objcopy = OBJCOPY.get(elf_machine(data))
            if objcopy is None:
                raise SystemExit(f"{path}: no objcopy known for ELF machine {elf_machine(data)}")
            subprocess.run([objcopy, "--strip-debug", str(original), str(result)], check=True)
            tree.file(path, result.read_bytes(), mode=entry.mode)
        stripped.append(path)
    return stripped


def link_ca_bundles(tree: Tree) -> list[str]:
    """Replaces CA bundles found in the files (certifi, grpcio's roots.pem) by links to the system one."""
    linked = []
    for path, entry in list(tree.entries.items()):
        if entry.kind == "file" and path.endswith(".pem") and _PEM_CERT in entry.content():
            tree.symlink(path, "/" + SYSTEM_CA_BUNDLE)
            linked.append(path)
    return linked


def trim_records(tree: Tree) -> int:
    """Drops RECORD lines of files outside site-packages (console scripts in ../../bin), which the image
    does not ship: pip writes them with the installing interpreter's absolute path in the shebang, so
    their hashes would make the layer depend on where the build ran. Returns the lines dropped."""
    dropped = 0
    for path, entry in list(tree.entries.items()):
        if entry.kind == "file" and path.endswith(".dist-info/RECORD"):
            lines = entry.content().decode().splitlines(keepends=True)
            kept = [line for line in lines if not line.startswith(("../", '"../'))]
            if len(kept) != len(lines):
                tree.file(path, "".join(kept).encode(), mode=entry.mode)
                dropped += len(lines) - len(kept)
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    debian = sub.add_parser("debian", help="base layer from .deb files")
    debian.add_argument("--deb", type=Path, action="append", default=[], required=True)
    debian.add_argument("--uid", type=int, default=65532)
    debian.add_argument("--user", default="nonroot")
    debian.add_argument("--stdlib", default="usr/lib/python3.11/", help="where the standard library is")
    files = sub.add_parser("files", help="layer from a manifest of files")
    files.add_argument("--manifest", type=Path, required=True, help="JSON list of [image path, source path]")
    for command in (debian, files):
        command.add_argument("--output", type=Path, required=True, help="the compressed tar to write")
        command.add_argument("--compression", choices=sorted(MEDIA_TYPES), default="zstd")
        command.add_argument("--info", type=Path, required=True, help="JSON with digests and sizes to write")
        command.add_argument("--created-by", required=True, help="history entry text")
    args = parser.parse_args()

    tree, notes = Tree(), []
    if args.kind == "debian":
        for deb in sorted(args.deb):
            control = add_deb(tree, deb)
            name = next(line.split(":", 1)[1].strip() for line in control.splitlines() if line.startswith("Package:"))
            tree.file(f"var/lib/dpkg/status.d/{name}", control.encode())
        add_system_files(tree, args.uid, args.user)
        notes += [f"unloadable, left out: {path}" for path in drop_unloadable(tree, args.stdlib)]
        notes.append(f"{compile_python(tree, args.stdlib)} stdlib modules compiled")
    else:
        for image_path, source in json.loads(args.manifest.read_text()):
            source = Path(source)
            tree.file(image_path, source=source, mode=0o755 if source.stat().st_mode & 0o100 else 0o644)
        notes += [f"{path} -> /{SYSTEM_CA_BUNDLE}" for path in link_ca_bundles(tree)]
        notes += [f"{path}: debugging information stripped" for path in strip_debug_info(tree)]
        if dropped := trim_records(tree):
            notes.append(f"{dropped} RECORD lines of unshipped scripts dropped")
        notes.append(f"{compile_python(tree, '')} modules compiled")
    info = write_layer(tree, args.output, args.compression)
    info.update(created_by=args.created_by, files=len(tree.entries), notes=notes)
    args.info.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
