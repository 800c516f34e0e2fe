#!/usr/bin/env python3
"""A two-turn chat: the reply streamed, then the conversation continued
with a unary Chat call (the model's own chat template renders it).

    .venv/bin/python examples/clients/python/chat.py --model smollm2 "What is the capital of France?"
"""
import sys

from sidecar_client import Deadline, connect, metadata
from sidecar_client.cli import parser


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("question", nargs="?", default="What is the capital of France?")
    args = p.parse_args()
    deadline = Deadline(args.deadline)

    with connect(args.target) as api:
        pb = api.pb.text_pb2
        history = [
            pb.ChatMessage(role="system", content="You are a helpful assistant. Answer in one short sentence."),
            pb.ChatMessage(role="user", content=args.question),
        ]
        greedy = pb.SamplingParams(temperature=0.0)
        reply, done = [], None
        sys.stdout.write("assistant: ")
        req = pb.ChatRequest(model_id=args.model, messages=history, max_tokens=args.max_tokens, sampling=greedy)
        md = metadata(token=args.token, client_id=args.client_id)
        for msg in api.text.ChatStream(req, timeout=deadline.remaining(), metadata=md):
            if msg.HasField("delta"):
                reply.append(msg.delta.text)
                sys.stdout.write(msg.delta.text)
                sys.stdout.flush()
            else:
                done = msg.done
        if done is None:
            print("\nstream cut before its final message", file=sys.stderr)
            return 1
        reply.append(done.text)
        print(f"\nturn 1: {done.usage.completion_tokens} tokens, prompt {done.usage.prompt_tokens} tokens "
              f"(template applied), finish={pb.FinishReason.Name(done.finish_reason)}")

        history.append(pb.ChatMessage(role="assistant", content="".join(reply)))
        history.append(pb.ChatMessage(role="user", content="And of Italy?"))
        req = pb.ChatRequest(model_id=args.model, messages=history, max_tokens=args.max_tokens, sampling=greedy)
        r = api.text.Chat(req, timeout=deadline.remaining(), metadata=metadata(token=args.token, client_id=args.client_id))
        print(f"assistant: {r.text}")
        print(f"turn 2: {r.usage.completion_tokens} tokens, prompt {r.usage.prompt_tokens} tokens, "
              f"{len(history)} messages sent")
        return 0 if r.text.strip() and "".join(reply).strip() else 1


if __name__ == "__main__":
    sys.exit(main())
