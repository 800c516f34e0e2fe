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
pub mod tenant;

mod enforce;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, PoisonError};

use sidecar_proto::v1::{GpuDevice, GpuMemory, HostMemory};

use crate::config::{Config, Family, ModelSpec};
use crate::error::Error;
use crate::lifecycle::State;

use self::host::HostSample;
use self::policy::{Admission, Candidate, Room};
pub use self::tenant::{Done, Tenant, Tenants, View};

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
    pub latest: Option<procmem::ProcessMemory>,
    /// Device memory of the current worker: (index, uuid, bytes).
    pub gpu: Vec<(u32, String, u64)>,
    /// When sampled (Unix ms).
    pub sampled_ms: i64,
    /// Admitted and not stopped since: its footprint counts against the
    /// room of other loads.
    pub admitted: bool,
    /// Chosen by an admission to be unloaded: no other admission picks it.
    pub evicting: bool,
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

/// What the guard reads of a model's file before its first load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prepared {
    /// What admission assumes it needs: the configured figure, or one
    /// computed from the file.
    pub estimate: u64,
    /// A text model's shape, from its GGUF header.
    pub shape: Option<gguf::TextShape>,
}

/// Reads what the guard needs of `file`, open, `size` bytes long
/// (blocking file I/O: call it off the async threads). `Err`: a header that
/// is hostile or impossible, with the reason; the model is refused.
pub fn prepare(spec: &ModelSpec, file: &std::fs::File, size: u64) -> Result<Prepared, String> {
    let shape = match spec.family {
        Family::Text => gguf::text_shape_of(file)?,
        Family::Lite | Family::Vision => None,
    };
    if spec.memory_estimate > 0 {
        return Ok(Prepared {
            estimate: spec.memory_estimate,
            shape,
        });
    }
    let estimate = match spec.family {
        Family::Text => policy::text_need(
            size,
            shape.as_ref(),
            spec.text.context_size,
            spec.text.parallel,
            spec.text.batch_size,
        ),
        Family::Lite => policy::lite_need(size),
        Family::Vision => policy::vision_need(size),
    };
    Ok(Prepared { estimate, shape })
}

/// What the guard assumes of a model whose file cannot be read now (the
/// start that opens it fails and says why): the configured estimate, or
/// the family's need for an empty file.
pub fn prepare_unread(spec: &ModelSpec) -> Result<Prepared, String> {
    let estimate = match (spec.memory_estimate, spec.family) {
        (n, _) if n > 0 => n,
        (_, Family::Text) => policy::text_need(
            0,
            None,
            spec.text.context_size,
            spec.text.parallel,
            spec.text.batch_size,
        ),
        (_, Family::Lite) => policy::lite_need(0),
        (_, Family::Vision) => policy::vision_need(0),
    };
    Ok(Prepared {
        estimate,
        shape: None,
    })
}

/// What an admission decided.
enum Decision {
    /// Admitted as things are.
    Fits,
    /// Admitted once these models are unloaded (each given the note).
    Evict(Vec<Arc<dyn Tenant>>, String),
    /// No room now, but models being unloaded hold some: decide again
    /// when one is gone.
    Wait,
    /// No room, even after unloading every model that may go.
    Refuse(Error),
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
    /// The models it watches (the registry's map).
    tenants: Arc<dyn Tenants>,
    /// Pids of workers stopped for memory whose GPU memory NVML may still
    /// list: the next admission waits until it no longer does.
    stopped: Mutex<Vec<u32>>,
    /// The most devices NVML has listed.
    devices_seen: Mutex<usize>,
    /// One admission decision at a time, so two loads cannot both count
    /// the same free memory. Held only while deciding, never across
    /// another model's eviction.
    admitting: tokio::sync::Mutex<()>,
    /// Evictions carried out so far (admissions waiting for room watch it).
    evictions: tokio::sync::watch::Sender<u64>,
}

