//! The VISION rows: a face-detection stream of raw 1280x720 BGR frames,
//! inline or in a ring of slots of one region of the client's. Every row
//! keeps at most PENDING frames in flight (the stream's
//! `max_pending_frames`). With the ring, the client made each of the
//! FRAMES frames in its own slot once, as a capture or a decoder writing
//! into the slot does, and frame k names slot k mod SLOTS only once that
//! slot's `released` came back (the protocol a client must follow).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar_proto::v1::shared_memory_service_client::SharedMemoryServiceClient;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    FaceDetectionTask, Frame, PixelFormat, ProcessRequest, RawImage, RegisterRegionRequest,
    SharedMemoryRef, StreamConfig, UnregisterRegionRequest, VisionTask, frame, process_request,
    vision_task,
};
use tokio::sync::Semaphore;
use tonic::codegen::Bytes;
use tonic::transport::Channel;

use crate::Res;
use crate::shm::Shm;
use crate::transport::VISION_ID;

pub(crate) const W: usize = 1280;
pub(crate) const H: usize = 720;
/// Frames in flight at most, = the stream's `max_pending_frames`.
pub(crate) const PENDING: usize = 4;
/// Slots of the ring: one per distinct frame (`vision_direct`'s 8).
pub(crate) const SLOTS: usize = 8;
const REGION: &str = "bench-vision";

