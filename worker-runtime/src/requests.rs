//! Request bookkeeping for log lines: the callers' names (request ids)
//! of a worker's recent requests, read from each request frame without
//! decoding it. Bounded, so requests that end without a lookup cannot
//! grow it.

use std::collections::VecDeque;

use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use sidecar_proto::worker::RegionUse;

/// How many recent requests keep their names.
const KEEP: usize = 1024;

/// `WorkerRequest.request_tag`'s field number.
const REQUEST_TAG: u32 = 1;
/// `WorkerRequest.regions`' field number.
const REGIONS: u32 = 4;

/// Request id → the caller's name for it.
#[derive(Debug, Default)]
pub struct RequestNames {
    recent: VecDeque<(u64, String)>,
}

impl RequestNames {
    /// Remembers `name` for request `id` (the oldest is forgotten beyond
    /// 1024). An empty name is not kept: a stream's later frames carry
    /// none, and must not push out the names of other requests.
    pub fn insert(&mut self, id: u64, name: String) {
        if name.is_empty() {
            return;
        }
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back((id, name));
    }

    /// The name of request `id` ("" when unknown).
    pub fn get(&self, id: u64) -> &str {
        self.recent
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map_or("", |(_, n)| n.as_str())
    }
}

/// The caller's request id (`WorkerRequest.request_tag`) of a request
/// frame's payload, "" when absent or unreadable. Reads the fields' keys
/// and skips their bodies, so a frame holding megabytes of pixels or
/// tensors costs a few steps.
pub fn request_tag(payload: &[u8]) -> String {
    let mut buf = payload;
    while !buf.is_empty() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            break;
        };
        if (tag, wire) == (REQUEST_TAG, WireType::LengthDelimited) {
            let Ok(len) = decode_varint(&mut buf) else {
                break;
            };
            return usize::try_from(len)
                .ok()
                .and_then(|len| buf.get(..len))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
        }
        if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
            break;
        }
    }
    String::new()
}

/// The regions a request frame's payload names (`WorkerRequest.regions`),
/// read without decoding its body; `None` when the payload is unreadable
/// (the family's decoding then refuses it).
pub(crate) fn region_uses(payload: &[u8]) -> Option<Vec<RegionUse>> {
    let mut buf = payload;
    let mut uses = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if (tag, wire) == (REGIONS, WireType::LengthDelimited) {
            let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
            let body = buf.get(..len)?;
            uses.push(RegionUse::decode(body).ok()?);
            buf = &buf[len..];
            continue;
        }
        skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?;
    }
    Some(uses)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use sidecar_proto::worker::{WorkerRequest, worker_request};

    use super::*;

    #[test]
    fn names_are_found_and_bounded() {
        let mut n = RequestNames::default();
        for i in 0..(KEEP as u64 + 10) {
            n.insert(i, format!("r{i}"));
        }
        assert_eq!(n.get(KEEP as u64 + 9), format!("r{}", KEEP + 9));
        assert_eq!(n.get(3), "", "forgotten");
        assert_eq!(n.recent.len(), KEEP);
    }

    #[test]
    fn empty_names_keep_no_place() {
        let mut n = RequestNames::default();
        n.insert(1, "call-1".into());
        for _ in 0..2 * KEEP {
            n.insert(2, String::new());
        }
        assert_eq!((n.get(1), n.get(2)), ("call-1", ""));
        assert_eq!(n.recent.len(), 1);
    }

    #[test]
    fn the_tag_is_read_from_the_payload() {
        let req = WorkerRequest {
            regions: Default::default(),
            request_tag: "abc-1".into(),
            cache_partition: String::new(),
            deadline_unix_ms: 12,
            body: Some(worker_request::Body::VisionClose(true)),
        };
        assert_eq!(request_tag(&req.encode_to_vec()), "abc-1");
        // The tag after other fields, as another encoder may order them.
        let mut later = WorkerRequest {
            deadline_unix_ms: 5,
            ..Default::default()
        }
        .encode_to_vec();
        later.extend_from_slice(&[0x0a, 2, b'h', b'i']);
        assert_eq!(request_tag(&later), "hi");
    }

    #[test]
    fn the_regions_are_read_from_the_payload() {
        let uses = vec![
            RegionUse {
                name: "in".into(),
                id: 7,
                offset: 4096,
                byte_size: 100,
                writable: false,
                attach: true,
            },
            RegionUse {
                name: "out".into(),
                id: 9,
                writable: true,
                ..Default::default()
            },
        ];
        let req = WorkerRequest {
            regions: uses.clone(),
            request_tag: "t".into(),
            body: Some(worker_request::Body::VisionClose(true)),
            ..Default::default()
        };
        assert_eq!(region_uses(&req.encode_to_vec()), Some(uses));
        assert_eq!(region_uses(&[]), Some(vec![]));
        assert_eq!(region_uses(&[0x22, 50, 1]), None, "longer than the payload");
    }

    #[test]
    fn no_tag_or_garbage_reads_as_empty() {
        let untagged = WorkerRequest {
            body: Some(worker_request::Body::VisionClose(true)),
            ..Default::default()
        };
        assert_eq!(request_tag(&untagged.encode_to_vec()), "");
        assert_eq!(request_tag(&[0xff, 0xff, 0xff]), "");
        assert_eq!(
            request_tag(&[0x0a, 50, b'x']),
            "",
            "longer than the payload"
        );
        assert_eq!(request_tag(&[]), "");
    }
}
