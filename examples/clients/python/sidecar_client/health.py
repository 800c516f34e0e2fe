"""`grpc.health.v1` without another package: its two messages built from
a descriptor here (the protocol is frozen), and `/readyz` on the admin
port."""
from __future__ import annotations

import urllib.error
import urllib.request
from typing import Tuple

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_SERVICE = "grpc.health.v1.Health"
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _messages():
    f = descriptor_pb2.FileDescriptorProto(name="sidecar_client/health.proto", package="grpc.health.v1", syntax="proto3")
    req = f.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    resp = f.message_type.add(name="HealthCheckResponse")
    resp.field.add(name="status", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
            get(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")))


_Request, _Response = _messages()


def check(channel: grpc.Channel, service: str, timeout: float) -> str:
    """`Health/Check` for `service` ("" = the whole server,
    "sidecar.v1.TextService", or "model/<id>"): SERVING, NOT_SERVING, ...
    An unknown name is NOT_FOUND (raised as grpc.RpcError)."""
    call = channel.unary_unary(
        f"/{_SERVICE}/Check",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=_Response.FromString,
    )
    return STATUS_NAMES.get(call(_Request(service=service), timeout=timeout).status, "?")


def readyz(admin: str, timeout: float) -> Tuple[int, str]:
    """GET http://ADMIN/readyz: (200, "ready") or (503, "not ready: ...")."""
    try:
        with urllib.request.urlopen(f"http://{admin}/readyz", timeout=timeout) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()
