"""Writes BUILD.bazel and requirements.bzl for a directory filled by `pip install --target`.

Usage: generate_build.py SITE_PACKAGES LOCK_FILE REPO_NAME UPDATE_TARGET [PLATFORMS_JSON] (run in the
repository's root). Each installed distribution gets a filegroup of the files its RECORD lists
(`<name>_files`, and `<name>_scripts` for its console scripts and binaries) and a py_library that carries
those files plus the files of every distribution it requires, transitively. The closure is
computed here rather than with py_library deps because Requires-Dist graphs may contain cycles.

PLATFORMS_JSON maps a config_setting label to pip platform tags. Under that setting each py_library
carries instead `@<REPO_NAME>_<setting name>_<name>//:pkg` of every distribution of its closure, and
requirements.bzl's `install_deps()` declares those repositories (tools/pip/pip.bzl's whl_library), each
with its version's hashes from the lock.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement

# Characters Bazel 4.2.3 accepts in target names that we also expect in wheel file names.
_LABEL_SAFE = re.compile(r"^[A-Za-z0-9_\-./+=,~@]+$")
_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def normalize(name: str) -> str:
    """PEP 503 normalisation with underscores, which are valid in Bazel target names."""
    return re.sub(r"[-_.]+", "_", name).lower()


def locked_names(lock: Path) -> dict[str, str]:
    names = {}
    for line in lock.read_text().splitlines():
        match = _LOCK_LINE.match(line)
        if match:
            names[normalize(match.group(1))] = match.group(2)
    return names


def locked_hashes(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (name==version, [sha256:...]) of every distribution in a --generate-hashes lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        match = _LOCK_LINE.match(line)
        if match:
            current = normalize(match.group(1))
            pins[current] = (f"{match.group(1)}=={match.group(2)}", [])
        elif current and line.strip().startswith("--hash="):
            pins[current][1].append(line.strip().removeprefix("--hash=").rstrip(" \\"))
        elif not line.startswith(" "):
            current = ""
    return pins


def read_metadata(dist_info: Path) -> tuple[str, list[Requirement]]:
    name = ""
    requires = []
    for line in (dist_info / "METADATA").read_text(encoding="utf-8").splitlines():
        if not line:
            break  # headers end at the first blank line
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "Requires-Dist":
            requires.append(Requirement(value.strip()))
    return name, requires


def record_files(site: Path, dist_info: Path) -> tuple[list[str], list[str], list[str]]:
    """A distribution's files and scripts relative to the repository root, and the ones Bazel cannot name."""
    kept: list[str] = []
    scripts: list[str] = []
    skipped: list[str] = []
    for line in (dist_info / "RECORD").read_text(encoding="utf-8").splitlines():
        path = line.rsplit(",", 2)[0].strip('"')
        if path.startswith("../../bin/"):
            # RECORD names scripts as if installed in a prefix; --target puts them in <target>/bin.
            path, bucket = "bin/" + path.removeprefix("../../bin/"), scripts
        else:
            bucket = kept
        if not path or path.startswith("..") or not (site / path).is_file():
            continue
        (bucket if _LABEL_SAFE.match(path) else skipped).append(f"{site.name}/{path}")
    return sorted(kept), sorted(scripts), skipped


