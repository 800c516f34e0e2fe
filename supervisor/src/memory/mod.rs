//! The memory guard: samples every worker's memory, the host's and the
//! GPUs' once per `memory.sample_interval`; admits a load only when it
//! fits (unloading idle, unpinned models first); kills a worker over its
//! budget, or the one that pushed the host under its reserve or a GPU
//! under its reserve, through the actor's one kill path; unloads models
//! idle past their keep-alive.
//!
//! The decisions are pure functions in [`policy`]; this module gathers
//! the figures and carries the decisions out.

pub mod gguf;
pub mod gpu;
pub mod host;
pub mod policy;

mod enforce;

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use sidecar_proto::v1::{GpuDevice, GpuMemory, HostMemory};

use crate::config::{Config, Family, ModelSpec};
use crate::error::Error;
use crate::registry::Registry;
use crate::worker::{State, WorkerHandle};

use self::host::HostSample;
use self::policy::{Admission, Candidate, Room};

/// What the guard knows of one model's memory.
#[derive(Debug, Clone, Default)]
pub struct ModelMemory {
    /// What admission assumed before the model ran.
    pub estimate: u64,
    /// Largest private memory sampled.
    pub peak_private: u64,
    /// Largest private plus file-backed memory sampled.
    pub peak_resident: u64,
    /// The last sample of the current worker.
    pub latest: Option<ipc::SelfMemory>,
    /// Device memory of the current worker: (index, uuid, bytes).
    pub gpu: Vec<(u32, String, u64)>,
    /// When sampled (Unix ms).
    pub sampled_ms: i64,
    /// Admitted and not stopped since: its footprint counts against the
    /// room of other loads.
    pub admitted: bool,
}

impl ModelMemory {
    /// What admission counts for this model: its estimate, or more when
    /// it was measured larger.
    pub fn footprint(&self) -> u64 {
        self.estimate.max(self.peak_resident)
    }

    /// The wire form of the GPU figures.
    pub fn gpu_proto(&self) -> Vec<GpuMemory> {
        self.gpu
            .iter()
            .map(|(index, uuid, used)| GpuMemory {
                device_index: *index,
                device_uuid: uuid.clone(),
                used_bytes: *used,
            })
            .collect()
    }
}

/// Shared between a model's handle, its actor and the guard.
pub type SharedMemory = Arc<Mutex<ModelMemory>>;

/// The estimate of a model before it runs: the configured figure, or one
/// computed from the file.
pub fn estimate(spec: &ModelSpec, file: &std::path::Path) -> u64 {
    if spec.memory_estimate > 0 {
        return spec.memory_estimate;
    }
    let size = std::fs::metadata(file).map_or(0, |m| m.len());
    match spec.family {
        Family::Text => policy::text_need(
            size,
            gguf::text_shape(file).as_ref(),
            spec.text.context_size,
            spec.text.parallel,
            spec.text.batch_size,
        ),
        Family::Lite => policy::lite_need(size),
        Family::Vision => policy::vision_need(size),
    }
}

/// The last host and GPU samples.
#[derive(Debug, Clone, Default)]
struct Latest {
    host: HostSample,
    gpus: Vec<gpu::Device>,
}

/// The guard.
#[derive(Debug)]
pub struct Guard {
    config: Arc<Config>,
    gpus: Option<gpu::Gpus>,
    latest: Mutex<Latest>,
    registry: OnceLock<Weak<Registry>>,
    /// Pids of workers stopped for memory whose GPU memory NVML may still
    /// list: the next admission waits until it no longer does.
    stopped: Mutex<Vec<u32>>,
    /// The most devices NVML has listed.
    devices_seen: Mutex<usize>,
    /// One admission at a time, so two loads cannot both count the same
    /// free memory.
    admitting: tokio::sync::Mutex<()>,
}

