"""A small typed helper for sidecar's gRPC API: stubs generated from the
project's .proto files, channels to TCP or Unix-socket addresses, deadlines
on every call, and the retry rules of `retry.py`.

Not a framework: every example script calls the generated stubs itself and
uses these helpers only for what every caller needs the same way.
"""
from .channel import Api, Deadline, DeadlineSpent, connect, metadata
from .retry import RETRYABLE, RetryPolicy, Retrying, retry_after_ms, should_retry
from .stubs import load_stubs

__all__ = [
    "Api",
    "Deadline",
    "DeadlineSpent",
    "RETRYABLE",
    "RetryPolicy",
    "Retrying",
    "connect",
    "load_stubs",
    "metadata",
    "retry_after_ms",
    "should_retry",
]
