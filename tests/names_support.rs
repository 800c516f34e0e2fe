//! What the version and alias tests share: SetAlias requests, aliases as
//! ListModels shows them, and the version header of an answer.

use sidecar_proto::v1::{ModelAlias, SetAliasRequest};

/// The response header naming the version that answered.
pub const VERSION: &str = "x-sidecar-model-version";

/// SetAlias `alias` → `target` ("id" or "id@N").
pub fn set(alias: &str, target: &str) -> SetAliasRequest {
    SetAliasRequest {
        alias: alias.into(),
        model_id: target.into(),
        version: 0,
    }
}

/// An alias as ListModels shows it.
pub fn alias(name: &str, model: &str, version: u32) -> ModelAlias {
    ModelAlias {
        alias: name.into(),
        model_id: model.into(),
        version,
    }
}

/// The version an answer's metadata names ("" when none).
pub fn header(md: &tonic::metadata::MetadataMap) -> String {
    md.get(VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
