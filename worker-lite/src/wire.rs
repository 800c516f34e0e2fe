//! Reading Infer requests without copying their tensor bytes, and writing
//! Infer answers straight into the channel.
//!
//! A request's tensor data is borrowed from the frame in shared memory and
//! copied once, into LiteRT's input buffer; an answer's tensor data is
//! copied once, from LiteRT's output buffer into the frame. Everything
//! else goes through prost as usual.

use prost::Message;
use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, encoded_len_varint};
use sidecar_proto::v1::SharedMemoryRef;
use sidecar_proto::worker::WorkerRequest;
use worker_runtime::WorkerError;

use crate::tensor::InputRef;

/// `WorkerRequest.body` field numbers handled here.
const INFER: u32 = 20;
const INFER_BATCH: u32 = 21;
/// `WorkerResponse.body` field numbers.
const INFER_ANSWER: u32 = 17;
const INFER_BATCH_ANSWER: u32 = 18;

/// An Infer or InferBatch call, borrowed from its frame.
#[derive(Debug, Default)]
pub struct InferRef<'a> {
    /// Input sets (one for Infer).
    pub sets: Vec<Vec<InputRef<'a>>>,
    /// Outputs asked for (empty: all).
    pub outputs: Vec<&'a str>,
    /// Per set (one for Infer): outputs to write into shared-memory
    /// regions (`output_placements`).
    pub placements: Vec<Vec<Placement<'a>>>,
    /// InferBatch rather than Infer.
    pub batch: bool,
}

/// An output to write into a region instead of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement<'a> {
    /// Output name.
    pub name: &'a str,
    /// Where.
    pub shm: SharedMemoryRef,
}

/// A request frame: an Infer call read in place, or anything else decoded.
#[derive(Debug)]
pub enum Request<'a> {
    /// Infer / InferBatch, with the deadline (Unix ms, 0: none).
    Infer(InferRef<'a>, i64),
    /// Any other request.
    Other(Box<WorkerRequest>),
}

fn bad(what: &str) -> WorkerError {
    WorkerError::invalid(format!("malformed request: {what}"))
}

/// The next field: (number, wire type).
fn key(buf: &mut &[u8]) -> Result<(u32, WireType), WorkerError> {
    decode_key(buf).map_err(|e| bad(&e.to_string()))
}

/// A length-delimited field's bytes.
fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], WorkerError> {
    let len = decode_varint(buf).map_err(|e| bad(&e.to_string()))? as usize;
    if len > buf.len() {
        return Err(bad("field longer than the message"));
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

fn skip(wire: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), WorkerError> {
    prost::encoding::skip_field(wire, tag, buf, DecodeContext::default())
        .map_err(|e| bad(&e.to_string()))
}

fn utf8<'a>(b: &'a [u8], what: &str) -> Result<&'a str, WorkerError> {
    std::str::from_utf8(b).map_err(|_| bad(&format!("{what} is not UTF-8")))
}

