"""protoc from grpcio-tools with the bundled well-known types on the include path.

Takes protoc's own arguments. Exits with protoc's status so a bad .proto fails the build action.
"""

from __future__ import annotations

import sys
from importlib.resources import files

from grpc_tools import protoc


def main(argv: list[str]) -> int:
    well_known = files("grpc_tools") / "_proto"
    return protoc.main(["protoc", *argv, f"-I{well_known}"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
