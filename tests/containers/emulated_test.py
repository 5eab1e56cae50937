"""The arm64 build of every service's image, run on this amd64 machine under emulation: Debian's
qemu-user-static runs the image's own arm64 Python (`qemu-aarch64-static -L ROOTFS`, no binfmt_misc
needed) on the image's files unpacked from its layers. In it, every first-party module of the image
imports (and with them grpc's, protobuf's and uvloop's aarch64 extension modules), and the service
starts from the image's entrypoint and environment and answers its health check on loopback.

Emulation unavailable (no qemu-aarch64-static: Debian's qemu-user-static, which ./bazelw and .ci/run
install) fails the test and says so: it is never skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from libs.processes.processes import free_ports, runfile
from libs.runtime.readiness import wait_until_serving
from services.registry import KINDS, REGISTRY, Service
from tests.containers.running import wait_for_http
from tools.certs.certs import mint_all
from tools.oci.oci import open_layer, read_layout

SERVICES = list(REGISTRY)
STARTUP_SECONDS = 180  # emulated, the interpreter is several times slower than native


@pytest.fixture(scope="module")
def qemu() -> str:
    found = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if found is None:
        pytest.fail("arm64 emulation is unavailable: qemu-aarch64-static not found (Debian: qemu-user-static)")
    return found


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    mint_all(out)
    return out


def unpack(service: Service, root: Path) -> dict:
    """The arm64 image's layers unpacked into `root`; returns its config."""
    image = read_layout(runfile(service.image))
    assert image.config["architecture"] == "arm64", f"{service.image} is {image.config['architecture']}"
    for layer in image.manifest["layers"]:
        with open_layer(image.blob(layer["digest"])) as archive:
            # Our own layers, links as the image has them: Python 3.11.4+ asks for that to be said, and
            # Debian's 3.11.2 (an ordinary user's interpreter) has no `filter` yet.
            if hasattr(tarfile, "fully_trusted_filter"):
                archive.extractall(root, filter="fully_trusted")
            else:
                archive.extractall(root)
    return image.config["config"]


def emulated(qemu: str, root: Path, config: dict, *args: str) -> list[str]:
    """The command that runs the image's Python (its entrypoint's interpreter) under qemu on `root`."""
    interpreter = config["Entrypoint"][0]
    return [qemu, "-L", str(root), str(root) + interpreter, *args]


def image_env(config: dict, extra: dict[str, str]) -> dict[str, str]:
    env = dict(line.split("=", 1) for line in config.get("Env", []))
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, **extra}


def first_party_modules(root: Path, config: dict) -> list[str]:
    """Every module of the app layer's main repository (the first PYTHONPATH entry), by dotted name."""
    workspace = root / image_env(config, {})["PYTHONPATH"].split(":")[0].lstrip("/")
    modules = []
    for path in sorted(workspace.rglob("*.py")):
        parts = path.relative_to(workspace).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


@pytest.mark.parametrize("name", SERVICES)
def test_the_arm64_image_imports_every_first_party_module_and_answers_its_health_check(
    name: str, qemu: str, certs: Path, tmp_path: Path
) -> None:
    service = REGISTRY[name]
    root = tmp_path / "rootfs"
    config = unpack(service, root)
    machine = subprocess.run(
        emulated(qemu, root, config, "-c", "import platform; print(platform.machine())"),
        capture_output=True,
        text=True,
        timeout=120,
        env=image_env(config, {}),
        check=False,
    )
    assert machine.stdout.strip() == "aarch64", machine.stderr

    modules = first_party_modules(root, config)
    assert any(module.startswith(f"services.{service.package}") for module in modules), modules
    importer = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint(len(sys.argv) - 1)"
    started = time.monotonic()
    imported = subprocess.run(
        emulated(qemu, root, config, "-c", importer, *modules),
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
        env=image_env(config, {}),
        check=False,
    )
    assert imported.returncode == 0, imported.stderr[-4000:]
    assert imported.stdout.strip() == str(len(modules))
    print(
        f"{name} (arm64, emulated): {len(modules)} first-party modules imported in {time.monotonic() - started:.1f} s"
    )

    ports = dict(zip(service.ports, free_ports(len(service.ports)), strict=True))
    called = KINDS[service.kind][0]  # its --port; the others are --<kind>-port
    prefix = service.env_prefix
    env = {f"{prefix}_PROCESSES": "1"}
    for kind, port in ports.items():
        env[f"{prefix}_PORT" if port == ports[called] else f"{prefix}_{kind.upper()}_PORT"] = str(port)
    env.update(
        {
            f"{prefix}_TLS_CERT": str(certs / f"{name}.pem"),
            f"{prefix}_TLS_KEY": str(certs / f"{name}.key"),
            f"{prefix}_TLS_CA": str(certs / "ca.pem"),
        }
    )
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        emulated(qemu, root, config, *config["Entrypoint"][1:]),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=image_env(config, env),
    )
    try:
        started = time.monotonic()
        if service.kind == "grpc":
            wait_until_serving(f"127.0.0.1:{ports['health']}", timeout=STARTUP_SECONDS)
        else:
            wait_for_http(f"http://127.0.0.1:{ports[called]}/healthz", timeout=STARTUP_SECONDS)
        print(f"{name} (arm64, emulated): answering its health check {time.monotonic() - started:.1f} s after start")
    except Exception:
        log.flush()
        raise AssertionError((tmp_path / "server.log").read_text()[-4000:]) from None
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
