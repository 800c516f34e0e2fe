//! Turning an API image (raw pixels or an encoded file) into an OpenCV BGR
//! matrix, with every size mismatch named. An encoded image's size is read
//! from its header (`header`) and checked against the model's limits
//! before `imdecode` allocates anything.
//!
//! Bytes in a shared-memory region (`RawImage.shm`, `encoded_shm`) are read
//! with `pread` ([`worker_runtime::regions`]): raw pixels straight into the
//! matrix OpenCV converts from (BGR8 straight into the BGR matrix the
//! tasks use: one copy), an encoded file into one buffer `imdecode` reads.

use opencv::core::{CV_8UC1, CV_8UC3, CV_8UC4, Mat, Scalar, Vector};
use opencv::imgcodecs;
use opencv::imgproc;
use opencv::prelude::*;
use sidecar_proto::v1::{Image, PixelFormat, RawImage, SharedMemoryRef, image};
use worker_runtime::{Resolved, WorkerError};

use crate::error::cv;
use crate::header;
use crate::limits::Limits;

/// Decodes `img` into an 8-bit BGR matrix; `at` names it in errors
/// ("images[3]"). Its size is checked against `limits` first: from the
/// header of an encoded image, before it is decoded.
/// `regions`: the request's shared-memory regions, for images there.
pub fn to_bgr(
    img: &Image,
    at: &str,
    limits: &Limits,
    regions: &Resolved,
) -> Result<Mat, WorkerError> {
    match &img.data {
        Some(image::Data::Raw(raw)) => raw_to_bgr(raw, at, limits, regions),
        Some(image::Data::EncodedShm(r)) => {
            let bytes = read_encoded(r, &format!("{at}.encoded_shm"), limits, regions)?;
            decode(&bytes, at, limits)
        }
        Some(image::Data::Encoded(bytes)) => decode(bytes, at, limits),
        None => Err(WorkerError::invalid(format!("{at}: no image data"))),
    }
}

/// The largest encoded file read from a region: the raw size of the
/// largest picture the limits allow (4 bytes a pixel) and 1 MiB of
/// headers. Checked before anything is allocated for it.
pub fn max_encoded_bytes(limits: &Limits) -> u64 {
    limits.max_pixels.saturating_mul(4).saturating_add(1 << 20)
}

/// An encoded file's bytes from a region (one copy).
pub fn read_encoded(
    r: &SharedMemoryRef,
    field: &str,
    limits: &Limits,
    regions: &Resolved,
) -> Result<Vec<u8>, WorkerError> {
    let max = max_encoded_bytes(limits);
    if r.byte_size > max {
        return Err(WorkerError::invalid(format!(
            "{field}.byte_size: {} bytes exceeds the limit of {max} for an encoded image (4 bytes per pixel of max_pixels {}, and 1 MiB)",
            r.byte_size, limits.max_pixels
        )));
    }
    regions.read(r, field)
}

/// Decodes a JPEG or PNG after checking its header's size.
pub fn decode(bytes: &[u8], at: &str, limits: &Limits) -> Result<Mat, WorkerError> {
    if bytes.is_empty() {
        return Err(WorkerError::invalid(format!("{at}: empty encoded image")));
    }
    let h = header::read(bytes).map_err(|e| {
        WorkerError::invalid(format!(
            "{at}: the encoded image ({} bytes) is {e}",
            bytes.len()
        ))
    })?;
    let what = format!("a {}", h.format);
    limits.check_size(at, &what, h.width.into(), h.height.into())?;
    let buf = Vector::<u8>::from_slice(bytes);
    let mat = imgcodecs::imdecode(&buf, imgcodecs::IMREAD_COLOR).map_err(cv("imdecode"))?;
    if mat.empty() {
        return Err(WorkerError::invalid(format!(
            "{at}: the encoded image ({} bytes, {what} of {}x{}) is not one OpenCV can decode",
            bytes.len(),
            h.width,
            h.height
        )));
    }
    // The decoder agrees with the header (or the header lied about
    // a size within the limit): never more than the limit.
    limits.check_size(
        at,
        "the decoded image",
        mat.cols() as u64,
        mat.rows() as u64,
    )?;
    Ok(mat)
}

