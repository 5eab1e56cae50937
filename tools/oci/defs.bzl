"""Image rules: OCI images from pinned Debian packages and py_binary runfiles, shaped like rules_oci's.

    debian_base_layer(name = "python_base_layer", debs = ["@debian//:debs"])
    oci_image(name = "python_base", tars = [":python_base_layer"], user = "65532:65532", workdir = "/app")

    py_layers(name = "layers", binary = ":server", main = "main.py")
    oci_image(name = "image", base = "//tools/oci:python_base", tars = [":layers"], exposed_ports = ["50051/tcp"])
    spdx_sbom(name = "image_sbom", image = ":image")
    oci_image_index(name = "image_index", images = [":image"], referrers = [":image_sbom"])
    oci_load(name = "load", image = ":image", repo_tags = ["books/server:latest"])
    oci_push(name = "push", image = ":image_index", repository = "books/server", remote_tags = ["latest"])

`oci_image`, `oci_image_index`, `oci_load` and `oci_push` take rules_oci's attribute names where rules_oci
has them (README, "Images", lists what still differs: `tars` takes our layer targets, not tar files;
`oci_push` takes the registry when it runs; `oci_image_index` builds its images for each architecture
itself). `oci_image` writes the OCI layout directory `:image` and the manifest digest `:image.digest`.
Every layer is a deterministic compressed tar (zstd, or gzip with `--//tools/oci:compression=gzip`;
tools/oci/oci.py), so the same sources give the same digest; `oci_reproducibility_test` proves it by
rebuilding elsewhere, for either architecture.
"""

load("//tools/platforms:defs.bzl", "ARCHITECTURES", "ArchitectureInfo", "architecture_transition", "architectures_transition", "forward_files")

OciLayersInfo = provider(
    doc = "Built layers in order, and what the image needs to run their content.",
    fields = {
        "layers": "list of struct(blob, info, args, inputs): the compressed tar, the JSON layer.py wrote about it, and how it was made",
        "env": "dict of environment variables the content needs",
        "entrypoint": "list of strings, or None",
    },
)

OciReferrerInfo = provider(
    doc = "A file about an image (its SBOM), which an index attaches as an OCI 1.1 referrer of that image.",
    fields = {"subject": "the image's layout", "artifact_type": "media type of the file", "file": "the file"},
)

OciImageInfo = provider(
    doc = "A built image: its layers (see OciLayersInfo; the base's first), how many of them its base " +
          "gave it, its config (inherited by images based on it), the spec image.py read, the digest " +
          "file and the layout.",
    fields = ["layers", "base_layers", "config", "spec", "digest", "layout"],
)

_TOOL = {"cfg": "exec", "executable": True}

CompressionInfo = provider(doc = "How layers are compressed: gzip or zstd.", fields = ["value"])

def _compression_flag_impl(ctx):
    if ctx.build_setting_value not in ["gzip", "zstd"]:
        fail("%s is %r; it is gzip or zstd" % (ctx.label, ctx.build_setting_value))
    return [CompressionInfo(value = ctx.build_setting_value)]

compression_flag = rule(
    implementation = _compression_flag_impl,
    build_setting = config.string(flag = True),
    doc = "The layers' compression (tools/oci/oci.py says what each costs).",
)

def _compression_impl(_settings, attr):
    return {"//tools/oci:compression": attr.compression}

_compression_transition = transition(
    implementation = _compression_impl,
    inputs = [],
    outputs = ["//tools/oci:compression"],
)

oci_compression_filegroup = rule(
    implementation = forward_files,
    attrs = {
        "srcs": attr.label_list(cfg = _compression_transition),
        "compression": attr.string(mandatory = True, values = ["gzip", "zstd"]),
        "_allowlist_function_transition": attr.label(default = "@bazel_tools//tools/allowlists/function_transition_allowlist"),
    },
    doc = "The files of `srcs` (images) built with `compression` layers, e.g. gzip for a tool without zstd.",
)

# Every layer rule's private attributes: the tool and the compression setting.
_LAYER_ATTRS = {
    "_layer": attr.label(default = "//tools/oci:layer", **_TOOL),
    "_compression": attr.label(default = "//tools/oci:compression"),
}

