"""BUILD-file macros for the lock file (stand-in for rules_python's compile_pip_requirements)."""

load("@pypi//:requirements.bzl", "requirement")

def compile_pip_requirements(name, requirements_in = "requirements.in", requirements_lock = "requirements_lock.txt", visibility = None):
    """Declares `<name>.update`: `bazel run` it to re-lock `requirements_in` into `requirements_lock`.

    Extra arguments go to pip-compile, e.g. `-- --upgrade` or `-- --upgrade-package grpcio`.

    Args:
      name: `<name>.update` is the target to run.
      requirements_in: the direct requirements.
      requirements_lock: the hash-locked file it writes.
      visibility: of `<name>.update`.
    """
    native.py_binary(
        name = name + ".update",
        srcs = ["//tools/pip:compile.py"],
        main = "//tools/pip:compile.py",
        args = [
            "$(rootpath %s)" % requirements_in,
            "$(rootpath %s)" % requirements_lock,
            "'--command=./bazelw run //%s:%s.update'" % (native.package_name(), name),
        ],
        data = [requirements_in, requirements_lock],
        deps = [requirement("pip-tools")],
        visibility = visibility,
    )