/// Where a raw image's pixels are: the message's bytes, or a region.
enum Pixels<'a> {
    Inline(&'a [u8]),
    Region {
        regions: &'a Resolved,
        r: &'a SharedMemoryRef,
        field: String,
    },
}

impl Pixels<'_> {
    fn of<'a>(
        raw: &'a RawImage,
        at: &str,
        regions: &'a Resolved,
    ) -> Result<Pixels<'a>, WorkerError> {
        match &raw.shm {
            None => Ok(Pixels::Inline(&raw.data)),
            Some(_) if !raw.data.is_empty() => Err(WorkerError::invalid(format!(
                "{at}: both data ({} bytes) and shm are set; give one",
                raw.data.len()
            ))),
            Some(r) => {
                let field = format!("{at}.shm");
                regions.check(r, &field, r.byte_size, false)?;
                Ok(Pixels::Region { regions, r, field })
            }
        }
    }

    /// Bytes given.
    fn len(&self) -> u64 {
        match self {
            Pixels::Inline(b) => b.len() as u64,
            Pixels::Region { r, .. } => r.byte_size,
        }
    }

    /// What messages call the bytes given.
    fn given(&self) -> String {
        match self {
            Pixels::Inline(b) => format!("got {}", b.len()),
            Pixels::Region { r, .. } => format!("shm.byte_size is {}", r.byte_size),
        }
    }

    /// Copies `dst.len()` bytes from byte `from` of the pixels (for a
    /// region: one `pread` straight into `dst`).
    fn copy(&self, from: usize, dst: &mut [u8]) -> Result<(), WorkerError> {
        match self {
            Pixels::Inline(b) => {
                dst.copy_from_slice(&b[from..from + dst.len()]);
                Ok(())
            }
            Pixels::Region { regions, r, field } => {
                let part = SharedMemoryRef {
                    region: r.region.clone(),
                    offset: r.offset + from as u64,
                    byte_size: dst.len() as u64,
                };
                regions.read_into(&part, field, dst)
            }
        }
    }
}

fn raw_to_bgr(
    raw: &RawImage,
    at: &str,
    limits: &Limits,
    regions: &Resolved,
) -> Result<Mat, WorkerError> {
    let (w, h) = (raw.width, raw.height);
    limits.check_size(at, "a raw image", w.into(), h.into())?;
    let px = Pixels::of(raw, at, regions)?;
    let format = PixelFormat::try_from(raw.format).unwrap_or(PixelFormat::Unspecified);
    if matches!(format, PixelFormat::I420 | PixelFormat::Nv12) {
        return yuv_to_bgr(raw, &px, format, at);
    }
    let (channels, typ, code) = match format {
        PixelFormat::Rgb8 => (3, CV_8UC3, Some(imgproc::COLOR_RGB2BGR)),
        PixelFormat::Bgr8 => (3, CV_8UC3, None),
        PixelFormat::Rgba8 => (4, CV_8UC4, Some(imgproc::COLOR_RGBA2BGR)),
        PixelFormat::Bgra8 => (4, CV_8UC4, Some(imgproc::COLOR_BGRA2BGR)),
        PixelFormat::Gray8 => (1, CV_8UC1, Some(imgproc::COLOR_GRAY2BGR)),
        other => {
            return Err(WorkerError::invalid(format!(
                "{at}: format {} is not a pixel layout (RGB8, BGR8, RGBA8, BGRA8, GRAY8, I420 or NV12)",
                other.as_str_name()
            )));
        }
    };
    let row = w as usize * channels;
    let stride = if raw.stride == 0 {
        row
    } else {
        raw.stride as usize
    };
    if stride < row {
        return Err(WorkerError::invalid(format!(
            "{at}: stride {stride} is smaller than a row of {row} bytes"
        )));
    }
    let need = stride * (h as usize - 1) + row;
    if px.len() != need as u64 && px.len() != (stride * h as usize) as u64 {
        return Err(WorkerError::invalid(format!(
            "{at}: {w}x{h} {} with stride {stride} is {need} bytes, {}",
            format.as_str_name(),
            px.given()
        )));
    }
    if let Pixels::Region { .. } = px {
        // Straight from the region into the matrix: BGR8 is then the
        // tasks' matrix itself (one copy); other layouts are converted
        // from it (the conversion's pass, as for inline pixels).
        let mut mat = Mat::new_rows_cols_with_default(h as i32, w as i32, typ, Scalar::all(0.0))
            .map_err(cv("Mat"))?;
        {
            let dst = mat.data_bytes_mut().map_err(cv("Mat bytes"))?;
            if stride == row {
                px.copy(0, dst)?;
            } else {
                for y in 0..h as usize {
                    px.copy(y * stride, &mut dst[y * row..(y + 1) * row])?;
                }
            }
        }
        return match code {
            None => Ok(mat),
            Some(code) => {
                let mut bgr = Mat::default();
                imgproc::cvt_color(&mat, &mut bgr, code, 0).map_err(cv("cvtColor"))?;
                Ok(bgr)
            }
        };
    }
    if stride == row {
        // Tightly packed: a matrix over the frame's own bytes, so the
        // only pass over the pixels is the copy or conversion to BGR.
        let flat = Mat::from_slice(&raw.data[..row * h as usize]).map_err(cv("Mat"))?;
        let shaped = flat.reshape(channels as i32, h as i32).map_err(cv("Mat"))?;
        return match code {
            None => shaped.try_clone().map_err(cv("Mat")),
            Some(code) => {
                let mut bgr = Mat::default();
                imgproc::cvt_color(&shaped, &mut bgr, code, 0).map_err(cv("cvtColor"))?;
                Ok(bgr)
            }
        };
    }
    let mut mat = Mat::new_rows_cols_with_default(h as i32, w as i32, typ, Scalar::all(0.0))
        .map_err(cv("Mat"))?;
    {
        let dst = mat.data_bytes_mut().map_err(cv("Mat bytes"))?;
        for y in 0..h as usize {
            dst[y * row..(y + 1) * row].copy_from_slice(&raw.data[y * stride..y * stride + row]);
        }
    }
    match code {
        None => Ok(mat),
        Some(code) => {
            let mut bgr = Mat::default();
            imgproc::cvt_color(&mat, &mut bgr, code, 0).map_err(cv("cvtColor"))?;
            Ok(bgr)
        }
    }
}