impl Guard {
    /// Opens NVML (logging once when the host has none).
    pub fn new(config: Arc<Config>) -> Arc<Guard> {
        let gpus = match gpu::Gpus::open() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::info!("GPU monitoring is off: NVML not available ({e})");
                None
            }
        };
        let latest = Latest {
            host: host::sample(),
            gpus: gpus.as_ref().map(gpu::Gpus::sample).unwrap_or_default(),
        };
        Arc::new(Guard {
            config,
            gpus,
            latest: Mutex::new(latest),
            registry: OnceLock::new(),
            admitting: tokio::sync::Mutex::new(()),
            stopped: Mutex::new(Vec::new()),
            devices_seen: Mutex::new(0),
        })
    }

    /// Gives the guard the registry it watches.
    pub fn attach(&self, registry: &Arc<Registry>) {
        let _ = self.registry.set(Arc::downgrade(registry));
    }

    fn models(&self) -> Vec<WorkerHandle> {
        self.registry
            .get()
            .and_then(Weak::upgrade)
            .map(|r| r.list())
            .unwrap_or_default()
    }

    fn latest(&self) -> Latest {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether NVML is loaded.
    pub fn gpu_monitoring(&self) -> bool {
        self.gpus.is_some()
    }

    /// The host as last sampled, for GetStatus.
    pub fn host_proto(&self) -> HostMemory {
        let h = self.latest().host;
        HostMemory {
            total_bytes: h.total,
            available_bytes: h.available,
            cgroup_limit_bytes: h.cgroup_limit,
            cgroup_usage_bytes: h.cgroup_usage,
            cgroup_oom_kills: h.cgroup_oom_kills,
            reserve_bytes: self.config.memory.host_reserve,
        }
    }

    /// The GPUs as last sampled, for GetStatus.
    pub fn gpus_proto(&self) -> Vec<GpuDevice> {
        self.latest()
            .gpus
            .iter()
            .map(|d| GpuDevice {
                index: d.index,
                name: d.name.clone(),
                uuid: d.uuid.clone(),
                total_bytes: d.total,
                used_bytes: d.used,
                free_bytes: d.free,
                reserve_bytes: self.config.memory.gpu_reserve,
            })
            .collect()
    }

    /// What all models may use: the configured limit, else the
    /// container's less its margin, else the host's memory.
    fn limit(&self, h: &HostSample) -> u64 {
        let m = &self.config.memory;
        if m.limit > 0 {
            m.limit
        } else if h.cgroup_limit > 0 {
            h.cgroup_limit.saturating_sub(m.cgroup_margin)
        } else {
            h.total
        }
    }

    /// Admits model `id`, which needs `need` bytes: at once when it fits,
    /// after unloading idle, unpinned models (least recently used first)
    /// when that makes room, else RESOURCE_EXHAUSTED with the numbers.
    /// On success the model's memory is marked admitted.
    pub async fn admit(&self, id: &str, memory: &SharedMemory) -> Result<(), Error> {
        let _one = self.admitting.lock().await;
        self.wait_gpu_released().await;
        let need = memory.lock().map_or(0, |m| m.footprint());
        let h = host::sample();
        let others: Vec<WorkerHandle> = self
            .models()
            .into_iter()
            .filter(|m| m.spec.id != id && m.memory().admitted)
            .collect();
        let committed = others.iter().map(|m| m.memory().footprint()).sum();
        let room = Room {
            limit: self.limit(&h),
            committed,
            free: h.free(),
            reserve: self.config.memory.host_reserve,
        };
        let candidates: Vec<Candidate> = others
            .iter()
            .filter(|m| m.status().state == State::Ready)
            .map(|m| Candidate {
                id: m.spec.id.clone(),
                footprint: m.memory().footprint(),
                last_used_ms: m.last_used_ms(),
                pinned: m.spec.pinned,
                busy: m.busy(),
            })
            .collect();
        let admitted = || {
            if let Ok(mut m) = memory.lock() {
                m.admitted = true;
            }
        };
        match policy::admit(need, room, &candidates) {
            Admission::Fits => {
                admitted();
                Ok(())
            }
            Admission::Evict(ids) => {
                for victim in ids {
                    if let Some(m) = others.iter().find(|m| m.spec.id == victim) {
                        let note = format!(
                            "unloaded to make room for model {id:?} (needs {}, {} free above the reserve of {})",
                            mib(need),
                            mib(room.available()),
                            mib(room.reserve)
                        );
                        tracing::info!(model = %victim, "{note}");
                        let pid = m.status().pid;
                        m.evict(note).await;
                        self.stopped(pid);
                    }
                }
                self.wait_gpu_released().await;
                admitted();
                Ok(())
            }
            Admission::Refuse {
                needed,
                free,
                reserve,
            } => Err(Error::ResourceExhausted(format!(
                "model {id:?} needs {} of host memory; {} is free to models (limit {}, {} held by other models, {} kept in reserve), even after unloading every idle, unpinned model",
                mib(needed),
                mib(free),
                mib(room.limit),
                mib(room.committed),
                mib(reserve)
            ))),
        }
    }

    /// GPU layers for a text model that wants `wanted` (-1: all) with
    /// `layers` layers of `per_layer` bytes and `overhead` beside them:
    /// what fits on the device with the most free memory, or `wanted`
    /// unchanged without NVML.
    pub fn gpu_layers(&self, wanted: i32, layers: u64, per_layer: u64, overhead: u64) -> i32 {
        let devices = self.latest().gpus;
        devices
            .iter()
            .filter(|d| d.ok)
            .map(|d| {
                policy::gpu_layers_that_fit(
                    d.free,
                    self.config.memory.gpu_reserve,
                    overhead,
                    layers,
                    per_layer,
                    wanted,
                )
            })
            .max()
            .unwrap_or(wanted)
    }

    fn stopped(&self, pid: u32) {
        if self.gpus.is_some() && pid != 0 {
            self.stopped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(pid);
        }
    }

    /// Before room is reused: waits (up to 10 s) until NVML lists none of
    /// the workers stopped for memory, so their device memory is back.
    async fn wait_gpu_released(&self) {
        let Some(gpus) = &self.gpus else {
            return;
        };
        let pids =
            std::mem::take(&mut *self.stopped.lock().unwrap_or_else(PoisonError::into_inner));
        if pids.is_empty() {
            return;
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let holding = gpus
                .sample()
                .iter()
                .any(|d| pids.iter().any(|p| d.processes.contains_key(p)));
            if !holding {
                return;
            }
            if std::time::Instant::now() > until {
                tracing::warn!(?pids, "stopped workers still hold GPU memory after 10 s");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
