"""`py_mypy_test`: mypy over one package's Python files, as a Bazel test (cached like any test: a package
whose files and dependencies did not change is not checked again).

    load("//tools/mypy:defs.bzl", "py_mypy_test")
    py_mypy_test(name = "mypy_test", deps = [":runtime", ":runtime_test_lib"])             # strict
    py_mypy_test(name = "mypy_test", deps = [":dev"], strict = False)                      # tools, tests, bench

It checks the .py files of `deps` that live in this package (test files, `*_test.py` and `testing/`,
without --strict), with everything they import: first-party
code and generated protos (their .pyi) as sources (MYPYPATH), third-party packages as installed packages
(their own types or stub packages from the lock: grpc-stubs, types-protobuf, ...). Settings: mypy.ini.
"""

_SCRIPT = """#!/bin/sh
# Import roots are relative to the runfiles directory; the files to check to the workspace in it.
root="${{RUNFILES_DIR:-${{TEST_SRCDIR}}}}"
export MYPYPATH="{mypy_path}"
export PYTHONPATH="{python_path}"
cache="${{TEST_TMPDIR:-/tmp}}/mypy"
status=0
if [ -n "{code}" ]; then
  {runner} --config-file {config} --cache-dir "$cache" {strict} {code} || status=1
fi
# Tests: mypy.ini's checks, not --strict (fixtures and parametrised cases need no annotations to be clear).
if [ -n "{tests}" ]; then
  {runner} --config-file {config} --cache-dir "$cache" {tests} || status=1
fi
exit $status
"""

def _is_test(file):
    return file.basename.endswith("_test.py") or "/testing/" in file.short_path

def _py_mypy_test_impl(ctx):
    files, imports = [], []
    for dep in ctx.attr.deps:
        info = dep[PyInfo]
        imports.append(info.imports)
        files += [
            f
            for f in info.transitive_sources.to_list()
            if f.is_source and f.extension == "py" and f.owner.package == ctx.label.package and not f.owner.workspace_name
        ]
    if not files:
        fail("%s: no Python file of package %s among deps" % (ctx.label, ctx.label.package))
    workspace = ctx.workspace_name
    roots = depset(transitive = imports).to_list()
    first_party = [workspace] + [r for r in roots if r.startswith(workspace + "/")]
    third_party = [r for r in roots if not r.startswith(workspace + "/") and r != workspace]
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(script, _SCRIPT.format(
        mypy_path = ":".join(["$root/" + r for r in first_party]),
        python_path = ":".join(["$root/" + r for r in third_party]),
        runner = ctx.executable._mypy.short_path,
        config = ctx.file.config.short_path,
        strict = "--strict" if ctx.attr.strict else "",
        code = " ".join(sorted([f.short_path for f in depset(files).to_list() if not _is_test(f)])),
        tests = " ".join(sorted([f.short_path for f in depset(files).to_list() if _is_test(f)])),
    ), is_executable = True)
    runfiles = ctx.runfiles([ctx.file.config]).merge(ctx.attr._mypy[DefaultInfo].default_runfiles)
    for dep in ctx.attr.deps:
        runfiles = runfiles.merge(dep[DefaultInfo].default_runfiles)
    return [DefaultInfo(executable = script, runfiles = runfiles)]

py_mypy_test = rule(
    implementation = _py_mypy_test_impl,
    attrs = {
        "deps": attr.label_list(providers = [PyInfo], mandatory = True, doc = "Libraries, binaries or tests of this package."),
        "strict": attr.bool(default = True, doc = "mypy --strict (libs/ and services/); False: mypy.ini's checks only."),
        "config": attr.label(default = "//:mypy.ini", allow_single_file = True),
        "_mypy": attr.label(default = "//tools/mypy:mypy", executable = True, cfg = "target"),
    },
    test = True,
    doc = "Type-checks this package's Python files with mypy.",
)