/// Reads a request frame's payload.
pub fn parse(payload: &[u8]) -> Result<Request<'_>, WorkerError> {
    let mut buf = payload;
    let mut deadline = 0i64;
    let mut body: Option<(u32, &[u8])> = None;
    while buf.has_remaining() {
        let (tag, wire) = key(&mut buf)?;
        match (tag, wire) {
            (2, WireType::Varint) => {
                deadline = decode_varint(&mut buf).map_err(|e| bad(&e.to_string()))? as i64;
            }
            (INFER | INFER_BATCH, WireType::LengthDelimited) => {
                body = Some((tag, delimited(&mut buf)?));
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    match body {
        Some((tag, msg)) => Ok(Request::Infer(infer(msg, tag == INFER_BATCH)?, deadline)),
        None => WorkerRequest::decode(payload)
            .map(|r| Request::Other(Box::new(r)))
            .map_err(|e| bad(&e.to_string())),
    }
}

/// InferRequest {1 model_id, 2 inputs, 3 outputs, 4 output_placements}
/// or InferBatchRequest {1 model_id, 2 sets {1 inputs, 2
/// output_placements}, 3 outputs}.
fn infer(mut buf: &[u8], batch: bool) -> Result<InferRef<'_>, WorkerError> {
    let mut call = InferRef {
        batch,
        ..Default::default()
    };
    let mut single = Vec::new();
    let mut single_placed = Vec::new();
    while buf.has_remaining() {
        let (tag, wire) = key(&mut buf)?;
        match (tag, wire) {
            (2, WireType::LengthDelimited) if batch => {
                let mut set_buf = delimited(&mut buf)?;
                let mut set = Vec::new();
                let mut placed = Vec::new();
                while set_buf.has_remaining() {
                    let (t, w) = key(&mut set_buf)?;
                    match (t, w) {
                        (1, WireType::LengthDelimited) => {
                            set.push(tensor(delimited(&mut set_buf)?)?);
                        }
                        (2, WireType::LengthDelimited) => {
                            placed.push(placement(delimited(&mut set_buf)?)?);
                        }
                        _ => skip(w, t, &mut set_buf)?,
                    }
                }
                call.sets.push(set);
                call.placements.push(placed);
            }
            (2, WireType::LengthDelimited) => single.push(tensor(delimited(&mut buf)?)?),
            (4, WireType::LengthDelimited) if !batch => {
                single_placed.push(placement(delimited(&mut buf)?)?);
            }
            (3, WireType::LengthDelimited) => {
                call.outputs
                    .push(utf8(delimited(&mut buf)?, "an output name")?);
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    if !batch {
        call.sets.push(single);
        call.placements.push(single_placed);
    }
    Ok(call)
}

fn shm_ref(b: &[u8]) -> Result<SharedMemoryRef, WorkerError> {
    SharedMemoryRef::decode(b).map_err(|e| bad(&e.to_string()))
}

/// OutputPlacement {1 name, 2 shm}.
fn placement(mut buf: &[u8]) -> Result<Placement<'_>, WorkerError> {
    let mut p = Placement {
        name: "",
        shm: SharedMemoryRef::default(),
    };
    while buf.has_remaining() {
        let (tag, wire) = key(&mut buf)?;
        match (tag, wire) {
            (1, WireType::LengthDelimited) => {
                p.name = utf8(delimited(&mut buf)?, "an output name")?
            }
            (2, WireType::LengthDelimited) => p.shm = shm_ref(delimited(&mut buf)?)?,
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(p)
}

/// Tensor {1 name, 2 dtype, 3 shape (packed or not), 4 data, 5 shm}.
fn tensor(mut buf: &[u8]) -> Result<InputRef<'_>, WorkerError> {
    let mut t = InputRef {
        name: "",
        dtype: 0,
        shape: Vec::new(),
        data: &[],
        shm: None,
    };
    let varint = |b: &mut &[u8]| decode_varint(b).map_err(|e| bad(&e.to_string()));
    while buf.has_remaining() {
        let (tag, wire) = key(&mut buf)?;
        match (tag, wire) {
            (1, WireType::LengthDelimited) => t.name = utf8(delimited(&mut buf)?, "a tensor name")?,
            (2, WireType::Varint) => t.dtype = varint(&mut buf)? as i32,
            (3, WireType::LengthDelimited) => {
                let mut packed = delimited(&mut buf)?;
                while packed.has_remaining() {
                    t.shape.push(varint(&mut packed)? as i64);
                }
            }
            (3, WireType::Varint) => t.shape.push(varint(&mut buf)? as i64),
            (4, WireType::LengthDelimited) => t.data = delimited(&mut buf)?,
            (5, WireType::LengthDelimited) => t.shm = Some(shm_ref(delimited(&mut buf)?)?),
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(t)
}

/// An output tensor to write: its name, dtype, shape and byte length; the
/// bytes are written by the caller.
#[derive(Debug, Clone)]
pub struct OutputHead<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// API dtype.
    pub dtype: i32,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// Byte length of the data (0 when written into a region).
    pub len: usize,
    /// Written into a region instead: the ref as given, `byte_size` the
    /// bytes written.
    pub shm: Option<SharedMemoryRef>,
}

fn key_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

impl OutputHead<'_> {
    fn shape_len(&self) -> usize {
        self.shape
            .iter()
            .map(|&d| encoded_len_varint(d as u64))
            .sum()
    }

    /// Length of the Tensor message body.
    fn body_len(&self) -> usize {
        let mut n = 0;
        if !self.name.is_empty() {
            n += delimited_len(1, self.name.len());
        }
        if self.dtype != 0 {
            n += key_len(2) + encoded_len_varint(self.dtype as u64);
        }
        if !self.shape.is_empty() {
            n += delimited_len(3, self.shape_len());
        }
        if self.len > 0 {
            n += delimited_len(4, self.len);
        }
        if let Some(r) = &self.shm {
            n += delimited_len(5, r.encoded_len());
        }
        n
    }
}

/// Timings of an answer, microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Waiting in the worker.
    pub queue_us: u64,
    /// Running the model.
    pub invoke_us: u64,
    /// From arrival to the answer.
    pub total_us: u64,
}

impl Timings {
    fn body_len(&self) -> usize {
        [self.queue_us, self.invoke_us, self.total_us]
            .iter()
            .filter(|&&v| v != 0)
            .map(|&v| key_len(1) + encoded_len_varint(v))
            .sum()
    }
}

/// A WorkerResponse with an InferResponse or InferBatchResponse, written
/// in place: `sets` holds each set's outputs; `data(set, i, out)` writes
/// output `i` of `set` into `out` (exactly its `len` bytes).
#[derive(Debug)]
pub struct Answer<'a> {
    /// Outputs per set (one set for Infer).
    pub sets: Vec<Vec<OutputHead<'a>>>,
    /// Timings.
    pub timings: Timings,
    /// InferBatch rather than Infer.
    pub batch: bool,
}

struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf[self.at] = (v as u8) | 0x80;
            self.at += 1;
            v >>= 7;
        }
        self.buf[self.at] = v as u8;
        self.at += 1;
    }
    fn key(&mut self, tag: u32, wire: WireType) {
        self.varint(u64::from(tag << 3 | wire as u32));
    }
    fn head(&mut self, tag: u32, len: usize) {
        self.key(tag, WireType::LengthDelimited);
        self.varint(len as u64);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn take(&mut self, len: usize) -> &mut [u8] {
        let s = &mut self.buf[self.at..self.at + len];
        self.at += len;
        s
    }
}

