//! `procmem`: a process's resident memory, read from `/proc/<pid>/status`,
//! and `/proc`-style "Name: 123 kB" fields. Both sides use it: a worker
//! reports its own memory with every heartbeat, and the supervisor's memory
//! guard samples every worker and the host.
//!
//! A leaf crate of its own (no dependencies) rather than part of `ipc`,
//! whose one job is the channel: the supervisor and every worker need these
//! readers, and neither side should reach into the other's crates for them.
#![forbid(unsafe_code)]

/// Resident memory of a process, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set (`VmRSS`).
    pub rss_bytes: u64,
    /// Resident anonymous memory (`RssAnon`): heap, model weights copied in.
    pub private_bytes: u64,
    /// Resident file-backed memory (`RssFile`): mapped model files.
    pub file_bytes: u64,
    /// Resident shared memory (`RssShmem`): the channel's region.
    pub shared_bytes: u64,
}

/// A `/proc`-style "Name:   123 kB" field, in bytes.
pub fn proc_kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn parse(status: &str) -> Option<ProcessMemory> {
    Some(ProcessMemory {
        rss_bytes: proc_kb_field(status, "VmRSS").unwrap_or(0),
        private_bytes: proc_kb_field(status, "RssAnon")?,
        file_bytes: proc_kb_field(status, "RssFile").unwrap_or(0),
        shared_bytes: proc_kb_field(status, "RssShmem").unwrap_or(0),
    })
}

/// Reads this process's memory (zeros where `/proc` is unreadable).
pub fn self_memory() -> ProcessMemory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse(&status).unwrap_or_default()
}

/// Reads process `pid`'s memory; `None` once it is gone (or a zombie).
pub fn process_memory(pid: u32) -> Option<ProcessMemory> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_resident_memory() {
        let m = self_memory();
        assert!(m.rss_bytes > 0 && m.rss_bytes >= m.private_bytes, "{m:?}");
        assert_eq!(
            process_memory(std::process::id()).map(|p| p.private_bytes > 0),
            Some(true)
        );
    }

    #[test]
    fn status_fields_are_read_in_bytes() {
        let status = "Name:\tworker-text\nVmRSS:\t  300 kB\nRssAnon:\t  100 kB\nRssFile:\t  150 kB\nRssShmem:\t   50 kB\n";
        assert_eq!(
            parse(status),
            Some(ProcessMemory {
                rss_bytes: 307_200,
                private_bytes: 102_400,
                file_bytes: 153_600,
                shared_bytes: 51_200
            })
        );
        assert_eq!(parse("Name:\tzombie\n"), None);
        assert_eq!(proc_kb_field("MemTotal:  2 kB\n", "MemTotal"), Some(2048));
    }
}