impl Guard {
    /// A guard over `tenants`; opens NVML (logging once when the host has
    /// none).
    pub fn new(config: Arc<Config>, tenants: Arc<dyn Tenants>) -> Arc<Guard> {
        let gpus = match gpu::Gpus::open() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::info!("GPU monitoring is off: NVML not available ({e})");
                None
            }
        };
        Self::with_gpus(config, tenants, gpus)
    }

    /// A guard with the GPUs given (tests: none).
    fn with_gpus(
        config: Arc<Config>,
        tenants: Arc<dyn Tenants>,
        gpus: Option<gpu::Gpus>,
    ) -> Arc<Guard> {
        let latest = Latest {
            host: host::sample(),
            gpus: gpus.as_ref().map(gpu::Gpus::sample).unwrap_or_default(),
        };
        Arc::new(Guard {
            config,
            gpus,
            latest: Mutex::new(latest),
            tenants,
            admitting: tokio::sync::Mutex::new(()),
            evictions: tokio::sync::watch::channel(0).0,
            stopped: Mutex::new(Vec::new()),
            devices_seen: Mutex::new(0),
        })
    }

    fn models(&self) -> Vec<Arc<dyn Tenant>> {
        self.tenants.tenants()
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

    /// Admits model `id`, which needs its footprint: at once when it
    /// fits, after unloading idle, unpinned models (least recently used
    /// first) when that makes room, else RESOURCE_EXHAUSTED with the
    /// numbers. On success the model's memory is marked admitted.
    ///
    /// The decision is taken under one lock (the room is reserved for `id`
    /// and the models chosen to go are marked, so a concurrent admission
    /// neither counts that room twice nor picks them again); the evictions
    /// are awaited after the lock is released, so an actor that is itself
    /// waiting to be admitted can never block another's admission. An
    /// admission that finds no room only because models being unloaded
    /// still hold it waits for those evictions and decides again.
    pub async fn admit(&self, id: &str, memory: &SharedMemory) -> Result<(), Error> {
        loop {
            let mut finished = self.evictions.subscribe();
            let decision = {
                let _one = self.admitting.lock().await;
                self.wait_gpu_released().await;
                finished.borrow_and_update();
                self.decide(id, memory)
            };
            match decision {
                Decision::Fits => return Ok(()),
                Decision::Refuse(e) => return Err(e),
                Decision::Wait => {
                    tracing::debug!(model = %id, "waiting for models being unloaded");
                    let _ = finished.changed().await;
                }
                Decision::Evict(victims, note) => {
                    for victim in &victims {
                        tracing::info!(model = %victim.spec().id, "{note}");
                        let pid = victim.view().pid;
                        victim.evict(note.clone()).await;
                        lock(victim.figures()).evicting = false;
                        self.stopped(pid);
                        self.evictions.send_modify(|n| *n += 1);
                    }
                    self.wait_gpu_released().await;
                    return Ok(());
                }
            }
        }
    }

    /// The admission decision. `Fits` and `Evict` mark `id` admitted (and
    /// `Evict` marks the models to unload first).
    fn decide(&self, id: &str, memory: &SharedMemory) -> Decision {
        let need = lock(memory).footprint();
        let h = host::sample();
        let others: Vec<Arc<dyn Tenant>> = self
            .models()
            .into_iter()
            // Every other worker, a swap's other version of `id` included.
            .filter(|m| !Arc::ptr_eq(m.figures(), memory) && lock(m.figures()).admitted)
            .collect();
        let committed = others.iter().map(|m| lock(m.figures()).footprint()).sum();
        let room = Room {
            limit: self.limit(&h),
            committed,
            free: h.free(),
            reserve: self.config.memory.host_reserve,
        };
        let candidates: Vec<Candidate> = others
            .iter()
            // Never the other version of `id` (a swap refuses instead), nor
            // a swap's version aside.
            .filter(|m| {
                m.view().state == State::Ready
                    && !lock(m.figures()).evicting
                    && m.current()
                    && m.spec().id != id
            })
            .map(|m| Candidate {
                id: m.spec().id.clone(),
                footprint: lock(m.figures()).footprint(),
                last_used_ms: m.last_used_ms(),
                pinned: m.spec().pinned,
                busy: m.busy(),
            })
            .collect();
        match policy::admit(need, room, &candidates) {
            Admission::Fits => {
                lock(memory).admitted = true;
                Decision::Fits
            }
            Admission::Evict(ids) => {
                let victims: Vec<Arc<dyn Tenant>> = others
                    .into_iter()
                    .filter(|m| m.current() && ids.contains(&m.spec().id))
                    .collect();
                for v in &victims {
                    lock(v.figures()).evicting = true;
                }
                lock(memory).admitted = true;
                let note = format!(
                    "unloaded to make room for model {id:?} (needs {}, {} free above the reserve of {})",
                    mib(need),
                    mib(room.available()),
                    mib(room.reserve)
                );
                Decision::Evict(victims, note)
            }
            // Models on their way out still hold memory that will be room.
            Admission::Refuse { .. } if others.iter().any(|m| lock(m.figures()).evicting) => {
                Decision::Wait
            }
            Admission::Refuse {
                needed,
                free,
                reserve,
            } => Decision::Refuse(Error::ResourceExhausted(format!(
                "model {id:?} needs {} of host memory; {} is free to models (limit {}, {} held by other models, {} kept in reserve), even after unloading every idle, unpinned model (a swap's other versions, loading, draining or kept, are not unloaded for room)",
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
    /// Every admission waits for the same list (each pid is forgotten once
    /// NVML no longer lists it, or after the 10 s).
    async fn wait_gpu_released(&self) {
        let Some(gpus) = &self.gpus else {
            return;
        };
        let stopped = || self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen = stopped().clone();
            if seen.is_empty() {
                return;
            }
            let devices = gpus.sample();
            let holding: Vec<u32> = seen
                .iter()
                .copied()
                .filter(|p| devices.iter().any(|d| d.processes.contains_key(p)))
                .collect();
            // Pids added meanwhile (by another admission) stay listed.
            stopped().retain(|p| !seen.contains(p) || holding.contains(p));
            if holding.is_empty() {
                return;
            }
            if std::time::Instant::now() > until {
                tracing::warn!(pids = ?holding, "stopped workers still hold GPU memory after 10 s");
                stopped().retain(|p| !holding.contains(p));
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// A model's figures, locked (a poisoned lock still holds good figures).
fn lock(m: &SharedMemory) -> std::sync::MutexGuard<'_, ModelMemory> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
