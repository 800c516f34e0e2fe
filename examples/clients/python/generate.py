#!/usr/bin/env python3
"""Unary and streaming generation, and cancelling a stream.

    .venv/bin/python examples/clients/python/generate.py --model smollm2 --prompt "The capital of France is"
"""
import sys
import time

import grpc

from sidecar_client import Deadline, connect, metadata
from sidecar_client.cli import parser


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompt", default="The three primary colors are")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--cancel-after", type=int, default=4, help="tokens after which the third call is cancelled")
    args = p.parse_args()
    deadline = Deadline(args.deadline)
    md = lambda: metadata(token=args.token, client_id=args.client_id)  # noqa: E731

    with connect(args.target) as api:
        pb = api.pb.text_pb2
        greedy = pb.SamplingParams(temperature=0.0)
        req = pb.GenerateRequest(model_id=args.model, prompt=args.prompt, max_tokens=args.max_tokens, sampling=greedy)

        # 1. Unary: the whole completion in one answer.
        r = api.text.Generate(req, timeout=deadline.remaining(), metadata=md())
        print(f"unary: {r.text!r} finish={pb.FinishReason.Name(r.finish_reason)} "
              f"prompt_tokens={r.usage.prompt_tokens} completion_tokens={r.usage.completion_tokens}")

        # 2. Streaming: one message per token, then a final one.
        started = time.monotonic()
        first, tokens, done, text = None, 0, None, []
        sys.stdout.write("stream: ")
        for msg in api.text.GenerateStream(req, timeout=deadline.remaining(), metadata=md()):
            if msg.HasField("delta"):
                first = first if first is not None else time.monotonic() - started
                tokens += 1
                text.append(msg.delta.text)
                sys.stdout.write(msg.delta.text)
                sys.stdout.flush()
            else:
                done = msg.done
        if done is None:
            # A stream that ends without its final message was cut.
            print("\nstream cut before its final message", file=sys.stderr)
            return 1
        text.append(done.text)
        print(f"\nstream: {tokens} tokens, finish={pb.FinishReason.Name(done.finish_reason)}, "
              f"first token after {first * 1000:.0f} ms, same as unary: {''.join(text) == r.text}")

        # 3. Cancellation: stop a long stream after a few tokens; the server
        # stops generating within one token.
        long = pb.GenerateRequest(model_id=args.model, prompt=args.prompt, max_tokens=256, sampling=greedy)
        call = api.text.GenerateStream(long, timeout=deadline.remaining(), metadata=md())
        got = 0
        try:
            for msg in call:
                if msg.HasField("delta"):
                    got += 1
                    if got == args.cancel_after:
                        call.cancel()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise
            print(f"cancelled: after {got} tokens, status {e.code().name}")
            return 0
        print(f"the stream ended before it could be cancelled ({got} tokens)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
