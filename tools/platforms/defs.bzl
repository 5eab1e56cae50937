"""The CPU architecture a target is built for: a platform per architecture, and the transitions to them.

Images are built for the target platform: this machine's (amd64) by default, `//tools/platforms:linux_arm64`
for arm64. What differs by architecture selects on `//tools/platforms:arm64` (a config_setting on
`@platforms//cpu:aarch64`): the Debian packages of the base layer and the wheels of `@pypi` (tools/pip).
Tools run in the exec configuration, whose platform is always the host's, so they stay amd64 whatever
the images are built for. `oci_image_index` builds its images once per architecture with
`architectures_transition`; `architecture_filegroup` gives one architecture's build of a target, the
shape of aspect_bazel_lib's `platform_transition_filegroup`.
"""

ARCHITECTURES = ["amd64", "arm64"]

# The wheels the images can load on arm64: the base's glibc (Debian bookworm's 2.36) runs manylinux
# wheels built for 2.17 to 2.36. pip matches the tags it is given only, so each one is listed.
ARM64_WHEEL_PLATFORMS = ["manylinux2014_aarch64"] + ["manylinux_2_%d_aarch64" % minor for minor in range(17, 37)]

_PLATFORMS = "//command_line_option:platforms"
_ARM64 = "//tools/platforms:linux_arm64"

ArchitectureInfo = provider(doc = "OCI's name of the architecture of the target platform.", fields = ["value"])

def _architecture_name_impl(ctx):
    return [ArchitectureInfo(value = ctx.attr.value)]

architecture_name = rule(
    implementation = _architecture_name_impl,
    attrs = {"value": attr.string(mandatory = True, values = ARCHITECTURES)},
    doc = "Provides the architecture's name; `value` selects on the platform.",
)

def _platforms(architecture, current):
    if architecture == "arm64":
        return [_ARM64]
    if [(label.package, label.name) for label in current] == [("tools/platforms", "linux_arm64")]:
        return ["@local_config_platform//:host"]
    return current  # amd64 is this machine's: the configuration stays the one the images were asked in

def _check(architectures):
    for architecture in architectures:
        if architecture not in ARCHITECTURES:
            fail("unknown architecture %r; known: %s" % (architecture, ", ".join(ARCHITECTURES)))

def _architectures_impl(settings, attr):
    _check(attr.architectures)
    return {a: {_PLATFORMS: _platforms(a, settings[_PLATFORMS])} for a in attr.architectures}

architectures_transition = transition(
    implementation = _architectures_impl,
    inputs = [_PLATFORMS],
    outputs = [_PLATFORMS],
)

def _architecture_impl(settings, attr):
    if not attr.architecture:  # unset: the configuration the target was asked in
        return {_PLATFORMS: settings[_PLATFORMS]}
    _check([attr.architecture])
    return {_PLATFORMS: _platforms(attr.architecture, settings[_PLATFORMS])}

architecture_transition = transition(
    implementation = _architecture_impl,
    inputs = [_PLATFORMS],
    outputs = [_PLATFORMS],
)

def forward_files(ctx):
    """The implementation of a filegroup of targets built in another configuration.

    This file's architecture_filegroup and tools/oci's oci_compression_filegroup use it.

    Args:
      ctx: the rule's context; its `srcs` attribute holds the targets.

    Returns:
      DefaultInfo with the files and runfiles of every target of `srcs`.
    """
    files = depset(transitive = [src[DefaultInfo].files for src in ctx.attr.srcs])
    runfiles = ctx.runfiles(transitive_files = files)
    for src in ctx.attr.srcs:
        runfiles = runfiles.merge(src[DefaultInfo].default_runfiles)
    return [DefaultInfo(files = files, runfiles = runfiles)]

architecture_filegroup = rule(
    implementation = forward_files,
    attrs = {
        "srcs": attr.label_list(cfg = architecture_transition, allow_files = True),
        "architecture": attr.string(mandatory = True, values = ARCHITECTURES),
        "_allowlist_function_transition": attr.label(default = "@bazel_tools//tools/allowlists/function_transition_allowlist"),
    },
    doc = "The files of `srcs` built for `architecture` (e.g. an image's arm64 layout, for a test).",
)
