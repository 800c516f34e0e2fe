//! The worker's own memory, as its heartbeats report it.

use sidecar_proto::worker::MemoryReport;

/// Resident, anonymous and file-backed memory of this process.
pub fn report() -> MemoryReport {
    let m = ipc::self_memory();
    MemoryReport {
        rss_bytes: m.rss_bytes,
        private_bytes: m.private_bytes,
        file_bytes: m.file_bytes,
        ..Default::default()
    }
}
