//! The LITE rows: BlazeFace (128x128 float32 input) Infer calls, inline or
//! with the input and the outputs in a region of the client's.

use std::time::{Duration, Instant};

use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::shared_memory_service_client::SharedMemoryServiceClient;
use sidecar_proto::v1::{
    DType, InferRequest, InferResponse, OutputPlacement, RegisterRegionRequest, SharedMemoryRef,
    Tensor, UnregisterRegionRequest,
};
use tonic::transport::Channel;

use crate::Res;
use crate::shm::Shm;
use crate::transport::LITE_ID;

const SHAPE: [i64; 4] = [1, 128, 128, 3];
const REGION: &str = "bench-lite";

/// One measurement: per call, the latency at the client and the worker's
/// model run (`timings.invoke_us`), µs.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    pub(crate) latency: Vec<f64>,
    pub(crate) invoke: Vec<f64>,
    /// The supervisor's `timings.total_us`: from the call's arrival at the
    /// supervisor to its answer.
    pub(crate) served: Vec<f64>,
}

/// The input and output windows of the region.
#[derive(Debug)]
struct Layout {
    shm: Shm,
    /// (offset, bytes) of each output, in model order.
    outputs: Vec<(usize, usize)>,
}

/// A row's client and its request.
#[derive(Debug)]
pub(crate) struct Row {
    client: LiteServiceClient<Channel>,
    regions: SharedMemoryServiceClient<Channel>,
    req: InferRequest,
    input: Vec<u8>,
    shm: Option<Layout>,
}

/// Every call runs the model: the result cache (issue 17) would answer a
/// repeated input without it.
fn uncached(req: &InferRequest) -> tonic::Request<InferRequest> {
    let mut r = tonic::Request::new(req.clone());
    r.metadata_mut().insert(
        "cache-control",
        tonic::metadata::MetadataValue::from_static("no-store"),
    );
    r
}

fn invoke_us(r: &InferResponse) -> Res<f64> {
    let t = r.timings.ok_or("an InferResponse without timings")?;
    if t.invoke_us == 0 {
        return Err("an InferResponse with invoke_us 0: the model did not run".into());
    }
    Ok(t.invoke_us as f64)
}

impl Row {
    /// The client on `channel`; with `shm`, the input and every output in
    /// one region registered (writable) over the same channel, checked
    /// once: the outputs the worker writes there equal the inline call's.
    pub(crate) async fn prepare(channel: Channel, shm: bool) -> Res<Row> {
        let input = e2e::float_pattern(SHAPE.iter().product::<i64>() as usize);
        let mut client =
            LiteServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let mut regions = SharedMemoryServiceClient::new(channel);
        let mut req = InferRequest {
            model_id: LITE_ID.into(),
            inputs: vec![Tensor {
                name: "input".into(),
                dtype: DType::DtypeFloat32 as i32,
                shape: SHAPE.to_vec(),
                data: input.clone().into(),
                shm: None,
            }],
            outputs: vec![],
            output_placements: vec![],
        };
        let inline = client.infer(uncached(&req)).await?.into_inner();
        invoke_us(&inline)?;
        let mut row = Row {
            client,
            regions: regions.clone(),
            req: req.clone(),
            input,
            shm: None,
        };
        if shm {
            let align = |n: usize| n.div_ceil(64) * 64;
            let mut at = align(row.input.len());
            let mut outputs = Vec::new();
            for t in &inline.outputs {
                outputs.push((at, t.data.len()));
                at = align(at + t.data.len());
            }
            let region = Shm::create(&format!("/sidecar-bench-{}-lite", std::process::id()), at)?;
            regions
                .register_region(RegisterRegionRequest {
                    name: REGION.into(),
                    key: region.key().into(),
                    offset: 0,
                    byte_size: region.len() as u64,
                    writable: true,
                })
                .await
                .map_err(|s| format!("RegisterRegion: {:?}: {}", s.code(), s.message()))?;
            let window = |offset: usize, bytes: usize| SharedMemoryRef {
                region: REGION.into(),
                offset: offset as u64,
                byte_size: bytes as u64,
            };
            req.inputs[0].data = Default::default();
            req.inputs[0].shm = Some(window(0, row.input.len()));
            req.output_placements = inline
                .outputs
                .iter()
                .zip(&outputs)
                .map(|(t, &(offset, bytes))| OutputPlacement {
                    name: t.name.clone(),
                    shm: Some(window(offset, bytes)),
                })
                .collect();
            row.req = req;
            row.shm = Some(Layout {
                shm: region,
                outputs,
            });
            let (got, r) = row.call().await?;
            for (t, placed) in r.outputs.iter().zip(&got) {
                let inline_t = inline.outputs.iter().find(|o| o.name == t.name);
                if t.shm.is_none() || !t.data.is_empty() {
                    return Err(
                        format!("output {} came back inline, not in the region", t.name).into(),
                    );
                }
                if inline_t.map(|o| &o.data[..]) != Some(&placed[..]) {
                    return Err(format!(
                        "output {} in the region differs from the inline call's",
                        t.name
                    )
                    .into());
                }
            }
        }
        for _ in 0..5 {
            row.call().await?;
        }
        Ok(row)
    }

    /// One call as the client makes it: with shared memory, the input
    /// written into the region first and the outputs copied out after,
    /// as the in-process interpreter's `set_tensor` and `get_tensor` copy
    /// them. The outputs' bytes (shared-memory rows) and the response.
    async fn call(&mut self) -> Res<(Vec<Vec<u8>>, InferResponse)> {
        if let Some(l) = &mut self.shm {
            l.shm.write(0, &self.input)?;
        }
        let r = self
            .client
            .infer(uncached(&self.req))
            .await
            .map_err(|s| format!("Infer: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let mut out = Vec::new();
        if let Some(l) = &self.shm {
            for &(offset, bytes) in &l.outputs {
                out.push(l.shm.read(offset, bytes)?);
            }
        }
        Ok((out, r))
    }

    /// Calls one after the other for `seconds`.
    pub(crate) async fn run(&mut self, seconds: f64) -> Res<Samples> {
        let mut s = Samples::default();
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            let started = Instant::now();
            let (_, r) = self.call().await?;
            s.latency.push(started.elapsed().as_secs_f64() * 1e6);
            s.invoke.push(invoke_us(&r)?);
            s.served.push(r.timings.map_or(0.0, |t| t.total_us as f64));
        }
        Ok(s)
    }

    /// Unregisters the region (the object goes when the row is dropped).
    pub(crate) async fn finish(mut self) {
        if self.shm.is_some() {
            let _ = self
                .regions
                .unregister_region(UnregisterRegionRequest {
                    name: REGION.into(),
                })
                .await;
        }
    }
}
