"""Streams a completion and embeds texts on a running sidecar with the
grpcio client.

usage: smoke.py HOST:PORT PROTO_DIR OUT_DIR
Generates the Python stubs from the project's .proto files into OUT_DIR,
then streams from model `smollm2` and checks the text and usage counts,
embeds with model `minilm` and checks the vectors, and runs the LITE model
`face-detector` (MediaPipe's short-range face detector) once.
"""
import math
import struct
import sys

from grpc_tools import protoc


def main():
    addr, proto_dir, out_dir = sys.argv[1:4]
    protos = [f"{proto_dir}/sidecar/v1/{name}.proto" for name in ("common", "model", "text", "lite")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    import grpc
    from sidecar.v1 import lite_pb2, lite_pb2_grpc, text_pb2, text_pb2_grpc

    with grpc.insecure_channel(addr) as channel:
        stub = text_pb2_grpc.TextServiceStub(channel)
        request = text_pb2.GenerateRequest(
            model_id="smollm2",
            prompt="The three primary colors are",
            max_tokens=16,
            sampling=text_pb2.SamplingParams(temperature=0.0),
        )
        deltas, done = [], None
        for message in stub.GenerateStream(request, timeout=60):
            if message.HasField("delta"):
                assert done is None, "token after the final message"
                deltas.append(message.delta)
            else:
                done = message.done
        assert done is not None, "no final message"
        text = "".join(d.text for d in deltas) + done.text
        assert text.strip(), "empty completion"
        assert done.usage.completion_tokens == len(deltas), (done.usage, len(deltas))
        assert done.usage.prompt_tokens > 0, done.usage
        assert [d.index for d in deltas] == list(range(len(deltas)))
        print("OK generate", repr(text), done.usage.prompt_tokens, done.usage.completion_tokens)

        inputs = ["A man is eating food.", "A man is eating a piece of bread.", "", "Das Wetter ist schön."]
        reply = stub.Embed(text_pb2.EmbedRequest(model_id="minilm", inputs=inputs), timeout=60)
        assert reply.dimensions == 384, reply.dimensions
        assert len(reply.embeddings) == len(inputs)
        vectors = [list(e.values) for e in reply.embeddings]
        for v in vectors:
            assert len(v) == 384 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4
        similar = sum(a * b for a, b in zip(vectors[0], vectors[1]))
        unrelated = sum(a * b for a, b in zip(vectors[0], vectors[3]))
        assert similar > 0.5 > unrelated, (similar, unrelated)
        assert reply.embeddings[2].tokens == 2, reply.embeddings[2]
        try:
            stub.Embed(text_pb2.EmbedRequest(model_id="minilm", inputs=["word " * 300]), timeout=60)
            raise AssertionError("a too long input was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            assert "256" in e.details(), e.details()
        print(f"OK embed similar={similar:.3f} unrelated={unrelated:.3f}")

        lite = lite_pb2_grpc.LiteServiceStub(channel)
        info = lite.GetModelInfo(lite_pb2.GetModelInfoRequest(model_id="face-detector"), timeout=60)
        (inp,) = info.inputs
        assert list(inp.shape) == [1, 128, 128, 3] and inp.dtype == lite_pb2.DTYPE_FLOAT32, inp
        pixels = struct.pack(f"<{128 * 128 * 3}f", *([0.0] * (128 * 128 * 3)))
        reply = lite.Infer(
            lite_pb2.InferRequest(
                model_id="face-detector",
                inputs=[lite_pb2.Tensor(name=inp.name, dtype=inp.dtype, shape=inp.shape, data=pixels)],
                outputs=["classificators"],
            ),
            timeout=60,
        )
        (scores,) = reply.outputs
        assert list(scores.shape) == [1, 896, 1] and len(scores.data) == 896 * 4, scores.shape
        print(f"OK lite invoke_us={reply.timings.invoke_us}")


if __name__ == "__main__":
    main()
