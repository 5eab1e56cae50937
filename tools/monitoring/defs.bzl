"""Files of pinned Debian packages (tools/monitoring/extract.py).

`deb_binary`: one executable out of a package, runnable with `bazel run` and usable as a tool or data.
`deb_tree`: a directory of every file and link under some prefixes of several packages, laid out as in
the packages (so their relative links keep working).
"""

def _deb_binary_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name)
    ctx.actions.run(
        executable = ctx.executable._extract,
        arguments = ["file", ctx.file.deb.path, ctx.attr.path, out.path],
        inputs = [ctx.file.deb],
        outputs = [out],
        mnemonic = "DebBinary",
        progress_message = "Extracting %s from %s" % (ctx.attr.path, ctx.file.deb.basename),
    )
    return [DefaultInfo(executable = out, files = depset([out]))]

deb_binary = rule(
    implementation = _deb_binary_impl,
    attrs = {
        "deb": attr.label(mandatory = True, allow_single_file = [".deb"]),
        "path": attr.string(mandatory = True, doc = "The file inside the package, e.g. usr/bin/promtool."),
        "_extract": attr.label(default = "//tools/monitoring:extract", executable = True, cfg = "exec"),
    },
    executable = True,
    doc = "An executable file of a Debian package.",
)

def _deb_tree_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    arguments = ["tree", out.path]
    for prefix in ctx.attr.prefixes:
        arguments += ["--prefix", prefix]
    arguments += [deb.path for deb in ctx.files.debs]
    ctx.actions.run(
        executable = ctx.executable._extract,
        arguments = arguments,
        inputs = ctx.files.debs,
        outputs = [out],
        mnemonic = "DebTree",
        progress_message = "Extracting %s" % ", ".join(ctx.attr.prefixes),
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles([out]))]

deb_tree = rule(
    implementation = _deb_tree_impl,
    attrs = {
        "debs": attr.label_list(mandatory = True, allow_files = [".deb"]),
        "prefixes": attr.string_list(mandatory = True, doc = "Paths inside the packages, e.g. usr/share/javascript."),
        "_extract": attr.label(default = "//tools/monitoring:extract", executable = True, cfg = "exec"),
    },
    doc = "A directory of the packages' files under `prefixes`.",
)
