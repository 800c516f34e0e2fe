//! A request's shared-memory refs, resolved among the caller's own
//! regions into the `RegionUse`s its `WorkerRequest` carries, with an
//! in-use hold on each region for the call.
//!
//! A request without refs costs one scan of its tensors or images and
//! is sent byte for byte as before. An object that shrank under a
//! region's end since it was registered is FAILED_PRECONDITION (the
//! region's state changed, not the call: register it again).

use sidecar_proto::v1::{Image, SharedMemoryRef, frame, image};
use sidecar_proto::worker::{RegionUse, worker_request::Body};

use super::names::{shown, window_end};
use super::{InUse, Regions};
use crate::auth::Identity;
use crate::error::Error;

/// The regions a call holds, and the `RegionUse` of each.
#[derive(Debug, Default)]
pub struct Held {
    /// One per distinct region the request names.
    pub regions: Vec<InUse>,
}

impl Held {
    /// Whether the request names no region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The `WorkerRequest.regions` of the call, `attach` unset (the
    /// worker's channel sets it: [`super::attach`]).
    pub fn uses(&self) -> Vec<RegionUse> {
        self.regions
            .iter()
            .map(|h| RegionUse {
                name: h.0.name.clone(),
                id: h.0.id,
                offset: h.0.offset,
                byte_size: h.0.byte_size,
                writable: h.0.writable,
                attach: false,
            })
            .collect()
    }
}

/// One ref of a request.
#[derive(Debug)]
pub struct Ref<'a> {
    /// Where it is (`inputs[0].shm`).
    pub field: String,
    /// The ref.
    pub shm: &'a SharedMemoryRef,
    /// An output is written there.
    pub output: bool,
    /// Bytes the same tensor or image also carries inline.
    pub inline: usize,
}

fn tensors<'a>(
    out: &mut Vec<Ref<'a>>,
    prefix: &str,
    inputs: &'a [sidecar_proto::v1::Tensor],
    placements: &'a [sidecar_proto::v1::OutputPlacement],
) -> Result<(), Error> {
    for (i, t) in inputs.iter().enumerate() {
        if let Some(s) = &t.shm {
            out.push(Ref {
                field: format!("{prefix}inputs[{i}].shm"),
                shm: s,
                output: false,
                inline: t.data.len(),
            });
        }
    }
    for (j, p) in placements.iter().enumerate() {
        let Some(s) = &p.shm else {
            return Err(Error::InvalidArgument(format!(
                "{prefix}output_placements[{j}].shm is missing: a placement names a region window"
            )));
        };
        out.push(Ref {
            field: format!("{prefix}output_placements[{j}].shm"),
            shm: s,
            output: true,
            inline: 0,
        });
    }
    Ok(())
}

fn images<'a>(out: &mut Vec<Ref<'a>>, imgs: &'a [sidecar_proto::v1::Image]) {
    for (i, img) in imgs.iter().enumerate() {
        match &img.data {
            Some(image::Data::Raw(raw)) => {
                if let Some(s) = &raw.shm {
                    out.push(Ref {
                        field: format!("images[{i}].raw.shm"),
                        shm: s,
                        output: false,
                        inline: raw.data.len(),
                    });
                }
            }
            Some(image::Data::EncodedShm(s)) => out.push(Ref {
                field: format!("images[{i}].encoded_shm"),
                shm: s,
                output: false,
                inline: 0,
            }),
            _ => {}
        }
    }
}

