//! LiteService: tensors built from the model's own shapes and types,
//! Infer, then the same input twice in one InferBatch.

use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{
    DType, GetModelInfoRequest, InferBatchRequest, InferRequest, InputSet, Tensor,
};

use crate::conn::{Call, connect, show};

#[derive(Debug, clap::Args)]
pub(crate) struct LiteArgs {
    /// A LITE model.
    #[arg(long, default_value = "face-detector")]
    model: String,
}

/// Bytes per element of a dtype.
fn size_of(d: DType) -> Option<usize> {
    Some(match d {
        DType::DtypeFloat32 | DType::DtypeInt32 => 4,
        DType::DtypeFloat16 | DType::DtypeInt16 => 2,
        DType::DtypeInt8 | DType::DtypeUint8 | DType::DtypeBool => 1,
        DType::DtypeInt64 => 8,
        DType::DtypeUnspecified => return None,
    })
}

/// A deterministic input: float32 in -1..1, every other type 0/1.
fn fill(d: DType, elements: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements * size_of(d).unwrap_or(1));
    for i in 0..elements {
        match d {
            DType::DtypeFloat32 => {
                let x = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
                out.extend_from_slice(&x.to_le_bytes());
            }
            _ => {
                let mut b = vec![0u8; size_of(d).unwrap_or(1)];
                b[0] = (i % 2) as u8;
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

/// Elements of a shape, checked (a hostile answer cannot overflow us).
fn elements(shape: &[i64]) -> Result<usize, String> {
    shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| n.checked_mul(d))
            .filter(|&n| n <= 1 << 28)
            .ok_or_else(|| format!("shape {shape:?} is not a tensor this example sends"))
    })
}

fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    (t.dtype == DType::DtypeFloat32 as i32).then(|| {
        t.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

pub(crate) async fn run(target: &str, call: &Call, a: LiteArgs) -> Result<(), String> {
    let mut lite = LiteServiceClient::new(connect(target).await?)
        .max_decoding_message_size(crate::conn::MAX_MESSAGE_BYTES);
    let info = call
        .within(
            lite.get_model_info(
                call.request(GetModelInfoRequest {
                    model_id: a.model.clone(),
                })
                .map_err(|e| show(&e))?,
            ),
        )
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let mut inputs = Vec::new();
    for t in &info.inputs {
        let d =
            DType::try_from(t.dtype).map_err(|_| format!("input {}: dtype {}", t.name, t.dtype))?;
        println!(
            "input {}: shape={:?} dtype={}",
            t.name,
            t.shape,
            d.as_str_name()
        );
        inputs.push(Tensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: fill(d, elements(&t.shape)?).into(),
            shm: None,
        });
    }
    let r = call
        .within(
            lite.infer(
                call.request(InferRequest {
                    model_id: a.model.clone(),
                    inputs: inputs.clone(),
                    ..Default::default()
                })
                .map_err(|e| show(&e))?,
            ),
        )
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    for o in &r.outputs {
        let range = f32s(o).map_or(String::new(), |v| {
            let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            format!(" min={lo:.4} max={hi:.4}")
        });
        println!(
            "output {}: shape={:?} {} bytes{range}",
            o.name,
            o.shape,
            o.data.len()
        );
    }
    let invoke = r.timings.map_or(0, |t| t.invoke_us);
    println!("infer: {} outputs, invoke {invoke} us", r.outputs.len());
    let set = InputSet {
        inputs,
        ..Default::default()
    };
    let b = call
        .within(
            lite.infer_batch(
                call.request(InferBatchRequest {
                    model_id: a.model,
                    sets: vec![set.clone(), set],
                    ..Default::default()
                })
                .map_err(|e| show(&e))?,
            ),
        )
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let same = b.results.iter().all(|s| s.outputs == r.outputs);
    println!(
        "batch: {} sets, identical to Infer: {same}",
        b.results.len()
    );
    if !same || r.outputs.is_empty() {
        return Err("InferBatch differs from Infer".into());
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShmArgs {
    /// A LITE model with one input.
    #[arg(long, default_value = "face-detector")]
    model: String,
}

/// Removes the shared-memory object when the example ends, however.
#[derive(Debug)]
struct Object(std::path::PathBuf);

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// LITE inference through a shared-memory region: the input written into
/// `/dev/shm/<key>` (a tmpfs file: plain file I/O, no mapping needed
/// here), the output written there by the server.
pub(crate) async fn shm(target: &str, call: &Call, a: ShmArgs) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    use sidecar_proto::v1::shared_memory_service_client::SharedMemoryServiceClient;
    use sidecar_proto::v1::{
        OutputPlacement, RegisterRegionRequest, SharedMemoryRef, UnregisterRegionRequest,
    };

    let channel = connect(target).await?;
    let mut lite = LiteServiceClient::new(channel.clone());
    let mut regions = SharedMemoryServiceClient::new(channel);
    let req = GetModelInfoRequest {
        model_id: a.model.clone(),
    };
    let info = call
        .within(lite.get_model_info(call.request(req).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let [inp] = info.inputs.as_slice() else {
        return Err(format!(
            "{} has {} inputs, this example feeds one",
            a.model,
            info.inputs.len()
        ));
    };
    let out = info.outputs.last().ok_or("a model without outputs")?;
    let size = |t: &sidecar_proto::v1::TensorInfo| -> Result<u64, String> {
        let d = DType::try_from(t.dtype)
            .ok()
            .and_then(size_of)
            .ok_or("unknown dtype")?;
        Ok((elements(&t.shape)? * d) as u64)
    };
    let (in_bytes, out_bytes) = (size(inp)?, size(out)?);
    let d = DType::try_from(inp.dtype).map_err(|_| "unknown dtype")?;
    let input = fill(d, elements(&inp.shape)?);

    let key = format!("/sidecar-example-{}", std::process::id());
    let path = std::path::PathBuf::from(format!("/dev/shm{key}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let _object = Object(path);
    file.set_len(in_bytes + out_bytes)
        .map_err(|e| e.to_string())?;
    file.write_all_at(&input, 0).map_err(|e| e.to_string())?;
    let req = RegisterRegionRequest {
        name: "io".into(),
        key: key.clone(),
        offset: 0,
        byte_size: in_bytes + out_bytes,
        writable: true,
    };
    let region = call
        .within(regions.register_region(call.request(req).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    println!(
        "shm: region {} ({}, {} bytes) registered, writable={}",
        region.name, region.key, region.byte_size, region.writable
    );
    let at = |offset, byte_size| SharedMemoryRef {
        region: "io".into(),
        offset,
        byte_size,
    };
    let req = InferRequest {
        model_id: a.model.clone(),
        inputs: vec![Tensor {
            name: inp.name.clone(),
            dtype: inp.dtype,
            shape: inp.shape.clone(),
            data: Default::default(),
            shm: Some(at(0, in_bytes)),
        }],
        outputs: vec![out.name.clone()],
        output_placements: vec![OutputPlacement {
            name: out.name.clone(),
            shm: Some(at(in_bytes, out_bytes)),
        }],
    };
    let r = call
        .within(lite.infer(call.request(req).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let inline_data = r.outputs.first().map_or(0, |t| t.data.len());
    let mut got = vec![0u8; out_bytes as usize];
    file.read_exact_at(&mut got, in_bytes)
        .map_err(|e| e.to_string())?;
    let inline = InferRequest {
        model_id: a.model.clone(),
        inputs: vec![Tensor {
            name: inp.name.clone(),
            dtype: inp.dtype,
            shape: inp.shape.clone(),
            data: input.into(),
            shm: None,
        }],
        outputs: vec![out.name.clone()],
        ..Default::default()
    };
    let i = call
        .within(lite.infer(call.request(inline).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let same = i.outputs.first().is_some_and(|t| t.data[..] == got[..]);
    println!(
        "shm infer: input {in_bytes} bytes read from the region, output {} {out_bytes} bytes written into it (inline data {inline_data} bytes), identical to inline: {same}",
        out.name
    );
    let req = UnregisterRegionRequest { name: "io".into() };
    let gone = call
        .within(regions.unregister_region(call.request(req).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    println!("shm: unregistered {}", gone.unregistered);
    if !same || inline_data != 0 {
        return Err("the region's output differs from the inline one".into());
    }
    Ok(())
}
