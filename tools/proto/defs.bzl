"""Python code for Bazel's own proto_library (ProtoInfo): rules_python's and grpc's rule names and shapes.

    load("@rules_proto//proto:defs.bzl", "proto_library")
    load("//tools/proto:defs.bzl", "py_grpc_library", "py_proto_library")

    proto_library(
        name = "x_proto",
        srcs = ["x.proto"],
        strip_import_prefix = "/proto",  # proto/books/x/v1/x.proto is imported as books/x/v1/x.proto
        deps = ["@com_google_protobuf//:timestamp_proto"],
    )
    py_proto_library(name = "x_py_pb2", deps = [":x_proto"])  # x_pb2.py + x_pb2.pyi, for x and its imports
    py_grpc_library(name = "x_py_pb2_grpc", srcs = [":x_proto"], deps = [":x_py_pb2"])  # + x_pb2_grpc.pyi

proto_library is Bazel's (ProtoInfo, descriptor sets), compiled with `--proto_compiler=//tools/proto:protoc`
(.bazelrc): grpcio-tools' protoc, the release that matches the protobuf runtime of the lock. The Python
module of a proto is its import path (`books.x.v1.x_pb2`); the files land beside the .proto in bazel-bin.
Type stubs come from mypy-protobuf's generators: `.pyi` for messages, and for gRPC typed stubs and servicers
that accept both `grpc` and `grpc.aio` channels, servers and contexts. The well-known types
(@com_google_protobuf, tools/proto/well_known_types.bzl) and the common googleapis protos
(@com_google_googleapis, tools/proto/googleapis.bzl) get no code here: the protobuf runtime and the
googleapis-common-protos package have it.

To move to upstream (rules_python's py_proto_library, grpc's py_grpc_library): change the `load` lines.
"""

load("@rules_proto//proto:defs.bzl", "ProtoInfo")

# Repositories whose Python modules come with a runtime package: protobuf's google.protobuf.*_pb2, and
# googleapis-common-protos' google.api / google.rpc / google.type ones.
_RUNTIME_PROVIDED = ["com_google_protobuf", "com_google_googleapis"]

_PyProtoGenInfo = provider(
    doc = "Generated _pb2 modules of a proto_library and its deps (internal to these rules).",
    fields = ["transitive_sources", "transitive_imports"],
)

_TOOLS = {
    "_protoc": attr.label(default = "//tools/proto:protoc", executable = True, cfg = "exec"),
    "_mypy": attr.label(default = "//tools/proto:protoc_gen_mypy", executable = True, cfg = "exec"),
    "_mypy_grpc": attr.label(default = "//tools/proto:protoc_gen_mypy_grpc", executable = True, cfg = "exec"),
}

def _import_path(proto, source):
    """The path protoc knows `source` by (its import path), from its proto_source_root."""
    root = proto.proto_source_root
    if root in ["", "."]:
        return source.short_path
    if source.path.startswith(root + "/"):
        return source.path[len(root) + 1:]
    return source.short_path

def _layout(ctx, target, suffixes):
    """Declares the generated files of `target`'s sources, beside them; returns (files, output root).

    Run in an aspect, so that the files belong to the proto_library's package.
    """
    proto = target[ProtoInfo]
    package = target.label.package
    outputs, roots = [], {}
    for original, source in zip(ctx.rule.files.srcs, proto.direct_sources):
        import_path = _import_path(proto, source)

        # The path within its repository (an external one's short_path is ../<repository>/<path>).
        path = original.short_path.split("/", 2)[2] if original.short_path.startswith("../") else original.short_path
        if not path.endswith(import_path):
            fail("%s: %s is imported as %s; import_prefix is not supported by these rules" % (target.label, path, import_path))
        root = path[:-len(import_path)].rstrip("/")
        roots[root] = True
        in_package = path[len(package) + 1:] if package else path
        outputs += [ctx.actions.declare_file(in_package[:-len(".proto")] + suffix) for suffix in suffixes]
    if len(roots) > 1:
        fail("%s: all sources of a proto_library must share one import root, got %s" % (target.label, roots.keys()))
    root = roots.keys()[0] if roots else package
    return outputs, root

def _generate(ctx, proto, root, outputs, plugins, mnemonic):
    """protoc over `proto`'s direct sources; `plugins` are (flag, executable or None) pairs."""
    out_dir = "/".join([part for part in [ctx.bin_dir.path, ctx.label.workspace_root, root] if part])
    args = ctx.actions.args()
    args.add_all(proto.transitive_proto_path, format_each = "-I%s")
    args.add("-I.")
    tools = []
    for name, executable in plugins:
        if executable != None:
            args.add("--plugin=protoc-gen-%s=%s" % (name, executable.executable.path))
            tools.append(executable)
        args.add("--%s_out=%s" % (name, out_dir))
    args.add_all(proto.direct_sources)
    ctx.actions.run(
        executable = ctx.executable._protoc,
        arguments = [args],
        inputs = proto.transitive_sources,
        tools = tools,
        outputs = outputs,
        mnemonic = mnemonic,
        progress_message = "Generating Python code for %{label}",
    )

