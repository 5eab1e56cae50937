"""Protocol buffer rules for Python, run with grpcio-tools' protoc (no C++ toolchain needed).

Stand-ins with upstream's names and shapes, so that moving to rules_proto + rules_python later is a
change of `load` lines:

    proto_library(name = "x_proto", srcs = ["x.proto"], deps = [...], strip_import_prefix = "/proto")
    py_proto_library(name = "x_py_pb2", deps = [":x_proto"])        # x_pb2.py and x_pb2.pyi
    py_grpc_library(name = "x_py_pb2_grpc", srcs = [":x_proto"], deps = [":x_py_pb2"])  # x_pb2_grpc.py

Import paths are the source paths below `strip_import_prefix`, and so are the Python module paths:
`proto/books/v1/x.proto` with prefix `/proto` is imported as "books/v1/x.proto" and as
`books.v1.x_pb2`. Well-known types (`google/protobuf/*.proto`) are always importable.
"""

ProtoSourcesInfo = provider(
    doc = "The .proto files of a proto_library and of everything it imports.",
    fields = {
        "direct_sources": "list of File: this target's .proto files",
        "transitive_sources": "depset of File: these and every imported .proto file",
        "import_root": "string: directory, relative to the execution root, that import paths start from",
        "transitive_import_roots": "depset of string: import roots of this target and its deps",
    },
)

def _import_root(ctx):
    prefix = ctx.attr.strip_import_prefix
    if prefix.startswith("/"):
        relative = prefix[1:]
    elif prefix:
        relative = ctx.label.package + "/" + prefix
    else:
        relative = ctx.label.package
    for src in ctx.files.srcs:
        if not (src.short_path + "/").startswith(relative + "/") and relative:
            fail("%s is not below strip_import_prefix %s" % (src.short_path, prefix))
    workspace_root = ctx.label.workspace_root
    return "/".join([part for part in [workspace_root, relative] if part]) or "."

def _proto_library_impl(ctx):
    root = _import_root(ctx)
    return [
        DefaultInfo(files = depset(ctx.files.srcs)),
        ProtoSourcesInfo(
            direct_sources = ctx.files.srcs,
            transitive_sources = depset(ctx.files.srcs, transitive = [dep[ProtoSourcesInfo].transitive_sources for dep in ctx.attr.deps]),
            import_root = root,
            transitive_import_roots = depset([root], transitive = [dep[ProtoSourcesInfo].transitive_import_roots for dep in ctx.attr.deps]),
        ),
    ]

proto_library = rule(
    implementation = _proto_library_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".proto"], mandatory = True),
        "deps": attr.label_list(providers = [ProtoSourcesInfo]),
        "strip_import_prefix": attr.string(
            doc = "Like the native attribute: '/dir' is from the workspace root, 'dir' from this package; empty = this package.",
        ),
    },
    provides = [ProtoSourcesInfo],
    doc = "A set of .proto files and the proto_library targets they import.",
)

def _run_protoc(ctx, proto, protoc, outputs, plugin_flags):
    """Runs protoc on `proto`'s direct sources, writing below the bin dir at the same import root."""
    out_root = ctx.bin_dir.path + ("/" + proto.import_root if proto.import_root != "." else "")
    args = ctx.actions.args()
    args.add_all(proto.transitive_import_roots, format_each = "-I%s")
    args.add_all([flag + "=" + out_root for flag in plugin_flags])
    args.add_all(proto.direct_sources)
    ctx.actions.run(
        executable = protoc,
        arguments = [args],
        inputs = proto.transitive_sources,
        outputs = outputs,
        mnemonic = "ProtocPython",
        progress_message = "Generating Python code for %{label}",
    )

def _outputs(ctx, target, proto, suffixes):
    package = target.label.package
    outputs = []
    for src in proto.direct_sources:
        if src.owner.package != package or src.owner.workspace_root != target.label.workspace_root:
            fail("%s: generated code goes beside the .proto, so its sources must be in this package" % target.label)
        stem = src.basename[:-len(".proto")]
        relative_dir = src.short_path[len(package) + 1:-len(src.basename)] if package else src.short_path[:-len(src.basename)]
        outputs += [ctx.actions.declare_file(relative_dir + stem + suffix) for suffix in suffixes]
    return outputs

_PyProtoGenInfo = provider(
    doc = "Generated _pb2 modules of a proto_library and its deps (internal to these rules).",
    fields = ["transitive_sources", "transitive_imports"],
)

def _python_import(ctx, label, import_root):
    """Runfiles-relative sys.path entry for an import root (what py_library's `imports` gives)."""
    workspace = label.workspace_name or ctx.workspace_name
    relative = import_root[len(label.workspace_root) + 1:] if label.workspace_root else import_root
    return workspace if relative in ["", "."] else workspace + "/" + relative

def _py_proto_aspect_impl(target, ctx):
    proto = target[ProtoSourcesInfo]
    outputs = _outputs(ctx, target, proto, ["_pb2.py", "_pb2.pyi"])
    _run_protoc(ctx, proto, ctx.executable._protoc, outputs, ["--python_out", "--pyi_out"])
    deps = [dep[_PyProtoGenInfo] for dep in ctx.rule.attr.deps]
    return [_PyProtoGenInfo(
        transitive_sources = depset(outputs, transitive = [dep.transitive_sources for dep in deps]),
        transitive_imports = depset(
            [_python_import(ctx, target.label, proto.import_root)],
            transitive = [dep.transitive_imports for dep in deps],
        ),
    )]

_py_proto_aspect = aspect(
    implementation = _py_proto_aspect_impl,
    attr_aspects = ["deps"],
    required_providers = [ProtoSourcesInfo],
    attrs = {
        "_protoc": attr.label(default = "//tools/proto:protoc", executable = True, cfg = "exec"),
    },
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
        "deps": attr.label_list(providers = [ProtoSourcesInfo], aspects = [_py_proto_aspect], mandatory = True),
        "_protobuf": attr.label(default = "//tools/proto:protobuf_runtime", providers = [PyInfo]),
    },
    doc = "Python messages (_pb2.py with .pyi stubs) for proto_library targets and everything they import.",
)

def _py_grpc_library_impl(ctx):
    proto = ctx.attr.srcs[0][ProtoSourcesInfo]
    outputs = _outputs(ctx, ctx.attr.srcs[0], proto, ["_pb2_grpc.py"])
    _run_protoc(ctx, proto, ctx.executable._protoc, outputs, ["--grpc_python_out"])
    sources = depset(outputs)
    imports = depset([_python_import(ctx, ctx.attr.srcs[0].label, proto.import_root)])
    runtime_deps = ctx.attr.deps + [ctx.attr._grpc]
    return [
        DefaultInfo(files = sources, runfiles = _runfiles(ctx, sources, runtime_deps)),
        _py_info(sources, imports, runtime_deps),
    ]

py_grpc_library = rule(
    implementation = _py_grpc_library_impl,
    attrs = {
        "srcs": attr.label_list(providers = [ProtoSourcesInfo], mandatory = True, doc = "Exactly one proto_library."),
        "deps": attr.label_list(providers = [PyInfo], mandatory = True, doc = "The py_proto_library of the same protos."),
        "_grpc": attr.label(default = "//tools/proto:grpc_runtime", providers = [PyInfo]),
        "_protoc": attr.label(default = "//tools/proto:protoc", executable = True, cfg = "exec"),
    },
    doc = "gRPC client stubs and servicer base classes (_pb2_grpc.py) for one proto_library.",
)
