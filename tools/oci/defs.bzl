"""Image rules: OCI images from pinned Debian packages and py_binary runfiles (rules_oci's shape).

    debian_base_layer(name = "python_base", debs = ["@debian//:debs"])
    py_layers(name = "layers", binary = ":server", main = "main.py")
    oci_image(name = "image", layers = ["//tools/oci:python_base", ":layers"], repository = "books/server")
    oci_push(name = "push", image = ":image", repository = "books/server")

`oci_image` writes the OCI layout directory `:image`, the loadable archive `:image.tar` and the manifest
digest `:image.digest`. Every layer is a deterministic gzipped tar (tools/oci/oci.py), so the same sources
give the same digest; `oci_reproducibility_test` proves it by rebuilding elsewhere. `py_image` (at the
end) declares all of these for a service's py_binary.
"""

OciLayersInfo = provider(
    doc = "Built layers in order, and what the image needs to run their content.",
    fields = {
        "layers": "list of struct(blob, info, args, inputs): the .tar.gz, the JSON layer.py wrote about it, and how it was made",
        "env": "dict of environment variables the content needs",
        "entrypoint": "list of strings, or None",
    },
)

OciImageInfo = provider(
    doc = "A built image: its layers (see OciLayersInfo), spec for image.py, digest file and layout.",
    fields = ["layers", "spec", "digest", "layout"],
)

_TOOL = {"cfg": "exec", "executable": True}

def _layer_action(ctx, name, arguments, inputs, mnemonic, progress):
    blob = ctx.actions.declare_file(name + ".tar.gz")
    info = ctx.actions.declare_file(name + ".json")
    ctx.actions.run(
        executable = ctx.executable._layer,
        arguments = arguments + ["--output", blob.path, "--info", info.path],
        inputs = inputs,
        outputs = [blob, info],
        mnemonic = mnemonic,
        progress_message = progress,
        # .pyc bytes must not depend on the hash seed (3.11's marshal already sorts frozensets; this
        # keeps it so for code that writes other hash-ordered constants).
        env = {"PYTHONHASHSEED": "0"},
    )
    return struct(blob = blob, info = info, args = arguments, inputs = inputs)

def _debian_base_layer_impl(ctx):
    debs = ctx.files.debs
    layer = _layer_action(
        ctx,
        ctx.label.name,
        ["debian", "--uid", str(ctx.attr.uid), "--user", ctx.attr.user, "--created-by", "%s: %d Debian packages" % (ctx.label, len(debs))] +
        ["--deb=" + deb.path for deb in debs],
        debs,
        "OciDebianLayer",
        "Building base layer %s from %d Debian packages" % (ctx.label, len(debs)),
    )
    return [
        DefaultInfo(files = depset([layer.blob, layer.info])),
        OciLayersInfo(layers = [layer], env = {}, entrypoint = None),
    ]

debian_base_layer = rule(
    implementation = _debian_base_layer_impl,
    attrs = {
        "debs": attr.label_list(allow_files = [".deb"], mandatory = True),
        "uid": attr.int(default = 65532, doc = "The non-root user's uid and gid."),
        "user": attr.string(default = "nonroot"),
        "_layer": attr.label(default = "//tools/oci:layer", **_TOOL),
    },
    doc = "A base layer unpacked from .deb files, with a non-root user and the CA bundle.",
)

def _runfiles_path(ctx, file):
    """Where Bazel puts a file in a runfiles tree: <repository>/<path>."""
    if file.short_path.startswith("../"):
        return file.short_path[3:]
    return ctx.workspace_name + "/" + file.short_path