def _python_import(ctx, label, root):
    """Runfiles-relative sys.path entry for an output root (what py_library's `imports` gives)."""
    workspace = label.workspace_name or ctx.workspace_name
    return workspace if not root else workspace + "/" + root

def _py_proto_aspect_impl(target, ctx):
    deps = [dep[_PyProtoGenInfo] for dep in ctx.rule.attr.deps if _PyProtoGenInfo in dep]
    sources, imports = [], []
    if target.label.workspace_name not in _RUNTIME_PROVIDED:
        outputs, root = _layout(ctx, target, ["_pb2.py", "_pb2.pyi"])
        plugins = [("python", None), ("mypy", ctx.attr._mypy[DefaultInfo].files_to_run)]
        _generate(ctx, target[ProtoInfo], root, outputs, plugins, "ProtocPython")
        sources, imports = outputs, [_python_import(ctx, target.label, root)]
    return [_PyProtoGenInfo(
        transitive_sources = depset(sources, transitive = [dep.transitive_sources for dep in deps]),
        transitive_imports = depset(imports, transitive = [dep.transitive_imports for dep in deps]),
    )]

_py_proto_aspect = aspect(
    implementation = _py_proto_aspect_impl,
    attr_aspects = ["deps"],
    required_providers = [ProtoInfo],
    attrs = _TOOLS,
)

def _py_info(sources, imports, runtime_deps):
    return PyInfo(
        transitive_sources = depset(transitive = [sources] + [dep[PyInfo].transitive_sources for dep in runtime_deps]),
        imports = depset(transitive = [imports] + [dep[PyInfo].imports for dep in runtime_deps]),
        has_py3_only_sources = True,
    )

def _runfiles(ctx, files, runtime_deps):
    runfiles = ctx.runfiles(transitive_files = files)
    for dep in runtime_deps:
        runfiles = runfiles.merge(dep[DefaultInfo].default_runfiles)
    return runfiles

def _py_proto_library_impl(ctx):
    gen = [dep[_PyProtoGenInfo] for dep in ctx.attr.deps]
    sources = depset(transitive = [info.transitive_sources for info in gen])
    imports = depset(transitive = [info.transitive_imports for info in gen])
    return [
        DefaultInfo(files = sources, runfiles = _runfiles(ctx, sources, [ctx.attr._protobuf])),
        _py_info(sources, imports, [ctx.attr._protobuf]),
    ]

py_proto_library = rule(
    implementation = _py_proto_library_impl,
    attrs = {
        "deps": attr.label_list(providers = [ProtoInfo], aspects = [_py_proto_aspect], mandatory = True),
        "_protobuf": attr.label(default = "//tools/proto:protobuf_runtime", providers = [PyInfo]),
    },
    doc = "Python messages (_pb2.py with mypy-protobuf .pyi) for proto_library targets and everything they import.",
)

_PyGrpcGenInfo = provider(
    doc = "Generated _pb2_grpc modules of one proto_library (internal to these rules).",
    fields = ["sources", "imports"],
)

def _py_grpc_aspect_impl(target, ctx):
    outputs, root = _layout(ctx, target, ["_pb2_grpc.py", "_pb2_grpc.pyi"])
    plugins = [("grpc_python", None), ("mypy_grpc", ctx.attr._mypy_grpc[DefaultInfo].files_to_run)]
    _generate(ctx, target[ProtoInfo], root, outputs, plugins, "ProtocGrpcPython")
    return [_PyGrpcGenInfo(sources = depset(outputs), imports = depset([_python_import(ctx, target.label, root)]))]

_py_grpc_aspect = aspect(
    implementation = _py_grpc_aspect_impl,
    required_providers = [ProtoInfo],
    attrs = _TOOLS,
)

def _py_grpc_library_impl(ctx):
    if len(ctx.attr.srcs) != 1:
        fail("%s: srcs takes exactly one proto_library" % ctx.label)
    gen = ctx.attr.srcs[0][_PyGrpcGenInfo]
    runtime_deps = ctx.attr.deps + [ctx.attr._grpc]
    return [
        DefaultInfo(files = gen.sources, runfiles = _runfiles(ctx, gen.sources, runtime_deps)),
        _py_info(gen.sources, gen.imports, runtime_deps),
    ]

py_grpc_library = rule(
    implementation = _py_grpc_library_impl,
    attrs = {
        "srcs": attr.label_list(
            providers = [ProtoInfo],
            aspects = [_py_grpc_aspect],
            mandatory = True,
            doc = "Exactly one proto_library.",
        ),
        "deps": attr.label_list(providers = [PyInfo], mandatory = True, doc = "The py_proto_library of the same protos."),
        "_grpc": attr.label(default = "//tools/proto:grpc_runtime", providers = [PyInfo]),
    },
    doc = "gRPC stubs and servicer base classes (_pb2_grpc.py with typed .pyi, sync and aio) for one proto_library.",
)