/// Planar (I420) or semi-planar (NV12) 4:2:0 YUV, tightly packed: a
/// luma plane then chroma, `width × height × 3 / 2` bytes.
fn yuv_to_bgr(
    raw: &RawImage,
    px: &Pixels<'_>,
    format: PixelFormat,
    at: &str,
) -> Result<Mat, WorkerError> {
    let (w, h) = (raw.width as usize, raw.height as usize);
    if w % 2 != 0 || h % 2 != 0 {
        return Err(WorkerError::invalid(format!(
            "{at}: {} needs an even width and height, got {w}x{h}",
            format.as_str_name()
        )));
    }
    if raw.stride != 0 && raw.stride as usize != w {
        return Err(WorkerError::invalid(format!(
            "{at}: {} takes tightly packed planes (stride 0 or {w}), got stride {}",
            format.as_str_name(),
            raw.stride
        )));
    }
    let need = w * h * 3 / 2;
    if px.len() != need as u64 {
        return Err(WorkerError::invalid(format!(
            "{at}: {w}x{h} {} is {need} bytes, {}",
            format.as_str_name(),
            px.given()
        )));
    }
    let code = if format == PixelFormat::I420 {
        imgproc::COLOR_YUV2BGR_I420
    } else {
        imgproc::COLOR_YUV2BGR_NV12
    };
    let mut bgr = Mat::default();
    if let Pixels::Region { .. } = px {
        // Luma rows then chroma rows, read straight into one matrix.
        let mut yuv = Mat::new_rows_cols_with_default(
            (h * 3 / 2) as i32,
            w as i32,
            CV_8UC1,
            Scalar::all(0.0),
        )
        .map_err(cv("Mat"))?;
        px.copy(0, yuv.data_bytes_mut().map_err(cv("Mat bytes"))?)?;
        imgproc::cvt_color(&yuv, &mut bgr, code, 0).map_err(cv("cvtColor"))?;
        return Ok(bgr);
    }
    // A matrix over the frame's own bytes: luma rows, then chroma rows.
    let flat = Mat::from_slice(&raw.data[..]).map_err(cv("Mat"))?;
    let yuv = flat.reshape(1, (h * 3 / 2) as i32).map_err(cv("Mat"))?;
    imgproc::cvt_color(&yuv, &mut bgr, code, 0).map_err(cv("cvtColor"))?;
    Ok(bgr)
}

