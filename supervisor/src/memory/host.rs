//! Host memory as `/proc` and the cgroup v2 files show it (a worker's own
//! figures: `procmem::process_memory`).

use std::path::{Path, PathBuf};

/// The host and the container, sampled once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostSample {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`.
    pub available: u64,
    /// The container's `memory.max` (0: none or unreadable).
    pub cgroup_limit: u64,
    /// The container's `memory.current` (0: unreadable).
    pub cgroup_usage: u64,
    /// The container's `memory.events` `oom_kill` count.
    pub cgroup_oom_kills: u64,
}

impl HostSample {
    /// Memory still usable: the host's available memory, or the room left
    /// under the container's limit when that is smaller.
    pub fn free(&self) -> u64 {
        if self.cgroup_limit > 0 {
            self.available
                .min(self.cgroup_limit.saturating_sub(self.cgroup_usage))
        } else {
            self.available
        }
    }
}

/// This process's cgroup v2 directory (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/')))
}

/// Samples the host and the container.
pub fn sample() -> HostSample {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let dir = own_cgroup().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    HostSample {
        total: procmem::proc_kb_field(&meminfo, "MemTotal").unwrap_or(0),
        available: procmem::proc_kb_field(&meminfo, "MemAvailable").unwrap_or(0),
        // "max" (no limit) does not parse: 0.
        cgroup_limit: read("memory.max").trim().parse().unwrap_or(0),
        cgroup_usage: read("memory.current").trim().parse().unwrap_or(0),
        cgroup_oom_kills: oom_kills(&read("memory.events")),
    }
}

fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Sets a process's `oom_score_adj` (raising it needs no privilege).
pub fn set_oom_score_adj(pid: u32, adj: i32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n"), 1);
        assert_eq!(oom_kills(""), 0);
    }

    #[test]
    fn free_memory_is_the_smaller_of_host_and_container_room() {
        let mut s = HostSample {
            total: 16 << 30,
            available: 10 << 30,
            ..Default::default()
        };
        assert_eq!(s.free(), 10 << 30);
        s.cgroup_limit = 4 << 30;
        s.cgroup_usage = 3 << 30;
        assert_eq!(s.free(), 1 << 30);
    }

    #[test]
    fn the_host_is_readable() {
        let host = sample();
        assert!(host.total > 0 && host.available > 0 && host.available <= host.total);
    }
}