def _py_layers_impl(ctx):
    binary = ctx.attr.binary
    runfiles = binary[DefaultInfo].default_runfiles
    stub = binary[DefaultInfo].files_to_run.executable
    third_party, app = [], []
    for file in runfiles.files.to_list():
        if file == stub:
            continue  # Bazel's launcher names the build machine's interpreter; the image runs main directly
        entry = [ctx.attr.root + "/" + _runfiles_path(ctx, file), file.path]
        (third_party if file.owner.workspace_name else app).append((entry, file))
    if runfiles.symlinks.to_list() or runfiles.root_symlinks.to_list():
        fail("%s has runfiles symlinks, which py_layers does not place yet" % binary.label)

    package = binary.label.package
    main = "%s/%s/%s" % (ctx.attr.root, ctx.workspace_name, package + "/" + ctx.attr.main if package else ctx.attr.main)
    if main not in [entry[0] for entry, _ in app]:
        fail("main %s is not among the runfiles of %s" % (ctx.attr.main, binary.label))

    layers = []
    for kind, entries in [("third_party", third_party), ("app", app)]:
        manifest = ctx.actions.declare_file("%s_%s.manifest.json" % (ctx.label.name, kind))
        ctx.actions.write(manifest, json.encode(sorted([entry for entry, _ in entries])))
        layers.append(_layer_action(
            ctx,
            "%s_%s" % (ctx.label.name, kind),
            ["files", "--manifest", manifest.path, "--created-by", "%s: %s files of %s" % (ctx.label, kind.replace("_", "-"), binary.label)],
            [manifest] + [file for _, file in entries],
            "OciPyLayer",
            "Building %s layer of %s" % (kind, binary.label),
        ))

    # sys.path as Bazel's launcher builds it: the main repository, then the import roots of the deps.
    imports = [ctx.workspace_name] + binary[PyInfo].imports.to_list()
    env = {
        "PYTHONPATH": ":".join([ctx.attr.root + "/" + path for path in imports]),
        "PYTHONDONTWRITEBYTECODE": "1",  # the .pyc files are in the layers; the file system may be read-only
        "PYTHONUNBUFFERED": "1",
    }
    return [
        DefaultInfo(files = depset([file for layer in layers for file in [layer.blob, layer.info]])),
        OciLayersInfo(layers = layers, env = env, entrypoint = [ctx.attr.interpreter, main]),
    ]

py_layers = rule(
    implementation = _py_layers_impl,
    attrs = {
        "binary": attr.label(mandatory = True, providers = [PyInfo]),
        "main": attr.string(mandatory = True, doc = "The binary's main file, relative to the binary's package."),
        "root": attr.string(default = "/app", doc = "Where the runfiles tree goes in the image."),
        "interpreter": attr.string(default = "/usr/bin/python3.11"),
        "_layer": attr.label(default = "//tools/oci:layer", **_TOOL),
    },
    doc = "Two layers of a py_binary's runfiles: third-party packages (change rarely) and the app.",
)

def _oci_image_impl(ctx):
    layers, env, entrypoint = [], {}, ctx.attr.entrypoint or None
    for target in ctx.attr.layers:
        info = target[OciLayersInfo]
        layers += info.layers
        env.update(info.env)
        entrypoint = entrypoint or info.entrypoint
    env.update(ctx.attr.env)
    if not entrypoint:
        fail("%s has no entrypoint: set `entrypoint` or use a py_layers target" % ctx.label)

    spec = ctx.actions.declare_file(ctx.label.name + ".spec.json")
    ctx.actions.write(spec, json.encode(struct(
        layers = [struct(blob = layer.blob.path, info = layer.info.path) for layer in layers],
        architecture = ctx.attr.architecture,
        user = "%d:%d" % (ctx.attr.uid, ctx.attr.uid),
        workdir = ctx.attr.workdir,
        entrypoint = entrypoint,
        env = env,
        ports = ctx.attr.exposed_ports,
        labels = ctx.attr.labels,
        repository = ctx.attr.repository,
        tag = ctx.attr.tag,
    )))
    layout = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run(
        executable = ctx.executable._image,
        arguments = ["--spec", spec.path, "--layout", layout.path, "--archive", ctx.outputs.tar.path, "--digest", ctx.outputs.digest.path],
        inputs = [spec] + [file for layer in layers for file in [layer.blob, layer.info]],
        outputs = [layout, ctx.outputs.tar, ctx.outputs.digest],
        mnemonic = "OciImage",
        progress_message = "Assembling image %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset([layout]), runfiles = ctx.runfiles([layout])),
        OciImageInfo(layers = layers, spec = spec, digest = ctx.outputs.digest, layout = layout),
    ]

oci_image = rule(
    implementation = _oci_image_impl,
    attrs = {
        "layers": attr.label_list(providers = [OciLayersInfo], mandatory = True, doc = "Base first."),
        "entrypoint": attr.string_list(doc = "Defaults to the one py_layers gives."),
        "env": attr.string_dict(),
        "exposed_ports": attr.int_list(),
        "labels": attr.string_dict(doc = "Config labels; the org.opencontainers.* ones also annotate the manifest."),
        "uid": attr.int(default = 65532, doc = "User and group the process runs as; never root."),
        "workdir": attr.string(default = "/app"),
        "architecture": attr.string(default = "amd64"),
        "repository": attr.string(mandatory = True, doc = "Name used by `podman load` and `docker load`."),
        "tag": attr.string(default = "latest"),
        "_image": attr.label(default = "//tools/oci:image", **_TOOL),
    },
    outputs = {"tar": "%{name}.tar", "digest": "%{name}.digest"},
    doc = "An OCI image layout, its archive (`.tar`) and its manifest digest (`.digest`).",
)

