//! An encoded image's size read from its header, before any decoder sees
//! it: PNG (IHDR), JPEG (the first SOFn, segments skipped by their
//! length), BMP, GIF, WebP (VP8, VP8L, VP8X), TIFF (the first IFD) and
//! PNM (P1..P6). Iterative, every offset checked against the input; a
//! format this does not know, or a header it cannot read, is an error,
//! never a guess: nothing is decoded whose size is unknown.

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The format, in words ("PNG").
    pub format: &'static str,
    /// Width and height, pixels.
    pub width: u32,
    pub height: u32,
    /// Where the bytes that gave the size end: they lie in `..end`.
    pub end: usize,
}

/// The formats read, for error messages.
pub const FORMATS: &str = "JPEG, PNG, BMP, GIF, WebP, TIFF or PNM";

type Read = Result<Header, String>;

fn u16_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u16_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u24_le(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

fn short(format: &'static str) -> String {
    format!("a {format} whose header is cut short")
}

fn header(format: &'static str, width: u32, height: u32, end: usize) -> Read {
    Ok(Header {
        format,
        width,
        height,
        end,
    })
}

/// Reads the size from an encoded image's header.
pub fn read(b: &[u8]) -> Read {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        png(b)
    } else if b.starts_with(&[0xff, 0xd8]) {
        jpeg(b)
    } else if b.starts_with(b"BM") {
        bmp(b)
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        let (Some(w), Some(h)) = (u16_le(b, 6), u16_le(b, 8)) else {
            return Err(short("GIF"));
        };
        header("GIF", w, h, 10)
    } else if b.starts_with(b"RIFF") && b.get(8..12) == Some(b"WEBP") {
        webp(b)
    } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
        tiff(b)
    } else if b.len() >= 2 && b[0] == b'P' && (b'1'..=b'6').contains(&b[1]) {
        pnm(b)
    } else {
        Err(format!(
            "not an image format whose size can be read before decoding ({FORMATS})"
        ))
    }
}

fn png(b: &[u8]) -> Read {
    if b.get(12..16) != Some(b"IHDR") {
        return Err(short("PNG").replace("cut short", "without IHDR first"));
    }
    let (Some(w), Some(h)) = (u32_be(b, 16), u32_be(b, 20)) else {
        return Err(short("PNG"));
    };
    header("PNG", w, h, 24)
}

/// Walks the JPEG's markers to its first frame header (SOF0..SOF15 but
/// DHT, JPG and DAC), skipping each segment by its length.
fn jpeg(b: &[u8]) -> Read {
    let mut at = 2;
    loop {
        // A marker: 0xFF, maybe more 0xFF fill bytes, then its code.
        if b.get(at) != Some(&0xff) {
            return Err(if at >= b.len() {
                short("JPEG")
            } else {
                format!("a JPEG without a marker at byte {at}")
            });
        }
        while b.get(at) == Some(&0xff) {
            at += 1;
        }
        let Some(&code) = b.get(at) else {
            return Err(short("JPEG"));
        };
        at += 1;
        match code {
            // Markers without a segment.
            0x01 | 0xd0..=0xd7 => continue,
            0xd8..=0xda => {
                return Err("a JPEG without a frame header (SOF) before its scan".into());
            }
            0xc0..=0xcf if !matches!(code, 0xc4 | 0xc8 | 0xcc) => {
                // Length, precision, height, width.
                let (Some(h), Some(w)) = (u16_be(b, at + 3), u16_be(b, at + 5)) else {
                    return Err(short("JPEG"));
                };
                if h == 0 {
                    return Err(
                        "a JPEG whose height is given after its first scan (DNL); not accepted"
                            .into(),
                    );
                }
                return header("JPEG", w, h, at + 7);
            }
            _ => {
                let Some(len) = u16_be(b, at) else {
                    return Err(short("JPEG"));
                };
                if len < 2 {
                    return Err(format!("a JPEG segment of length {len} at byte {at}"));
                }
                at += len as usize;
            }
        }
    }
}

