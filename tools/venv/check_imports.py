"""Imports every first-party module with the interpreter running it: `.venv/bin/python tools/venv/check_imports.py`.

Proof that the editor environment resolves what Bazel resolves: `libs.*`, `services.*`, `tools.*`,
`tests.*`, `bench.*`, `k8s.*` and the generated `books.*` (CI runs it after `./bazelw run //tools/venv`).
Prints each module that fails, with why, and exits non-zero if any did.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

ROOTS = ("bench", "k8s", "libs", "proto", "services", "tests", "tools")


def modules(repository: Path) -> list[str]:
    found = []
    for root in ROOTS:
        for path in sorted((repository / root).rglob("*.py")):
            if any(part.startswith(("bazel-", ".")) for part in path.relative_to(repository).parts):
                continue
            found.append(".".join(path.relative_to(repository).with_suffix("").parts))
    return found


def main() -> int:
    repository = Path(__file__).resolve().parents[2]
    failed = []
    for name in modules(repository):
        try:
            importlib.import_module(name)
        except Exception:  # every kind of failure is a finding here
            failed.append(name)
            print(f"cannot import {name}:\n{traceback.format_exc(limit=2)}", file=sys.stderr)
    print(f"{len(modules(repository)) - len(failed)} modules import, {len(failed)} do not")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
