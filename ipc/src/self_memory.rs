//! What a worker reports about its own memory with every heartbeat, read
//! from `/proc/self/status`. Here because every worker binary needs it and
//! `ipc` is the one crate they all share below the protocol types.

/// Resident memory of this process, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelfMemory {
    /// Resident set (`VmRSS`).
    pub rss_bytes: u64,
    /// Resident anonymous memory (`RssAnon`): heap, model weights copied in.
    pub private_bytes: u64,
    /// Resident file-backed memory (`RssFile`): mapped model files.
    pub file_bytes: u64,
}

/// Reads this process's memory (zeros where `/proc` is unreadable).
pub fn self_memory() -> SelfMemory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    SelfMemory {
        rss_bytes: field("VmRSS:"),
        private_bytes: field("RssAnon:"),
        file_bytes: field("RssFile:"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_resident_memory() {
        let m = super::self_memory();
        assert!(m.rss_bytes > 0 && m.rss_bytes >= m.private_bytes, "{m:?}");
    }
}
