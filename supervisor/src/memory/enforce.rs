//! The guard's loop: every `memory.sample_interval`, sample the host, the
//! GPUs and every worker; kill a worker over its budget or the one that
//! pushed the host or a GPU under its reserve; unload models idle past
//! their keep-alive; keep `gpu/<index>` health in step.

use std::sync::{Arc, PoisonError};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::policy::{self, Usage, Verdict};
use super::{Guard, Latest, Tenant, gpu, host, lock, mib};
use crate::clock::now_ms;
use crate::config::{Family, ModelSpec};
use crate::lifecycle::{KillReason, State};

impl Guard {
    /// Samples and enforces every `memory.sample_interval`, forever.
    pub async fn run(self: Arc<Self>, mut health: HealthReporter) {
        let mut tick = tokio::time::interval(self.config.memory.sample_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.step(&mut health).await;
        }
    }

    async fn step(&self, health: &mut HealthReporter) {
        let h = host::sample();
        let gpus = self
            .gpus
            .as_ref()
            .map(gpu::Gpus::sample)
            .unwrap_or_default();
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Latest {
            host: h,
            gpus: gpus.clone(),
        };
        let models = self.models();
        let now = now_ms();
        let mut usage = Vec::new();
        for m in &models {
            let s = m.view();
            if s.pid == 0 || !holds_memory(s.state) {
                continue;
            }
            let Some(p) = procmem::process_memory(s.pid) else {
                continue;
            };
            let on_gpus = gpu::worker_usage(&gpus, s.pid, &s.reported_gpu);
            let estimate = {
                let mut mem = lock(m.figures());
                mem.latest = Some(p);
                mem.peak_private = mem.peak_private.max(p.private_bytes);
                mem.peak_resident = mem.peak_resident.max(p.private_bytes + p.file_bytes);
                mem.gpu = on_gpus;
                mem.sampled_ms = now;
                mem.estimate
            };
            if s.state == State::Ready {
                usage.push((
                    Usage {
                        id: m.spec().id.clone(),
                        pid: s.pid,
                        private: p.private_bytes,
                        estimate,
                        budget: m.spec().memory_budget,
                        pinned: m.spec().pinned,
                    },
                    m.clone(),
                    s.pid,
                ));
            }
        }
        let weighed: Vec<Usage> = usage.iter().map(|(u, _, _)| u.clone()).collect();
        let reserve = self.config.memory.host_reserve;
        for verdict in policy::verdicts(&weighed, h.free(), reserve) {
            let (id, victim, note) = match &verdict {
                Verdict::OverBudget {
                    id,
                    pid,
                    used,
                    budget,
                } => (
                    id,
                    pid,
                    format!(
                        "host memory: private memory {} is over the model's budget of {}",
                        mib(*used),
                        mib(*budget)
                    ),
                ),
                Verdict::HostReserve {
                    id,
                    pid,
                    used,
                    free,
                    reserve,
                } => (
                    id,
                    pid,
                    format!(
                        "host memory: {} free is under the reserve of {}; this worker held {} private, the most over its estimate",
                        mib(*free),
                        mib(*reserve),
                        mib(*used)
                    ),
                ),
            };
            // By pid: a swap's two versions share the id.
            if let Some((_, m, pid)) = usage.iter().find(|(_, _, p)| p == victim) {
                tracing::warn!(model = %id, pid, "killing worker: {note}");
                m.kill(*pid, KillReason::Oom, note).await;
                self.stopped(*pid);
            }
        }
        self.enforce_gpu_reserve(&gpus, &models).await;
        self.gpu_models_health(&gpus, &models, health).await;
        self.unload_idle(&models, now).await;
        // A device NVML cannot read, or one under its reserve, takes no
        // new GPU work: NOT_SERVING under `gpu/<index>`.
        for d in &gpus {
            let status = if d.ok && d.free >= self.config.memory.gpu_reserve {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health
                .set_service_status(format!("gpu/{}", d.index), status)
                .await;
        }
    }

    /// A model that uses a GPU is NOT_SERVING in health while a device
    /// NVML listed before is gone or unreadable.
    async fn gpu_models_health(
        &self,
        gpus: &[gpu::Device],
        models: &[Arc<dyn Tenant>],
        health: &mut HealthReporter,
    ) {
        if self.gpus.is_none() {
            return;
        }
        let seen = {
            let mut seen = self
                .devices_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *seen = (*seen).max(gpus.len());
            *seen
        };
        let lost = gpus.len() < seen || gpus.iter().any(|d| !d.ok);
        for m in models.iter().filter(|m| uses_gpu(m.spec()) && m.current()) {
            let serving = !lost && m.view().state == State::Ready;
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health
                .set_service_status(format!("model/{}", m.spec().id), status)
                .await;
        }
    }

    /// A device under its reserve: kill the worker of ours holding the
    /// most memory on it (reason `vram`).
    async fn enforce_gpu_reserve(&self, gpus: &[gpu::Device], models: &[Arc<dyn Tenant>]) {
        let reserve = self.config.memory.gpu_reserve;
        for d in gpus.iter().filter(|d| d.ok && d.free < reserve) {
            let worst = models
                .iter()
                .filter_map(|m| {
                    let s = m.view();
                    let used = lock(m.figures())
                        .gpu
                        .iter()
                        .find(|(i, _, _)| *i == d.index)
                        .map(|(_, _, b)| *b)?;
                    (s.state == State::Ready && s.pid != 0).then_some((used, m, s.pid))
                })
                .max_by_key(|(used, _, _)| *used);
            match worst {
                Some((used, m, pid)) => {
                    let note = format!(
                        "GPU {} memory: {} free is under the reserve of {}; this worker held {} on it, the most",
                        d.index,
                        mib(d.free),
                        mib(reserve),
                        mib(used)
                    );
                    tracing::warn!(model = %m.spec().id, pid, "killing worker: {note}");
                    m.kill(pid, KillReason::Vram, note).await;
                    self.stopped(pid);
                }
                None => tracing::warn!(
                    "GPU {} has {} free, under the reserve of {}, and none of it is ours",
                    d.index,
                    mib(d.free),
                    mib(reserve)
                ),
            }
        }
    }

    /// Unloads READY models without calls for longer than their keep-alive.
    async fn unload_idle(&self, models: &[Arc<dyn Tenant>], now: i64) {
        for m in models {
            let keep = match m.spec().keep_alive {
                Some(k) => k,
                None if m.spec().preload => continue,
                None => self.config.memory.on_demand_keep_alive,
            };
            let s = m.view();
            if s.state != State::Ready || m.busy() {
                continue;
            }
            let since = m.last_used_ms().max(s.loaded_unix_ms);
            if since > 0 && now - since > keep.as_millis() as i64 {
                let note = format!("unloaded after {:?} without calls (keep_alive)", keep);
                tracing::info!(model = %m.spec().id, "{note}");
                m.evict(note).await;
            }
        }
    }
}

/// Whether a model asks for a GPU.
fn uses_gpu(spec: &ModelSpec) -> bool {
    match spec.family {
        Family::Text => spec.text.gpu_layers.is_some_and(|n| n != 0),
        Family::Lite => spec.lite.accelerator == crate::config::LiteAccelerator::Gpu,
        Family::Vision => false,
    }
}

/// States in which a model's worker holds (or is about to hold) memory.
fn holds_memory(state: State) -> bool {
    matches!(state, State::Loading | State::Ready | State::Draining)
}