#[cfg(test)]
mod tests {
    use super::to_bgr;
    use crate::limits::Limits;
    use opencv::prelude::*;
    use sidecar_proto::v1::{Image, PixelFormat, RawImage, image};

    fn raw(w: u32, h: u32, format: PixelFormat, stride: u32, data: Vec<u8>) -> Image {
        Image {
            data: Some(image::Data::Raw(RawImage {
                shm: Default::default(),
                width: w,
                height: h,
                format: format as i32,
                stride,
                data: data.into(),
            })),
        }
    }

    fn bgr_bytes(img: &Image) -> Vec<u8> {
        let m = to_bgr(img, "t", &Limits::default(), &Default::default()).expect("converts");
        assert_eq!(m.channels(), 3);
        m.data_bytes().expect("continuous").to_vec()
    }

    /// BGR pixels (b, g, r) of a 3x2 test picture.
    const PIXELS: [[u8; 3]; 6] = [
        [10, 20, 30],
        [40, 50, 60],
        [70, 80, 90],
        [0, 0, 255],
        [0, 255, 0],
        [255, 0, 0],
    ];

    #[test]
    fn every_packed_layout_gives_the_same_bgr_pixels() {
        let want: Vec<u8> = PIXELS.iter().flatten().copied().collect();
        let bgr = want.clone();
        let rgb: Vec<u8> = PIXELS.iter().flat_map(|p| [p[2], p[1], p[0]]).collect();
        let rgba: Vec<u8> = PIXELS.iter().flat_map(|p| [p[2], p[1], p[0], 7]).collect();
        let bgra: Vec<u8> = PIXELS.iter().flat_map(|p| [p[0], p[1], p[2], 7]).collect();
        for (format, data) in [
            (PixelFormat::Bgr8, bgr.clone()),
            (PixelFormat::Rgb8, rgb),
            (PixelFormat::Rgba8, rgba),
            (PixelFormat::Bgra8, bgra),
        ] {
            assert_eq!(bgr_bytes(&raw(3, 2, format, 0, data)), want, "{format:?}");
        }
        // Rows padded to 12 bytes, with and without the last row's padding.
        let mut padded = Vec::new();
        for row in bgr.chunks(9) {
            padded.extend_from_slice(row);
            padded.extend_from_slice(&[99, 99, 99]);
        }
        assert_eq!(
            bgr_bytes(&raw(3, 2, PixelFormat::Bgr8, 12, padded.clone())),
            want
        );
        padded.truncate(21);
        assert_eq!(bgr_bytes(&raw(3, 2, PixelFormat::Bgr8, 12, padded)), want);
        let grey = bgr_bytes(&raw(
            3,
            2,
            PixelFormat::Gray8,
            0,
            vec![0, 50, 100, 150, 200, 250],
        ));
        assert_eq!(&grey[3..6], &[50, 50, 50]);
    }

    #[test]
    fn yuv_planes_convert_in_both_layouts() {
        // 2x2 of luma 128 with neutral chroma: mid-grey, both layouts.
        for format in [PixelFormat::I420, PixelFormat::Nv12] {
            let px = bgr_bytes(&raw(2, 2, format, 0, vec![128, 128, 128, 128, 128, 128]));
            assert!(
                px.iter().all(|&v| v.abs_diff(128) <= 2),
                "{format:?}: {px:?}"
            );
        }
        // Strong red chroma (V high): red dominates in both layouts.
        let i420 = bgr_bytes(&raw(
            2,
            2,
            PixelFormat::I420,
            0,
            vec![82, 82, 82, 82, 90, 240],
        ));
        let nv12 = bgr_bytes(&raw(
            2,
            2,
            PixelFormat::Nv12,
            0,
            vec![82, 82, 82, 82, 90, 240],
        ));
        assert_eq!(i420, nv12);
        assert!(i420[2] > 200 && i420[1] < 40 && i420[0] < 60, "{i420:?}");
    }
}
