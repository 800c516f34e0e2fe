//! gRPC server reflection, `v1` and `v1alpha`, one pair per listener.
//!
//! grpcurl, evans and Python's `grpc_reflection` client speak `v1alpha`
//! (older grpcurl and evans nothing else); newer tools try `v1` first. Both
//! answer from the same state: the services the listener serves (and only
//! those: the API port never lists `AdminService`, which only the control
//! socket serves) and the descriptor files those services need, their
//! imports included. A file no listed service needs is not there to
//! resolve: on the API port `sidecar/v1/admin.proto` and the
//! supervisor↔worker protocol are NOT_FOUND.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tonic_reflection::pb::{v1, v1alpha};
use tonic_reflection::server::{Builder, v1 as server_v1, v1alpha as server_v1alpha};

use crate::error::Error;

/// `grpc.reflection.v1.ServerReflection`.
pub const V1: &str = v1::server_reflection_server::SERVICE_NAME;
/// `grpc.reflection.v1alpha.ServerReflection`.
pub const V1ALPHA: &str = v1alpha::server_reflection_server::SERVICE_NAME;

/// Both reflection services for a listener that serves `services` (the
/// two reflection services are added to the list here).
pub fn services(
    services: &[&str],
) -> Result<
    (
        v1::server_reflection_server::ServerReflectionServer<impl server_v1::ServerReflection>,
        v1alpha::server_reflection_server::ServerReflectionServer<
            impl server_v1alpha::ServerReflection,
        >,
    ),
    Error,
> {
    let files = files_for(services)?;
    let v1 = builder(services, files.clone())
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection v1: {e}")))?;
    let v1alpha = builder(services, files)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection v1alpha: {e}")))?;
    Ok((v1, v1alpha))
}

/// A builder listing `services` and both reflection services, holding
/// `files` and the reflection protocol's own files (both versions, so
/// either service resolves both names it lists).
fn builder(services: &[&str], files: FileDescriptorSet) -> Builder<'static> {
    let mut b = Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(v1alpha::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(files);
    for name in services.iter().copied().chain([V1, V1ALPHA]) {
        b = b.with_service_name(name);
    }
    b
}

/// Every descriptor file the listed services need: the files that define
/// them and, transitively, the files those import. The reflection
/// services are left out (their files come with the crate).
pub fn files_for(services: &[&str]) -> Result<FileDescriptorSet, Error> {
    let mut all: HashMap<String, FileDescriptorProto> = HashMap::new();
    for encoded in [
        sidecar_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let set = FileDescriptorSet::decode(encoded)
            .map_err(|e| Error::Internal(format!("reflection: descriptor set: {e}")))?;
        for file in set.file {
            all.insert(file.name().to_owned(), file);
        }
    }
    let mut wanted: Vec<String> = Vec::new();
    for &service in services.iter().filter(|s| ![V1, V1ALPHA].contains(s)) {
        let file = all
            .values()
            .find(|f| {
                f.service
                    .iter()
                    .any(|s| qualified(f.package(), s.name()) == service)
            })
            .ok_or_else(|| {
                Error::Internal(format!(
                    "reflection: service {service:?} is in no descriptor file ({} files)",
                    all.len()
                ))
            })?;
        wanted.push(file.name().to_owned());
    }
    let mut kept = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !kept.insert(name.clone()) {
            continue;
        }
        let file = all.get(&name).ok_or_else(|| {
            Error::Internal(format!(
                "reflection: imported file {name:?} is in no descriptor set"
            ))
        })?;
        wanted.extend(file.dependency.iter().cloned());
    }
    // Dependencies before the files that import them, as protoc writes a
    // set (kept is sorted by name; the order does not change what resolves).
    Ok(FileDescriptorSet {
        file: kept.iter().filter_map(|n| all.remove(n)).collect(),
    })
}

fn qualified(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &FileDescriptorSet) -> Vec<&str> {
        set.file.iter().map(|f| f.name()).collect()
    }

    #[test]
    fn the_api_port_holds_the_files_its_services_need_and_not_admin_or_worker() {
        let set = files_for(&[
            "grpc.health.v1.Health",
            "sidecar.v1.TextService",
            "sidecar.v1.LiteService",
            "sidecar.v1.VisionService",
            "sidecar.v1.SharedMemoryService",
            "sidecar.v1.ModelService",
            "inference.GRPCInferenceService",
        ])
        .expect("files");
        assert_eq!(
            names(&set),
            [
                "health.proto",
                "inference/grpc_service.proto",
                "sidecar/v1/common.proto",
                "sidecar/v1/lite.proto",
                "sidecar/v1/model.proto",
                "sidecar/v1/shm.proto",
                "sidecar/v1/text.proto",
                "sidecar/v1/vision.proto",
            ]
        );
    }

    #[test]
    fn the_control_socket_holds_admin_and_its_imports() {
        let set =
            files_for(&["sidecar.v1.AdminService", "sidecar.v1.ModelService", V1]).expect("files");
        assert_eq!(
            names(&set),
            [
                "sidecar/v1/admin.proto",
                "sidecar/v1/common.proto",
                "sidecar/v1/lite.proto",
                "sidecar/v1/model.proto",
                "sidecar/v1/text.proto",
                "sidecar/v1/vision.proto",
            ]
        );
    }

    #[test]
    fn a_service_in_no_file_is_refused_by_name() {
        let e = files_for(&["sidecar.v1.Nope"]).expect_err("no such service");
        assert!(
            e.to_string()
                .contains("service \"sidecar.v1.Nope\" is in no descriptor file"),
            "{e}"
        );
        assert!(services(&["sidecar.v1.TextService"]).is_ok());
    }
}
