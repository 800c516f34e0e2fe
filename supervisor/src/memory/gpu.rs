//! GPUs through NVML, loaded at run time: on a host without
//! `libnvidia-ml.so.1` the guard carries on without GPU monitoring.

use std::collections::HashMap;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

/// One device, sampled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    /// NVML index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Total memory.
    pub total: u64,
    /// Used memory (every process).
    pub used: u64,
    /// Free memory.
    pub free: u64,
    /// Device memory per process (pid as NVML sees it: the host's pid
    /// namespace).
    pub processes: HashMap<u32, u64>,
    /// False when NVML could not read the device this time.
    pub ok: bool,
}

/// NVML, when the host has it.
pub struct Gpus {
    nvml: Nvml,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus").finish_non_exhaustive()
    }
}

impl Gpus {
    /// Loads NVML; the reason when it cannot.
    pub fn open() -> Result<Gpus, String> {
        Nvml::init()
            .map(|nvml| Gpus { nvml })
            .map_err(|e| e.to_string())
    }

    /// Every device now. A device NVML cannot read is listed with
    /// `ok = false`.
    pub fn sample(&self) -> Vec<Device> {
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .map(|index| {
                let Ok(d) = self.nvml.device_by_index(index) else {
                    return Device {
                        index,
                        ..Default::default()
                    };
                };
                let Ok(mem) = d.memory_info() else {
                    return Device {
                        index,
                        ..Default::default()
                    };
                };
                let processes = d
                    .running_compute_processes()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(d.running_graphics_processes().unwrap_or_default())
                    .filter_map(|p| match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some((p.pid, b)),
                        UsedGpuMemory::Unavailable => None,
                    })
                    .collect();
                Device {
                    index,
                    name: d.name().unwrap_or_default(),
                    uuid: d.uuid().unwrap_or_default(),
                    total: mem.total,
                    used: mem.used,
                    free: mem.free,
                    processes,
                    ok: true,
                }
            })
            .collect()
    }
}

/// A worker's memory on each device: NVML's per-process figure where NVML
/// reports the worker's pid, else what the worker reports of its own
/// buffers (inside a container NVML reports host pids, which do not
/// match). `(device index, uuid, bytes)`.
pub fn worker_usage(
    devices: &[Device],
    pid: u32,
    reported: &[sidecar_proto::v1::GpuMemory],
) -> Vec<(u32, String, u64)> {
    devices
        .iter()
        .filter_map(|d| {
            let own = reported
                .iter()
                .find(|r| r.device_index == d.index)
                .map(|r| r.used_bytes);
            let used = d.processes.get(&pid).copied().or(own)?;
            Some((d.index, d.uuid.clone(), used))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_process_figures_prefer_nvml_and_fall_back_to_the_worker() {
        let devices = vec![
            Device {
                index: 0,
                uuid: "GPU-a".into(),
                processes: HashMap::from([(100, 5 << 20)]),
                ok: true,
                ..Default::default()
            },
            Device {
                index: 1,
                uuid: "GPU-b".into(),
                ok: true,
                ..Default::default()
            },
        ];
        let reported = vec![sidecar_proto::v1::GpuMemory {
            device_index: 1,
            device_uuid: String::new(),
            used_bytes: 7 << 20,
        }];
        assert_eq!(
            worker_usage(&devices, 100, &reported),
            vec![(0, "GPU-a".into(), 5 << 20), (1, "GPU-b".into(), 7 << 20)]
        );
        // A pid NVML does not know (a container's): the worker's own figure.
        assert_eq!(
            worker_usage(&devices, 42, &reported),
            vec![(1, "GPU-b".into(), 7 << 20)]
        );
    }

    /// Runs only where NVML is present (a GPU host): the devices it lists
    /// add up.
    #[test]
    fn nvml_devices_add_up_where_present() {
        let Ok(gpus) = Gpus::open() else {
            eprintln!("no NVML on this host: skipped");
            return;
        };
        for d in gpus.sample() {
            assert!(d.ok, "device {} unreadable", d.index);
            assert!(
                d.total > 0 && d.used + d.free <= d.total + (64 << 20),
                "{d:?}"
            );
        }
    }
}
