"""Drives the sidecar's Open Inference Protocol service with the official
Triton client (tritonclient[grpc]) and prints one JSON object: what each
call returned, and for each refused call its status and message. Raw
output bytes are written to files in OUT_DIR for the Rust test to compare
with LiteService.Infer's, bit for bit.

usage: triton_client.py URL MODEL INPUT_FILE OUT_DIR
  URL         "127.0.0.1:PORT" or "unix:///path/api.sock"
  MODEL       a LITE model whose one input is FP32 [1, 128, 128, 3]
  INPUT_FILE  that input's raw little-endian bytes
"""

import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException


def refused(call):
    """Runs call, which must raise; its status and message."""
    try:
        call()
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    raise AssertionError("the call was not refused")


def main():
    url, model, input_file, out_dir = sys.argv[1:5]
    channel_args = None
    if url.startswith("unix:"):
        # grpc's C core sends the socket's path as :authority, which the
        # server's HTTP/2 library (h2) refuses as malformed
        # (hyperium/h2#487); any host name does. tritonclient's own
        # defaults are kept.
        channel_args = [
            ("grpc.default_authority", "localhost"),
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ]
    client = grpcclient.InferenceServerClient(url=url, channel_args=channel_args)
    result = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "model_ready_v1": client.is_model_ready(model, "1"),
        "model_ready_v2": client.is_model_ready(model, "2"),
        "unknown_ready": client.is_model_ready("no-such-model"),
    }
    meta = client.get_server_metadata()
    result["server"] = {
        "name": meta.name,
        "version": meta.version,
        "extensions": list(meta.extensions),
    }
    m = client.get_model_metadata(model)
    result["metadata"] = {
        "name": m.name,
        "versions": list(m.versions),
        "platform": m.platform,
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in m.inputs
        ],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in m.outputs
        ],
    }
    in_name = m.inputs[0].name
    image = np.frombuffer(open(input_file, "rb").read(), dtype="<f4").reshape(
        [1, 128, 128, 3]
    )

    # infer with numpy inputs, every output returned.
    inp = grpcclient.InferInput(in_name, list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    # no-cache: this call runs on the worker, not from the result cache.
    r = client.infer(
        model, [inp], request_id="req-1", headers={"cache-control": "no-cache"}
    )
    resp = r.get_response()
    result["infer"] = {
        "id": resp.id,
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "outputs": [],
    }
    for t in resp.outputs:
        arr = r.as_numpy(t.name)
        path = os.path.join(out_dir, "raw-" + t.name)
        with open(path, "wb") as f:
            f.write(arr.tobytes())
        result["infer"]["outputs"].append(
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "numpy_shape": list(arr.shape),
            }
        )

    # One output requested by name.
    first = m.outputs[0].name
    one = client.infer(
        model, [inp], outputs=[grpcclient.InferRequestedOutput(first)]
    )
    result["one_output"] = [t.name for t in one.get_response().outputs]

    # Typed contents (fp32_contents), built as the protocol's message and
    # sent through the client's own stub: tritonclient's InferInput only
    # sends raw_input_contents.
    req = service_pb2.ModelInferRequest(model_name=model, id="typed")
    t = req.inputs.add(name=in_name, datatype="FP32", shape=[1, 128, 128, 3])
    t.contents.fp32_contents.extend(image.reshape(-1).tolist())
    typed = client._client_stub.ModelInfer(req)
    for t, raw in zip(typed.outputs, typed.raw_output_contents):
        with open(os.path.join(out_dir, "typed-" + t.name), "wb") as f:
            f.write(raw)
    result["typed_outputs"] = [t.name for t in typed.outputs]

    # Refusals.
    def infer_with(name, shape, datatype, data, **kw):
        i = grpcclient.InferInput(name, shape, datatype)
        i.set_data_from_numpy(data)
        return lambda: client.infer(kw.pop("model", model), [i], **kw)

    errors = {}
    errors["wrong_datatype"] = refused(
        infer_with(in_name, [1, 128, 128, 3], "INT32", image.astype(np.int32))
    )
    small = np.zeros([1, 64, 64, 3], dtype=np.float32)
    errors["wrong_shape"] = refused(infer_with(in_name, [1, 64, 64, 3], "FP32", small))
    errors["unknown_input"] = refused(
        infer_with("nope", [1, 128, 128, 3], "FP32", image)
    )
    errors["unknown_model"] = refused(
        infer_with(in_name, [1, 128, 128, 3], "FP32", image, model="no-such-model")
    )
    errors["version_2"] = refused(
        infer_with(in_name, [1, 128, 128, 3], "FP32", image, model_version="2")
    )
    errors["metadata_unknown_model"] = refused(
        lambda: client.get_model_metadata("no-such-model")
    )
    errors["metadata_version_2"] = refused(
        lambda: client.get_model_metadata(model, model_version="2")
    )
    mixed = service_pb2.ModelInferRequest(model_name=model)
    t = mixed.inputs.add(name=in_name, datatype="FP32", shape=[1, 128, 128, 3])
    t.contents.fp32_contents.extend([0.0])
    mixed.raw_input_contents.append(image.tobytes())
    try:
        client._client_stub.ModelInfer(mixed)
        raise AssertionError("mixed contents were not refused")
    except Exception as e:  # grpc.RpcError
        errors["mixed_contents"] = {"status": str(e.code()), "message": e.details()}
    errors["shm_status"] = refused(
        lambda: client.get_system_shared_memory_status(region_name="no-such-region")
    )
    result["errors"] = errors
    client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
