"""Channels, the stubs bound to them, call metadata and deadlines."""
from __future__ import annotations

import time
import types
import uuid
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import grpc

from .stubs import load_stubs

# Messages up to 64 MiB both ways (a 4K RGB frame is 24 MiB); the server's
# own limit (`max_message_bytes`) still applies.
MAX_MESSAGE_BYTES = 64 << 20

Metadata = Sequence[Tuple[str, str]]


def _options(target: str) -> list:
    opts = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Keepalive: find a dead connection within ~40 s while calls run,
        # without pinging an idle one (servers may refuse frequent pings).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # Our retries are explicit (retry.py); gRPC's transparent ones stay.
        ("grpc.enable_retries", 1),
    ]
    if target.startswith("unix:"):
        # gRPC's C core would send the socket path as :authority, which the
        # server's HTTP/2 library refuses (hyperium/h2#487): name a host.
        opts.append(("grpc.default_authority", "localhost"))
    return opts


@dataclass
class Api:
    """A channel and one stub per service, plus the generated modules
    (`api.pb.text_pb2`, ...)."""

    channel: grpc.Channel
    pb: types.SimpleNamespace
    text: object = field(init=False)
    lite: object = field(init=False)
    vision: object = field(init=False)
    model: object = field(init=False)
    shm: object = field(init=False)

    def __post_init__(self) -> None:
        self.text = self.pb.text_pb2_grpc.TextServiceStub(self.channel)
        self.lite = self.pb.lite_pb2_grpc.LiteServiceStub(self.channel)
        self.vision = self.pb.vision_pb2_grpc.VisionServiceStub(self.channel)
        self.model = self.pb.model_pb2_grpc.ModelServiceStub(self.channel)
        self.shm = self.pb.shm_pb2_grpc.SharedMemoryServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Api":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(target: str, *, ca_pem: Optional[bytes] = None) -> Api:
    """`host:port` (TCP) or `unix:/path` / `unix:///path` (the API socket
    or the control socket). `ca_pem`: TLS with that CA."""
    if ca_pem is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        channel = grpc.secure_channel(target, creds, options=_options(target))
    else:
        channel = grpc.insecure_channel(target, options=_options(target))
    return Api(channel=channel, pb=load_stubs())


def metadata(
    *,
    request_id: Optional[str] = None,
    token: Optional[str] = None,
    client_id: Optional[str] = None,
    priority: Optional[str] = None,
) -> list:
    """Call metadata: `x-request-id` (always: generated when not given, so
    a failure can be matched with the server's logs), `authorization`
    (bearer token), `x-client-id` (a class name from `auth.client_ids`,
    without tokens), `x-priority`."""
    md = [("x-request-id", request_id or f"py-{uuid.uuid4().hex[:12]}")]
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if client_id:
        md.append(("x-client-id", client_id))
    if priority:
        md.append(("x-priority", priority))
    return md


class DeadlineSpent(Exception):
    """The overall budget of an operation ran out before a call could be
    made (or retried)."""


class Deadline:
    """One budget for an operation, whatever its retries: every call gets
    what is left of it as its gRPC timeout."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"deadline {seconds} s must be > 0")
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; raises DeadlineSpent when none."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineSpent(f"the {self.seconds:g} s deadline is spent")
        return left
