//! The picture size an H.264 sequence parameter set declares, read before
//! the decoder sees it (ITU-T H.264 7.3.2.1.1): enough of the SPS to reach
//! `pic_width_in_mbs_minus1`, `pic_height_in_map_units_minus1` and
//! `frame_mbs_only_flag`. Bounded: at most [`MAX_SPS`] bytes are read, an
//! Exp-Golomb code has at most 31 leading zeros, every loop's count is
//! checked first.

/// The most bytes of an SPS NAL unit read; a real one is a few dozen.
pub const MAX_SPS: usize = 4096;

/// Reads bits of an RBSP (emulation prevention bytes already removed).
struct Bits<'a> {
    b: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, String> {
        let byte = self
            .b
            .get(self.at / 8)
            .ok_or_else(|| "the SPS is cut short".to_string())?;
        let v = (byte >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Ok(u32::from(v))
    }

    fn bits(&mut self, n: u32) -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..n {
            v = v << 1 | self.bit()?;
        }
        Ok(v)
    }

    /// ue(v).
    fn ue(&mut self) -> Result<u64, String> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("the SPS holds an Exp-Golomb code longer than 32 bits".into());
            }
        }
        Ok((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?))
    }

    /// se(v), as its magnitude is not needed: only skipped.
    fn se(&mut self) -> Result<(), String> {
        self.ue().map(|_| ())
    }
}

/// The RBSP of a NAL unit's payload (after its one-byte header): every
/// `00 00 03` loses its `03`.
fn rbsp(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut zeros = 0;
    for &b in payload {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn scaling_list(r: &mut Bits<'_>, size: usize) -> Result<(), String> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            // The signed delta's value decides when the list ends.
            let code = r.ue()? as i64;
            let delta = if code % 2 == 1 {
                (code + 1) / 2
            } else {
                -(code / 2)
            };
            next = (last + delta).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// The (width, height) in pixels an SPS NAL unit (its header byte first,
/// no start code) declares, before cropping.
pub fn size(nal: &[u8]) -> Result<(u64, u64), String> {
    let payload = nal.get(1..).unwrap_or_default();
    let payload = &payload[..payload.len().min(MAX_SPS)];
    let data = rbsp(payload);
    let mut r = Bits { b: &data, at: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma = r.ue()?;
        if chroma > 3 {
            return Err(format!("the SPS has chroma_format_idc {chroma}"));
        }
        if chroma == 3 {
            r.bit()?;
        }
        r.ue()?; // bit depths
        r.ue()?;
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return Err(format!(
                    "the SPS has {n} reference frames in its POC cycle (at most 255)"
                ));
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        2 => {}
        t => return Err(format!("the SPS has pic_order_cnt_type {t}")),
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let mbs_w = r.ue()? + 1;
    let units_h = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    Ok((mbs_w * 16, units_h * 16 * (2 - u64::from(frame_mbs_only))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Writes bits, for SPSs made by the tests.
    #[derive(Default)]
    pub(crate) struct Writer {
        bits: Vec<u8>,
    }

    impl Writer {
        pub(crate) fn bits(&mut self, v: u64, n: u32) {
            for k in (0..n).rev() {
                self.bits.push((v >> k & 1) as u8);
            }
        }

        pub(crate) fn ue(&mut self, v: u64) {
            let x = v + 1;
            let len = 64 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x, len);
        }

        /// The NAL unit (header 0x67), with emulation prevention.
        pub(crate) fn nal(mut self) -> Vec<u8> {
            self.bits(1, 1); // rbsp_stop_one_bit
            while !self.bits.len().is_multiple_of(8) {
                self.bits.push(0);
            }
            let bytes: Vec<u8> = self
                .bits
                .chunks(8)
                .map(|c| c.iter().fold(0, |a, b| a << 1 | b))
                .collect();
            let mut out = vec![0x67];
            let mut zeros = 0;
            for b in bytes {
                if zeros >= 2 && b <= 3 {
                    out.push(3);
                    zeros = 0;
                }
                zeros = if b == 0 { zeros + 1 } else { 0 };
                out.push(b);
            }
            out
        }
    }

    /// A High-profile SPS (with a scaling list) of `w`x`h` macroblocks.
    pub(crate) fn high_sps(mbs_w: u64, mbs_h: u64) -> Vec<u8> {
        let mut w = Writer::default();
        w.bits(100, 8);
        w.bits(0, 8);
        w.bits(51, 8);
        w.ue(0);
        w.ue(1); // 4:2:0
        w.ue(0);
        w.ue(0);
        w.bits(0, 1);
        w.bits(1, 1); // scaling matrix present
        w.bits(1, 1); // list 0 present: deltas up then a zero ending it
        w.ue(1); // +1
        w.ue(2 * 9); // -9: next = 0
        for _ in 1..8 {
            w.bits(0, 1);
        }
        w.ue(0);
        w.ue(1); // POC type 1
        w.bits(0, 1);
        w.ue(3);
        w.ue(4);
        w.ue(2);
        w.ue(5);
        w.ue(6);
        w.ue(4);
        w.bits(0, 1);
        w.ue(mbs_w - 1);
        w.ue(mbs_h - 1);
        w.bits(1, 1);
        w.bits(0, 1); // direct_8x8_inference_flag, then nothing checked
        w.nal()
    }

    #[test]
    fn a_made_sps_reads_as_its_size() {
        assert_eq!(size(&high_sps(1024, 1024)), Ok((16384, 16384)));
        assert_eq!(size(&high_sps(240, 135)), Ok((3840, 2160)));
        // Baseline, POC type 2, interlaced: map units are field pairs.
        let mut w = Writer::default();
        w.bits(66, 8);
        w.bits(0, 16);
        w.ue(0);
        w.ue(0);
        w.ue(2);
        w.ue(1);
        w.bits(0, 1);
        w.ue(19);
        w.ue(17);
        w.bits(0, 1);
        assert_eq!(size(&w.nal()), Ok((320, 576)));
    }

    #[test]
    fn x264s_sps_reads_as_its_size() {
        // The SPS x264 wrote for a 320x240 High-profile stream.
        let sps = [
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03,
            0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60,
        ];
        assert_eq!(size(&sps), Ok((320, 240)));
    }

    #[test]
    fn broken_spss_are_refused() {
        assert!(size(&[0x67]).is_err());
        assert!(
            size(&[0x67, 100, 0, 0, 0, 0, 0, 0]).is_err(),
            "endless zeros"
        );
        let long = high_sps(5, 5);
        assert!(size(&long[..long.len() - 3]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok((w, h)) = size(&bytes) {
                prop_assert!(w >= 16 && h >= 16);
                prop_assert!(w % 16 == 0 && h % 16 == 0);
            }
        }

        #[test]
        fn made_spss_read_back(w in 1u64..=2048, h in 1u64..=2048) {
            prop_assert_eq!(size(&high_sps(w, h)), Ok((w * 16, h * 16)));
        }
    }
}