def _layer_action(ctx, name, arguments, inputs, mnemonic, progress):
    compression = ctx.attr._compression[CompressionInfo].value
    blob = ctx.actions.declare_file(name + (".tar.gz" if compression == "gzip" else ".tar.zst"))
    info = ctx.actions.declare_file(name + ".json")
    arguments = arguments + ["--compression", compression]
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
    attrs = dict({
        "debs": attr.label_list(allow_files = [".deb"], mandatory = True),
        "uid": attr.int(default = 65532, doc = "The non-root user's uid and gid."),
        "user": attr.string(default = "nonroot"),
    }, **_LAYER_ATTRS),
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

    # sys.path as Bazel's launcher builds it: the main repository, then the import roots of the deps
    # that hold files here (built for arm64, @pypi's libraries keep their root but carry another
    # repository's wheels).
    paths = [entry[0] for entry, _ in third_party + app]
    imports = [ctx.workspace_name] + [
        path
        for path in binary[PyInfo].imports.to_list()
        if [entry for entry in paths if entry.startswith("%s/%s/" % (ctx.attr.root, path))]
    ]
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
    attrs = dict({
        "binary": attr.label(mandatory = True, providers = [PyInfo]),
        "main": attr.string(mandatory = True, doc = "The binary's main file, relative to the binary's package."),
        "root": attr.string(default = "/app", doc = "Where the runfiles tree goes in the image."),
        "interpreter": attr.string(default = "/usr/bin/python3.11"),
    }, **_LAYER_ATTRS),
    doc = "Two layers of a py_binary's runfiles: third-party packages (change rarely) and the app.",
)

def _oci_image_impl(ctx):
    base = ctx.attr.base[OciImageInfo] if ctx.attr.base else None
    config = dict(base.config) if base else {"env": {}, "user": "", "workdir": "", "entrypoint": [], "cmd": [], "exposed_ports": [], "labels": {}}
    layers = list(base.layers) if base else []
    for target in ctx.attr.tars:
        info = target[OciLayersInfo]
        layers += info.layers
        config["env"] = dict(config["env"], **info.env)
        config["entrypoint"] = info.entrypoint or config["entrypoint"]

    # What this image sets overrides what it inherits, as a Dockerfile's lines override FROM's.
    config["env"] = dict(config["env"], **ctx.attr.env)
    config["labels"] = dict(config["labels"], **ctx.attr.labels)
    config["exposed_ports"] = sorted({port: None for port in config["exposed_ports"] + ctx.attr.exposed_ports}.keys())
    for key in ["user", "workdir", "entrypoint", "cmd"]:
        config[key] = getattr(ctx.attr, key) or config[key]
    if not layers:
        fail("%s has no layers: set `base` or `tars`" % ctx.label)

    spec = ctx.actions.declare_file(ctx.label.name + ".spec.json")
    ctx.actions.write(spec, json.encode(struct(
        layers = [struct(blob = layer.blob.path, info = layer.info.path) for layer in layers],
        architecture = ctx.attr._architecture[ArchitectureInfo].value,
        os = ctx.attr.os,
        config = config,
        annotations = ctx.attr.annotations,
    )))
    layout = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run(
        executable = ctx.executable._image,
        arguments = ["--spec", spec.path, "--layout", layout.path, "--digest", ctx.outputs.digest.path],
        inputs = [spec] + [file for layer in layers for file in [layer.blob, layer.info]],
        outputs = [layout, ctx.outputs.digest],
        mnemonic = "OciImage",
        progress_message = "Assembling image %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset([layout]), runfiles = ctx.runfiles([layout])),
        OciImageInfo(
            layers = layers,
            base_layers = len(base.layers) if base else 0,
            config = config,
            spec = spec,
            digest = ctx.outputs.digest,
            layout = layout,
        ),
    ]

