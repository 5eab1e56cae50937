"""Upstream Bazel rule sets from Debian's archive, pinned by version and SHA256.

Debian packages the real rule sets it ships beside its Bazel 4.2.3 (`bazel-rules-proto`, `bazel-rules-java`,
`bazel-skylib`, ...). GitHub and mirror.bazel.build, where WORKSPACEs usually fetch them, are out of reach here;
Debian's archive is not. The packages are pinned in tools/rule_sets/debian_packages.lock and fetched, like
every Debian package this repository uses, by `debian_packages` (tools/oci/debian.bzl); `debian_rule_set`
unpacks one of them with `dpkg-deb -x` and makes the directory `strip_prefix` of it the repository:

    debian_packages(name = "rule_set_debs", lock = "//tools/rule_sets:debian_packages.lock")

    debian_rule_set(
        name = "rules_proto",
        deb = "@rule_set_debs//:debs/bazel-rules-proto.deb",
        strip_prefix = "usr/share/bazel/rules/proto",
    )

Swapping to upstream's `http_archive` of the same release is a change of this one call.
"""

def _run(rctx, argv, what):
    result = rctx.execute(argv, timeout = 300)
    if result.return_code != 0:
        fail("%s: %s failed:\n%s%s" % (rctx.name, what, result.stdout, result.stderr))
    return result.stdout

def _debian_rule_set_impl(rctx):
    deb = rctx.path(rctx.attr.deb)
    _run(rctx, ["dpkg-deb", "-x", str(deb), "_unpacked"], "dpkg-deb -x " + deb.basename)
    _run(rctx, ["cp", "-R", "_unpacked/%s/." % rctx.attr.strip_prefix, "."], "copying " + rctx.attr.strip_prefix)
    _run(rctx, ["rm", "-rf", "_unpacked"], "cleaning up")
    rctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % rctx.name)

debian_rule_set = repository_rule(
    implementation = _debian_rule_set_impl,
    attrs = {
        "deb": attr.label(mandatory = True, allow_single_file = [".deb"], doc = "The package, from a debian_packages repository."),
        "strip_prefix": attr.string(mandatory = True, doc = "The directory in the package that is the repository."),
    },
    doc = "A Bazel rule set unpacked from a pinned Debian package.",
)
