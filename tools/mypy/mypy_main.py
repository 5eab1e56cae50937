"""mypy as a Bazel tool (py_mypy_test runs it); exits with mypy's status."""

import sys

from mypy import api

if __name__ == "__main__":
    stdout, stderr, status = api.run(sys.argv[1:])
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    sys.exit(status)
