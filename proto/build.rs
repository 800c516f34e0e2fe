//! Compiles the `.proto` files with `protox` (a protobuf compiler written in
//! Rust), so no system `protoc` is needed, and generates the prost messages
//! and tonic services. The encoded descriptor set (with comments) is written
//! next to the generated code for gRPC reflection and for the API doc check.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "sidecar/v1/common.proto",
    "sidecar/v1/model.proto",
    "sidecar/v1/text.proto",
    "sidecar/v1/vision.proto",
    "sidecar/v1/lite.proto",
    "sidecar/v1/admin.proto",
    "sidecar/v1/shm.proto",
    "inference/grpc_service.proto",
    "sidecar/worker/v1/worker.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    std::fs::write(
        out.join("sidecar_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .bytes(".")
        // The supervisor's config file takes a VISION model's SSD options
        // as they are on the wire.
        .type_attribute(
            ".sidecar.v1.SsdOptions",
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
