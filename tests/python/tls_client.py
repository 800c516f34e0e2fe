"""Calls a sidecar over TLS with the grpcio client.

usage: tls_client.py HOST:PORT PROTO_DIR OUT_DIR CA_PEM EXPECT [CERT_PEM KEY_PEM]
Generates the Python stubs into OUT_DIR, opens a channel with
grpc.ssl_channel_credentials (root certificates CA_PEM; a client
certificate when CERT_PEM and KEY_PEM are given), and calls ListModels and
Generate on model `smollm2`.
EXPECT "ok": both succeed; prints "OK list" and "OK generate".
EXPECT "refused": the first call fails; prints "REFUSED <code> <details>".
"""
import sys

from grpc_tools import protoc


def main():
    addr, proto_dir, out_dir, ca, expect = sys.argv[1:6]
    identity = sys.argv[6:8]
    protos = [f"{proto_dir}/sidecar/v1/{name}.proto" for name in ("common", "model", "text")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    import grpc
    from sidecar.v1 import model_pb2, model_pb2_grpc, text_pb2, text_pb2_grpc

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    if identity:
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(identity[1]), certificate_chain=read(identity[0])
        )
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=read(ca))
    with grpc.secure_channel(addr, creds) as channel:
        models = model_pb2_grpc.ModelServiceStub(channel)
        try:
            reply = models.ListModels(model_pb2.ListModelsRequest(), timeout=20)
        except grpc.RpcError as e:
            if expect == "refused":
                print("REFUSED", e.code().name, e.details())
                return
            raise
        if expect == "refused":
            sys.exit(f"UNEXPECTED: ListModels succeeded: {reply}")
        ids = [m.model_id for m in reply.models]
        assert ids == ["smollm2"], ids
        print("OK list", ids)
        text = text_pb2_grpc.TextServiceStub(channel)
        request = text_pb2.GenerateRequest(
            model_id="smollm2",
            prompt="The three primary colors are",
            max_tokens=8,
            sampling=text_pb2.SamplingParams(temperature=0.0),
        )
        answer = text.Generate(request, timeout=60)
        assert answer.text.strip(), "empty completion"
        assert answer.usage.completion_tokens > 0, answer.usage
        print("OK generate", repr(answer.text), answer.usage.completion_tokens)


if __name__ == "__main__":
    main()