def main(site_arg: str, lock_arg: str, repo: str, update: str, platforms_arg: str = "{}") -> int:
    site = Path(site_arg)
    platforms: dict[str, list[str]] = json.loads(platforms_arg)
    # e.g. "@//tools/platforms:arm64" -> the prefix of its repositories, "pypi_arm64_"
    prefixes = {setting: f"{repo}_{setting.rsplit(':', 1)[1]}_" for setting in platforms}
    locked = locked_names(Path(lock_arg))
    # Every value of packaging's Environment is a str; markers also ask for "extra".
    env = {**cast(Mapping[str, str], default_environment()), "extra": ""}

    files: dict[str, list[str]] = {}
    scripts: dict[str, list[str]] = {}
    edges: dict[str, set[str]] = {}
    notes = []
    for dist_info in sorted(site.glob("*.dist-info")):
        raw_name, requires = read_metadata(dist_info)
        name = normalize(raw_name)
        files[name], scripts[name], skipped = record_files(site, dist_info)
        notes += [f"# {name}: skipped {path!r} (not a valid Bazel label)" for path in skipped]
        edges[name] = {normalize(req.name) for req in requires if req.marker is None or req.marker.evaluate(env)}

    missing = sorted(set(locked) - set(files))
    if missing:
        print(f"locked but not installed: {missing}", file=sys.stderr)
        return 1
    for name, deps in edges.items():
        absent = sorted(deps - set(files))
        if absent:
            print(f"{name} requires {absent}, which the lock file does not pin", file=sys.stderr)
            return 1

    out = [
        f"# Generated by //tools/pip:generate_build.py for @{repo}. Do not edit.",
        *notes,
        "",
        'package(default_visibility = ["//visibility:public"])',
        "",
    ]
    for name in sorted(files):
        closure, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current not in closure:
                closure.add(current)
                todo.extend(edges[current])
        srcs = "".join(f'        "{path}",\n' for path in files[name])
        data = "".join(f'        ":{dep}_files",\n' for dep in sorted(closure))
        out.append(f'filegroup(\n    name = "{name}_files",\n    srcs = [\n{srcs}    ],\n)\n')
        if scripts[name]:
            listed = "".join(f'        "{path}",\n' for path in scripts[name])
            out.append(f'filegroup(\n    name = "{name}_scripts",\n    srcs = [\n{listed}    ],\n)\n')
        if platforms:
            data_select = "".join(f'        "{setting}": [],\n' for setting in platforms)
            deps_select = "".join(
                f'        "{setting}": [\n'
                + "".join(f'            "@{prefix}{dep}//:pkg",\n' for dep in sorted(closure))
                + "        ],\n"
                for setting, prefix in prefixes.items()
            )
            out.append(
                f'py_library(\n    name = "{name}",\n'
                f'    data = select({{\n{data_select}        "//conditions:default": [\n{data}        ],\n    }}),\n'
                f'    imports = ["{site.name}"],\n'
                f'    deps = select({{\n{deps_select}        "//conditions:default": [],\n    }}),\n)\n'
            )
        else:
            out.append(
                f'py_library(\n    name = "{name}",\n    data = [\n{data}    ],\n    imports = ["{site.name}"],\n)\n'
            )
    Path("BUILD.bazel").write_text("\n".join(out))

    names = "".join(f'    "{name}",\n' for name in sorted(files))
    Path("requirements.bzl").write_text(
        f'"""Labels of the distributions in @{repo}. Generated; do not edit."""\n\n'
        'load("@//tools/pip:pip.bzl", "whl_library")\n\n'
        f"ALL_REQUIREMENTS = [\n{names}]\n\n"
        "def requirement(name):\n"
        '    """Returns the py_library label of a locked distribution, e.g. requirement("grpcio")."""\n'
        '    key = name.lower().replace("-", "_").replace(".", "_")\n'
        "    if key not in ALL_REQUIREMENTS:\n"
        f'        fail("%s is not in the lock file; add it to requirements.in and run '
        f'./bazelw run {update}" % name)\n'
        f'    return "@{repo}//:" + key\n' + install_deps(lock_arg, files, platforms, prefixes)
    )
    return 0


def install_deps(
    lock: str, installed: dict[str, list[str]], platforms: dict[str, list[str]], prefixes: dict[str, str]
) -> str:
    """requirements.bzl's install_deps(): a whl_library per platform and locked distribution."""
    pins = locked_hashes(Path(lock))
    repositories = [
        (prefixes[setting] + name, *pins[name], tags)
        for setting, tags in platforms.items()
        for name in sorted(installed)
    ]
    listed = "".join(f"    ({name!r}, {pin!r}, {hashes!r}, {tags!r}),\n" for name, pin, hashes, tags in repositories)
    return (
        f"\n_PLATFORM_WHEELS = [\n{listed}]\n\n"
        "def install_deps():\n"
        '    """Declares a repository per locked distribution and other platform (fetched when used)."""\n'
        "    for name, requirement, hashes, platforms in _PLATFORM_WHEELS:\n"
        "        whl_library(name = name, requirement = requirement, hashes = hashes, platforms = platforms)\n"
    )


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
