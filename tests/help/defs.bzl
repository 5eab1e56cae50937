"""`help_test`: every program a user is told to run answers `--help` (tests/help/help_test.py)."""

load("//tools/pytest:defs.bzl", "py_pytest_test")

def _program_list_impl(ctx):
    lines = ["README " + ctx.file.readme.short_path]
    for name, program in zip(ctx.attr.names, ctx.attr.programs):
        lines.append("%s %s" % (name, program[DefaultInfo].files_to_run.executable.short_path))
    out = ctx.actions.declare_file(ctx.label.name + ".txt")
    ctx.actions.write(out, "\n".join(lines) + "\n")
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles([out]))]

# The README, then label → the program's path in the runfiles, one per line; labels as the README writes
# them. A rule rather than a genrule with the programs as tools: tools would build every program (the
# images behind :push and :load too) a second time, for the exec platform.
_program_list = rule(
    implementation = _program_list_impl,
    attrs = {
        "readme": attr.label(allow_single_file = True, mandatory = True),
        "programs": attr.label_list(mandatory = True),
        "names": attr.string_list(mandatory = True, doc = "How each of programs is written, in the same order."),
    },
)

def help_test(name, programs, readme, **kwargs):
    """Runs `--help` of each of `programs`, and fails when `readme` tells a user to `./bazelw run` one it lacks.

    A package that owns programs (bench/, say) declares its own, so that deleting the package takes its
    programs and their instructions with it.

    Args:
      name: the test's name.
      programs: labels of executable targets.
      readme: the README whose `./bazelw run //...` commands must all be among `programs`.
      **kwargs: passed to the test (size, tags, ...).
    """

    here = "//" + native.package_name()
    _program_list(
        name = name + "_programs",
        readme = readme,
        programs = programs,
        names = [here + label if label.startswith(":") else label for label in programs],
        testonly = True,
    )
    py_pytest_test(
        name = name,
        srcs = ["//tests/help:help_test.py"],
        data = programs + [readme, ":%s_programs" % name],
        deps = ["//libs/processes"],
        **kwargs
    )