/// The same frames as `vision_direct`'s (and the VISION benchmark's).
fn frame_bytes(k: usize) -> Bytes {
    (0..W * H * 3)
        .map(|i| ((i / 3 % W + i / 3 / W + 7 * k + (i % 3) * 50) % 256) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The processes whose CPU time is counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pids {
    pub(crate) client: u32,
    pub(crate) supervisor: u32,
    pub(crate) worker: u32,
}

impl Pids {
    fn cpu(&self) -> Res<[f64; 3]> {
        let one =
            |pid: u32| e2e::cpu_seconds(pid).ok_or_else(|| format!("no CPU time for pid {pid}"));
        Ok([one(self.client)?, one(self.supervisor)?, one(self.worker)?])
    }
}

/// One stream run: FPS, CPU ms per frame (client, supervisor, worker) and
/// what writing a frame into its slot costs the client, µs per frame (the
/// ring row; measured when the frames were made in their slots).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) fps: f64,
    pub(crate) cpu: [f64; 3],
    pub(crate) write_us: f64,
}

/// A row's client.
#[derive(Debug)]
pub(crate) struct Row {
    client: VisionServiceClient<Channel>,
    regions: SharedMemoryServiceClient<Channel>,
    pids: Pids,
    frames: Arc<Vec<Bytes>>,
    shm: Option<Shm>,
    /// µs per frame the client spent writing the frames into their slots.
    write_us: f64,
}

impl Row {
    /// The client on `channel`; with `shm`, a region of SLOTS frames
    /// registered over the same channel, each frame written into its slot
    /// once (timed: `Run::write_us`).
    pub(crate) async fn prepare(channel: Channel, pids: Pids, shm: bool) -> Res<Row> {
        let mut regions = SharedMemoryServiceClient::new(channel.clone());
        let region = if shm {
            let region = Shm::create(
                &format!("/sidecar-bench-{}-vision", std::process::id()),
                SLOTS * W * H * 3,
            )?;
            regions
                .register_region(RegisterRegionRequest {
                    name: REGION.into(),
                    key: region.key().into(),
                    offset: 0,
                    byte_size: region.len() as u64,
                    writable: false,
                })
                .await
                .map_err(|s| format!("RegisterRegion: {:?}: {}", s.code(), s.message()))?;
            Some(region)
        } else {
            None
        };
        let frames: Vec<Bytes> = (0..SLOTS).map(frame_bytes).collect();
        let mut write_us = 0.0;
        let region = match region {
            Some(mut region) => {
                // The first pass faults the object's pages in; the second
                // is what a client pays per frame once they are.
                for pass in 0..2 {
                    let t = Instant::now();
                    for (slot, pixels) in frames.iter().enumerate() {
                        region.write(slot * pixels.len(), pixels)?;
                    }
                    if pass == 1 {
                        write_us = t.elapsed().as_secs_f64() * 1e6 / SLOTS as f64;
                    }
                }
                Some(region)
            }
            None => None,
        };
        let mut row = Row {
            client: VisionServiceClient::new(channel).max_decoding_message_size(64 << 20),
            regions,
            pids,
            frames: Arc::new(frames),
            shm: region,
            write_us,
        };
        // Warm-up (and a check that the path works at all).
        row.run(0.5).await?;
        Ok(row)
    }

    /// Streams frames for `seconds`; counts the results.
    pub(crate) async fn run(&mut self, seconds: f64) -> Res<Run> {
        let (tx, rx) = tokio::sync::mpsc::channel(PENDING);
        tx.send(ProcessRequest {
            msg: Some(process_request::Msg::Config(StreamConfig {
                model_id: VISION_ID.into(),
                tasks: vec![VisionTask {
                    task: Some(vision_task::Task::Faces(FaceDetectionTask::default())),
                }],
                max_pending_frames: PENDING as u32,
                ..Default::default()
            })),
        })
        .await?;
        let mut results = self
            .client
            .process(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("Process: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        // One permit per free slot, and one per frame that may be in flight.
        let free: Arc<Vec<Semaphore>> = Arc::new((0..SLOTS).map(|_| Semaphore::new(1)).collect());
        let flight = Arc::new(Semaphore::new(PENDING));
        let cpu_before = self.pids.cpu()?;
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let frames = self.frames.clone();
        let ring = self.shm.is_some();
        let slots = free.clone();
        let in_flight = flight.clone();
        let sender = tokio::spawn(async move {
            let mut k = 0usize;
            while Instant::now() < end {
                let Ok(permit) = in_flight.acquire().await else {
                    break;
                };
                permit.forget();
                let raw = if ring {
                    // Frame k was made in slot k mod SLOTS.
                    let slot = k % SLOTS;
                    let Ok(permit) = slots[slot].acquire().await else {
                        break;
                    };
                    permit.forget();
                    raw_image(Bytes::new(), Some(slot_ref(slot)))
                } else {
                    raw_image(frames[k % frames.len()].clone(), None)
                };
                let f = ProcessRequest {
                    msg: Some(process_request::Msg::Frame(Frame {
                        index: k as u64,
                        data: Some(frame::Data::Raw(raw)),
                        ..Default::default()
                    })),
                };
                if tx.send(f).await.is_err() {
                    break;
                }
                k += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(k)
        });
        let received = self.receive(&mut results, &free, &flight, ring).await;
        if received.is_err() {
            sender.abort();
        }
        let sent = sender.await;
        let (n, cpu_after) = (received?, self.pids.cpu()?);
        let k = sent??;
        if n != k {
            return Err(format!("{k} frames sent, {n} results").into());
        }
        let per_frame = |i: usize| 1000.0 * (cpu_after[i] - cpu_before[i]) / n.max(1) as f64;
        Ok(Run {
            fps: n as f64 / start.elapsed().as_secs_f64(),
            cpu: [per_frame(0), per_frame(1), per_frame(2)],
            write_us: self.write_us,
        })
    }

    /// Reads results to the stream's end, giving each released slot back
    /// to the sender; the number of frames processed.
    async fn receive(
        &self,
        results: &mut tonic::Streaming<sidecar_proto::v1::ProcessResponse>,
        free: &[Semaphore],
        flight: &Semaphore,
        ring: bool,
    ) -> Res<usize> {
        let mut n = 0usize;
        while let Some(r) = results
            .message()
            .await
            .map_err(|s| format!("Process: {:?}: {}", s.code(), s.message()))?
        {
            if r.dropped {
                return Err(format!(
                    "frame {} dropped (max_pending_frames {PENDING})",
                    r.frame_index
                )
                .into());
            }
            if ring {
                let want = slot_ref(r.frame_index as usize % SLOTS);
                match r.released {
                    Some(got) if got == want => {}
                    other => {
                        return Err(format!(
                            "frame {}'s result released {other:?}, not its slot {want:?}",
                            r.frame_index
                        )
                        .into());
                    }
                }
                let slot = &free[r.frame_index as usize % SLOTS];
                if slot.available_permits() != 0 {
                    return Err(format!("slot of frame {} released twice", r.frame_index).into());
                }
                slot.add_permits(1);
            }
            flight.add_permits(1);
            n += 1;
        }
        Ok(n)
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

fn slot_ref(slot: usize) -> SharedMemoryRef {
    SharedMemoryRef {
        region: REGION.into(),
        offset: (slot * W * H * 3) as u64,
        byte_size: (W * H * 3) as u64,
    }
}

fn raw_image(data: Bytes, shm: Option<SharedMemoryRef>) -> RawImage {
    RawImage {
        width: W as u32,
        height: H as u32,
        format: PixelFormat::Bgr8 as i32,
        stride: 0,
        data,
        shm,
    }
}
