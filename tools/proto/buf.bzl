"""buf's checks of an API as Bazel tests: `buf lint` and `buf breaking` over a descriptor set Bazel built.

    proto_descriptor_set(name = "api", deps = [...])            # @rules_proto: every file, with its imports
    buf_lint_test(name = "lint_test", image = ":api", config = "buf.yaml")
    buf_breaking_test(name = "breaking_test", image = ":api", against = "api_baseline.json", config = "buf.yaml")

buf reads a FileDescriptorSet as an image (`#format=binpb`), so the checks see exactly what Bazel compiled,
with source positions (.bazelrc: --experimental_proto_descriptor_sets_include_source_info) for buf's messages.
buf is the npm package's binary (@buf, tools/npm/binary.bzl). Upstream rules_buf runs the same checks as
protoc plugins per proto_library; these take the one image instead.
"""

def _buf_test_impl(ctx):
    image = ctx.file.image.short_path + "#format=binpb"
    arguments = [ctx.attr.command, image, "--config", ctx.file.config.short_path]
    inputs = [ctx.file.image, ctx.file.config, ctx.executable._buf]
    released = []
    if ctx.attr.command == "breaking":
        arguments += ["--against", ctx.file.against.short_path]
        inputs.append(ctx.file.against)

        # A baseline with no files (nothing released yet, or every released service removed) has no
        # client to break; buf refuses an empty image, so say so and pass.
        released = [
            "if grep -Eq '\"file\": *\\[ *\\]' '%s'; then" % ctx.file.against.short_path,
            "  echo '%s has no files: no API is released yet, so nothing can break'; exit 0" % ctx.file.against.short_path,
            "fi",
        ]
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        script,
        "\n".join([
            "#!/bin/sh",
            "# buf keeps a cache; the test's own temporary directory is the one place it may write.",
            "export BUF_CACHE_DIR=\"${TEST_TMPDIR:-$(mktemp -d)}/buf\"",
        ] + released + [
            "exec %s %s" % (ctx.executable._buf.short_path, " ".join(["'%s'" % a for a in arguments])),
            "",
        ]),
        is_executable = True,
    )
    return [DefaultInfo(executable = script, runfiles = ctx.runfiles(inputs))]

_ATTRS = {
    "image": attr.label(mandatory = True, allow_single_file = True, doc = "A FileDescriptorSet, e.g. a proto_descriptor_set."),
    "config": attr.label(mandatory = True, allow_single_file = True, doc = "buf.yaml (version v2)."),
    "_buf": attr.label(default = "@buf//:buf", allow_single_file = True, executable = True, cfg = "target"),
}

_buf_lint_test = rule(
    implementation = _buf_test_impl,
    attrs = dict(_ATTRS, command = attr.string(default = "lint")),
    test = True,
)

_buf_breaking_test = rule(
    implementation = _buf_test_impl,
    attrs = dict(_ATTRS, command = attr.string(default = "breaking"), against = attr.label(
        mandatory = True,
        allow_single_file = True,
        doc = "The released API: an image buf reads (.json, .binpb).",
    )),
    test = True,
)

def buf_lint_test(name, image, config, **kwargs):
    """Fails with buf's messages if `image` breaks a lint rule of `config`."""
    _buf_lint_test(name = name, image = image, config = config, **kwargs)

def buf_breaking_test(name, image, against, config, **kwargs):
    """Fails with buf's messages if `image` breaks a client of `against` (config's `breaking` rules)."""
    _buf_breaking_test(name = name, image = image, against = against, config = config, **kwargs)
