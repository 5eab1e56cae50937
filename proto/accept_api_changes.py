"""Makes the API as it is now the released baseline: `./bazelw run //proto:accept_api_changes`.

For a deliberate, reviewed break (or after adding to the API, to protect the additions too): prints what
buf finds breaking against the current baseline, then rewrites proto/api_baseline.json from the descriptor
set Bazel builds (//proto:api), without source positions, so its diff in review shows the API change and
nothing else. Commit it with the change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from libs.processes.processes import runfile

BASELINE = Path("proto/api_baseline.json")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("run this with `./bazelw run //proto:accept_api_changes`", file=sys.stderr)
        return 2
    buf, image, config = runfile("../buf/buf"), runfile("proto/api.pb"), runfile("proto/buf.yaml")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "BUF_CACHE_DIR": cache}
        breaking = subprocess.run(
            [buf, "breaking", f"{image}#format=binpb", "--against", runfile(str(BASELINE)), "--config", config],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        found = (breaking.stdout + breaking.stderr).strip()
        print(f"accepting what breaks the baseline:\n{found}" if breaking.returncode else "nothing breaks the baseline")
        target = Path(workspace) / BASELINE
        subprocess.run(
            [buf, "build", f"{image}#format=binpb", "--exclude-source-info", "-o", str(target)], env=env, check=True
        )
        # One field per line: the baseline's diff in review is the API change, line by line.
        target.write_text(json.dumps(json.loads(target.read_text()), indent=1) + "\n")
    print(f"wrote {BASELINE}: commit it with the API change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
