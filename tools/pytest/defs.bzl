"""`py_pytest_test`: a py_test that runs its sources with pytest under Bazel's test protocol."""

load("@pypi//:requirements.bzl", "requirement")

def py_pytest_test(name, srcs, deps = [], args = [], **kwargs):
    """A py_test whose `srcs` are pytest files.

    The shim writes JUnit XML to XML_OUTPUT_FILE, maps `--test_filter` (TESTBRIDGE_TEST_ONLY) to
    `pytest -k`, and exits non-zero on any failure, including when no test was collected.
    """
    native.py_test(
        name = name,
        srcs = srcs + ["//tools/pytest:pytest_main.py"],
        main = "//tools/pytest:pytest_main.py",
        args = ["$(rootpath %s)" % src for src in srcs] + args,
        deps = deps + [requirement("coverage"), requirement("pytest")],
        **kwargs
    )
