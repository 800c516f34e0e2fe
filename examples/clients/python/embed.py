#!/usr/bin/env python3
"""Batched embeddings with a local cache and a cache-aware retry: texts are
de-duplicated, looked up in a local cache, the rest sent in batches; a
batch that fails with a retryable code is retried alone (honouring
`retry-after-ms`), and the texts already embedded are never sent again.

    .venv/bin/python examples/clients/python/embed.py --model minilm --batch 4
"""
import math
import sys
from typing import Dict, List

from sidecar_client import Deadline, Retrying, connect, metadata
from sidecar_client.cli import parser

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A man is eating food.",  # a duplicate: sent once
    "Das Wetter ist schön.",
]


class EmbeddingCache:
    """Vectors by text, kept in memory (a real client may use a file or
    Redis): what a batch brought back survives a later batch's failure."""

    def __init__(self) -> None:
        self.vectors: Dict[str, List[float]] = {}
        self.hits = 0

    def missing(self, texts: List[str]) -> List[str]:
        out, seen = [], set()
        for t in texts:
            if t in self.vectors:
                self.hits += 1
            elif t not in seen:
                seen.add(t)
                out.append(t)
        return out


def embed_all(api, cache: EmbeddingCache, texts: List[str], batch: int, deadline: Deadline, args) -> dict:
    pb = api.pb.text_pb2
    stats = {"sent": 0, "batches": 0, "retries": 0, "dimensions": 0}

    def on_retry(a) -> None:
        stats["retries"] += 1
        why = f"retry-after-ms {a.retry_after_ms}" if a.retry_after_ms is not None else "backoff"
        print(f"retry {a.number}: {a.code.name} ({why}), waiting {a.wait_s * 1000:.0f} ms: {a.details}")

    retrying = Retrying(on_retry=on_retry)
    todo = cache.missing(texts)
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        req = pb.EmbedRequest(model_id=args.model, inputs=chunk)
        md = metadata(token=args.token, client_id=args.client_id)
        r = retrying.call(lambda timeout: api.text.Embed(req, timeout=timeout, metadata=md), deadline)
        for text, e in zip(chunk, r.embeddings):
            cache.vectors[text] = list(e.values)
        stats["sent"] += len(chunk)
        stats["batches"] += 1
        stats["dimensions"] = r.dimensions
    return stats


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch", type=int, default=4, help="inputs per Embed call (at most 1024)")
    args = p.parse_args()
    if not 1 <= args.batch <= 1024:
        p.error(f"--batch {args.batch} is outside 1..1024")
    deadline = Deadline(args.deadline)
    cache = EmbeddingCache()
    with connect(args.target) as api:
        s = embed_all(api, cache, TEXTS, args.batch, deadline, args)
        unique = len(set(TEXTS))
        print(f"pass 1: {len(TEXTS)} texts ({unique} unique) sent in {s['batches']} batches, "
              f"dimension {s['dimensions']}, retries {s['retries']}")
        again = TEXTS + ["A cheetah is running behind its prey."]
        s2 = embed_all(api, cache, again, args.batch, deadline, args)
        print(f"pass 2: {len(again)} texts, {s2['sent']} sent, {cache.hits} from the local cache")
    v = cache.vectors
    norm = math.sqrt(sum(x * x for x in v[TEXTS[0]]))
    dot = lambda a, b: sum(x * y for x, y in zip(v[a], v[b]))  # noqa: E731
    print(f"cosine(eating food, eating bread) = {dot(TEXTS[0], TEXTS[1]):.3f}; "
          f"cosine(eating food, weather) = {dot(TEXTS[0], TEXTS[9]):.3f}; |v| = {norm:.4f}")
    return 0 if s["dimensions"] > 0 and s2["sent"] == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
