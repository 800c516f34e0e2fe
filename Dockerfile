# syntax=docker/dockerfile:1
# The sidecar image: a builder that runs the project's own setup script
# (the same apt packages, model downloads and libLiteRt.so as a developer
# machine and CI), and a slim runtime with the five binaries, their runtime
# libraries, the LiteRT runtime and the default models, as a non-root user.
# See docs/kubernetes.md.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/src/target
# apt packages (cmake, clang, libclang, OpenCV, nasm, ffmpeg), the Python
# venv, the models from registry packages, runtime/litert/libLiteRt.so.
RUN scripts/setup.sh
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out/bin \
 && cp target/release/sidecar target/release/sidecarctl target/release/worker-text \
       target/release/worker-lite target/release/worker-vision /out/bin/

FROM debian:bookworm-slim
# What the binaries link at run time (ldd): OpenCV 4.6's modules for
# worker-vision, libgomp for llama.cpp; opencv-data for the cascades.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 \
      libopencv-objdetect406 libopencv-video406 libopencv-contrib406 \
      libopencv-dnn406 libopencv-flann406 opencv-data libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /srv/sidecar --create-home sidecar
COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder /src/runtime/litert/libLiteRt.so /srv/sidecar/runtime/litert/libLiteRt.so
# The default models, at /models and as a seed for a mounted store.
COPY --from=builder /src/models/ /models/
COPY --from=builder /src/models/ /srv/sidecar/models-seed/
COPY examples/sidecar.toml /etc/sidecar/sidecar.toml
# /run/sidecar is the sidecar's own: it creates ctl/ there, mode 0700,
# for the control socket (plain `docker run` has no volume there).
RUN chown -R sidecar /models \
 && mkdir -p -m 0755 /run/sidecar && chown sidecar /run/sidecar
USER 10001
WORKDIR /srv/sidecar
ENV SIDECAR_CONTROL_SOCKET=/run/sidecar/ctl/control.sock \
    SIDECAR_MODEL_STORE=/models
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/sidecar", "--config", "/etc/sidecar/sidecar.toml"]
