//! Turning an API image (raw pixels or a JPEG/PNG file) into an OpenCV BGR
//! matrix, with every size mismatch named.

use opencv::core::{CV_8UC1, CV_8UC3, CV_8UC4, Mat, Scalar, Vector};
use opencv::imgcodecs;
use opencv::imgproc;
use opencv::prelude::*;
use sidecar_proto::v1::{Image, PixelFormat, RawImage, image};

use crate::error::VisionError;

/// Largest width or height accepted.
const MAX_SIDE: u32 = 16384;

fn cv(what: &str) -> impl Fn(opencv::Error) -> VisionError + '_ {
    move |e| VisionError::Internal(format!("{what}: {e}"))
}

/// Decodes `img` into an 8-bit BGR matrix; `at` names it in errors
/// ("images[3]").
pub fn to_bgr(img: &Image, at: &str) -> Result<Mat, VisionError> {
    match &img.data {
        Some(image::Data::Raw(raw)) => raw_to_bgr(raw, at),
        Some(image::Data::Encoded(bytes)) => {
            if bytes.is_empty() {
                return Err(VisionError::Invalid(format!("{at}: empty encoded image")));
            }
            let buf = Vector::<u8>::from_slice(bytes);
            let mat = imgcodecs::imdecode(&buf, imgcodecs::IMREAD_COLOR).map_err(cv("imdecode"))?;
            if mat.empty() {
                return Err(VisionError::Invalid(format!(
                    "{at}: the encoded image ({} bytes) is not a JPEG or PNG OpenCV can decode",
                    bytes.len()
                )));
            }
            Ok(mat)
        }
        None => Err(VisionError::Invalid(format!("{at}: no image data"))),
    }
}

fn raw_to_bgr(raw: &RawImage, at: &str) -> Result<Mat, VisionError> {
    let (w, h) = (raw.width, raw.height);
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(VisionError::Invalid(format!(
            "{at}: size {w}x{h}; each side must be 1..{MAX_SIDE}"
        )));
    }
    let format = PixelFormat::try_from(raw.format).unwrap_or(PixelFormat::Unspecified);
    if matches!(format, PixelFormat::I420 | PixelFormat::Nv12) {
        return yuv_to_bgr(raw, format, at);
    }
    let (channels, typ, code) = match format {
        PixelFormat::Rgb8 => (3, CV_8UC3, Some(imgproc::COLOR_RGB2BGR)),
        PixelFormat::Bgr8 => (3, CV_8UC3, None),
        PixelFormat::Rgba8 => (4, CV_8UC4, Some(imgproc::COLOR_RGBA2BGR)),
        PixelFormat::Bgra8 => (4, CV_8UC4, Some(imgproc::COLOR_BGRA2BGR)),
        PixelFormat::Gray8 => (1, CV_8UC1, Some(imgproc::COLOR_GRAY2BGR)),
        other => {
            return Err(VisionError::Invalid(format!(
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
        return Err(VisionError::Invalid(format!(
            "{at}: stride {stride} is smaller than a row of {row} bytes"
        )));
    }
    let need = stride * (h as usize - 1) + row;
    if raw.data.len() != need && raw.data.len() != stride * h as usize {
        return Err(VisionError::Invalid(format!(
            "{at}: {w}x{h} {} with stride {stride} is {need} bytes, got {}",
            format.as_str_name(),
            raw.data.len()
        )));
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
fn yuv_to_bgr(raw: &RawImage, format: PixelFormat, at: &str) -> Result<Mat, VisionError> {
    let (w, h) = (raw.width as usize, raw.height as usize);
    if w % 2 != 0 || h % 2 != 0 {
        return Err(VisionError::Invalid(format!(
            "{at}: {} needs an even width and height, got {w}x{h}",
            format.as_str_name()
        )));
    }
    if raw.stride != 0 && raw.stride as usize != w {
        return Err(VisionError::Invalid(format!(
            "{at}: {} takes tightly packed planes (stride 0 or {w}), got stride {}",
            format.as_str_name(),
            raw.stride
        )));
    }
    let need = w * h * 3 / 2;
    if raw.data.len() != need {
        return Err(VisionError::Invalid(format!(
            "{at}: {w}x{h} {} is {need} bytes, got {}",
            format.as_str_name(),
            raw.data.len()
        )));
    }
    let mut yuv =
        Mat::new_rows_cols_with_default((h * 3 / 2) as i32, w as i32, CV_8UC1, Scalar::all(0.0))
            .map_err(cv("Mat"))?;
    yuv.data_bytes_mut()
        .map_err(cv("Mat bytes"))?
        .copy_from_slice(&raw.data);
    let code = if format == PixelFormat::I420 {
        imgproc::COLOR_YUV2BGR_I420
    } else {
        imgproc::COLOR_YUV2BGR_NV12
    };
    let mut bgr = Mat::default();
    imgproc::cvt_color(&yuv, &mut bgr, code, 0).map_err(cv("cvtColor"))?;
    Ok(bgr)
}