oci_image = rule(
    implementation = _oci_image_impl,
    attrs = {
        "base": attr.label(providers = [OciImageInfo], doc = "The image this one starts from: its layers and config."),
        "tars": attr.label_list(providers = [OciLayersInfo], doc = "Layers on top of the base (py_layers, debian_base_layer)."),
        "entrypoint": attr.string_list(doc = "Defaults to the base's, or to the one py_layers gives."),
        "cmd": attr.string_list(),
        "env": attr.string_dict(doc = "Added to the base's and the layers'."),
        "exposed_ports": attr.string_list(doc = 'e.g. ["50051/tcp"]; added to the base\'s.'),
        "user": attr.string(doc = 'e.g. "65532:65532"; defaults to the base\'s.'),
        "workdir": attr.string(doc = "Defaults to the base's."),
        "labels": attr.string_dict(doc = "Config labels, added to the base's."),
        "annotations": attr.string_dict(doc = "Manifest annotations."),
        "os": attr.string(default = "linux"),
        # What the layers were built for: the base's packages and the wheels follow the same setting.
        "_architecture": attr.label(default = "//tools/platforms:architecture"),
        "_image": attr.label(default = "//tools/oci:image", **_TOOL),
    },
    outputs = {"digest": "%{name}.digest"},
    doc = "An OCI image layout (the target's directory) and its manifest digest (`.digest`).",
)

def _oci_image_index_impl(ctx):
    layout = ctx.actions.declare_directory(ctx.label.name)
    arguments, inputs = ["--layout", layout.path, "--digest", ctx.outputs.digest.path], []

    # In the host configuration (a genrule's tools) Bazel does not split: one build, keyed None.
    architectures = [None] if None in ctx.split_attr.images else ctx.attr.architectures
    for architecture in architectures:
        for image in ctx.split_attr.images[architecture]:
            info = image[OciImageInfo]
            arguments += ["--image", info.layout.path]
            inputs.append(info.layout)
        for referrer in ctx.split_attr.referrers.get(architecture, []):
            info = referrer[OciReferrerInfo]
            arguments += ["--referrer", info.subject.path, info.artifact_type, info.file.path]
            inputs.append(info.file)
    ctx.actions.run(
        executable = ctx.executable._index,
        arguments = arguments,
        inputs = inputs,
        outputs = [layout, ctx.outputs.digest],
        mnemonic = "OciImageIndex",
        progress_message = "Composing the image index %s" % ctx.label,
    )
    return [
        DefaultInfo(files = depset([layout]), runfiles = ctx.runfiles([layout])),
        OciImageInfo(layers = [], config = None, spec = None, digest = ctx.outputs.digest, layout = layout),
    ]

oci_image_index = rule(
    implementation = _oci_image_index_impl,
    attrs = {
        "images": attr.label_list(
            mandatory = True,
            providers = [OciImageInfo],
            cfg = architectures_transition,
            doc = "Each is built once per architecture (usually one image target).",
        ),
        "referrers": attr.label_list(
            providers = [OciReferrerInfo],
            cfg = architectures_transition,
            doc = "Files about those images (spdx_sbom targets), built per architecture too, attached to theirs.",
        ),
        "architectures": attr.string_list(default = ARCHITECTURES),
        "_index": attr.label(default = "//tools/oci:index", **_TOOL),
        "_allowlist_function_transition": attr.label(default = "@bazel_tools//tools/allowlists/function_transition_allowlist"),
    },
    outputs = {"digest": "%{name}.digest"},
    doc = "An OCI image index of `images` built for each of `architectures` (rules_oci's oci_image_index, " +
          "with the platform transition built in), and `referrers` attached: the layout and `.digest`.",
)

def _oci_load_impl(ctx):
    image = ctx.attr.image[OciImageInfo]
    tarball = ctx.actions.declare_file(ctx.label.name + "/tarball.tar")
    arguments = ["--layout", image.layout.path, "--output", tarball.path]
    for tag in ctx.attr.repo_tags:
        arguments += ["--repo-tag", tag]
    ctx.actions.run(
        executable = ctx.executable._tarball,
        arguments = arguments,
        inputs = [image.layout],
        outputs = [tarball],
        mnemonic = "OciTarball",
        progress_message = "Writing the loadable archive of %s" % ctx.attr.image.label,
    )
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        script,
        "#!/bin/sh\nexec \"${LOADER:-podman}\" load --input %s \"$@\"\n" % tarball.short_path,
        is_executable = True,
    )
    return [
        DefaultInfo(executable = script, files = depset([script]), runfiles = ctx.runfiles([tarball])),
        OutputGroupInfo(tarball = depset([tarball])),
    ]

oci_load = rule(
    implementation = _oci_load_impl,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "repo_tags": attr.string_list(doc = 'Names the loaded image gets, e.g. ["online-books/shop:latest"].'),
        "_tarball": attr.label(default = "//tools/oci:tarball", **_TOOL),
    },
    executable = True,
    doc = "`bazel run :load` loads the image into podman (or `LOADER=docker`); the archive is the " +
          "`tarball` output group and in the runfiles as `<name>/tarball.tar`.",
)

