//! Generated code for sidecar's protobuf contracts.
//!
//! Owns: the public gRPC API (`sidecar.v1`: ModelService, TextService,
//! VisionService, LiteService, SharedMemoryService, AdminService), the Open
//! Inference Protocol (`inference`) and the supervisor↔worker
//! messages (`sidecar.worker.v1`) that travel as `ipc` frame payloads.
//! Must not: contain logic. The `.proto` files under `proto/sidecar/` are
//! the source of truth and document every field.
#![forbid(unsafe_code)]
#![allow(missing_docs, unreachable_pub, clippy::all)]

// The generated code refers across packages with `super::` paths, so the
// modules mirror the protobuf package hierarchy.
#[doc(hidden)]
pub mod sidecar {
    pub mod v1 {
        tonic::include_proto!("sidecar.v1");
    }
    pub mod worker {
        pub mod v1 {
            tonic::include_proto!("sidecar.worker.v1");
        }
    }
}

/// The Open Inference Protocol v2 (KServe `grpc_predict_v2`) with Triton's
/// system shared-memory calls, package `inference`.
#[doc(hidden)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// The public API, package `sidecar.v1`.
pub use sidecar::v1;
/// The supervisor↔worker messages, package `sidecar.worker.v1`.
pub use sidecar::worker::v1 as worker;

/// Encoded `FileDescriptorSet` of every file above, with source comments,
/// for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sidecar_descriptor.bin"));

/// Version of the supervisor↔worker protocol (`Hello.protocol_version`).
/// Bump it whenever `sidecar/worker/v1/worker.proto` changes incompatibly.
pub const WORKER_PROTOCOL_VERSION: u32 = 2;

/// `VisionOptions.max_pending_bytes` when 0: what one Process stream's
/// waiting frames may hold (the worker refuses past it, the supervisor
/// stops reading the client at it).
pub const VISION_MAX_PENDING_BYTES: u64 = 128 << 20;

#[cfg(test)]
mod contract_tests;
