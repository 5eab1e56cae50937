"""Upstream Bazel rule sets from Debian's archive, pinned by version and SHA256.

Debian packages the real rule sets it ships beside its Bazel 4.2.3 (`bazel-rules-proto`, `bazel-rules-java`,
`bazel-skylib`, ...). GitHub and mirror.bazel.build, where WORKSPACEs usually fetch them, are out of reach here;
Debian's archive is not. `debian_rule_set` downloads one package with `apt-get download NAME=VERSION` (as
//tools/oci fetches the images' packages), checks the file's SHA256, unpacks it with `dpkg-deb -x` and makes
the directory `strip_prefix` of it the repository:

    debian_rule_set(
        name = "rules_proto",
        package = "bazel-rules-proto",
        version = "4.0.0-3.20.0-2",
        sha256 = "adac2a07...",
        strip_prefix = "usr/share/bazel/rules/proto",
    )

A version that has left the archive, or a file with another SHA256, fails the fetch with a message saying
what to do. Swapping to upstream's `http_archive` of the same release is a change of this one call.
"""

def _run(rctx, argv, what):
    result = rctx.execute(argv, timeout = 300)
    if result.return_code != 0:
        fail("%s: %s failed:\n%s%s" % (rctx.name, what, result.stdout, result.stderr))
    return result.stdout

def _debian_rule_set_impl(rctx):
    spec = "%s=%s" % (rctx.attr.package, rctx.attr.version)
    rctx.report_progress("apt-get download " + spec)
    offered = rctx.execute(["apt-cache", "show", spec])
    if offered.return_code != 0 or not offered.stdout:
        fail((
            "%s: Debian no longer offers %s (or apt has no lists yet). Run `apt-get update`; if it is still " +
            "missing, pin the version `apt-cache policy %s` shows, with its SHA256, in WORKSPACE."
        ) % (rctx.name, spec, rctx.attr.package))
    _run(rctx, ["mkdir", "-p", "_download"], "mkdir")
    _run(rctx, ["sh", "-c", "cd _download && apt-get download -q " + spec], "apt-get download " + spec)
    debs = [line for line in _run(rctx, ["sh", "-c", "ls _download/*.deb"], "listing the download").split("\n") if line]
    if len(debs) != 1:
        fail("%s: expected one .deb from apt-get download %s, found %s" % (rctx.name, spec, debs))
    sha256 = _run(rctx, ["sha256sum", debs[0]], "sha256sum").split(" ")[0]
    if sha256 != rctx.attr.sha256:
        fail("%s: %s has SHA256 %s, WORKSPACE pins %s" % (rctx.name, spec, sha256, rctx.attr.sha256))
    _run(rctx, ["dpkg-deb", "-x", debs[0], "_unpacked"], "dpkg-deb -x")
    _run(rctx, ["cp", "-R", "_unpacked/%s/." % rctx.attr.strip_prefix, "."], "copying " + rctx.attr.strip_prefix)
    _run(rctx, ["rm", "-rf", "_download", "_unpacked"], "cleaning up")
    rctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % rctx.name)

debian_rule_set = repository_rule(
    implementation = _debian_rule_set_impl,
    attrs = {
        "package": attr.string(mandatory = True, doc = "The Debian package, e.g. bazel-rules-proto."),
        "version": attr.string(mandatory = True, doc = "Its exact Debian version."),
        "sha256": attr.string(mandatory = True, doc = "The SHA256 of the .deb file."),
        "strip_prefix": attr.string(mandatory = True, doc = "The directory in the package that is the repository."),
    },
    doc = "A Bazel rule set unpacked from a version- and SHA256-pinned Debian package.",
)
