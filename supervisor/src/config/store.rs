//! Limits of the model store's uploads (`[store]` in the config file).

use serde::Deserialize;

use super::bytes;

/// How much PutFile may store. Sizes are bytes, or strings such as
/// "512MiB", "2GiB".
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreLimits {
    /// Largest file one upload may store (default 64 GiB: the largest
    /// quantised models people run on one node). A larger declared size is
    /// RESOURCE_EXHAUSTED before a byte is written.
    #[serde(with = "bytes")]
    pub max_file_bytes: u64,
    /// What all the store's files together may hold, uploads in progress
    /// included; 0 (the default) = no quota of our own, only the volume's
    /// free space, which every upload must also fit in.
    #[serde(with = "bytes")]
    pub max_total_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_file_bytes: 64 << 30,
            max_total_bytes: 0,
        }
    }
}