fn bmp(b: &[u8]) -> Read {
    let Some(dib) = u32_le(b, 14) else {
        return Err(short("BMP"));
    };
    if dib == 12 {
        let (Some(w), Some(h)) = (u16_le(b, 18), u16_le(b, 20)) else {
            return Err(short("BMP"));
        };
        return header("BMP", w, h, 22);
    }
    let (Some(w), Some(h)) = (u32_le(b, 18), u32_le(b, 22)) else {
        return Err(short("BMP"));
    };
    let (w, h) = (w as i32, h as i32);
    if w < 0 {
        return Err(format!("a BMP of negative width {w}"));
    }
    // A negative height is a top-down bitmap.
    header("BMP", w.unsigned_abs(), h.unsigned_abs(), 26)
}

fn webp(b: &[u8]) -> Read {
    match b.get(12..16) {
        Some(b"VP8 ") => {
            // Frame tag (3 bytes), start code 9d 01 2a, then 14-bit sizes.
            if b.get(23..26) != Some(&[0x9d, 0x01, 0x2a]) {
                return Err(short("WebP (VP8)"));
            }
            let (Some(w), Some(h)) = (u16_le(b, 26), u16_le(b, 28)) else {
                return Err(short("WebP (VP8)"));
            };
            header("WebP", w & 0x3fff, h & 0x3fff, 30)
        }
        Some(b"VP8L") => {
            if b.get(20) != Some(&0x2f) {
                return Err(short("WebP (VP8L)"));
            }
            let Some(bits) = u32_le(b, 21) else {
                return Err(short("WebP (VP8L)"));
            };
            header("WebP", (bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1, 25)
        }
        Some(b"VP8X") => {
            let (Some(w), Some(h)) = (u24_le(b, 24), u24_le(b, 27)) else {
                return Err(short("WebP (VP8X)"));
            };
            header("WebP", w + 1, h + 1, 30)
        }
        _ => Err(short("WebP")),
    }
}

/// The first IFD's ImageWidth (256) and ImageLength (257).
fn tiff(b: &[u8]) -> Read {
    let le = b[0] == b'I';
    let u16_at = |at| if le { u16_le(b, at) } else { u16_be(b, at) };
    let u32_at = |at| if le { u32_le(b, at) } else { u32_be(b, at) };
    let Some(ifd) = u32_at(4) else {
        return Err(short("TIFF"));
    };
    let ifd = ifd as usize;
    let Some(count) = u16_at(ifd) else {
        return Err(short("TIFF"));
    };
    let (mut w, mut h, mut end) = (None, None, 0);
    for k in 0..count as usize {
        let e = ifd + 2 + 12 * k;
        let (Some(tag), Some(typ)) = (u16_at(e), u16_at(e + 2)) else {
            return Err(short("TIFF"));
        };
        if tag != 256 && tag != 257 {
            continue;
        }
        let value = match typ {
            3 => u16_at(e + 8),
            4 => u32_at(e + 8),
            _ => return Err(format!("a TIFF whose tag {tag} has type {typ}")),
        };
        let Some(value) = value else {
            return Err(short("TIFF"));
        };
        end = end.max(e + 12);
        if tag == 256 {
            w = Some(value);
        } else {
            h = Some(value);
        }
        if let (Some(w), Some(h)) = (w, h) {
            return header("TIFF", w, h, end);
        }
    }
    Err("a TIFF without ImageWidth and ImageLength in its first IFD".into())
}

/// P1..P6: width and height in ASCII after the magic, with comments.
fn pnm(b: &[u8]) -> Read {
    let mut at = 2;
    let mut number = || -> Option<u32> {
        // Whitespace and comments.
        loop {
            match b.get(at)? {
                b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c => at += 1,
                b'#' => {
                    while *b.get(at)? != b'\n' {
                        at += 1;
                    }
                }
                _ => break,
            }
        }
        let mut v: u32 = 0;
        let mut digits = 0;
        while let Some(d) = b.get(at).filter(|c| c.is_ascii_digit()) {
            v = v.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
            digits += 1;
            at += 1;
        }
        (digits > 0).then_some(v)
    };
    let (Some(w), Some(h)) = (number(), number()) else {
        return Err(short("PNM"));
    };
    header("PNM", w, h, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn png_of(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend(w.to_be_bytes());
        b.extend(h.to_be_bytes());
        b.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    fn jpeg_of(w: u16, h: u16, app: usize) -> Vec<u8> {
        let mut b = vec![0xff, 0xd8];
        // An APP1 segment, fill bytes, a restart marker's neighbour.
        b.extend([0xff, 0xe1]);
        b.extend(((app + 2) as u16).to_be_bytes());
        b.extend(vec![0xffu8; app]);
        b.extend([0xff, 0xff, 0xc2, 0, 17, 8]);
        b.extend(h.to_be_bytes());
        b.extend(w.to_be_bytes());
        b.extend([3, 1, 0x22, 0]);
        b
    }

    fn bmp_of(w: u32, h: i32) -> Vec<u8> {
        let mut b = b"BM".to_vec();
        b.extend([0u8; 12]);
        b.extend(40u32.to_le_bytes());
        b.extend(w.to_le_bytes());
        b.extend(h.to_le_bytes());
        b
    }

    fn gif_of(w: u16, h: u16) -> Vec<u8> {
        let mut b = b"GIF89a".to_vec();
        b.extend(w.to_le_bytes());
        b.extend(h.to_le_bytes());
        b
    }

    fn webp_of(kind: u8, w: u32, h: u32) -> Vec<u8> {
        let mut b = b"RIFF\0\0\0\0WEBP".to_vec();
        match kind {
            0 => {
                b.extend(b"VP8 \0\0\0\0");
                b.extend([0, 0, 0, 0x9d, 0x01, 0x2a]);
                b.extend((w as u16).to_le_bytes());
                b.extend((h as u16).to_le_bytes());
            }
            1 => {
                b.extend(b"VP8L\0\0\0\0\x2f");
                b.extend(((w - 1) | (h - 1) << 14).to_le_bytes());
            }
            _ => {
                b.extend(b"VP8X\0\0\0\0\0\0\0\0");
                b.extend(&(w - 1).to_le_bytes()[..3]);
                b.extend(&(h - 1).to_le_bytes()[..3]);
            }
        }
        b
    }

    fn tiff_of(w: u32, h: u16, big_endian: bool) -> Vec<u8> {
        type Put16 = fn(u16) -> [u8; 2];
        type Put32 = fn(u32) -> [u8; 4];
        let (u16b, u32b): (Put16, Put32) = if big_endian {
            (u16::to_be_bytes, u32::to_be_bytes)
        } else {
            (u16::to_le_bytes, u32::to_le_bytes)
        };
        let mut b = if big_endian {
            b"MM\0*".to_vec()
        } else {
            b"II*\0".to_vec()
        };
        b.extend(u32b(8));
        b.extend(u16b(3));
        // An unrelated tag, ImageLength as SHORT, ImageWidth as LONG.
        for (tag, typ, value) in [(259u16, 3u16, 1u32), (257, 3, 0), (256, 4, w)] {
            b.extend(u16b(tag));
            b.extend(u16b(typ));
            b.extend(u32b(1));
            if tag == 257 {
                b.extend(u16b(h));
                b.extend([0, 0]);
            } else if typ == 3 {
                b.extend(u16b(value as u16));
                b.extend([0, 0]);
            } else {
                b.extend(u32b(value));
            }
        }
        b
    }

    fn dims(b: &[u8]) -> (&'static str, u32, u32) {
        let h = read(b).unwrap_or_else(|e| panic!("{e}"));
        assert!(h.end <= b.len());
        (h.format, h.width, h.height)
    }

    #[test]
    fn every_format_gives_its_size() {
        assert_eq!(dims(&png_of(30000, 30000)), ("PNG", 30000, 30000));
        assert_eq!(dims(&jpeg_of(65000, 16000, 300)), ("JPEG", 65000, 16000));
        assert_eq!(dims(&bmp_of(640, -480)), ("BMP", 640, 480));
        assert_eq!(dims(&gif_of(320, 200)), ("GIF", 320, 200));
        assert_eq!(dims(&webp_of(0, 1000, 700)), ("WebP", 1000, 700));
        assert_eq!(dims(&webp_of(1, 16384, 3)), ("WebP", 16384, 3));
        assert_eq!(dims(&webp_of(2, 1 << 20, 9)), ("WebP", 1 << 20, 9));
        assert_eq!(dims(&tiff_of(70000, 50, false)), ("TIFF", 70000, 50));
        assert_eq!(dims(&tiff_of(7, 50, true)), ("TIFF", 7, 50));
        assert_eq!(
            dims(b"P6\n# made by hand\n 1920 1080\n255\n"),
            ("PNM", 1920, 1080)
        );
    }

    #[test]
    fn the_real_test_image_reads_as_its_size() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/testdata/astronaut.png"
        );
        let bytes = std::fs::read(path).expect("astronaut.png (run scripts/setup.sh)");
        assert_eq!(dims(&bytes), ("PNG", 512, 512));
    }

    #[test]
    fn unknown_and_broken_headers_are_refused() {
        let e = read(b"#?RADIANCE\n").expect_err("unknown");
        assert!(e.starts_with("not an image format whose size"), "{e}");
        assert!(read(&png_of(5, 5)[..20]).is_err());
        assert!(read(&[0xff, 0xd8, 0xff, 0xda, 0, 2]).is_err(), "scan first");
        assert!(read(&[0xff, 0xd8, 0xff, 0xe0, 0, 1]).is_err(), "length 1");
        assert!(
            read(&[0xff, 0xd8, 0xff, 0xe0, 0xff, 0xff]).is_err(),
            "past the end"
        );
        let mut dnl = jpeg_of(10, 0, 0);
        dnl.truncate(dnl.len() - 4);
        assert!(read(&dnl).expect_err("DNL").contains("DNL"));
        assert!(read(b"P5 99999999999 2").is_err(), "overflow");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic, and a size read comes from bytes
        /// that are there.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(h) = read(&bytes) {
                prop_assert!(h.end <= bytes.len());
            }
        }

        /// The same after every known signature: the parsers past it see
        /// arbitrary bytes.
        #[test]
        fn arbitrary_bodies_never_panic(
            sig in 0usize..9,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let sigs: [&[u8]; 9] = [
                b"\x89PNG\r\n\x1a\n", &[0xff, 0xd8], b"BM", b"GIF89a",
                b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8L", b"II*\0", b"MM\0*", b"P6",
            ];
            let mut bytes = sigs[sig].to_vec();
            bytes.extend(body);
            if let Ok(h) = read(&bytes) {
                prop_assert!(h.end <= bytes.len());
                // Every byte the size came from is needed: cut one short
                // and the size is no longer read.
                prop_assert!(read(&bytes[..h.end - 1]).is_err() || sig == 8);
            }
        }

        /// A header made with a size reads as exactly that size, and any
        /// prefix of it reads as nothing.
        #[test]
        fn made_headers_read_back(w in 1u32..=16383, h in 1u32..=16383, pad in 0usize..64) {
            for b in [
                png_of(w, h),
                jpeg_of(w as u16, h as u16, pad),
                bmp_of(w, h as i32),
                gif_of(w as u16, h as u16),
                webp_of(0, w, h),
                webp_of(1, w, h),
                webp_of(2, w, h),
                tiff_of(w, h as u16, pad % 2 == 0),
            ] {
                let got = read(&b).map(|x| (x.width, x.height));
                prop_assert_eq!(got, Ok((w, h)));
                for cut in 0..b.len().min(read(&b).map(|x| x.end).unwrap_or(0)) {
                    prop_assert!(read(&b[..cut]).is_err(), "prefix {} of {:?}", cut, b);
                }
            }
        }
    }
}
