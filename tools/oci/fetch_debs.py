"""Downloads the pinned Debian packages with `apt-get download` and checks their SHA256.

Run by the `debian_packages` repository rule: fetch_debs.py LOCK_FILE OUT_DIR [ARCHITECTURE]. Each package
of that architecture (default amd64) or of "all" lands in OUT_DIR/<name>.deb. A version that apt no
longer offers (it has left the archive) or a file whose SHA256 differs from the lock fails with the
command that re-pins the set. For an architecture other than the host's, apt reads lists of its own in
OUT_DIR's parent, fetched from the host's sources (`apt-get update` there), and the host's apt state
is left alone.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path


def repin_command(lock: Path) -> str:
    """How to re-pin `lock`, as its header says (tools/oci/update_packages.py writes it)."""
    for line in lock.read_text().splitlines():
        if line.startswith("# Re-pin with: "):
            return line.removeprefix("# Re-pin with: ")
    return f"./bazelw run //tools/oci:update_packages (after `apt-get update`) to re-pin {lock.name}"


def read_lock(path: Path, architecture: str | None = None) -> list[tuple[str, str, str, str]]:
    """(name, version, architecture, sha256) of every pinned package, or of those built for
    `architecture` (and "all")."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version, arch, _size, sha256 = line.split()
            if architecture is None or arch in (architecture, "all"):
                rows.append((name, version, arch, sha256))
    return rows


def host_architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def apt_options(architecture: str, state: Path) -> list[str]:
    """apt-get/apt-cache options that read `architecture`'s packages: none for the host's own; for another,
    apt lists of its own under `state`, made from the host's sources on first use."""
    if architecture == host_architecture():
        return []
    options = [
        f"-oAPT::Architecture={architecture}",
        f"-oAPT::Architectures={architecture}",
        f"-oDir::State::Lists={state}/lists",
        f"-oDir::Cache={state}/cache",
        "-oDir::State::status=/dev/null",  # the host's installed packages do not matter here
        "-oDebug::NoLocking=1",  # private directories: nobody else uses them
    ]
    if not (state / "lists").is_dir() or not any((state / "lists").glob("*Packages*")):
        for directory in (state / "lists/partial", state / "cache/archives/partial"):
            directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "-qq", *options, "update"], check=True, capture_output=True, text=True)
    return options


def apt_sha256(name: str, version: str, options: list[str]) -> str:
    """The SHA256 apt's metadata gives for name=version, or '' if apt does not offer that version."""
    out = subprocess.run(
        ["apt-cache", *options, "show", f"{name}={version}"], capture_output=True, text=True, check=False
    )
    for line in out.stdout.splitlines():
        if line.startswith("SHA256:"):
            return line.split(":", 1)[1].strip()
    return ""


def main(lock: Path, out_dir: Path, architecture: str = "amd64") -> int:
    rows = read_lock(lock, architecture)
    repin = repin_command(lock)
    absent = sorted({row[0] for row in read_lock(lock)} - {row[0] for row in rows})
    if absent:
        print(
            f"{lock} pins {', '.join(absent)} for other architectures, not {architecture}.\nTo fix: {repin}",
            file=sys.stderr,
        )
        return 1
    options = apt_options(architecture, out_dir.parent / f"apt-{architecture}")
    problems = []
    for name, version, _arch, sha256 in rows:
        offered = apt_sha256(name, version, options)
        if not offered:
            problems.append(f"{name}={version} is not offered by apt (left the archive, or stale apt lists)")
        elif offered != sha256:
            problems.append(f"{name}={version}: apt's metadata says sha256 {offered}, the lock says {sha256}")
    if problems:
        print("\n".join(problems) + f"\nTo fix: {repin}", file=sys.stderr)
        return 1

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        result = subprocess.run(
            ["apt-get", *options, "download", "-q"] + [f"{name}={version}" for name, version, _, _ in rows],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            print(f"apt-get download failed:\n{result.stderr}\nTo fix: {repin}", file=sys.stderr)
            return 1
        downloaded = {path.name.split("_", 1)[0]: path for path in Path(scratch).glob("*.deb")}
        for name, _version, _arch, sha256 in rows:
            deb = downloaded[name]
            actual = hashlib.sha256(deb.read_bytes()).hexdigest()
            if actual != sha256:
                problems.append(f"{deb.name}: sha256 {actual}, the lock says {sha256}")
            deb.rename(out_dir / f"{name}.deb")
    if problems:
        print("\n".join(problems) + f"\nTo fix: {repin}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]))
