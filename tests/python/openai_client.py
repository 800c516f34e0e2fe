"""The official `openai` Python client against the sidecar's OpenAI API.

Usage:
  openai_client.py basic BASE_URL EXPECTED_EMBEDDINGS_JSON
  openai_client.py auth BASE_URL GOOD_KEY READ_ONLY_KEY

Prints one "OK ..." line per check; any failed check raises (exit 1).
"""

import base64
import json
import sys

import numpy as np
import openai
from openai import OpenAI


def expect(exc_type, status, fn, *contains):
    try:
        fn()
    except exc_type as e:
        assert e.status_code == status, (e.status_code, e)
        body = e.body if isinstance(e.body, dict) else {}
        message = body.get("message", str(e))
        for part in contains:
            assert part in message, (part, message)
        assert e.response.headers.get("x-request-id"), e.response.headers
        return e
    raise AssertionError(f"no {exc_type.__name__} ({status})")


def chat(client, **kw):
    args = dict(
        model="smollm2",
        messages=[
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Name three colors."}]},
        ],
        temperature=0,
        max_tokens=24,
    )
    args.update(kw)
    return client.chat.completions.create(**args)


def basic(base, expected_path):
    client = OpenAI(base_url=base, api_key="unused", max_retries=0)

    models = client.models.list()
    ids = sorted(m.id for m in models.data)
    assert ids == ["minilm", "smollm2"], ids
    for m in models.data:
        assert m.object == "model" and m.owned_by == "sidecar" and m.created > 1_600_000_000, m
    assert client.models.retrieve("smollm2").id == "smollm2"
    print("OK models", ids)

    raw = client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Name three colors."}]},
        ],
        temperature=0,
        max_tokens=24,
        extra_headers={"x-request-id": "py-chat-1"},
    )
    assert raw.headers["x-request-id"] == "py-chat-1", raw.headers
    unary = raw.parse()
    text = unary.choices[0].message.content
    assert unary.object == "chat.completion", unary
    assert unary.id == "chatcmpl-py-chat-1", unary.id
    assert unary.model == "smollm2" and unary.system_fingerprint.startswith("sidecar-"), unary
    assert unary.choices[0].message.role == "assistant"
    assert unary.choices[0].finish_reason in ("stop", "length"), unary
    u = unary.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    assert text.strip(), unary
    print("OK chat unary", repr(text), u.completion_tokens)

    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-"), chunks
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.created for c in chunks}) == 1
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == "", chunks[0]
    *choice_chunks, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage is not None, usage_chunk
    assert usage_chunk.usage.completion_tokens == u.completion_tokens, (usage_chunk, u)
    assert usage_chunk.usage.prompt_tokens == u.prompt_tokens, (usage_chunk, u)
    last = choice_chunks[-1].choices[0]
    assert last.finish_reason == unary.choices[0].finish_reason, last
    assert not last.delta.content, last
    assert all(c.choices[0].finish_reason is None for c in choice_chunks[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in choice_chunks)
    assert streamed == text, (streamed, text)
    print("OK chat stream", len(choice_chunks), "chunks")

    plain = list(chat(client, stream=True))
    assert all(c.choices for c in plain), "no usage chunk unless asked"
    assert "".join(c.choices[0].delta.content or "" for c in plain) == text
    print("OK chat stream without usage")

    # The next turn shares the first turn's prompt: the slot's kept KV
    # cache serves it, reported as OpenAI does.
    turn2 = chat(
        client,
        messages=[
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name three colors."},
            {"role": "assistant", "content": text},
            {"role": "user", "content": "And three animals?"},
        ],
        extra_headers={"cache-control": "no-cache"},
    )
    cached = turn2.usage.prompt_tokens_details.cached_tokens
    assert u.prompt_tokens <= cached < turn2.usage.prompt_tokens, (cached, u, turn2.usage)
    print("OK next turn reuses", cached, "of", turn2.usage.prompt_tokens, "prompt tokens")

    comp = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=12, temperature=0
    )
    assert comp.object == "text_completion" and comp.id.startswith("cmpl-"), comp
    ctext = comp.choices[0].text
    assert ctext.strip() and comp.usage.completion_tokens <= 12, comp
    cstream = list(
        client.completions.create(
            model="smollm2",
            prompt="The capital of France is",
            max_tokens=12,
            temperature=0,
            stream=True,
        )
    )
    assert all(c.object == "text_completion" for c in cstream)
    assert "".join(c.choices[0].text for c in cstream) == ctext
    assert cstream[-1].choices[0].finish_reason == comp.choices[0].finish_reason
    print("OK completions", repr(ctext))

    expected = json.load(open(expected_path))
    inputs = expected["inputs"]
    want = np.array(expected["vectors"], dtype=np.float32)
    floats = client.embeddings.create(model="minilm", input=inputs, encoding_format="float")
    got = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert [d.index for d in floats.data] == list(range(len(inputs)))
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.max(np.abs(got - want)) <= 1e-6, np.max(np.abs(got - want))
    assert floats.usage.prompt_tokens > 0 and floats.usage.total_tokens == floats.usage.prompt_tokens
    b64 = client.embeddings.create(model="minilm", input=inputs, encoding_format="base64")
    raw64 = [d.embedding for d in b64.data]
    assert all(isinstance(r, str) for r in raw64), type(raw64[0])
    dec = np.array(
        [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in raw64], dtype=np.float32
    )
    assert np.array_equal(dec, got), "base64 holds the same little-endian f32 values"
    default = client.embeddings.create(model="minilm", input=inputs[0])
    assert np.max(np.abs(np.array(default.data[0].embedding, dtype=np.float32) - want[0])) <= 1e-6
    print("OK embeddings", want.shape)
    expect(
        openai.BadRequestError,
        400,
        lambda: client.embeddings.create(model="minilm", input=inputs, dimensions=7),
        "dimensions = 7",
        str(want.shape[1]),
    )

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "country": {"type": "string", "maxLength": 12},
        },
        "required": ["city", "country"],
    }
    structured = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Give a city and its country as JSON."}],
        temperature=0,
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    obj = json.loads(structured.choices[0].message.content)
    assert set(obj) >= {"city", "country"}, obj
    print("OK json_schema", obj)

    expect(openai.BadRequestError, 400, lambda: chat(client, n=2), "n = 2")
    expect(openai.BadRequestError, 400, lambda: chat(client, logprobs=True), "logprobs")
    # A model that cannot serve the route is the caller's mistake (400,
    # not retried), not an unavailable model (503).
    expect(
        openai.BadRequestError, 400, lambda: chat(client, model="minilm"), "embedding model"
    )
    expect(
        openai.BadRequestError,
        400,
        lambda: client.embeddings.create(model="smollm2", input=["x"]),
        "cannot embed",
    )
    e = expect(openai.NotFoundError, 404, lambda: chat(client, model="nope"), "nope")
    assert e.body.get("code") == "model_not_found", e.body
    e = expect(
        openai.InternalServerError,
        504,
        lambda: chat(client, max_tokens=200, extra_headers={"x-request-timeout": "0.001"}),
    )
    assert e.body.get("type") == "timeout_error", e.body
    e = expect(openai.InternalServerError, 503, lambda: chat(client, model="broken"), "FAILED")
    print("OK errors 400 404 503 504")


def auth(base, good, read_only):
    bad = OpenAI(base_url=base, api_key="not-a-token", max_retries=0)
    expect(openai.AuthenticationError, 401, lambda: bad.models.list(), "bearer token")
    reader = OpenAI(base_url=base, api_key=read_only, max_retries=0)
    expect(openai.PermissionDeniedError, 403, lambda: reader.models.list(), "infer")
    client = OpenAI(base_url=base, api_key=good, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    print("OK auth 401 403")
    # The token's class may spend 30 units at once: each call costs 11
    # (10 tokens + 1 for the prompt), so the third is over the limit.
    passed = 0
    for i in range(6):
        try:
            chat(client, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=10)
            passed += 1
        except openai.RateLimitError as e:
            assert e.status_code == 429, e
            assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
            assert int(e.response.headers["retry-after-ms"]) >= 1, e.response.headers
            assert "rate limit" in e.body.get("message", ""), e.body
            assert e.body.get("type") == "rate_limit_error", e.body
            print("OK rate limit 429 after", passed, "calls")
            return
    raise AssertionError(f"no 429 after {passed} calls")


if __name__ == "__main__":
    {"basic": basic, "auth": auth}[sys.argv[1]](*sys.argv[2:])
