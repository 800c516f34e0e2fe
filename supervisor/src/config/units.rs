//! The config file's units: durations in seconds, sizes in bytes or with
//! a unit.

/// Durations in the file are seconds (fractions allowed).
pub(super) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = f64::deserialize(d)?;
        Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom)
    }
}

/// Optional durations in seconds.
pub(super) mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = f64::deserialize(d)?;
        Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Byte sizes: an integer, or a string with a unit (B, KB, MB, GB, KiB,
/// MiB, GiB, TiB).
pub mod bytes {
    use serde::{Deserialize, Deserializer};

    /// Parses "512MiB", "2 GiB", "100MB", "4096".
    pub fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size such as 512MiB"))?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB, TiB)"
                ));
            }
        };
        Ok((number * scale as f64) as u64)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Number(n) => Ok(n),
            Size::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}
