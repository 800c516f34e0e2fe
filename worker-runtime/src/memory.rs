//! The worker's own memory, as its HELLO, heartbeats and Loaded answer
//! report it (read by `procmem` from `/proc/self/status`).

use sidecar_proto::worker::MemoryReport;

/// Resident, anonymous and file-backed memory of this process.
pub fn report() -> MemoryReport {
    let m = procmem::self_memory();
    MemoryReport {
        rss_bytes: m.rss_bytes,
        private_bytes: m.private_bytes,
        file_bytes: m.file_bytes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_reports_resident_memory() {
        let r = super::report();
        assert!(r.rss_bytes > 0 && r.rss_bytes >= r.private_bytes, "{r:?}");
    }
}
