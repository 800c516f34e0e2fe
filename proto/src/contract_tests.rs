//! Checks on the contract itself: every RPC the API promises exists, and
//! every service, RPC, field and enum value carries a doc comment (the
//! `.proto` files are the API's reference documentation).

use std::collections::{HashMap, HashSet};

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

// Field numbers inside descriptor.proto, used by SourceCodeInfo paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const MESSAGE_ONEOF: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

fn our_files(set: &FileDescriptorSet) -> impl Iterator<Item = &prost_types::FileDescriptorProto> {
    set.file.iter().filter(|f| f.name().starts_with("sidecar/"))
}

struct Undocumented<'a> {
    commented: HashSet<Vec<i32>>,
    file: &'a str,
    missing: Vec<String>,
}

impl Undocumented<'_> {
    fn check(&mut self, path: &[i32], what: String) {
        if !self.commented.contains(path) {
            self.missing.push(format!("{}: {what}", self.file));
        }
    }

    fn message(&mut self, path: Vec<i32>, msg: &DescriptorProto, scope: &str) {
        let name = format!("{scope}{}", msg.name());
        for (i, field) in msg.field.iter().enumerate() {
            let p = [path.as_slice(), &[MESSAGE_FIELD, i as i32]].concat();
            self.check(&p, format!("field {name}.{}", field.name()));
        }
        for (i, oneof) in msg.oneof_decl.iter().enumerate() {
            // proto3 `optional` fields get a synthetic oneof each: not API.
            let synthetic = msg
                .field
                .iter()
                .any(|f| f.oneof_index == Some(i as i32) && f.proto3_optional());
            if synthetic {
                continue;
            }
            let p = [path.as_slice(), &[MESSAGE_ONEOF, i as i32]].concat();
            self.check(&p, format!("oneof {name}.{}", oneof.name()));
        }
        for (i, nested) in msg.nested_type.iter().enumerate() {
            if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            let p = [path.as_slice(), &[MESSAGE_NESTED, i as i32]].concat();
            self.message(p, nested, &format!("{name}."));
        }
        for (i, e) in msg.enum_type.iter().enumerate() {
            let p = [path.as_slice(), &[MESSAGE_ENUM, i as i32]].concat();
            self.enumeration(p, e, &format!("{name}."));
        }
    }

    fn enumeration(&mut self, path: Vec<i32>, e: &EnumDescriptorProto, scope: &str) {
        let name = format!("{scope}{}", e.name());
        self.check(&path, format!("enum {name}"));
        for (i, v) in e.value.iter().enumerate() {
            let p = [path.as_slice(), &[ENUM_VALUE, i as i32]].concat();
            self.check(&p, format!("enum value {name}.{}", v.name()));
        }
    }
}