/// Every ref of `body`, in the order of its fields.
pub fn refs(body: &Body) -> Result<Vec<Ref<'_>>, Error> {
    let mut out = Vec::new();
    match body {
        Body::Infer(r) => tensors(&mut out, "", &r.inputs, &r.output_placements)?,
        Body::InferBatch(b) => {
            for (k, set) in b.sets.iter().enumerate() {
                tensors(
                    &mut out,
                    &format!("sets[{k}]."),
                    &set.inputs,
                    &set.output_placements,
                )?;
            }
        }
        Body::VisionBatch(b) => images(&mut out, &b.images),
        Body::VisionFrame(f) => match &f.data {
            Some(frame::Data::Raw(raw)) => {
                if let Some(s) = &raw.shm {
                    out.push(Ref {
                        field: "frame.raw.shm".into(),
                        shm: s,
                        output: false,
                        inline: raw.data.len(),
                    });
                }
            }
            Some(frame::Data::EncodedShm(s)) => out.push(Ref {
                field: "frame.encoded_shm".into(),
                shm: s,
                output: false,
                inline: 0,
            }),
            _ => {}
        },
        _ => {}
    }
    Ok(out)
}

/// Whether an image's bytes are in a shared-memory region.
pub fn image_has_ref(img: &Image) -> bool {
    match &img.data {
        Some(image::Data::Raw(raw)) => raw.shm.is_some(),
        Some(image::Data::EncodedShm(_)) => true,
        _ => false,
    }
}

/// Whether `body` names any region (such a call is never cached nor
/// shared with an identical one: the region's bytes change under the
/// same request).
pub fn uses_regions(body: &Body) -> bool {
    match body {
        Body::Infer(r) => {
            !r.output_placements.is_empty() || r.inputs.iter().any(|t| t.shm.is_some())
        }
        Body::InferBatch(b) => b
            .sets
            .iter()
            .any(|s| !s.output_placements.is_empty() || s.inputs.iter().any(|t| t.shm.is_some())),
        Body::VisionBatch(b) => b.images.iter().any(image_has_ref),
        Body::VisionFrame(f) => match &f.data {
            Some(frame::Data::Raw(raw)) => raw.shm.is_some(),
            Some(frame::Data::EncodedShm(_)) => true,
            _ => false,
        },
        _ => false,
    }
}

impl Regions {
    /// Resolves `body`'s refs among `identity`'s regions: each window
    /// within its region, no tensor both inline and in a region, outputs
    /// only in writable regions, each object still as large as its
    /// region. Holds every region named until the returned [`Held`] is
    /// dropped.
    pub fn resolve(&self, identity: &Identity, body: &Body) -> Result<Held, Error> {
        let refs = refs(body)?;
        let mut held = Held::default();
        for r in &refs {
            if r.inline > 0 {
                return Err(Error::InvalidArgument(format!(
                    "{}: the bytes are both inline ({} bytes) and in shared-memory region {}; send one or the other",
                    r.field,
                    r.inline,
                    shown(&r.shm.region)
                )));
            }
            let known = held.regions.iter().position(|h| h.0.name == r.shm.region);
            let i = match known {
                Some(i) => i,
                None => {
                    held.regions.push(self.hold(identity, &r.shm.region)?);
                    held.regions.len() - 1
                }
            };
            let region = &held.regions[i].0;
            let end = window_end(&r.field, r.shm.offset, r.shm.byte_size)?;
            if end > region.byte_size {
                return Err(Error::InvalidArgument(format!(
                    "{}: offset {} + byte_size {} = {end} passes the end of shared-memory region {} ({} bytes)",
                    r.field,
                    r.shm.offset,
                    r.shm.byte_size,
                    shown(&region.name),
                    region.byte_size
                )));
            }
            if r.output && !region.writable {
                return Err(Error::InvalidArgument(format!(
                    "{}: shared-memory region {} is read-only; outputs need a region open for writing (register it with writable = true)",
                    r.field,
                    shown(&region.name)
                )));
            }
        }
        for h in &held.regions {
            let r = &h.0;
            let size = super::open::size_now(&r.fd)?;
            let end = r.offset.saturating_add(r.byte_size);
            if size < end {
                return Err(Error::FailedPrecondition(format!(
                    "shared-memory region {}: its object {} shrank to {size} bytes, under the region's end at {end}; register it again",
                    shown(&r.name),
                    shown(&r.key)
                )));
            }
        }
        Ok(held)
    }
}
