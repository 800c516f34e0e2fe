//! What a process's sandbox holds and lacks, item by item: one shape for
//! every step (privileges, capabilities, Landlock, seccomp), for one log
//! line and the HELLO.

/// The sandbox, item by item. Each step returns one (or pushes into one);
/// [`Report::merge`] joins them in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// What is in force ("no_new_privs", "landlock ABI V7: fully enforced").
    pub applied: Vec<String>,
    /// What this system would not set up, each with why
    /// ("landlock: not enforced: kernel without Landlock").
    pub missing: Vec<String>,
}

impl Report {
    /// Notes something in force.
    pub fn applied(&mut self, item: impl Into<String>) {
        self.applied.push(item.into());
    }

    /// Notes something missing, with why.
    pub fn missing(&mut self, item: impl Into<String>) {
        self.missing.push(item.into());
    }

    /// Appends another step's report.
    pub fn merge(&mut self, other: Report) {
        self.applied.extend(other.applied);
        self.missing.extend(other.missing);
    }

    /// The wire form (HELLO's `sandbox`).
    pub fn to_proto(&self) -> sidecar_proto::worker::Sandbox {
        sidecar_proto::worker::Sandbox {
            applied: self.applied.clone(),
            missing: self.missing.clone(),
        }
    }
}