impl Answer<'_> {
    fn set_len(outputs: &[OutputHead<'_>]) -> usize {
        outputs.iter().map(|o| delimited_len(1, o.body_len())).sum()
    }

    fn inner_len(&self) -> usize {
        let sets: usize = if self.batch {
            self.sets
                .iter()
                .map(|s| delimited_len(1, Self::set_len(s)))
                .sum()
        } else {
            self.sets.first().map_or(0, |s| Self::set_len(s))
        };
        sets + delimited_len(2, self.timings.body_len())
    }

    fn outer_tag(&self) -> u32 {
        if self.batch {
            INFER_BATCH_ANSWER
        } else {
            INFER_ANSWER
        }
    }

    /// Bytes of the whole WorkerResponse.
    pub fn len(&self) -> usize {
        delimited_len(self.outer_tag(), self.inner_len())
    }

    /// Whether the answer has no bytes (never: it always has a body).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the answer into `buf` (exactly `len()` bytes).
    pub fn write(&self, buf: &mut [u8], mut data: impl FnMut(usize, usize, &mut [u8])) {
        let mut w = Writer { buf, at: 0 };
        w.head(self.outer_tag(), self.inner_len());
        for (s, outputs) in self.sets.iter().enumerate() {
            if self.batch {
                w.head(1, Self::set_len(outputs));
            }
            for (i, o) in outputs.iter().enumerate() {
                w.head(1, o.body_len());
                if !o.name.is_empty() {
                    w.head(1, o.name.len());
                    w.bytes(o.name.as_bytes());
                }
                if o.dtype != 0 {
                    w.key(2, WireType::Varint);
                    w.varint(o.dtype as u64);
                }
                if !o.shape.is_empty() {
                    w.head(3, o.shape_len());
                    for &d in &o.shape {
                        w.varint(d as u64);
                    }
                }
                if o.len > 0 {
                    w.head(4, o.len);
                    data(s, i, w.take(o.len));
                }
                if let Some(r) = &o.shm {
                    w.head(5, r.encoded_len());
                    w.bytes(&r.encode_to_vec());
                }
            }
        }
        w.head(2, self.timings.body_len());
        for (tag, v) in [
            (1, self.timings.queue_us),
            (2, self.timings.invoke_us),
            (3, self.timings.total_us),
        ] {
            if v != 0 {
                w.key(tag, WireType::Varint);
                w.varint(v);
            }
        }
        debug_assert_eq!(w.at, w.buf.len(), "answer length");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::bytes::Bytes;
    use sidecar_proto::v1::{InferBatchRequest, InferRequest, InputSet, OutputPlacement, Tensor};
    use sidecar_proto::worker::{WorkerResponse, worker_request, worker_response};

    fn tensor_msg(name: &str, data: &[u8]) -> Tensor {
        Tensor {
            shm: Default::default(),
            name: name.into(),
            dtype: 1,
            shape: vec![1, 2, 300],
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn infer_requests_are_read_in_place() {
        let req = WorkerRequest {
            regions: Default::default(),
            request_tag: "t".into(),
            cache_partition: String::new(),
            deadline_unix_ms: 1234,
            body: Some(worker_request::Body::Infer(InferRequest {
                output_placements: Default::default(),
                model_id: "m".into(),
                inputs: vec![tensor_msg("a", &[1, 2, 3]), tensor_msg("b", &[])],
                outputs: vec!["x".into()],
            })),
        };
        let bytes = req.encode_to_vec();
        let Request::Infer(call, deadline) = parse(&bytes).expect("parse") else {
            panic!("not read as Infer");
        };
        assert_eq!(deadline, 1234);
        assert!(!call.batch);
        assert_eq!(call.outputs, vec!["x"]);
        assert_eq!(call.sets.len(), 1);
        let a = &call.sets[0][0];
        assert_eq!(
            (a.name, a.dtype, a.shape.clone(), a.data),
            ("a", 1, vec![1, 2, 300], &[1u8, 2, 3][..])
        );
        assert_eq!(call.sets[0][1].data, &[] as &[u8]);
        assert_eq!(call.placements, vec![vec![]]);
        // The data is borrowed from the frame, not copied.
        let start = bytes.as_ptr() as usize;
        let at = a.data.as_ptr() as usize;
        assert!(at >= start && at < start + bytes.len());
    }

    #[test]
    fn region_refs_and_placements_are_read() {
        let at = |region: &str, offset, byte_size| SharedMemoryRef {
            region: region.into(),
            offset,
            byte_size,
        };
        let mut input = tensor_msg("a", &[]);
        input.shm = Some(at("in", 8, 12));
        let placed = |name: &str, r| OutputPlacement {
            name: name.into(),
            shm: Some(r),
        };
        let single = WorkerRequest {
            body: Some(worker_request::Body::Infer(InferRequest {
                output_placements: vec![placed("x", at("out", 0, 40))],
                model_id: "m".into(),
                inputs: vec![input.clone()],
                outputs: vec![],
            })),
            ..Default::default()
        };
        let bytes = single.encode_to_vec();
        let Request::Infer(call, _) = parse(&bytes).expect("parse") else {
            panic!("not Infer");
        };
        assert_eq!(call.sets[0][0].shm, Some(at("in", 8, 12)));
        assert_eq!(
            call.placements,
            vec![vec![Placement {
                name: "x",
                shm: at("out", 0, 40)
            }]]
        );
        let batch = WorkerRequest {
            body: Some(worker_request::Body::InferBatch(InferBatchRequest {
                model_id: "m".into(),
                sets: vec![
                    InputSet {
                        output_placements: vec![],
                        inputs: vec![input.clone()],
                    },
                    InputSet {
                        output_placements: vec![placed("y", at("out", 40, 4))],
                        inputs: vec![input],
                    },
                ],
                outputs: vec![],
            })),
            ..Default::default()
        };
        let bytes = batch.encode_to_vec();
        let Request::Infer(call, _) = parse(&bytes).expect("parse") else {
            panic!("not InferBatch");
        };
        assert_eq!(call.placements.len(), 2);
        assert!(call.placements[0].is_empty());
        assert_eq!(call.placements[1][0].name, "y");
        assert_eq!(call.placements[1][0].shm, at("out", 40, 4));
    }

    #[test]
    fn batches_and_other_requests() {
        let req = WorkerRequest {
            body: Some(worker_request::Body::InferBatch(InferBatchRequest {
                model_id: "m".into(),
                sets: vec![
                    InputSet {
                        output_placements: Default::default(),
                        inputs: vec![tensor_msg("a", &[9])],
                    },
                    InputSet {
                        output_placements: Default::default(),
                        inputs: vec![tensor_msg("a", &[8, 7])],
                    },
                ],
                outputs: vec![],
            })),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let Request::Infer(call, _) = parse(&bytes).expect("parse") else {
            panic!("not read as InferBatch");
        };
        assert!(call.batch);
        assert_eq!(call.sets.len(), 2);
        assert_eq!(call.sets[1][0].data, &[8u8, 7][..]);

        let other = WorkerRequest {
            body: Some(worker_request::Body::LiteInfo(Default::default())),
            ..Default::default()
        };
        assert!(matches!(
            parse(&other.encode_to_vec()),
            Ok(Request::Other(_))
        ));
        assert!(parse(&[0xff, 0xff, 0xff]).is_err(), "garbage is an error");
    }

    #[test]
    fn answers_written_in_place_decode_with_prost() {
        let data: Vec<Vec<u8>> = vec![vec![1; 200], vec![], vec![5, 6, 7, 8]];
        for batch in [false, true] {
            let set = || {
                vec![
                    OutputHead {
                        name: "out0",
                        dtype: 1,
                        shape: vec![1, 50],
                        len: data[0].len(),
                        shm: None,
                    },
                    OutputHead {
                        name: "",
                        dtype: 4,
                        shape: vec![],
                        len: 0,
                        shm: Some(SharedMemoryRef {
                            region: "out".into(),
                            offset: 64,
                            byte_size: 7,
                        }),
                    },
                    OutputHead {
                        name: "out2",
                        dtype: 6,
                        shape: vec![2, 2],
                        len: data[2].len(),
                        shm: None,
                    },
                ]
            };
            let answer = Answer {
                sets: if batch {
                    vec![set(), set()]
                } else {
                    vec![set()]
                },
                timings: Timings {
                    queue_us: 5,
                    invoke_us: 0,
                    total_us: 300,
                },
                batch,
            };
            let mut buf = vec![0u8; answer.len()];
            answer.write(&mut buf, |_, i, out| out.copy_from_slice(&data[i]));
            let decoded = WorkerResponse::decode(&buf[..]).expect("prost reads it");
            let outputs = match decoded.body.expect("body") {
                worker_response::Body::Infer(r) => {
                    assert!(!batch);
                    assert_eq!(r.timings.expect("timings").total_us, 300);
                    vec![r.outputs]
                }
                worker_response::Body::InferBatch(r) => {
                    assert!(batch);
                    r.results.into_iter().map(|s| s.outputs).collect()
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(outputs.len(), if batch { 2 } else { 1 });
            for set in outputs {
                assert_eq!(set[0].name, "out0");
                assert_eq!(set[0].shape, vec![1, 50]);
                assert_eq!(&set[0].data[..], &data[0][..]);
                assert!(set[1].data.is_empty());
                assert_eq!(
                    set[1].shm,
                    Some(SharedMemoryRef {
                        region: "out".into(),
                        offset: 64,
                        byte_size: 7,
                    })
                );
                assert_eq!(&set[2].data[..], &data[2][..]);
            }
        }
    }
}

/// Property tests: whatever bytes arrive, the parser answers (never
/// panics), everything it returns lies inside the frame it was given, and
/// what it builds grows only with the frame (no size read from the frame
/// is allocated before it is checked against the bytes that follow).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use prost::bytes::Bytes;
    use sidecar_proto::v1::{InferBatchRequest, InferRequest, InputSet, Tensor};
    use sidecar_proto::worker::worker_request;

    fn tensor() -> impl Strategy<Value = Tensor> {
        (
            "[a-z_0-9]{0,8}",
            0i32..12,
            vec(any::<i64>(), 0..5),
            vec(any::<u8>(), 0..48),
        )
            .prop_map(|(name, dtype, shape, data)| Tensor {
                shm: Default::default(),
                name,
                dtype,
                shape,
                data: Bytes::from(data),
            })
    }

    fn request() -> impl Strategy<Value = WorkerRequest> {
        let infer = (vec(tensor(), 0..4), vec("[a-z]{0,6}", 0..3)).prop_map(|(inputs, outputs)| {
            worker_request::Body::Infer(InferRequest {
                output_placements: Default::default(),
                model_id: "m".into(),
                inputs,
                outputs,
            })
        });
        let batch = (vec(vec(tensor(), 0..3), 0..4), vec("[a-z]{0,6}", 0..3)).prop_map(
            |(sets, outputs)| {
                worker_request::Body::InferBatch(InferBatchRequest {
                    model_id: "m".into(),
                    sets: sets
                        .into_iter()
                        .map(|inputs| InputSet {
                            output_placements: Default::default(),
                            inputs,
                        })
                        .collect(),
                    outputs,
                })
            },
        );
        let other = Just(worker_request::Body::LiteInfo(Default::default()));
        (
            "[a-z0-9-]{0,12}",
            any::<i64>(),
            prop_oneof![infer, batch, other],
        )
            .prop_map(|(tag, deadline, body)| WorkerRequest {
                regions: Default::default(),
                request_tag: tag,
                cache_partition: String::new(),
                deadline_unix_ms: deadline,
                body: Some(body),
            })
    }

    /// Whether `part` lies inside `whole`.
    fn inside(whole: &[u8], part: &[u8]) -> bool {
        let (start, end) = (
            whole.as_ptr() as usize,
            whole.as_ptr() as usize + whole.len(),
        );
        let at = part.as_ptr() as usize;
        part.is_empty() || (at >= start && at + part.len() <= end)
    }

    /// What a parsed Infer holds is borrowed from `bytes` and no larger
    /// than `bytes` allows: each set, tensor and dimension took at least
    /// one byte of the frame.
    fn within(bytes: &[u8], req: &Request<'_>) -> Result<(), TestCaseError> {
        let Request::Infer(call, _) = req else {
            return Ok(());
        };
        prop_assert!(call.sets.len() <= bytes.len().max(1));
        let tensors: usize = call.sets.iter().map(Vec::len).sum();
        prop_assert!(tensors <= bytes.len());
        let dims: usize = call.sets.iter().flatten().map(|t| t.shape.len()).sum();
        prop_assert!(dims <= bytes.len());
        prop_assert!(call.outputs.len() <= bytes.len());
        for t in call.sets.iter().flatten() {
            prop_assert!(inside(bytes, t.data), "tensor data outside the frame");
            prop_assert!(inside(bytes, t.name.as_bytes()), "name outside the frame");
        }
        for o in &call.outputs {
            prop_assert!(inside(bytes, o.as_bytes()), "output name outside the frame");
        }
        Ok(())
    }

    fn same(got: &[InputRef<'_>], want: &[Tensor]) -> Result<(), TestCaseError> {
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            prop_assert_eq!(g.name, w.name.as_str());
            prop_assert_eq!(g.dtype, w.dtype);
            prop_assert_eq!(&g.shape, &w.shape);
            prop_assert_eq!(g.data, &w.data[..]);
            prop_assert_eq!(&g.shm, &w.shm);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_inside_the_frame(bytes in vec(any::<u8>(), 0..512)) {
            if let Ok(req) = parse(&bytes) {
                within(&bytes, &req)?;
            }
        }

        #[test]
        fn valid_requests_round_trip(req in request()) {
            let bytes = req.encode_to_vec();
            let parsed = parse(&bytes).map_err(|e| TestCaseError::fail(e.message))?;
            within(&bytes, &parsed)?;
            match (parsed, req.body.as_ref()) {
                (Request::Infer(call, deadline), Some(worker_request::Body::Infer(r))) => {
                    prop_assert_eq!(deadline, req.deadline_unix_ms);
                    prop_assert!(!call.batch);
                    prop_assert_eq!(call.sets.len(), 1);
                    same(&call.sets[0], &r.inputs)?;
                    prop_assert_eq!(call.outputs, r.outputs.iter().map(String::as_str).collect::<Vec<_>>());
                }
                (Request::Infer(call, deadline), Some(worker_request::Body::InferBatch(r))) => {
                    prop_assert_eq!(deadline, req.deadline_unix_ms);
                    prop_assert!(call.batch);
                    prop_assert_eq!(call.sets.len(), r.sets.len());
                    for (got, want) in call.sets.iter().zip(&r.sets) {
                        same(got, &want.inputs)?;
                    }
                    prop_assert_eq!(call.outputs, r.outputs.iter().map(String::as_str).collect::<Vec<_>>());
                }
                (Request::Other(other), Some(worker_request::Body::LiteInfo(_))) => {
                    prop_assert_eq!(*other, req.clone());
                }
                (got, _) => prop_assert!(false, "read as the wrong kind: {got:?}"),
            }
        }

        #[test]
        fn mutated_requests_never_panic_and_stay_inside_the_frame(
            req in request(),
            edits in vec((any::<Index>(), any::<u8>()), 1..8),
            cut in any::<Index>(),
        ) {
            let mut bytes = req.encode_to_vec();
            for (at, byte) in edits {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok(parsed) = parse(&bytes) {
                within(&bytes, &parsed)?;
            }
        }

        #[test]
        fn a_declared_length_past_the_frame_is_refused(extra in 1u64..u64::MAX / 2, body in vec(any::<u8>(), 0..32)) {
            // WorkerRequest.infer (field 20) declaring more bytes than follow.
            let mut bytes = vec![0xa2, 0x01];
            let mut n = body.len() as u64 + extra;
            while n >= 0x80 {
                bytes.push((n as u8) | 0x80);
                n >>= 7;
            }
            bytes.push(n as u8);
            bytes.extend(&body);
            let e = parse(&bytes).expect_err("a length past the frame");
            prop_assert!(e.message.starts_with("malformed request"), "{}", e.message);
        }
    }
}
