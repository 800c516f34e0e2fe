//! Scopes, and the one table that says which scope each method of the API
//! port needs. A path the table does not name reaches no service.

use std::collections::HashMap;
use std::fmt;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Inference (TextService, LiteService, VisionService, the Open
    /// Inference Protocol), the caller's own shared-memory regions
    /// (SharedMemoryService), gRPC health, reflection.
    Infer,
    /// The model catalog and the store, read only (ListModels, GetModel,
    /// ListFiles, GetFile).
    Read,
    /// Whatever changes what others see: LoadModel (with its `pinned`,
    /// `required`, budgets), UnloadModel, PutFile, DeleteFile.
    Manage,
}

impl Scope {
    /// Every scope, in the order they are written.
    pub const ALL: [Scope; 3] = [Scope::Infer, Scope::Read, Scope::Manage];

    /// The word in the tokens file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::Read => "read",
            Scope::Manage => "manage",
        }
    }

    /// The scope a word names.
    pub fn parse(word: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == word)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// All three.
    pub const ALL: Scopes = Scopes(0b111);
    /// What the API port grants everyone when no tokens file is
    /// configured: `infer` and `read`.
    pub const OPEN: Scopes = Scopes(0b011);

    /// The set with `s` added.
    pub fn with(self, s: Scope) -> Scopes {
        Scopes(self.0 | s.bit())
    }

    /// Whether `s` is in the set.
    pub fn has(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|s| self.has(*s))
            .map(Scope::as_str)
            .collect();
        f.write_str(&words.join(","))
    }
}

/// One method of the API port: its label ("ModelService/LoadModel") and
/// the scope it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// `Service/Method`, for messages.
    pub label: String,
    /// What a caller needs to call it.
    pub scope: Scope,
}

/// The scope of each method of the services the API port serves, by
/// path (`/sidecar.v1.ModelService/LoadModel`).
#[derive(Debug, Clone)]
pub struct MethodScopes(HashMap<String, Method>);

/// `(service, method, scope)` for every method served on the API port.
/// `sidecar.v1.AdminService` is not served there (only on the control
/// socket) and so is not here: its paths are refused on the network.
const TABLE: &[(&str, &str, Scope)] = &[
    ("sidecar.v1.TextService", "Generate", Scope::Infer),
    ("sidecar.v1.TextService", "GenerateStream", Scope::Infer),
    ("sidecar.v1.TextService", "Chat", Scope::Infer),
    ("sidecar.v1.TextService", "ChatStream", Scope::Infer),
    ("sidecar.v1.TextService", "Embed", Scope::Infer),
    ("sidecar.v1.TextService", "Tokenize", Scope::Infer),
    ("sidecar.v1.LiteService", "GetModelInfo", Scope::Infer),
    ("sidecar.v1.LiteService", "Infer", Scope::Infer),
    ("sidecar.v1.LiteService", "InferBatch", Scope::Infer),
    ("sidecar.v1.VisionService", "Process", Scope::Infer),
    ("sidecar.v1.VisionService", "ProcessBatch", Scope::Infer),
    // A client that infers places its own tensors and images in shared
    // memory: its regions are its own (per identity), like its calls.
    (
        "sidecar.v1.SharedMemoryService",
        "RegisterRegion",
        Scope::Infer,
    ),
    (
        "sidecar.v1.SharedMemoryService",
        "UnregisterRegion",
        Scope::Infer,
    ),
    (
        "sidecar.v1.SharedMemoryService",
        "ListRegions",
        Scope::Infer,
    ),
    ("sidecar.v1.ModelService", "ListModels", Scope::Read),
    ("sidecar.v1.ModelService", "GetModel", Scope::Read),
    ("sidecar.v1.ModelService", "ListFiles", Scope::Read),
    ("sidecar.v1.ModelService", "GetFile", Scope::Read),
    ("sidecar.v1.ModelService", "LoadModel", Scope::Manage),
    ("sidecar.v1.ModelService", "UnloadModel", Scope::Manage),
    ("sidecar.v1.ModelService", "PutFile", Scope::Manage),
    ("sidecar.v1.ModelService", "DeleteFile", Scope::Manage),
    ("sidecar.v1.ModelService", "SetAlias", Scope::Manage),
    ("sidecar.v1.ModelService", "DeleteAlias", Scope::Manage),
    // The Open Inference Protocol (`api::oip`): health and metadata are
    // read by the clients that infer; a caller's shared-memory regions
    // are its own inputs and outputs.
    ("inference.GRPCInferenceService", "ServerLive", Scope::Infer),
    (
        "inference.GRPCInferenceService",
        "ServerReady",
        Scope::Infer,
    ),
    ("inference.GRPCInferenceService", "ModelReady", Scope::Infer),
    (
        "inference.GRPCInferenceService",
        "ServerMetadata",
        Scope::Infer,
    ),
    (
        "inference.GRPCInferenceService",
        "ModelMetadata",
        Scope::Infer,
    ),
    ("inference.GRPCInferenceService", "ModelInfer", Scope::Infer),
    (
        "inference.GRPCInferenceService",
        "SystemSharedMemoryStatus",
        Scope::Infer,
    ),
    (
        "inference.GRPCInferenceService",
        "SystemSharedMemoryRegister",
        Scope::Infer,
    ),
    (
        "inference.GRPCInferenceService",
        "SystemSharedMemoryUnregister",
        Scope::Infer,
    ),
    ("grpc.health.v1.Health", "Check", Scope::Infer),
    ("grpc.health.v1.Health", "Watch", Scope::Infer),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        Scope::Infer,
    ),
    // Evans, older grpcurl and Python's `grpc_reflection` speak only this.
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        Scope::Infer,
    ),
];

