"""`help_test`: every program a user is told to run answers `--help` (tests/help/help_test.py)."""

load("//tools/pytest:defs.bzl", "py_pytest_test")

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

    # The README, then label → the program's path in the runfiles, one per line; labels in full, as the
    # README writes them.
    here = "//" + native.package_name()
    native.genrule(
        name = name + "_programs",
        srcs = [readme],
        outs = [name + "_programs.txt"],
        cmd = "echo 'README $(rootpath %s)' > $@\n" % readme +
              "\n".join(["echo '%s $(rootpath %s)' >> $@" % (here + label if label.startswith(":") else label, label) for label in programs]),
        tools = programs,
        testonly = True,
    )
    py_pytest_test(
        name = name,
        srcs = ["//tests/help:help_test.py"],
        data = programs + [readme, ":%s_programs" % name],
        deps = ["//libs/processes"],
        **kwargs
    )
