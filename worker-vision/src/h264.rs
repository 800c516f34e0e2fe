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

use crate::error::VisionError;

/// One stream's decoder and its incomplete bytes.
pub struct H264 {
    decoder: Decoder,
    pending: Vec<u8>,
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

fn to_bgr(yuv: &DecodedYUV<'_>) -> Result<Mat, VisionError> {
    let (w, h) = yuv.dimensions();
    let mut rgb = Mat::new_rows_cols_with_default(h as i32, w as i32, CV_8UC3, Scalar::all(0.0))
        .map_err(|e| VisionError::Internal(format!("Mat: {e}")))?;
    yuv.write_rgb8(
        rgb.data_bytes_mut()
            .map_err(|e| VisionError::Internal(format!("Mat bytes: {e}")))?,
    );
    let mut bgr = Mat::default();
    imgproc::cvt_color(&rgb, &mut bgr, imgproc::COLOR_RGB2BGR, 0)
        .map_err(|e| VisionError::Internal(format!("cvtColor: {e}")))?;
    Ok(bgr)
}

impl H264 {
    /// A decoder for a new stream.
    pub fn new() -> Result<H264, VisionError> {
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| VisionError::Internal(format!("OpenH264: {e}")))?;
        Ok(H264 {
            decoder,
            pending: Vec::new(),
        })
    }

    /// Feeds a chunk; returns the pictures it completed (all of them, the
    /// delayed ones included, when `flush`). `at` names the frame in errors.
    pub fn feed(&mut self, chunk: &[u8], flush: bool, at: &str) -> Result<Vec<Mat>, VisionError> {
        self.pending.extend_from_slice(chunk);
        let cut = if flush {
            self.pending.len()
        } else {
            last_start(&self.pending)
        };
        let complete: Vec<u8> = self.pending.drain(..cut).collect();
        let bad = |e: openh264::Error| {
            VisionError::Invalid(format!("{at}: H.264 data the decoder refuses: {e}"))
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
    use super::last_start;

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
