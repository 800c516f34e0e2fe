//! The worker's own memory, from `/proc/self/status`.

use sidecar_proto::worker::MemoryReport;

/// Resident, anonymous and file-backed memory of this process.
pub fn report() -> MemoryReport {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    MemoryReport {
        rss_bytes: field("VmRSS:"),
        private_bytes: field("RssAnon:"),
        file_bytes: field("RssFile:"),
        ..Default::default()
    }
}
