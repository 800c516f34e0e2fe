"""Asks a sidecar listener what it serves through gRPC server reflection,
with Python's `grpc_reflection` package, and prints one JSON object.

Usage: reflection_client.py TARGET SERVICE PRESENT_SYMBOL ABSENT_SYMBOL...

TARGET is `HOST:PORT` or `unix:///path`. For each of `v1alpha` and `v1`:
the services listed, the file that defines SERVICE (found by symbol) with
its services and methods, the file `sidecar/v1/model.proto` by name, and
for each ABSENT_SYMBOL the error the server answers (code and message). `grpc_reflection`
ships the v1alpha stub only; the v1 messages are the same on the wire
(same fields, same numbers), so v1 is asked with the same message classes
on the v1 method path. Then the package's own client (a descriptor pool
over `ProtoReflectionDescriptorDatabase`, v1alpha) resolves SERVICE with
every file it imports, as grpcurl and evans do.
"""

import json
import os
import sys
import traceback

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

DEADLINE_S = 10


def channel(target):
    options = []
    if target.startswith("unix:"):
        # The socket's path is no valid :authority for the server's HTTP/2
        # library (docs/kubernetes.md).
        options.append(("grpc.default_authority", "localhost"))
    return grpc.insecure_channel(target, options=options)


def ask(ch, version, requests):
    call = ch.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=DEADLINE_S))


def described(raw_files, service=None):
    out = []
    for raw in raw_files:
        f = descriptor_pb2.FileDescriptorProto.FromString(raw)
        entry = {"name": f.name, "services": [s.name for s in f.service]}
        for s in f.service:
            if service and f"{f.package}.{s.name}" == service:
                entry["methods"] = [m.name for m in s.method]
        out.append(entry)
    return out


def missing(ch, version, symbol):
    """What the server answers for a symbol it does not hold. tonic's
    reflection ends the stream with the status (grpc-go and grpc-java answer
    an ErrorResponse message and go on), so each is asked on a stream of its
    own and either form is reported alike."""
    try:
        a = ask(ch, version, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)])
    except grpc.RpcError as e:
        return {"symbol": symbol, "code": e.code().value[0], "message": e.details(), "files": 0}
    return {
        "symbol": symbol,
        "code": a[0].error_response.error_code,
        "message": a[0].error_response.error_message,
        "files": len(a[0].file_descriptor_response.file_descriptor_proto),
    }


def one_version(ch, version, service, absent):
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services="*"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=service),
        reflection_pb2.ServerReflectionRequest(file_by_filename="sidecar/v1/model.proto"),
    ]
    answers = ask(ch, version, requests)
    if len(answers) != len(requests):
        raise SystemExit(f"{version}: {len(answers)} answers to {len(requests)} requests")
    listed, by_symbol, by_name = answers[:3]
    for what, a in [("by symbol", by_symbol), ("by name", by_name)]:
        if a.HasField("error_response"):
            e = a.error_response
            raise SystemExit(f"{version} {what}: {e.error_code} {e.error_message}")
    return {
        "services": sorted(s.name for s in listed.list_services_response.service),
        "symbol": described(by_symbol.file_descriptor_response.file_descriptor_proto, service),
        "file": described(by_name.file_descriptor_response.file_descriptor_proto),
        "absent": [missing(ch, version, s) for s in absent],
    }


def main():
    target, service, *absent = sys.argv[1:]
    ch = channel(target)
    grpc.channel_ready_future(ch).result(timeout=DEADLINE_S)
    out = {v: one_version(ch, v, service, absent) for v in ["v1alpha", "v1"]}
    db = ProtoReflectionDescriptorDatabase(ch)
    pool = descriptor_pool.DescriptorPool(db)
    found = pool.FindServiceByName(service)
    out["client"] = {
        "services": sorted(db.get_services()),
        "methods": [
            [m.name, m.input_type.full_name, m.output_type.full_name] for m in found.methods
        ],
        "file": found.file.name,
        "imports": sorted(d.name for d in found.file.dependencies),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # noqa: BLE001 - reported, then a hard exit
        # A failed call can leave grpc's threads holding the interpreter
        # open at exit: the test would wait for ever instead of failing.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
