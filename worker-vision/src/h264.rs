//! H.264 Annex-B streams through OpenH264 (bundled with the `openh264`
//! crate): chunks may split NAL units anywhere, so bytes wait until the
//! next start code shows their NAL unit complete (`annexb`, a linear
//! scan). Decoding does not flush after each unit (streams with B-frames
//! would lose most pictures); the end of the stream flushes the delayed
//! pictures. Every SPS's picture size is checked against the model's
//! limits before the decoder sees it; a chunk completes at most
//! `max_pictures_per_chunk` pictures, each handed on (and dropped) before
//! the next is made.

use opencv::core::{CV_8UC3, Mat, Scalar};
use opencv::imgproc;
use opencv::prelude::*;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, nal_units};
use worker_runtime::WorkerError;

use crate::annexb::Framer;
use crate::limits::Limits;
use crate::sps;

/// The longest NAL unit a stream may leave incomplete: bytes beyond this
/// with no start code are not an H.264 stream, and must not grow a buffer
/// without bound.
pub const MAX_PENDING: usize = 16 << 20;

/// One stream's decoder and its incomplete bytes.
pub struct H264 {
    decoder: Decoder,
    framer: Framer,
    /// Whether the stream's start was checked for a start code.
    started: bool,
    limits: Limits,
}

impl std::fmt::Debug for H264 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264")
            .field("pending", &self.framer.held().len())
            .finish_non_exhaustive()
    }
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

/// The NAL unit's header byte and what follows, without its start code.
fn unit(nal: &[u8]) -> &[u8] {
    let zeros = nal.iter().take_while(|&&b| b == 0).count();
    match nal.get(zeros) {
        Some(1) => &nal[zeros + 1..],
        _ => nal,
    }
}

/// Counts a chunk's pictures against the bound, then hands each on.
struct Out<'a, F> {
    on_picture: F,
    count: u32,
    limits: &'a Limits,
    at: &'a str,
}

impl<F: FnMut(Mat) -> Result<(), WorkerError>> Out<'_, F> {
    fn picture(&mut self, yuv: &DecodedYUV<'_>) -> Result<(), WorkerError> {
        self.count += 1;
        let max = self.limits.max_pictures_per_chunk;
        if self.count > max {
            return Err(WorkerError::invalid(format!(
                "{}: the chunk completes more than {max} pictures (max_pictures_per_chunk); send the stream in smaller chunks",
                self.at
            )));
        }
        let (w, h) = yuv.dimensions();
        self.limits
            .check_size(self.at, "a decoded picture", w as u64, h as u64)?;
        (self.on_picture)(to_bgr(yuv)?)
    }
}

impl H264 {
    /// A decoder for a new stream, with the model's limits.
    pub fn new(limits: Limits) -> Result<H264, WorkerError> {
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| WorkerError::internal(format!("OpenH264: {e}")))?;
        Ok(H264 {
            decoder,
            framer: Framer::default(),
            started: false,
            limits,
        })
    }

    /// Positions the framer examined for start codes, and bytes fed.
    pub fn scanned(&self) -> (u64, u64) {
        (self.framer.scanned(), self.framer.fed())
    }

    /// Feeds a chunk; hands each picture it completed (all of them, the
    /// delayed ones included, when `flush`) to `on_picture` as it comes,
    /// and returns how many. `at` names the frame in errors.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        flush: bool,
        at: &str,
        on_picture: impl FnMut(Mat) -> Result<(), WorkerError>,
    ) -> Result<u32, WorkerError> {
        self.framer.push(chunk);
        let held = self.framer.held();
        if !self.started && (held.len() >= 4 || flush) {
            if !(held.starts_with(&[0, 0, 1]) || held.starts_with(&[0, 0, 0, 1])) {
                return Err(WorkerError::invalid(format!(
                    "{at}: not an H.264 Annex-B stream: it does not begin with a start code (00 00 01)"
                )));
            }
            self.started = true;
        }
        if !flush && self.framer.open_len() > MAX_PENDING {
            return Err(WorkerError::invalid(format!(
                "{at}: not an H.264 Annex-B stream: {} bytes without a start code (at most {MAX_PENDING})",
                self.framer.open_len()
            )));
        }
        let complete = if flush {
            self.framer.take_all()
        } else {
            self.framer.take_complete()
        };
        let bad = |e: openh264::Error| {
            WorkerError::invalid(format!(
                "{at}: H.264 data the decoder refuses: {}",
                decoding_state(e.native_code())
            ))
        };
        let mut out = Out {
            on_picture,
            count: 0,
            limits: &self.limits,
            at,
        };
        for nal in nal_units(&complete) {
            let u = unit(nal);
            // SPS or subset SPS: its size is checked before the decoder
            // allocates anything for it.
            if matches!(u.first().map(|h| h & 0x1f), Some(7 | 15)) {
                let (w, h) = sps::size(u).map_err(|e| {
                    WorkerError::invalid(format!("{at}: an SPS that cannot be read: {e}"))
                })?;
                self.limits.check_size(at, "the SPS", w, h)?;
            }
            if let Some(yuv) = self.decoder.decode(nal).map_err(bad)? {
                out.picture(&yuv)?;
            }
        }
        if flush {
            for yuv in self.decoder.flush_remaining().map_err(bad)? {
                out.picture(&yuv)?;
            }
        }
        Ok(out.count)
    }
}

