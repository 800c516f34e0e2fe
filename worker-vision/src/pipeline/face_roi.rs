//! The face mesh's region geometry, as MediaPipe's calculators do it:
//! detection or landmarks → rotated rectangle (DetectionsToRects,
//! RectTransformation), the rotated crop into a model's input
//! (ImageToTensor) and the projection of the landmarks back
//! (LandmarkProjection). Rectangles are normalised to the frame, as
//! MediaPipe's `NormalizedRect`.

use litert::Compiled;
use opencv::core::{BORDER_REPLICATE, Mat, Scalar, Size};
use opencv::imgproc;
use opencv::prelude::*;
use worker_runtime::WorkerError;

use crate::error::{cv, lite_error};

/// A rotated rectangle normalised to the frame (centre, size, rotation in
/// radians, clockwise on the image).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    /// Centre x, 0..1 across the frame.
    pub cx: f32,
    /// Centre y.
    pub cy: f32,
    /// Width, as a fraction of the frame's width.
    pub w: f32,
    /// Height, as a fraction of the frame's height.
    pub h: f32,
    /// Radians, clockwise (y down), -pi..pi.
    pub rotation: f32,
}

/// An angle brought into -pi..pi.
pub fn normalize_radians(a: f32) -> f32 {
    use std::f32::consts::PI;
    a - 2.0 * PI * ((a + PI) / (2.0 * PI)).floor()
}

/// The rotation that turns the vector `from → to` (normalised points of a
/// `width`x`height` frame) to `target` radians (DetectionsToRects).
pub fn rotation(from: (f32, f32), to: (f32, f32), width: f32, height: f32, target: f32) -> f32 {
    let dx = (to.0 - from.0) * width;
    let dy = (to.1 - from.1) * height;
    normalize_radians(target - (-dy).atan2(dx))
}

/// A box (xmin, ymin, xmax, ymax, normalised) with a rotation, made square
/// on its long side in pixels and scaled (RectTransformation with
/// `square_long`).
pub fn square_long(
    bbox: (f32, f32, f32, f32),
    rotation: f32,
    width: f32,
    height: f32,
    scale: f32,
) -> Roi {
    let (x0, y0, x1, y1) = bbox;
    let long = ((x1 - x0) * width).max((y1 - y0) * height);
    Roi {
        cx: (x0 + x1) / 2.0,
        cy: (y0 + y1) / 2.0,
        w: long / width * scale,
        h: long / height * scale,
        rotation,
    }
}

/// The bounding box of normalised points.
pub fn bounds(points: impl Iterator<Item = (f32, f32)>) -> (f32, f32, f32, f32) {
    points.fold(
        (f32::MAX, f32::MAX, f32::MIN, f32::MIN),
        |(x0, y0, x1, y1), (x, y)| (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
    )
}

/// Intersection over union of two regions, their rotation ignored (as
/// MediaPipe's AssociationNormRect compares them).
pub fn iou(a: &Roi, b: &Roi) -> f32 {
    let ix = ((a.cx + a.w / 2.0).min(b.cx + b.w / 2.0) - (a.cx - a.w / 2.0).max(b.cx - b.w / 2.0))
        .max(0.0);
    let iy = ((a.cy + a.h / 2.0).min(b.cy + b.h / 2.0) - (a.cy - a.h / 2.0).max(b.cy - b.h / 2.0))
        .max(0.0);
    let inter = ix * iy;
    let union = a.w * a.h + b.w * b.h - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The region's rotated crop of a BGR frame, `out_w`x`out_h` (bilinear,
/// border replicated; `flip`: mirrored left-right): the input pixel (u, v)
/// samples the frame at the rectangle's top-left corner plus u/out_w of
/// its width vector and v/out_h of its height vector, as ImageToTensor's
/// perspective warp does.
pub fn crop(frame: &Mat, r: &Roi, out_w: i32, out_h: i32, flip: bool) -> Result<Mat, WorkerError> {
    let (fw, fh) = (frame.cols() as f64, frame.rows() as f64);
    let (cx, cy) = (r.cx as f64 * fw, r.cy as f64 * fh);
    let (w, h) = (r.w as f64 * fw, r.h as f64 * fh);
    let (c, s) = ((r.rotation as f64).cos(), (r.rotation as f64).sin());
    // Width and height vectors of the rotated rectangle, in pixels.
    let (ux, uy) = (c * w, s * w);
    let (vx, vy) = (-s * h, c * h);
    let (mut tlx, mut tly) = (cx - ux / 2.0 - vx / 2.0, cy - uy / 2.0 - vy / 2.0);
    let (mut ax, mut ay) = (ux / out_w as f64, uy / out_w as f64);
    if flip {
        // Start at the top-right corner and walk left.
        tlx += ux;
        tly += uy;
        ax = -ax;
        ay = -ay;
    }
    let (bx, by) = (vx / out_h as f64, vy / out_h as f64);
    let m = Mat::from_slice_2d(&[[ax, bx, tlx], [ay, by, tly]]).map_err(cv("affine"))?;
    let mut out = Mat::default();
    imgproc::warp_affine(
        frame,
        &mut out,
        &m,
        Size::new(out_w, out_h),
        imgproc::INTER_LINEAR | imgproc::WARP_INVERSE_MAP,
        BORDER_REPLICATE,
        Scalar::default(),
    )
    .map_err(cv("warpAffine"))?;
    Ok(out)
}

/// Writes a BGR crop into input `i` as RGB float32 scaled to lo..hi.
pub fn write_rgb(
    compiled: &mut Compiled,
    i: usize,
    crop: &Mat,
    lo: f32,
    hi: f32,
) -> Result<(), WorkerError> {
    let pixels = crop.data_bytes().map_err(cv("pixels"))?;
    let (w, step) = (crop.cols() as usize, crop.step1(0).map_err(cv("step"))?);
    let k = (hi - lo) / 255.0;
    compiled
        .write_input(i, |buf| {
            for (j, v) in buf.chunks_exact_mut(4).enumerate() {
                let (c, p) = (j % 3, j / 3);
                let (x, y) = (p % w, p / w);
                let byte = pixels.get(y * step + x * 3 + (2 - c)).copied().unwrap_or(0);
                v.copy_from_slice(&(f32::from(byte) * k + lo).to_le_bytes());
            }
        })
        .map_err(lite_error)
}

/// Output `i` as floats.
pub fn read_floats(compiled: &Compiled, i: usize) -> Result<Vec<f32>, WorkerError> {
    compiled
        .read_output(i, |b| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .map_err(lite_error)
}

/// A point normalised to the region's crop (0..1 across it) projected into
/// the frame, normalised (LandmarkProjection).
pub fn project(r: &Roi, x: f32, y: f32) -> (f32, f32) {
    let (x, y) = (x - 0.5, y - 0.5);
    let (c, s) = (r.rotation.cos(), r.rotation.sin());
    ((c * x - s * y) * r.w + r.cx, (s * x + c * y) * r.h + r.cy)
}
