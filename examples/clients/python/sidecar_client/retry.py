"""Which status codes to retry, how long to wait, and a loop that does it
within one deadline.

What the sidecar's codes mean (`supervisor/src/error.rs`, the one mapping):

| code                | when                                                      | retry? |
| ------------------- | --------------------------------------------------------- | ------ |
| UNAVAILABLE         | model LOADING/RESTARTING/DRAINING/UNLOADING, worker died   | yes: exponential backoff, full jitter |
|                     | mid-call, server shutting down, connection refused/reset   |        |
| RESOURCE_EXHAUSTED  | over a client class's rate limit: `retry-after-ms` trailer | yes: wait `retry-after-ms` exactly |
|                     | (+ google.rpc.RetryInfo); queue full; memory budget        | yes: backoff (no trailer) |
| DEADLINE_EXCEEDED   | the call's deadline passed                                 | no: the budget is spent |
| CANCELLED           | the client cancelled                                       | no |
| INVALID_ARGUMENT    | bad field (the message names field, value, limit)          | no: fix the request |
| NOT_FOUND           | unknown model / file / region                              | no |
| ALREADY_EXISTS      | id or file taken                                           | no |
| FAILED_PRECONDITION | model FAILED, or cannot serve this call                    | no: an operator reloads it |
| PERMISSION_DENIED   | the token lacks the method's scope                         | no |
| UNAUTHENTICATED     | no or unknown token                                        | no |
| UNIMPLEMENTED       | method not served on this port                             | no |
| INTERNAL            | a bug in sidecar (report it with the `[request …]` id)     | no |

A stream that already delivered results is not retried blindly: the
caller resumes (e.g. re-sends only the frames without results).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import grpc

from .channel import Deadline, DeadlineSpent

T = TypeVar("T")

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE: "backoff",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "retry-after-ms, or backoff when the queue is full; else never",
}

RETRY_AFTER_MS = "retry-after-ms"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS's "full jitter"): attempt n
    waits uniform(0, min(cap, base * 2**n)); a `retry-after-ms` from the
    server is waited exactly instead (never less)."""

    attempts: int = 5
    base_s: float = 0.1
    cap_s: float = 5.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap_s, self.base_s * (2**attempt)))


def retry_after_ms(err: grpc.RpcError) -> Optional[int]:
    """The server's `retry-after-ms` (a rate-limited call), or None."""
    for md in (err.trailing_metadata() or (), err.initial_metadata() or ()):
        for key, value in md:
            if key == RETRY_AFTER_MS:
                try:
                    ms = int(value)
                except ValueError:
                    return None
                return ms if ms > 0 else None
    return None


# RESOURCE_EXHAUSTED that waiting cures: the model's queue is full (the
# supervisor's message says so). The others (a memory budget, an answer
# too large, a store quota) fail the same way every time.
QUEUE_FULL = ("queue full", "calls waiting")


def should_retry(err: grpc.RpcError) -> bool:
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        details = err.details() or ""
        return retry_after_ms(err) is not None or any(q in details for q in QUEUE_FULL)
    return False


@dataclass
class Attempt:
    """What `Retrying.call` reports before each wait."""

    number: int
    code: grpc.StatusCode
    details: str
    wait_s: float
    retry_after_ms: Optional[int]


class Retrying:
    """Calls `fn(timeout)` until it succeeds, fails with a code not worth
    retrying, runs out of attempts, or the deadline would pass during the
    wait. `fn` gets the deadline's remaining seconds as its timeout."""

    def __init__(
        self,
        policy: RetryPolicy = RetryPolicy(),
        on_retry: Optional[Callable[[Attempt], None]] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.policy = policy
        self.on_retry = on_retry
        self._rng = random.Random(seed)

    def call(self, fn: Callable[[float], T], deadline: Deadline) -> T:
        attempt = 0
        while True:
            try:
                return fn(deadline.remaining())
            except grpc.RpcError as err:
                attempt += 1
                if not should_retry(err) or attempt >= self.policy.attempts:
                    raise
                after = retry_after_ms(err)
                wait = after / 1000.0 if after is not None else self.policy.backoff(attempt - 1, self._rng)
                try:
                    left = deadline.remaining()
                except DeadlineSpent:
                    raise err from None
                if wait >= left:
                    raise  # waiting would outlive the deadline: fail now
                if self.on_retry:
                    self.on_retry(Attempt(attempt, err.code(), err.details() or "", wait, after))
                time.sleep(wait)