impl Default for MethodScopes {
    fn default() -> Self {
        MethodScopes(
            TABLE
                .iter()
                .map(|(service, method, scope)| {
                    let short = service.rsplit('.').next().unwrap_or(service);
                    (
                        format!("/{service}/{method}"),
                        Method {
                            label: format!("{short}/{method}"),
                            scope: *scope,
                        },
                    )
                })
                .collect(),
        )
    }
}

impl MethodScopes {
    /// The method at `path`; `None` for a path no service of the API port
    /// serves.
    pub fn get(&self, path: &str) -> Option<&Method> {
        self.0.get(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of every `sidecar.v1` service the API port serves
    /// (read from the proto's own descriptor set, so a method added to a
    /// `.proto` without a scope fails here) has a scope; AdminService's
    /// have none (it is not on the API port).
    #[test]
    fn every_method_of_the_api_has_a_scope() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(sidecar_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let table = MethodScopes::default();
        let mut seen = 0;
        for file in set.file.iter().filter(|f| f.package() == "sidecar.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let got = table.get(&path);
                    if service.name() == "AdminService" {
                        assert_eq!(got, None, "{path} is control-socket only");
                    } else {
                        assert!(got.is_some(), "{path} has no scope");
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 24, "methods of the API's sidecar.v1 services");
        let load = table
            .get("/sidecar.v1.ModelService/LoadModel")
            .expect("LoadModel");
        assert_eq!(
            (load.label.as_str(), load.scope),
            ("ModelService/LoadModel", Scope::Manage)
        );
        for made_up in [
            "/sidecar.v1.TextService/Made1",
            "/sidecar.v1.AdminService/RestartWorker",
            "/",
            "",
            "/sidecar.v1.ModelService/LoadModel/",
        ] {
            assert_eq!(table.get(made_up), None, "{made_up}");
        }
    }

    /// Every method of the Open Inference Protocol's service (the
    /// `inference` package, served on the API port by `api::oip`) has a
    /// scope: `infer`.
    #[test]
    fn every_method_of_the_open_inference_protocol_has_a_scope() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(sidecar_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let table = MethodScopes::default();
        let mut seen = 0;
        for file in set.file.iter().filter(|f| f.package() == "inference") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let got = table.get(&path).map(|m| m.scope);
                    assert_eq!(got, Some(Scope::Infer), "{path}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 9, "methods of inference.GRPCInferenceService");
    }

    /// Both versions of server reflection are open to `infer`, like
    /// health; each has its own label.
    #[test]
    fn both_reflection_versions_need_infer() {
        let table = MethodScopes::default();
        for (path, label) in [
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "ServerReflection/ServerReflectionInfo",
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "ServerReflection/ServerReflectionInfo",
            ),
        ] {
            let m = table.get(path).expect(path);
            assert_eq!((m.label.as_str(), m.scope), (label, Scope::Infer), "{path}");
        }
    }

    #[test]
    fn scopes_read_and_print() {
        let s = Scopes::default().with(Scope::Read).with(Scope::Infer);
        assert_eq!(s, Scopes::OPEN);
        assert_eq!(s.to_string(), "infer,read");
        assert!(!s.has(Scope::Manage) && Scopes::ALL.has(Scope::Manage));
        assert_eq!(Scope::parse("manage"), Some(Scope::Manage));
        assert_eq!(Scope::parse("Manage"), None);
        assert!(Scopes::default().is_empty());
    }
}
