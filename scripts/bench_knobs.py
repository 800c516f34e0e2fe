"""The measured effect of the sidecar's tuning knobs (docs/performance.md).

usage: .venv/bin/python scripts/bench_knobs.py SIDECAR_BINARY [REPS] [KNOB,...]

For each knob, two configs (A: one value, B: the other) run interleaved,
A B A B ..., REPS times each (default 3): each run starts a fresh sidecar
(the given binary, its workers beside it) on a temporary store with the
models hard-linked from models/, waits for /readyz, measures, stops it.
Prints one Markdown table per knob with the median of the runs. The
client is Python grpcio in this process: its own overhead is in every
figure, alike for A and B; read the A/B ratio, not the absolute figures.

Knobs: threads, parallel, context, batch, queue, overflow, cache, window
(default all). Needs the venv of scripts/setup.sh (grpcio, grpcio-tools).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SMOLLM2 = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "minilm/all-MiniLM-L6-v2.f16.gguf"
FACE = "mediapipe/face_detection_short_range.tflite"
POSE = "mediapipe/pose_landmark_full.tflite"
PROMPT_130 = " ".join(
    ["The history of the city begins with a small fishing village on the river."] * 9
)
STORY = "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper who"


def stubs(out):
    from grpc_tools import protoc

    protos = [f"{ROOT}/proto/sidecar/v1/{n}.proto" for n in ("common", "model", "text", "vision", "lite")]
    if protoc.main(["protoc", f"-I{ROOT}/proto", f"--python_out={out}", f"--grpc_python_out={out}", *protos]):
        sys.exit("protoc failed")
    sys.path.insert(0, out)


class Sidecar:
    """A sidecar started with `models` (TOML) and `extra` (TOML before
    them) on a store holding `files`."""

    def __init__(self, binary, files, extra, models):
        self.dir = tempfile.mkdtemp(prefix="bench-knobs-")
        os.chmod(self.dir, 0o700)
        for rel in files:
            dest = os.path.join(self.dir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                os.link(os.path.join(ROOT, "models", rel), dest)
            except OSError:
                shutil.copy(os.path.join(ROOT, "models", rel), dest)
        config = os.path.join(self.dir, "sidecar.toml")
        with open(config, "w") as f:
            f.write(
                f'listen = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
                f'model_store = "{self.dir}"\ncontrol_socket = "{self.dir}/control.sock"\n'
                f'lite_runtime = "{ROOT}/runtime/litert/libLiteRt.so"\n'
                f"{extra}\n[openai]\nenabled = false\n{models}\n"
            )
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "--config", config],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "SIDECAR_LOG": "warn"},
            text=True,
        )
        line = self.proc.stdout.readline()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        self.api, self.admin = fields["api"], fields["admin"]
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                sys.exit("sidecar not ready within 60 s")
            time.sleep(0.02)
        self.ready_s = time.monotonic() - self.started

    def worker_rss_mib(self, model):
        import grpc
        from sidecar.v1 import model_pb2, model_pb2_grpc

        with grpc.insecure_channel(self.api) as ch:
            info = model_pb2_grpc.ModelServiceStub(ch).GetModel(
                model_pb2.GetModelRequest(model_id=model), timeout=10
            )
        with open(f"/proc/{info.worker_pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def text_model(spec, model="smollm2", path=SMOLLM2, extra=""):
    return f'[[models]]\nid = "{model}"\nfamily = "text"\npath = "{path}"\nrequired = true\n{extra}text = {{ {spec} }}\n'


def generate(stub, text_pb2, prompt, max_tokens):
    """(time to first token s, tokens after the first per second, prompt
    tokens, completion tokens, wall s) of one greedy stream."""
    req = text_pb2.GenerateRequest(
        model_id="smollm2",
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=text_pb2.SamplingParams(temperature=0.0),
    )
    t0 = time.monotonic()
    stamps, done = [], None
    for m in stub.GenerateStream(req, timeout=120):
        if m.HasField("delta"):
            stamps.append(time.monotonic())
        else:
            done = m.done
    end = time.monotonic()
    first = stamps[0] if stamps else end
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else float("nan")
    return first - t0, rate, done.usage.prompt_tokens, done.usage.completion_tokens, end - t0


def k_threads(binary, value):
    import grpc
    from sidecar.v1 import text_pb2, text_pb2_grpc

    sc = Sidecar(binary, [SMOLLM2], "", text_model(f"threads = {value}, parallel = 1"))
    try:
        with grpc.insecure_channel(sc.api) as ch:
            stub = text_pb2_grpc.TextServiceStub(ch)
            generate(stub, text_pb2, "Hello", 4)  # warm
            pp = []
            tg = []
            for i in range(3):
                _, _, ptoks, _, wall = generate(stub, text_pb2, f"{i} {PROMPT_130}", 1)
                pp.append(ptoks / wall)
                tg.append(generate(stub, text_pb2, STORY, 64)[1])
        return {"prompt tokens/s (130 tokens)": statistics.median(pp), "generation tokens/s (64 tokens)": statistics.median(tg)}
    finally:
        sc.stop()


def k_parallel(binary, value):
    import grpc
    from sidecar.v1 import text_pb2, text_pb2_grpc

    sc = Sidecar(binary, [SMOLLM2], "", text_model(f"threads = 1, parallel = {value}"))
    try:
        with grpc.insecure_channel(sc.api) as ch:
            stub = text_pb2_grpc.TextServiceStub(ch)
            generate(stub, text_pb2, "Hello", 4)
            results = [None] * 4

            def one(i):
                results[i] = generate(stub, text_pb2, f"Story {i}: {STORY}", 32)

            t0 = time.monotonic()
            ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.monotonic() - t0
        tokens = sum(r[2] + r[3] for r in results)
        return {
            "aggregate tokens/s (4 streams, prompt + 32)": tokens / wall,
            "time to first token p50, ms": statistics.median(r[0] for r in results) * 1000,
            "slowest stream, s": max(r[4] for r in results),
        }
    finally:
        sc.stop()


def k_context(binary, value):
    import grpc
    from sidecar.v1 import text_pb2, text_pb2_grpc

    sc = Sidecar(binary, [SMOLLM2], "", text_model(f"threads = 1, parallel = 4, context_size = {value}"))
    try:
        with grpc.insecure_channel(sc.api) as ch:
            stub = text_pb2_grpc.TextServiceStub(ch)
            generate(stub, text_pb2, "Hello", 4)
            rate = generate(stub, text_pb2, STORY, 64)[1]
        return {
            "start to ready, s": sc.ready_s,
            "worker resident memory, MiB": sc.worker_rss_mib("smollm2"),
            "generation tokens/s": rate,
        }
    finally:
        sc.stop()


def k_batch(binary, value):
    import grpc
    from sidecar.v1 import text_pb2, text_pb2_grpc

    sc = Sidecar(binary, [SMOLLM2], "", text_model(f"threads = 1, parallel = 1, batch_size = {value}"))
    try:
        with grpc.insecure_channel(sc.api) as ch:
            stub = text_pb2_grpc.TextServiceStub(ch)
            generate(stub, text_pb2, "Hello", 4)
            pp = []
            for i in range(3):
                _, _, ptoks, _, wall = generate(stub, text_pb2, f"{i} {PROMPT_130} {PROMPT_130}", 1)
                pp.append(ptoks / wall)
        return {"prompt tokens/s (260 tokens)": statistics.median(pp)}
    finally:
        sc.stop()


def k_queue(binary, value):
    import grpc
    from sidecar.v1 import text_pb2, text_pb2_grpc

    sc = Sidecar(
        binary,
        [MINILM],
        f"[workers]\nqueue_size = {value}\nmax_in_flight = 2\n[cache]\nenabled = false\n",
        text_model("threads = 1", "minilm", MINILM),
    )
    try:
        ok, refused, lat = [0], [0], []
        lock = threading.Lock()
        stop_at = time.monotonic() + 4

        def client(i):
            with grpc.insecure_channel(sc.api) as ch:
                stub = text_pb2_grpc.TextServiceStub(ch)
                n = 0
                while time.monotonic() < stop_at:
                    n += 1
                    req = text_pb2.EmbedRequest(model_id="minilm", inputs=[f"client {i} call {n} {j}" for j in range(8)])
                    t0 = time.monotonic()
                    try:
                        stub.Embed(req, timeout=30)
                        with lock:
                            ok[0] += 1
                            lat.append(time.monotonic() - t0)
                    except grpc.RpcError as e:
                        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        with lock:
                            refused[0] += 1
                        time.sleep(0.05)  # a client's backoff before it retries

        ts = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        lat.sort()
        return {
            "answered calls/s": ok[0] / 4,
            "RESOURCE_EXHAUSTED per s": refused[0] / 4,
            "latency p50, ms": lat[len(lat) // 2] * 1000,
            "latency p99, ms": lat[int(len(lat) * 0.99)] * 1000,
        }
    finally:
        sc.stop()


def k_overflow(binary, value):
    import grpc
    from sidecar.v1 import vision_pb2, vision_pb2_grpc

    pending, policy = value
    sc = Sidecar(
        binary,
        [FACE],
        "",
        f'[[models]]\nid = "faces"\nfamily = "vision"\npath = "{FACE}"\nrequired = true\nvision = {{ threads = 1 }}\n',
    )
    try:
        w, h = 1280, 720
        pixels = bytes(range(256)) * (w * h * 3 // 256)
        seconds = 4.0
        sent = [0]

        def frames():
            yield vision_pb2.ProcessRequest(
                config=vision_pb2.StreamConfig(
                    model_id="faces",
                    tasks=[vision_pb2.VisionTask(faces=vision_pb2.FaceDetectionTask(min_score=0.5))],
                    max_pending_frames=pending,
                    overflow=policy,
                )
            )
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                i += 1
                sent[0] = i
                yield vision_pb2.ProcessRequest(
                    frame=vision_pb2.Frame(
                        index=i,
                        timestamp_us=int(time.monotonic() * 1e6),
                        raw=vision_pb2.RawImage(width=w, height=h, format=vision_pb2.PIXEL_FORMAT_RGB8, data=pixels),
                    )
                )

        done, dropped, lat = 0, 0, []
        t0 = time.monotonic()
        with grpc.insecure_channel(sc.api, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
            for r in vision_pb2_grpc.VisionServiceStub(ch).Process(frames(), timeout=60):
                if r.dropped:
                    dropped += 1
                else:
                    done += 1
                    lat.append(time.monotonic() - r.timestamp_us / 1e6)
        wall = time.monotonic() - t0
        return {
            "frames sent/s": sent[0] / wall,
            "frames processed/s": done / wall,
            "frames dropped/s": dropped / wall,
            "frame age at its result p50, ms": statistics.median(lat) * 1000,
        }
    finally:
        sc.stop()


def k_cache(binary, value):
    import grpc
    from sidecar.v1 import text_pb2, text_pb2_grpc

    sc = Sidecar(binary, [MINILM], f"[cache]\nenabled = {value}\n", text_model("threads = 1", "minilm", MINILM))
    try:
        with grpc.insecure_channel(sc.api) as ch:
            stub = text_pb2_grpc.TextServiceStub(ch)
            req = text_pb2.EmbedRequest(model_id="minilm", inputs=[f"a repeated sentence number {j}" for j in range(64)])
            stub.Embed(req, timeout=30)
            lat = []
            for _ in range(40):
                t0 = time.monotonic()
                stub.Embed(req, timeout=30)
                lat.append(time.monotonic() - t0)
        return {"repeated Embed of 64 texts, p50 ms": statistics.median(lat) * 1000}
    finally:
        sc.stop()


def k_window(binary, value):
    import grpc
    from sidecar.v1 import lite_pb2, lite_pb2_grpc

    sc = Sidecar(
        binary,
        [POSE],
        "",
        f'[[models]]\nid = "pose"\nfamily = "lite"\npath = "{POSE}"\nrequired = true\nlite = {{ threads = 2 }}\n',
    )
    try:
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        with grpc.insecure_channel(sc.api, options=options + value) as ch:
            lite = lite_pb2_grpc.LiteServiceStub(ch)
            info = lite.GetModelInfo(lite_pb2.GetModelInfoRequest(model_id="pose"), timeout=30)
            (inp,) = info.inputs
            size = 4
            for d in inp.shape:
                size *= d
            req = lite_pb2.InferRequest(
                model_id="pose",
                inputs=[lite_pb2.Tensor(name=inp.name, dtype=inp.dtype, shape=inp.shape, data=bytes(size))],
            )
            # The same input each call: after this first one, the result
            # cache answers, so the figure is the transport's alone (786 KB
            # up, 902 KB down), which is what the window changes.
            reply = lite.Infer(req, timeout=30)
            out_bytes = sum(len(o.data) for o in reply.outputs)
            lat = []
            for _ in range(30):
                t0 = time.monotonic()
                lite.Infer(req, timeout=30)
                lat.append(time.monotonic() - t0)
        return {
            "Infer p50, ms": statistics.median(lat) * 1000,
            "input KB": size / 1000,
            "outputs KB": out_bytes / 1000,
        }
    finally:
        sc.stop()


KNOBS = {
    "window": (
        "client HTTP/2 window (LITE pose landmark, every output)",
        k_window,
        ("64 KiB, no BDP", [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65535)]),
        ("8 MiB", [("grpc.http2.lookahead_bytes", 8 << 20)]),
    ),
    "threads": ("`text.threads`", k_threads, ("1", 1), ("2", 2)),
    "parallel": ("`text.parallel` (4 concurrent streams, 1 thread)", k_parallel, ("1", 1), ("4", 4)),
    "context": ("`text.context_size` (parallel 4)", k_context, ("512", 512), ("4096", 4096)),
    "batch": ("`text.batch_size` (1 thread)", k_batch, ("32", 32), ("512", 512)),
    "queue": ("`workers.queue_size` (16 Embed clients, max_in_flight 2)", k_queue, ("2", 2), ("64", 64)),
    "overflow": (
        "`max_pending_frames` / `overflow` (1280x720 RGB as fast as the client sends)",
        k_overflow,
        ("4, block", (4, 0)),
        ("1, drop_oldest", (1, 1)),
    ),
    "cache": ("`[cache] enabled`", k_cache, ("false", "false"), ("true", "true")),
}


def main():
    binary = sys.argv[1]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    wanted = sys.argv[3].split(",") if len(sys.argv) > 3 else list(KNOBS)
    out = tempfile.mkdtemp(prefix="bench-knobs-stubs-")
    stubs(out)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the start; {reps} interleaved runs, median\n")
    for name in wanted:
        title, fn, (a_label, a), (b_label, b) = KNOBS[name]
        runs = {a_label: [], b_label: []}
        for _ in range(reps):
            for label, value in ((a_label, a), (b_label, b)):
                runs[label].append(fn(binary, value))
        print(f"### {title}: {a_label} against {b_label}\n")
        print(f"| figure | {a_label} | {b_label} | B/A |\n|---|---:|---:|---:|")
        for key in runs[a_label][0]:
            va = statistics.median(r[key] for r in runs[a_label])
            vb = statistics.median(r[key] for r in runs[b_label])
            ratio = f"{vb / va:.2f}" if va else "-"
            print(f"| {key} | {va:.1f} | {vb:.1f} | {ratio} |")
        print(f"\n(load average {os.getloadavg()[0]:.1f} after)\n", flush=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
