"""`deb_binary`: one executable copied out of a pinned Debian package (tools/monitoring/extract.py)."""

def _deb_binary_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name)
    ctx.actions.run(
        executable = ctx.executable._extract,
        arguments = [ctx.file.deb.path, ctx.attr.path, out.path],
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
    doc = "An executable file of a Debian package, runnable with `bazel run` and usable as a tool or data.",
)
