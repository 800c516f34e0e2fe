"""Streams a completion from a running sidecar with the grpcio client.

usage: smoke.py HOST:PORT PROTO_DIR OUT_DIR
Generates the Python stubs from the project's .proto files into OUT_DIR,
then streams from model `smollm2` and checks the text and usage counts.
"""
import sys

from grpc_tools import protoc


def main():
    addr, proto_dir, out_dir = sys.argv[1:4]
    protos = [f"{proto_dir}/sidecar/v1/{name}.proto" for name in ("common", "model", "text")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    import grpc
    from sidecar.v1 import text_pb2, text_pb2_grpc

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
        print("OK", repr(text), done.usage.prompt_tokens, done.usage.completion_tokens)


if __name__ == "__main__":
    main()
