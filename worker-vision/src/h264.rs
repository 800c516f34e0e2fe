//! H.264 Annex-B streams through OpenH264 (bundled with the `openh264`
//! crate): chunks may split NAL units anywhere, so bytes wait until the
//! next start code shows their NAL unit complete. Decoding does not flush
//! after each unit (streams with B-frames would lose most pictures); the
//! end of the stream flushes the delayed pictures.

use opencv::core::{CV_8UC3, Mat, Scalar};
use opencv::imgproc;
use opencv::prelude::*;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, nal_units};
use worker_runtime::WorkerError;

/// The longest NAL unit a stream may leave incomplete: bytes beyond this
/// with no start code are not an H.264 stream, and must not grow a buffer
/// without bound.
pub const MAX_PENDING: usize = 16 << 20;

/// One stream's decoder and its incomplete bytes.
pub struct H264 {
    decoder: Decoder,
    pending: Vec<u8>,
    /// Whether the stream's start was checked for a start code.
    started: bool,
}

impl std::fmt::Debug for H264 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Where the last NAL unit's start code begins (its leading zero byte for
/// the 4-byte form); 0 when there is none past the start.
fn last_start(b: &[u8]) -> usize {
    let mut i = b.len().saturating_sub(3);
    while i > 0 {
        if b[i] == 0 && b[i + 1] == 0 && b[i + 2] == 1 {
            return if b[i - 1] == 0 { i - 1 } else { i };
        }
        i -= 1;
    }
    0
}

/// OpenH264's `DECODING_STATE` bits in words.
fn decoding_state(code: i64) -> String {
    const STATES: [(i64, &str); 9] = [
        (0x02, "a reference picture is lost"),
        (0x04, "bitstream error"),
        (0x08, "a dependent layer is lost"),
        (0x10, "a slice before its parameter sets (SPS/PPS)"),
        (0x20, "data error (concealed)"),
        (0x40, "empty reference list"),
        (0x1000, "invalid argument"),
        (0x4000, "out of memory"),
        (0x8000, "picture too large for the output buffer"),
    ];
    let words: Vec<&str> = STATES
        .iter()
        .filter(|(bit, _)| code & bit != 0)
        .map(|(_, w)| *w)
        .collect();
    if words.is_empty() {
        format!("decoding state {code:#x}")
    } else {
        format!("{} (decoding state {code:#x})", words.join(", "))
    }
}

fn to_bgr(yuv: &DecodedYUV<'_>) -> Result<Mat, WorkerError> {
    let (w, h) = yuv.dimensions();
    let mut rgb = Mat::new_rows_cols_with_default(h as i32, w as i32, CV_8UC3, Scalar::all(0.0))
        .map_err(|e| WorkerError::internal(format!("Mat: {e}")))?;
    yuv.write_rgb8(
        rgb.data_bytes_mut()
            .map_err(|e| WorkerError::internal(format!("Mat bytes: {e}")))?,
    );
    let mut bgr = Mat::default();
    imgproc::cvt_color(&rgb, &mut bgr, imgproc::COLOR_RGB2BGR, 0)
        .map_err(|e| WorkerError::internal(format!("cvtColor: {e}")))?;
    Ok(bgr)
}

impl H264 {
    /// A decoder for a new stream.
    pub fn new() -> Result<H264, WorkerError> {
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| WorkerError::internal(format!("OpenH264: {e}")))?;
        Ok(H264 {
            decoder,
            pending: Vec::new(),
            started: false,
        })
    }

    /// Feeds a chunk; returns the pictures it completed (all of them, the
    /// delayed ones included, when `flush`). `at` names the frame in errors.
    pub fn feed(&mut self, chunk: &[u8], flush: bool, at: &str) -> Result<Vec<Mat>, WorkerError> {
        self.pending.extend_from_slice(chunk);
        if !self.started && (self.pending.len() >= 4 || flush) {
            if !(self.pending.starts_with(&[0, 0, 1]) || self.pending.starts_with(&[0, 0, 0, 1])) {
                return Err(WorkerError::invalid(format!(
                    "{at}: not an H.264 Annex-B stream: it does not begin with a start code (00 00 01)"
                )));
            }
            self.started = true;
        }
        let cut = if flush {
            self.pending.len()
        } else {
            last_start(&self.pending)
        };
        if self.pending.len() - cut > MAX_PENDING {
            return Err(WorkerError::invalid(format!(
                "{at}: not an H.264 Annex-B stream: {} bytes without a start code (at most {MAX_PENDING})",
                self.pending.len() - cut
            )));
        }
        let complete: Vec<u8> = self.pending.drain(..cut).collect();
        let bad = |e: openh264::Error| {
            WorkerError::invalid(format!(
                "{at}: H.264 data the decoder refuses: {}",
                decoding_state(e.native_code())
            ))
        };
        let mut pictures = Vec::new();
        for nal in nal_units(&complete) {
            if let Some(yuv) = self.decoder.decode(nal).map_err(bad)? {
                pictures.push(to_bgr(&yuv)?);
            }
        }
        if flush {
            for yuv in self.decoder.flush_remaining().map_err(bad)? {
                pictures.push(to_bgr(&yuv)?);
            }
        }
        Ok(pictures)
    }
}

#[cfg(test)]
mod tests {
    use super::{H264, last_start};

    /// Deterministic noise.
    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn garbage_is_refused_not_buffered() {
        let mut d = H264::new().expect("decoder");
        let e = d
            .feed(&noise(5000, 7), false, "frame 0")
            .expect_err("no start code");
        assert!(
            e.to_string()
                .contains("frame 0: not an H.264 Annex-B stream"),
            "{e}"
        );

        // Start codes around noise: the decoder's own refusal, in words.
        let mut g = vec![0, 0, 0, 1];
        g.extend(noise(3000, 8));
        g.extend([0, 0, 1]);
        g.extend(noise(3000, 9));
        g.extend([0, 0, 1]);
        let mut d = H264::new().expect("decoder");
        let e = d.feed(&g, true, "frame 3").expect_err("noise");
        assert!(
            e.to_string()
                .starts_with("frame 3: H.264 data the decoder refuses: "),
            "{e}"
        );
        assert!(!e.to_string().contains("Backtrace"), "{e}");
    }

    #[test]
    fn a_start_code_split_across_the_first_chunks_is_accepted() {
        let mut d = H264::new().expect("decoder");
        assert!(d.feed(&[0, 0], false, "frame 0").expect("short").is_empty());
        assert!(
            d.feed(&[0, 1, 0x09, 0xf0], false, "frame 1")
                .expect("AUD")
                .is_empty()
        );
    }

    #[test]
    fn an_endless_unit_is_refused_at_the_bound() {
        let mut d = H264::new().expect("decoder");
        let mut first = vec![0, 0, 0, 1, 0x65];
        first.extend(vec![0x55; super::MAX_PENDING]);
        let e = d.feed(&first, false, "frame 0").expect_err("too long");
        assert!(e.to_string().contains("without a start code"), "{e}");
    }

    #[test]
    fn the_last_start_code_is_found_in_both_forms() {
        assert_eq!(last_start(&[0, 0, 0, 1, 9, 9, 0, 0, 1, 5]), 6);
        assert_eq!(last_start(&[0, 0, 0, 1, 9, 9, 0, 0, 0, 1, 5]), 6);
        assert_eq!(
            last_start(&[0, 0, 0, 1, 9, 9]),
            0,
            "only the first unit, still open"
        );
        assert_eq!(last_start(&[9, 9]), 0);
    }
}
