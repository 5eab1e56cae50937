"""An environment for editors and plain `python`: `./bazelw run //tools/venv` makes `.venv/` in the repository.

It holds the packages of requirements_lock.txt (exactly those, hash-checked: a re-run adds, upgrades and
removes), the
code Bazel generates from the protos (`books.*_pb2`, `.pyi` included, copied into `.venv/generated`), and a
`.pth` that puts the repository root and the generated code on `sys.path`, so `libs.*`, `services.*`,
`tools.*` and `books.*` import as under Bazel. Run it again after changing a proto or the lock.

    .venv/bin/python -m pytest libs/runtime/config_test.py
    VS Code: "python.defaultInterpreterPath": "${workspaceFolder}/.venv/bin/python"
    PyCharm: Settings → Project → Python Interpreter → Add → Existing: .venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from libs.processes.processes import runfile

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
# Where Bazel puts generated modules below the runfiles workspace → the import root they are below (what
# their proto_library's strip_import_prefix strips; libs' test protos strip nothing; an external
# repository's are below its own runfiles directory).
GENERATED_ROOTS = {
    "proto": "proto",
    "tools/proto": "tools/proto",
    "libs/http/testdata": "",
    "libs/validation/testdata": "",
    "../com_envoyproxy_protoc_gen_validate": "../com_envoyproxy_protoc_gen_validate",
}


def generated_files() -> dict[str, Path]:
    """Import path (books/x/v1/x_pb2.py) → the file Bazel generated, from this binary's runfiles."""
    workspace = runfile(".")
    found: dict[str, Path] = {}
    for directory, root in GENERATED_ROOTS.items():
        for path in (workspace / directory).rglob("*"):
            if path.name.endswith(GENERATED_SUFFIXES):
                found[str(path.relative_to(workspace / root))] = path
    return found


def canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def build(venv: Path, repository: Path, lock: Path) -> None:
    """Makes or updates the environment at `venv` for the source tree at `repository`."""
    python = venv / "bin" / "python"
    # Not Bazel's PYTHONPATH (our runfiles' packages): pip would take them for installed ones.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "install", "--require-hashes", "--no-deps", "-r", str(lock)], check=True, env=env)
    # Exactly the lock: what an earlier lock had and this one has not goes.
    locked = {canonical(line.split("==")[0]) for line in lock.read_text().splitlines() if "==" in line}
    listed = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True, check=True, env=env)
    installed = listed.stdout
    extra = [name for name in (line.split("==")[0] for line in installed.split()) if canonical(name) not in locked]
    if extra:
        subprocess.run([*pip, "uninstall", "--yes", *extra], check=True, env=env)
    generated = venv / "generated"
    shutil.rmtree(generated, ignore_errors=True)
    for relative, source in generated_files().items():
        target = generated / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "online_books.pth").write_text(f"{repository.resolve()}\n{generated.resolve()}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=Path(".venv"), help="where, relative to the repository")
    args = parser.parse_args(argv)
    repository = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    venv = args.venv if args.venv.is_absolute() else repository / args.venv
    build(venv, repository, repository / "requirements_lock.txt")
    print(f"{venv} is ready: {len(generated_files())} generated modules, the packages of requirements_lock.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
