//! Names (the callers' request ids) of a worker's recent requests, for
//! its log lines: bounded, so requests that end without a lookup cannot
//! grow it.

use std::collections::VecDeque;

/// How many recent requests keep their names.
const KEEP: usize = 1024;

/// Request id → the caller's name for it.
#[derive(Debug, Default)]
pub struct RequestNames {
    recent: VecDeque<(u64, String)>,
}

impl RequestNames {
    /// Remembers `name` for request `id` (the oldest is forgotten beyond
    /// 1024).
    pub fn insert(&mut self, id: u64, name: String) {
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back((id, name));
    }

    /// The name of request `id` ("" when unknown).
    pub fn get(&self, id: u64) -> &str {
        self.recent
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map_or("", |(_, n)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_and_bounded() {
        let mut n = RequestNames::default();
        for i in 0..(KEEP as u64 + 10) {
            n.insert(i, format!("r{i}"));
        }
        assert_eq!(n.get(KEEP as u64 + 9), format!("r{}", KEEP + 9));
        assert_eq!(n.get(3), "", "forgotten");
        assert_eq!(n.recent.len(), KEEP);
    }
}