#[test]
fn every_element_of_the_api_is_documented() {
    let set = descriptor_set();
    let mut missing = Vec::new();
    for file in our_files(&set) {
        let info = file.source_code_info.as_ref().expect("source info kept");
        let commented = info
            .location
            .iter()
            .filter(|l| !l.leading_comments().trim().is_empty())
            .map(|l| l.path.clone())
            .collect();
        let mut check = Undocumented {
            commented,
            file: file.name(),
            missing: Vec::new(),
        };
        for (i, msg) in file.message_type.iter().enumerate() {
            check.message(vec![FILE_MESSAGE, i as i32], msg, "");
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            check.enumeration(vec![FILE_ENUM, i as i32], e, "");
        }
        for (i, svc) in file.service.iter().enumerate() {
            check.check(&[FILE_SERVICE, i as i32], format!("service {}", svc.name()));
            for (j, m) in svc.method.iter().enumerate() {
                check.check(
                    &[FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32],
                    format!("rpc {}.{}", svc.name(), m.name()),
                );
            }
        }
        missing.extend(check.missing);
    }
    assert!(
        missing.is_empty(),
        "undocumented API elements:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_promised_rpc_exists_with_its_streaming_shape() {
    // (service, rpc, client streams, server streams)
    let promised = [
        ("ModelService", "LoadModel", false, false),
        ("ModelService", "UnloadModel", false, false),
        ("ModelService", "ListModels", false, false),
        ("ModelService", "GetModel", false, false),
        ("ModelService", "ListFiles", false, false),
        ("ModelService", "GetFile", false, true),
        ("ModelService", "PutFile", true, false),
        ("ModelService", "DeleteFile", false, false),
        ("TextService", "Generate", false, false),
        ("TextService", "GenerateStream", false, true),
        ("TextService", "Chat", false, false),
        ("TextService", "ChatStream", false, true),
        ("TextService", "Embed", false, false),
        ("TextService", "Tokenize", false, false),
        ("VisionService", "Process", true, true),
        ("VisionService", "ProcessBatch", false, false),
        ("LiteService", "GetModelInfo", false, false),
        ("LiteService", "Infer", false, false),
        ("LiteService", "InferBatch", false, false),
        ("AdminService", "GetStatus", false, false),
        ("AdminService", "ListWorkers", false, false),
        ("AdminService", "RestartWorker", false, false),
        ("AdminService", "DrainModel", false, false),
        ("AdminService", "StreamLogs", false, true),
        ("AdminService", "CallWorker", false, true),
    ];
    let set = descriptor_set();
    let mut methods = HashMap::new();
    for file in our_files(&set) {
        assert_eq!(file.package(), file_package(file.name()), "{}", file.name());
        for svc in &file.service {
            for m in &svc.method {
                methods.insert(
                    (svc.name().to_owned(), m.name().to_owned()),
                    (m.client_streaming(), m.server_streaming()),
                );
            }
        }
    }
    for (svc, rpc, client, server) in promised {
        let shape = methods.get(&(svc.to_owned(), rpc.to_owned()));
        assert_eq!(shape, Some(&(client, server)), "{svc}.{rpc}");
    }
}

fn file_package(name: &str) -> String {
    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
    dir.replace('/', ".")
}

#[test]
fn model_states_and_kill_reasons_match_the_design() {
    use crate::v1::{KillReason, ModelState};
    let states: Vec<_> = (1..=6)
        .map(|i| ModelState::try_from(i).expect("state").as_str_name())
        .collect();
    assert_eq!(
        states,
        [
            "MODEL_STATE_LOADING",
            "MODEL_STATE_READY",
            "MODEL_STATE_DRAINING",
            "MODEL_STATE_RESTARTING",
            "MODEL_STATE_FAILED",
            "MODEL_STATE_UNLOADING"
        ]
    );
    let reasons: Vec<_> = (1..=8)
        .map(|i| KillReason::try_from(i).expect("reason").as_str_name())
        .collect();
    assert_eq!(
        reasons,
        [
            "KILL_REASON_CRASH",
            "KILL_REASON_OOM",
            "KILL_REASON_VRAM",
            "KILL_REASON_TIMEOUT",
            "KILL_REASON_UNHEALTHY",
            "KILL_REASON_REQUESTED",
            "KILL_REASON_SHUTDOWN",
            "KILL_REASON_PROTOCOL"
        ]
    );
}

#[test]
fn worker_messages_round_trip_and_embed_public_requests() {
    use crate::v1::GenerateRequest;
    use crate::worker::{WorkerRequest, worker_request::Body};
    let req = WorkerRequest {
        request_tag: "req-1".into(),
        cache_partition: String::new(),
        regions: Vec::new(),
        deadline_unix_ms: 1_700_000_000_000,
        body: Some(Body::Generate(GenerateRequest {
            model_id: "smollm2".into(),
            prompt: "Hello".into(),
            max_tokens: 8,
            stop: vec!["\n".into()],
            ..Default::default()
        })),
    };
    let bytes = req.encode_to_vec();
    let back = WorkerRequest::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, req);
}
