"""Python stubs generated from `proto/` with grpcio-tools, once per set of
.proto files (cached by their digest), never committed.

The proto folder is `$SIDECAR_PROTO`, else the repository's `proto/` found
from this file's place (examples/clients/python/sidecar_client/).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import types
from pathlib import Path

SERVICES = ("common", "model", "text", "lite", "vision", "shm")


def proto_dir() -> Path:
    env = os.environ.get("SIDECAR_PROTO")
    path = Path(env) if env else Path(__file__).resolve().parents[4] / "proto"
    if not (path / "sidecar" / "v1" / "text.proto").is_file():
        raise FileNotFoundError(f"no sidecar/v1/text.proto under {path} (set SIDECAR_PROTO to the proto folder)")
    return path


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sidecar" / "python-stubs"


def load_stubs() -> types.SimpleNamespace:
    """Generates (if not cached) and imports the `sidecar.v1` modules:
    `ns.text_pb2`, `ns.text_pb2_grpc`, ... for every service file."""
    src = proto_dir()
    files = [src / "sidecar" / "v1" / f"{name}.proto" for name in SERVICES]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    out = _cache_root() / digest.hexdigest()[:16]
    done = out / ".complete"
    if not done.is_file():
        from grpc_tools import protoc

        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        rc = protoc.main(["protoc", f"-I{src}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", *map(str, files)])
        if rc != 0:
            raise RuntimeError(f"protoc exited {rc} on {src}")
        (tmp / ".complete").write_text("ok\n")
        try:
            tmp.rename(out)
        except OSError:
            # Another process won the race: its copy is the same.
            shutil.rmtree(tmp, ignore_errors=True)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    ns = types.SimpleNamespace()
    for name in SERVICES:
        setattr(ns, f"{name}_pb2", importlib.import_module(f"sidecar.v1.{name}_pb2"))
        setattr(ns, f"{name}_pb2_grpc", importlib.import_module(f"sidecar.v1.{name}_pb2_grpc"))
    return ns
