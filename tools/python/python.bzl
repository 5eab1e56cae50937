"""A Python toolchain found on the host at fetch time (stand-in for rules_python's toolchains).

`python_interpreter` looks for Python 3.11 (`BAZEL_PYTHON`, then `python3.11`, then `python3` on PATH),
creates an isolated virtual environment from it inside the external repository, and declares a
`py_runtime` whose interpreter is that venv's absolute path. The venv keeps packages installed in the
host interpreter out of Bazel's sys.path, so a missing `deps` entry fails here as it would elsewhere.
Register it with `register_toolchains("@python_interpreter//:toolchain")`.
"""

_REQUIRED = (3, 11)

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

exports_files(["python3", "base_python3"])

py_runtime(
    name = "runtime",
    interpreter_path = "{venv_python}",
    python_version = "PY3",
    stub_shebang = "#!{venv_python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

_DEFS = """\
\"\"\"Facts about the interpreter found at fetch time.\"\"\"

BASE_PYTHON = "{base_python}"
VENV_PYTHON = "{venv_python}"
PYTHON_VERSION = "{version}"
"""

def _find_python(rctx):
    override = rctx.os.environ.get("BAZEL_PYTHON")
    if override:
        return override
    for name in ["python3.11", "python3"]:
        found = rctx.which(name)
        if found:
            return str(found)
    fail("No Python found: install Python 3.11 (Debian: apt-get install python3 python3-venv python3-pip) or set BAZEL_PYTHON.")

def _python_interpreter_impl(rctx):
    candidate = _find_python(rctx)

    # Resolve shims (pyenv, asdf) to the real executable so actions need no shell environment.
    probe = rctx.execute([candidate, "-c", "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])"])
    if probe.return_code != 0:
        fail("Cannot run %s: %s" % (candidate, probe.stderr))
    base_python, version = probe.stdout.strip().split("\n")
    major_minor = tuple([int(part) for part in version.split(".")[:2]])
    if major_minor != _REQUIRED:
        fail("%s is Python %s; this project needs Python %d.%d (set BAZEL_PYTHON to choose another)." % (base_python, version, _REQUIRED[0], _REQUIRED[1]))

    venv = rctx.path("venv")
    result = rctx.execute([base_python, "-m", "venv", "--without-pip", "--clear", str(venv)])
    if result.return_code != 0:
        fail("Creating a venv with %s failed (Debian: apt-get install python3-venv):\n%s" % (base_python, result.stderr))
    venv_python = str(venv) + "/bin/python3"

    rctx.symlink(venv_python, "python3")
    rctx.symlink(base_python, "base_python3")
    rctx.file("BUILD.bazel", _BUILD.format(venv_python = venv_python))
    rctx.file("defs.bzl", _DEFS.format(base_python = base_python, venv_python = venv_python, version = version))

python_interpreter = repository_rule(
    implementation = _python_interpreter_impl,
    environ = ["BAZEL_PYTHON"],
    doc = "Declares a Python 3.11 toolchain backed by an isolated venv of the host interpreter.",
)
