//! Annex-B framing of an H.264 stream that arrives in chunks split
//! anywhere: bytes wait until the next start code shows their NAL unit
//! complete. Linear: each byte is examined once as a start code's first
//! byte, however small the chunks, and the count of bytes examined is kept
//! (`scanned`) so tests can hold it to that.

/// A stream's bytes not yet handed to the decoder.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// The first position not yet examined as a `00 00 01`'s first byte.
    next: usize,
    /// Where the last start code found past the start begins (its leading
    /// zero for the 4-byte form); 0: none yet.
    last: usize,
    /// Positions examined since the stream began.
    scanned: u64,
    /// Bytes fed since the stream began.
    fed: u64,
}

impl Framer {
    /// Appends a chunk and scans what it made scannable.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        self.fed += chunk.len() as u64;
        while self.next + 3 <= self.buf.len() {
            let i = self.next;
            if i > 0 && self.buf[i..i + 3] == [0, 0, 1] {
                let start = if self.buf[i - 1] == 0 { i - 1 } else { i };
                if start > 0 {
                    self.last = start;
                }
            }
            self.next += 1;
            self.scanned += 1;
        }
    }

    /// The bytes held (what is not yet taken).
    pub fn held(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes held after the last start code: the NAL unit still open.
    pub fn open_len(&self) -> usize {
        self.buf.len() - self.last
    }

    /// Takes the complete NAL units: every byte before the last start code.
    pub fn take_complete(&mut self) -> Vec<u8> {
        let cut = self.last;
        let out: Vec<u8> = self.buf.drain(..cut).collect();
        self.next -= cut;
        self.last = 0;
        out
    }

    /// Takes every byte held (the stream ends).
    pub fn take_all(&mut self) -> Vec<u8> {
        self.next = 0;
        self.last = 0;
        std::mem::take(&mut self.buf)
    }

    /// Positions examined for a start code since the stream began.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Bytes fed since the stream began.
    pub fn fed(&self) -> u64 {
        self.fed
    }
}

#[cfg(test)]
mod tests {
    use super::Framer;
    use proptest::prelude::*;

    /// The old framing: the last start code past the start, by a scan
    /// back over everything held.
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

    #[test]
    fn sixteen_mib_in_one_byte_chunks_is_scanned_once() {
        // NAL units of 4000 bytes, then 8 MiB without a start code.
        let mut stream = Vec::new();
        while stream.len() < 8 << 20 {
            stream.extend([0, 0, 0, 1, 0x65]);
            stream.extend(std::iter::repeat_n(0x55u8, 3995));
        }
        stream.extend(std::iter::repeat_n(0x77u8, (16 << 20) - stream.len()));
        let mut f = Framer::default();
        let mut taken = 0usize;
        for b in &stream {
            f.push(std::slice::from_ref(b));
            taken += f.take_complete().len();
        }
        assert_eq!(f.fed(), 16 << 20);
        assert!(
            f.scanned() <= 2 * f.fed(),
            "{} bytes scanned for {} fed",
            f.scanned(),
            f.fed()
        );
        assert_eq!(taken + f.held().len(), stream.len());
        assert_eq!(f.open_len(), (16 << 20) - taken);
    }

    #[test]
    fn both_start_code_forms_end_a_unit() {
        let mut f = Framer::default();
        f.push(&[0, 0, 0, 1, 9, 9, 0, 0, 1, 5]);
        assert_eq!(f.take_complete(), [0, 0, 0, 1, 9, 9]);
        f.push(&[0, 0, 0, 1, 7]);
        assert_eq!(f.take_complete(), [0, 0, 1, 5]);
        assert_eq!(f.held(), [0, 0, 0, 1, 7]);
        assert!(f.take_complete().is_empty(), "only the open unit");
        assert_eq!(f.take_all(), [0, 0, 0, 1, 7]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the bytes and however they are split, the framer takes
        /// what the old scan-back took, loses and repeats nothing, and
        /// examines each byte at most once.
        #[test]
        fn any_split_frames_like_the_scan_back(
            // Mostly zeros and ones, so start codes are frequent.
            bytes in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..600),
            cuts in proptest::collection::vec(1usize..40, 1..64),
        ) {
            let mut f = Framer::default();
            let mut reference: Vec<u8> = Vec::new();
            let mut out = Vec::new();
            let (mut at, mut k) = (0, 0);
            while at < bytes.len() {
                let len = cuts[k % cuts.len()].min(bytes.len() - at);
                let chunk = &bytes[at..at + len];
                f.push(chunk);
                reference.extend_from_slice(chunk);
                let want = last_start(&reference);
                let got = f.take_complete();
                prop_assert_eq!(&got[..], &reference[..want]);
                reference.drain(..want);
                out.extend(got);
                (at, k) = (at + len, k + 1);
            }
            out.extend(f.take_all());
            prop_assert_eq!(out, bytes.clone());
            prop_assert!(f.scanned() <= f.fed());
        }
    }
}