def _oci_push_impl(ctx):
    layout = ctx.attr.image[DefaultInfo].files.to_list()[0]
    script = ctx.actions.declare_file(ctx.label.name)  # runs as its label path, like a py_binary
    ctx.actions.write(
        script,
        "#!/bin/sh\nexec %s --layout %s --repository %s \"$@\"\n" % (
            ctx.executable._push.short_path,
            layout.short_path,
            ctx.attr.repository,
        ),
        is_executable = True,
    )
    runfiles = ctx.runfiles([layout]).merge(ctx.attr._push[DefaultInfo].default_runfiles)
    return [DefaultInfo(executable = script, runfiles = runfiles)]

oci_push = rule(
    implementation = _oci_push_impl,
    attrs = {
        "image": attr.label(mandatory = True),
        "repository": attr.string(mandatory = True, doc = "Path in the registry, e.g. online-books/order-history."),
        "_push": attr.label(default = "//tools/oci:push", cfg = "target", executable = True),
    },
    executable = True,
    doc = "`bazel run :push -- REGISTRY [TAG...]`: pushes the image by digest and prints REGISTRY/REPO@DIGEST.",
)

def _oci_reproducibility_test_impl(ctx):
    image = ctx.attr.image[OciImageInfo]
    inputs = [image.spec, image.digest]
    paths = {}
    layers = []
    for layer in image.layers:
        inputs += layer.inputs + [layer.info, layer.blob]  # the blob: to name what differs
        layers.append(layer.args)
    for file in inputs:
        paths[file.path] = _runfiles_path(ctx, file)
    recipe = ctx.actions.declare_file(ctx.label.name + ".recipe.json")
    ctx.actions.write(recipe, json.encode(struct(
        layers = layers,
        paths = paths,
        spec = _runfiles_path(ctx, image.spec),
        digest = _runfiles_path(ctx, image.digest),
    )))
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        script,
        "#!/bin/sh\nexec %s --recipe %s \"$@\"\n" % (ctx.executable._rebuild.short_path, recipe.short_path),
        is_executable = True,
    )
    runfiles = ctx.runfiles([recipe] + inputs).merge(ctx.attr._rebuild[DefaultInfo].default_runfiles)
    return [DefaultInfo(executable = script, runfiles = runfiles)]

oci_reproducibility_test = rule(
    implementation = _oci_reproducibility_test_impl,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "_rebuild": attr.label(default = "//tools/oci:rebuild", cfg = "target", executable = True),
    },
    test = True,
    doc = "Rebuilds every layer and the image from the same inputs elsewhere, and expects the same digest.",
)

def py_image(name, binary, main, repository, exposed_ports = [], env = {}, labels = {}, visibility = None, **kwargs):
    """`:<name>` (layout), `:<name>.tar`, `:<name>.digest`, `:push` and a reproducibility test.

    Args:
      name: the image target's name, conventionally "image".
      binary: the py_binary to run.
      main: the binary's main file, relative to this package.
      repository: the image's name in registries, e.g. "online-books/order-history".
      exposed_ports: ports the process listens on.
      env: environment variables, added to the PYTHON* ones the layers need.
      labels: config labels, added to the standard org.opencontainers.image.* ones.
      visibility: of the image targets.
      **kwargs: passed to oci_image (uid, workdir, tag, ...).
    """
    py_layers(name = name + "_layers", binary = binary, main = main)
    oci_image(
        name = name,
        layers = ["//tools/oci:python_base", ":%s_layers" % name],
        exposed_ports = exposed_ports,
        env = env,
        labels = dict({
            "org.opencontainers.image.base.name": "debian:bookworm (tools/oci/debian_packages.lock)",
            "org.opencontainers.image.title": repository,
            "org.opencontainers.image.vendor": "Online Books For You",
        }, **labels),
        repository = repository,
        visibility = visibility,
        **kwargs
    )
    oci_push(
        name = "push",
        image = ":" + name,
        repository = repository,
        visibility = ["//tests:__subpackages__"],  # its --help is tested
    )
    oci_reproducibility_test(name = name + "_reproducible_test", image = ":" + name, size = "medium")
