"""Third-party Python packages from ONE hash-locked lock file (stand-in for rules_python's pip_parse).

`pip_parse(name = "pypi", requirements_lock = "//:requirements_lock.txt")` runs
`pip install --no-deps --require-hashes --only-binary=:all: --target site-packages -r <lock>` at fetch
time, then generates one `py_library` per distribution named after its normalised project name
(`@pypi//:grpcio_tools`). Each library carries the files of its distribution and of everything it
requires (read from the installed metadata), so depending on `requirement("pytest")` brings pluggy too.
Load `requirement` from `@pypi//:requirements.bzl` to turn a project name into that label.
"""

def _pip_parse_impl(rctx):
    python = str(rctx.path(rctx.attr.python))
    lock = rctx.path(rctx.attr.requirements_lock)
    generator = rctx.path(rctx.attr._generator)

    rctx.report_progress("pip install --require-hashes -r %s" % rctx.attr.requirements_lock.name)
    result = rctx.execute(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--target",
            "site-packages",
            "-r",
            str(lock),
        ],
        timeout = rctx.attr.timeout,
        environment = {"PIP_ROOT_USER_ACTION": "ignore"},
    )
    if result.return_code != 0:
        fail("pip install of %s failed:\n%s%s" % (rctx.attr.requirements_lock, result.stdout, result.stderr))

    # Where the lock is re-made: compile_pip_requirements(name = "requirements") beside it, by convention.
    update = "//%s:requirements.update" % rctx.attr.requirements_lock.package
    result = rctx.execute([python, str(generator), "site-packages", str(lock), rctx.attr.name, update])
    if result.return_code != 0:
        fail("Generating @%s failed:\n%s" % (rctx.attr.name, result.stderr))

pip_parse = repository_rule(
    implementation = _pip_parse_impl,
    attrs = {
        "python": attr.label(
            default = "@python_interpreter//:base_python3",
            doc = "Interpreter whose pip installs the wheels; must match the toolchain's version.",
        ),
        "requirements_lock": attr.label(mandatory = True, allow_single_file = True),
        "timeout": attr.int(default = 1200, doc = "Seconds allowed for pip install."),
        "_generator": attr.label(default = "//tools/pip:generate_build.py"),
    },
    doc = "Installs a hash-locked requirements file and declares one py_library per distribution.",
)