#[cfg(test)]
mod tests {
    use super::H264;
    use crate::limits::Limits;
    use crate::sps::tests::high_sps;

    fn decoder() -> H264 {
        H264::new(Limits::default()).expect("decoder")
    }

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
        let mut d = decoder();
        let e = d
            .feed(&noise(5000, 7), false, "frame 0", |_| Ok(()))
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
        let mut d = decoder();
        let e = d.feed(&g, true, "frame 3", |_| Ok(())).expect_err("noise");
        assert!(
            e.to_string()
                .starts_with("frame 3: H.264 data the decoder refuses: "),
            "{e}"
        );
        assert!(!e.to_string().contains("Backtrace"), "{e}");
    }

    #[test]
    fn a_start_code_split_across_the_first_chunks_is_accepted() {
        let mut d = decoder();
        assert!(
            d.feed(&[0, 0], false, "frame 0", |_| Ok(()))
                .expect("short")
                == 0
        );
        assert!(
            d.feed(&[0, 1, 0x09, 0xf0], false, "frame 1", |_| Ok(()))
                .expect("AUD")
                == 0
        );
    }

    #[test]
    fn an_endless_unit_is_refused_at_the_bound() {
        let mut d = decoder();
        let mut first = vec![0, 0, 0, 1, 0x65];
        first.extend(vec![0x55; super::MAX_PENDING]);
        let e = d
            .feed(&first, false, "frame 0", |_| Ok(()))
            .expect_err("too long");
        assert!(e.to_string().contains("without a start code"), "{e}");
    }

    #[test]
    fn an_sps_over_the_limit_is_refused_before_the_decoder_sees_it() {
        let mut stream = vec![0, 0, 0, 1];
        stream.extend(high_sps(1024, 1024));
        stream.extend([0, 0, 0, 1, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0]);
        let mut d = decoder();
        let e = d
            .feed(&stream, false, "frame 0 (H.264 chunk)", |_| Ok(()))
            .expect_err("16384x16384");
        assert_eq!(
            e.message,
            "frame 0 (H.264 chunk): the SPS of 16384x16384 pixels (268435456) exceeds the limits of 16384 per side and 33177600 pixels (max_pixels)"
        );
    }

    #[test]
    fn one_byte_chunks_are_scanned_once() {
        let mut d = decoder();
        let mut chunk = vec![0, 0, 0, 1, 0x0c];
        chunk.extend(vec![0x55; 64 << 10]);
        for (i, b) in chunk.iter().enumerate() {
            let n = d
                .feed(std::slice::from_ref(b), false, "frame 0", |_| Ok(()))
                .unwrap_or_else(|e| panic!("byte {i}: {e}"));
            assert_eq!(n, 0);
        }
        let (scanned, fed) = d.scanned();
        assert_eq!(fed, chunk.len() as u64);
        assert!(scanned <= 2 * fed, "{scanned} scanned for {fed}");
    }
}
