"""Drives the Open Inference Protocol's system shared memory with the
official Triton client: regions made by `tritonclient.utils.shared_memory`
(POSIX shared memory), registered with `register_system_shared_memory`,
inputs and outputs placed in them with `set_shared_memory`. Prints one
JSON object: the status calls' answers and, for each refused call, its
status and message. Output bytes read back from the regions (and from an
inline answer with the input in a region) are written to OUT_DIR for the
Rust test to compare with LiteService.Infer's, bit for bit.

usage: triton_shm.py URL MODEL INPUT_FILE OUT_DIR TAG
  URL         "127.0.0.1:PORT" or "unix:///path/api.sock"
  MODEL       a LITE model whose one input is FP32 [1, 128, 128, 3]
  INPUT_FILE  that input's raw little-endian bytes
  TAG         makes this run's shared-memory keys unique
"""

import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def refused(call):
    """Runs call, which must raise; its status and message."""
    try:
        call()
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    raise AssertionError("the call was not refused")


def main():
    url, model, input_file, out_dir, tag = sys.argv[1:6]
    unix = url.startswith("unix:")
    channel_args = None
    if unix:
        # See triton_client.py: grpc's C core sends the socket's path as
        # :authority, which h2 refuses (hyperium/h2#487).
        channel_args = [
            ("grpc.default_authority", "localhost"),
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ]
    client = grpcclient.InferenceServerClient(url=url, channel_args=channel_args)
    client.unregister_system_shared_memory()

    meta = client.get_model_metadata(model)
    in_name = meta.inputs[0].name
    image = np.frombuffer(open(input_file, "rb").read(), dtype="<f4").reshape(
        [1, 128, 128, 3]
    )
    in_bytes = image.nbytes
    outs = []
    offset = 0
    for t in meta.outputs:
        dtype = np.dtype(triton_to_np_dtype(t.datatype))
        size = int(np.prod(t.shape)) * dtype.itemsize
        outs.append({"name": t.name, "dtype": dtype, "shape": list(t.shape),
                     "offset": offset, "size": size})
        offset += size
    out_total = offset

    in_key = f"/sidecar-oip-{tag}-in"
    out_key = f"/sidecar-oip-{tag}-out"
    h_in = shm.create_shared_memory_region("input_data", in_key, in_bytes)
    h_out = shm.create_shared_memory_region("output_data", out_key, out_total)
    if not unix:
        # Over TCP the caller has no uid the server could check, so a root
        # server only opens objects whose "other" bits allow it (the Unix
        # socket's peer uid owns these 0600 objects and needs nothing).
        for key in (in_key, out_key):
            os.chmod("/dev/shm" + key, 0o666)
    shm.set_shared_memory_region(h_in, [image])
    client.register_system_shared_memory("input_data", in_key, in_bytes)
    client.register_system_shared_memory("output_data", out_key, out_total)
    status = client.get_system_shared_memory_status()
    result = {
        "status": {
            name: {"key": r.key, "offset": r.offset, "byte_size": r.byte_size}
            for name, r in status.regions.items()
        }
    }

    def shm_input(region="input_data", size=in_bytes, offset=0):
        inp = grpcclient.InferInput(in_name, list(image.shape), "FP32")
        inp.set_shared_memory(region, size, offset=offset)
        return inp

    def shm_outputs(size=None):
        requested = []
        for o in outs:
            r = grpcclient.InferRequestedOutput(o["name"])
            r.set_shared_memory("output_data", size or o["size"], offset=o["offset"])
            requested.append(r)
        return requested

    def read_outputs(suffix):
        for o in outs:
            got = shm.get_contents_as_numpy(h_out, o["dtype"], o["shape"], offset=o["offset"])
            with open(os.path.join(out_dir, o["name"] + suffix), "wb") as f:
                f.write(got.tobytes())

    # Inputs and outputs in shared memory.
    res = client.infer(model, [shm_input()], outputs=shm_outputs())
    result["shm_outputs"] = [
        {"name": o.name, "datatype": o.datatype, "shape": list(o.shape),
         "params": sorted(o.parameters.keys())}
        for o in res.get_response().outputs
    ]
    result["raw_output_contents"] = [len(b) for b in res.get_response().raw_output_contents]
    read_outputs(".shm.bin")

    # Input in shared memory, outputs inline.
    res = client.infer(model, [shm_input()])
    for o in outs:
        with open(os.path.join(out_dir, o["name"] + ".mixed.bin"), "wb") as f:
            f.write(res.as_numpy(o["name"]).tobytes())

    # A new input written into the same region is what the next call reads
    # (never an answer cached from the region's old content).
    shm.set_shared_memory_region(h_in, [np.zeros_like(image)])
    res = client.infer(model, [shm_input()], outputs=shm_outputs())
    read_outputs(".zeros.bin")
    shm.set_shared_memory_region(h_in, [image])

    errors = {}
    errors["unknown_region"] = refused(
        lambda: client.infer(model, [shm_input(region="no-such-region")])
    )
    client.register_system_shared_memory("small", in_key, in_bytes - 4)
    errors["region_too_small"] = refused(
        lambda: client.infer(model, [shm_input(region="small")])
    )
    errors["offset_past_end"] = refused(
        lambda: client.infer(model, [shm_input(offset=in_bytes)])
    )
    errors["output_region_too_small"] = refused(
        lambda: client.infer(model, [shm_input()], outputs=shm_outputs(size=4))
    )
    errors["register_past_object"] = refused(
        lambda: client.register_system_shared_memory("big", in_key, in_bytes + 1)
    )
    # The object shrinks under a registered region.
    os.truncate("/dev/shm" + in_key, 1024)
    errors["object_shrank"] = refused(lambda: client.infer(model, [shm_input()]))
    os.truncate("/dev/shm" + in_key, in_bytes)
    shm.set_shared_memory_region(h_in, [image])
    res = client.infer(model, [shm_input()], outputs=shm_outputs())
    read_outputs(".after_shrink.bin")
    # Unregistered between two calls of a sequence: the next one is refused,
    # and the region registered again serves.
    client.unregister_system_shared_memory("input_data")
    errors["unregistered"] = refused(lambda: client.infer(model, [shm_input()]))
    errors["status_unregistered"] = refused(
        lambda: client.get_system_shared_memory_status("input_data")
    )
    client.register_system_shared_memory("input_data", in_key, in_bytes)
    res = client.infer(model, [shm_input()], outputs=shm_outputs())
    read_outputs(".again.bin")
    result["errors"] = errors

    client.unregister_system_shared_memory()
    result["status_after"] = len(client.get_system_shared_memory_status().regions)
    shm.destroy_shared_memory_region(h_in)
    shm.destroy_shared_memory_region(h_out)
    client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
