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