def _oci_push_impl(ctx):
    layout = ctx.attr.image[OciImageInfo].layout
    script = ctx.actions.declare_file(ctx.label.name)  # runs as its label path, like a py_binary
    ctx.actions.write(
        script,
        "#!/bin/sh\nexec %s --layout %s --repository %s %s \"$@\"\n" % (
            ctx.executable._push.short_path,
            layout.short_path,
            ctx.attr.repository,
            " ".join(["--tag " + tag for tag in ctx.attr.remote_tags]),
        ),
        is_executable = True,
    )
    runfiles = ctx.runfiles([layout]).merge(ctx.attr._push[DefaultInfo].default_runfiles)
    return [DefaultInfo(executable = script, runfiles = runfiles)]

oci_push = rule(
    implementation = _oci_push_impl,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "repository": attr.string(mandatory = True, doc = "Path in the registry, e.g. online-books/order-history."),
        "remote_tags": attr.string_list(doc = "Tags pointed at the pushed digest on every push (more with --tag)."),
        "_push": attr.label(default = "//tools/oci:push", cfg = "target", executable = True),
    },
    executable = True,
    doc = "`bazel run :push -- REGISTRY [--tag T...]`: pushes the image by digest and prints REGISTRY/REPO@DIGEST.",
)

def _spdx_sbom_impl(ctx):
    image = ctx.attr.image[OciImageInfo]
    sbom = ctx.actions.declare_file(ctx.attr.image.label.name + ".spdx.json")
    arguments = [
        "--layout",
        image.layout.path,
        "--debian-lock",
        ctx.file.debian_lock.path,
        "--python-lock",
        ctx.file.python_lock.path,
        "--output",
        sbom.path,
    ]
    debs = [file for layer in image.layers for file in layer.inputs if file.extension == "deb"]  # the base layer's
    for deb in debs:
        arguments += ["--deb", deb.path]
    ctx.actions.run(
        executable = ctx.executable._sbom,
        arguments = arguments,
        inputs = [image.layout, ctx.file.debian_lock, ctx.file.python_lock] + debs,
        outputs = [sbom],
        mnemonic = "SpdxSbom",
        progress_message = "Writing the SBOM of %s" % ctx.attr.image.label,
    )
    return [
        DefaultInfo(files = depset([sbom]), runfiles = ctx.runfiles([sbom])),
        OciReferrerInfo(subject = image.layout, artifact_type = "application/spdx+json", file = sbom),
    ]

spdx_sbom = rule(
    implementation = _spdx_sbom_impl,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "debian_lock": attr.label(default = "//tools/oci:debian_packages.lock", allow_single_file = True),
        "python_lock": attr.label(default = "//:requirements_lock.txt", allow_single_file = True),
        "_sbom": attr.label(default = "//tools/oci:sbom", **_TOOL),
    },
    doc = "`<image>.spdx.json`, beside `<image>.digest`: the image's SPDX 2.3 SBOM (tools/oci/sbom.py).",
)

def _oci_reproducibility_test_impl(ctx):
    target = ctx.attr.image[0] if type(ctx.attr.image) == "list" else ctx.attr.image  # behind a transition
    image = target[OciImageInfo]
    inputs = [image.spec, image.digest]
    paths = {}
    layers = []
    for number, layer in enumerate(image.layers):
        inputs += [layer.info, layer.blob]  # the blob: to name what differs, or as built for the base's
        if number < image.base_layers:
            layers.append(None)  # the base image's: its own oci_reproducibility_test rebuilds them
        else:
            inputs += layer.inputs
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
        "image": attr.label(mandatory = True, providers = [OciImageInfo], cfg = architecture_transition),
        "architecture": attr.string(doc = "Build the image for this one (amd64, arm64); default: as asked."),
        "_rebuild": attr.label(default = "//tools/oci:rebuild", cfg = "target", executable = True),
        "_allowlist_function_transition": attr.label(default = "@bazel_tools//tools/allowlists/function_transition_allowlist"),
    },
    test = True,
    doc = "Rebuilds the image's own layers (not its base's, which the base image's own test rebuilds) and " +
          "the image from the same inputs elsewhere, and expects the same digest.",
)
