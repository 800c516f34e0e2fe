#!/usr/bin/env python3
"""The error-handling table, live: one call per row that the server
answers with that code, and what the retry policy does with it.

- INVALID_ARGUMENT, NOT_FOUND: not retried (the message names the field,
  the value and the limit, or the model).
- DEADLINE_EXCEEDED: not retried (the budget is spent).
- RESOURCE_EXHAUSTED from a rate limit: retried after exactly the server's
  `retry-after-ms`: `--burst` Tokenize calls back to back as `--client-id`,
  a rate-limited class (`[traffic.classes.NAME] rate = ...`; the other
  rows are sent without it).
- UNAVAILABLE: retried with exponential backoff and full jitter (shown with
  a model that does not listen: a closed port).

    .venv/bin/python examples/clients/python/errors.py --model smollm2 --client-id limited --burst 4
"""
import sys
import time

import grpc

from sidecar_client import Deadline, RetryPolicy, Retrying, connect, metadata, retry_after_ms, should_retry
from sidecar_client.cli import parser


def show(label: str, err: grpc.RpcError) -> None:
    after = retry_after_ms(err)
    extra = f" retry-after-ms={after}" if after is not None else ""
    print(f"{label}: {err.code().name} retry={'yes' if should_retry(err) else 'no'}{extra}: {err.details()}")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--burst", type=int, default=4, help="Tokenize calls sent at once to meet the rate limit")
    p.add_argument("--closed", default="127.0.0.1:1", help="an address nothing listens on (UNAVAILABLE)")
    args = p.parse_args()
    deadline = Deadline(args.deadline)
    rc = 0
    with connect(args.target) as api:
        pb = api.pb.text_pb2
        # The rows below as any caller; only the burst as the rate-limited
        # class (a 200-token Generate would cost more than its burst).
        md = lambda: metadata(token=args.token)  # noqa: E731
        limited = lambda: metadata(token=args.token, client_id=args.client_id)  # noqa: E731
        try:
            api.text.Generate(pb.GenerateRequest(model_id=args.model, prompt="Hi", max_tokens=1_000_000),
                              timeout=deadline.remaining(), metadata=md())
            rc = 1
        except grpc.RpcError as e:
            show("invalid argument", e)
        try:
            api.text.Tokenize(pb.TokenizeRequest(model_id="no-such-model", text="x"), timeout=deadline.remaining(), metadata=md())
            rc = 1
        except grpc.RpcError as e:
            show("unknown model", e)
        try:
            api.text.Generate(pb.GenerateRequest(model_id=args.model, prompt="Count to one hundred:", max_tokens=200),
                              timeout=0.05, metadata=md())
            rc = 1
        except grpc.RpcError as e:
            show("deadline", e)

        # Rate limit: the burst meets the class's limit; each refused call
        # waits what the server says and is sent again.
        waits = []

        def on_retry(a) -> None:
            waits.append(a)
            print(f"  retry {a.number} after {a.code.name}: retry-after-ms={a.retry_after_ms}, "
                  f"waiting {a.wait_s * 1000:.0f} ms")

        retrying = Retrying(RetryPolicy(attempts=8), on_retry=on_retry)
        ok = 0
        for n in range(args.burst):
            req = pb.TokenizeRequest(model_id=args.model, text=f"call {n}")
            retrying.call(lambda t: api.text.Tokenize(req, timeout=t, metadata=limited()), deadline)
            ok += 1
        honoured = [a for a in waits if a.retry_after_ms is not None and a.wait_s * 1000 >= a.retry_after_ms]
        print(f"rate limit: {ok}/{args.burst} calls succeeded, {len(waits)} retries, "
              f"{len(honoured)} after waiting the server's retry-after-ms")

    # UNAVAILABLE: nothing listens; backoff grows until the attempts run out.
    with connect(args.closed) as closed:
        backoffs = []
        retrying = Retrying(RetryPolicy(attempts=4, base_s=0.05), on_retry=lambda a: backoffs.append(a.wait_s), seed=1)
        started = time.monotonic()
        try:
            retrying.call(lambda t: closed.text.Tokenize(closed.pb.text_pb2.TokenizeRequest(model_id="m", text="x"),
                                                         timeout=min(t, 2.0)), Deadline(10))
            rc = 1
        except grpc.RpcError as e:
            print(f"unavailable: {e.code().name} after {len(backoffs) + 1} attempts, backoff "
                  f"{', '.join(f'{w * 1000:.0f}' for w in backoffs)} ms, {time.monotonic() - started:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
