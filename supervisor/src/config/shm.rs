//! Shared-memory regions: `[shm]` in the config file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::Error;

/// Most regions `max_regions` may allow (each holds one descriptor).
pub const MAX_REGIONS_LIMIT: usize = 65_536;

/// `[shm]`: POSIX shared-memory objects clients register as named regions
/// (`SharedMemoryService`, the Open Inference Protocol's
/// SystemSharedMemory* calls) and name in tensors and images.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShmConfig {
    /// Regions may be registered and used (off: every register is
    /// FAILED_PRECONDITION, every ref too).
    pub enabled: bool,
    /// Directory of the objects (`shm_open`'s namespace): a key `/k` is the
    /// file `<dir>/k`, opened relative to this directory only.
    pub dir: PathBuf,
    /// Regions one client identity may hold.
    pub max_regions_per_client: usize,
    /// Regions every client holds together.
    pub max_regions: usize,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            enabled: true,
            dir: PathBuf::from("/dev/shm"),
            max_regions_per_client: 16,
            max_regions: 256,
        }
    }
}

impl ShmConfig {
    /// Errors name the key, the value and the limit.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.dir.is_absolute() {
            return Err(Error::Config(format!(
                "shm.dir {:?} must be an absolute path",
                self.dir
            )));
        }
        if !(1..=MAX_REGIONS_LIMIT).contains(&self.max_regions) {
            return Err(Error::Config(format!(
                "shm.max_regions {} is out of range 1..={MAX_REGIONS_LIMIT}",
                self.max_regions
            )));
        }
        if !(1..=self.max_regions).contains(&self.max_regions_per_client) {
            return Err(Error::Config(format!(
                "shm.max_regions_per_client {} is out of range 1..={} (shm.max_regions)",
                self.max_regions_per_client, self.max_regions
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_named() {
        assert!(ShmConfig::default().validate().is_ok());
        let bad = ShmConfig {
            max_regions_per_client: 300,
            ..Default::default()
        };
        let e = bad.validate().expect_err("over max_regions").to_string();
        assert!(
            e.contains("shm.max_regions_per_client 300") && e.contains("1..=256"),
            "{e}"
        );
        let bad = ShmConfig {
            max_regions: 0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .expect_err("zero")
                .to_string()
                .contains("shm.max_regions 0")
        );
        let bad = ShmConfig {
            dir: PathBuf::from("shm"),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .expect_err("relative")
                .to_string()
                .contains("shm.dir")
        );
        let parsed: Result<ShmConfig, _> = toml::from_str("dri = \"/x\"");
        assert!(parsed.is_err(), "unknown keys are refused");
    }
}
