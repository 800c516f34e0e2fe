//! Geometry shared by the MediaPipe pipelines: rotated regions, a
//! detection or landmarks → region, the affine crop of a region into a
//! model's float input tensor, and the way back from the tensor to frame
//! pixels (letterbox removal and projection).
//!
//! Conventions (MediaPipe's, so its graph options apply as written):
//!
//! - A [`Region`] is MediaPipe's `NormalizedRect`: centre, width and
//!   height normalised to the frame (x by its width, y by its height) and
//!   a rotation in radians, clockwise on screen (y points down), 0 when
//!   the region is upright. In pixels it is a rectangle of
//!   `width·W × height·H` turned by `rotation` about its centre.
//! - Points given to and returned by this module are normalised to the
//!   frame (`x/W`, `y/H`) unless a name says pixels (`_px`).
//! - A tensor is `H×W×3` float32, RGB, values mapped linearly from 0..255
//!   onto `TensorSpec::range` (MediaPipe's `output_tensor_float_range`).
//!   Its coordinates are normalised to the tensor (0..1, u right, v down),
//!   which is what the landmark models give once divided by their input
//!   size.
//! - The crop maps the region's corners onto the tensor's corners (its
//!   top-left corner, the one at `(-w/2, -h/2)` before the rotation, onto
//!   `(0, 0)`), as `ImageToTensorCalculator` does, sampling bilinearly with
//!   the border the graph names. With `keep_aspect` the region is first
//!   widened or heightened to the tensor's aspect ratio and the padding is
//!   the [`Letterbox`] to remove again; a whole frame cropped so is the
//!   letterboxed input of a detector.
//! - The way back is the crop's exact inverse. MediaPipe's
//!   `LandmarkProjectionCalculator` rotates in normalised units, which is
//!   the same for a region square in pixels: every MediaPipe solution makes
//!   its regions so (`square_long`).

use opencv::core::{BORDER_CONSTANT, BORDER_REPLICATE, CV_8UC3, Mat, Scalar, Size};
use opencv::imgproc;
use opencv::prelude::*;
use worker_runtime::WorkerError;

use crate::error::cv;

/// A frame's size in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSize {
    /// Pixels across.
    pub width: f32,
    /// Pixels down.
    pub height: f32,
}

impl FrameSize {
    /// The size of a matrix.
    pub fn of(m: &Mat) -> FrameSize {
        FrameSize {
            width: m.cols() as f32,
            height: m.rows() as f32,
        }
    }
}

/// A rotated rectangle normalised to the frame (MediaPipe's
/// `NormalizedRect`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Region {
    /// Centre x, by the frame's width.
    pub x_center: f32,
    /// Centre y, by the frame's height.
    pub y_center: f32,
    /// Width, by the frame's width.
    pub width: f32,
    /// Height, by the frame's height.
    pub height: f32,
    /// Radians, clockwise on screen; 0 upright.
    pub rotation: f32,
}

/// `RectTransformationCalculator`'s options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RectTransform {
    /// Width factor.
    pub scale_x: f32,
    /// Height factor.
    pub scale_y: f32,
    /// Shift along the region's own x axis, by its width.
    pub shift_x: f32,
    /// Shift along the region's own y axis, by its height.
    pub shift_y: f32,
    /// Make it a square in pixels of its longer side (before scaling).
    pub square_long: bool,
}

impl Default for RectTransform {
    fn default() -> Self {
        RectTransform {
            scale_x: 1.0,
            scale_y: 1.0,
            shift_x: 0.0,
            shift_y: 0.0,
            square_long: false,
        }
    }
}

/// `angle` brought into [-π, π).
pub fn normalize_radians(angle: f32) -> f32 {
    use std::f32::consts::PI;
    angle - 2.0 * PI * ((angle + PI) / (2.0 * PI)).floor()
}

/// The rotation that turns the vector `from → to` (normalised points,
/// measured in pixels of `size`) to `target` radians
/// (`DetectionsToRectsCalculator`: 90° for "pointing up").
pub fn rotation(from: (f32, f32), to: (f32, f32), target: f32, size: FrameSize) -> f32 {
    let (x0, y0) = (from.0 * size.width, from.1 * size.height);
    let (x1, y1) = (to.0 * size.width, to.1 * size.height);
    normalize_radians(target - (-(y1 - y0)).atan2(x1 - x0))
}

impl Region {
    /// The whole frame, upright.
    pub fn whole() -> Region {
        Region {
            x_center: 0.5,
            y_center: 0.5,
            width: 1.0,
            height: 1.0,
            rotation: 0.0,
        }
    }

    /// An upright region over a normalised box (a detection's relative
    /// bounding box, `DetectionsToRectsCalculator`).
    pub fn from_box(xmin: f32, ymin: f32, xmax: f32, ymax: f32) -> Region {
        Region {
            x_center: (xmin + xmax) / 2.0,
            y_center: (ymin + ymax) / 2.0,
            width: xmax - xmin,
            height: ymax - ymin,
            rotation: 0.0,
        }
    }

    /// A region from a centre and size in pixels (`AlignmentPointsRects`).
    pub fn from_pixels(cx: f32, cy: f32, w: f32, h: f32, rotation: f32, size: FrameSize) -> Region {
        Region {
            x_center: cx / size.width,
            y_center: cy / size.height,
            width: w / size.width,
            height: h / size.height,
            rotation,
        }
    }

    /// The axis-aligned box around normalised points, upright
    /// (`LandmarksToDetectionCalculator` then `DetectionsToRects`); None
    /// without points.
    pub fn around(points: &[(f32, f32)]) -> Option<Region> {
        let first = points.first()?;
        let (mut x0, mut y0, mut x1, mut y1) = (first.0, first.1, first.0, first.1);
        for &(x, y) in points {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        Some(Region::from_box(x0, y0, x1, y1))
    }

    /// The smallest rectangle turned by `rotation` around normalised
    /// points (`HandLandmarksToRectCalculator`); None without points.
    pub fn around_rotated(points: &[(f32, f32)], rotation: f32, size: FrameSize) -> Option<Region> {
        let aligned = Region::around(points)?;
        let (ax, ay) = (aligned.x_center, aligned.y_center);
        let (s, c) = normalize_radians(-rotation).sin_cos();
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &(x, y) in points {
            let (dx, dy) = ((x - ax) * size.width, (y - ay) * size.height);
            let (px, py) = (dx * c - dy * s, dx * s + dy * c);
            (x0, y0, x1, y1) = (x0.min(px), y0.min(py), x1.max(px), y1.max(py));
        }
        let (pcx, pcy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        let (s, c) = rotation.sin_cos();
        Some(Region {
            x_center: (pcx * c - pcy * s) / size.width + ax,
            y_center: (pcx * s + pcy * c) / size.height + ay,
            width: (x1 - x0) / size.width,
            height: (y1 - y0) / size.height,
            rotation,
        })
    }

    /// The same region turned to `rotation`.
    pub fn rotated(self, rotation: f32) -> Region {
        Region { rotation, ..self }
    }

    /// `RectTransformationCalculator`: shift along the region's own axes,
    /// square it in pixels, then scale.
    pub fn transform(&self, t: &RectTransform, size: FrameSize) -> Region {
        let mut r = *self;
        let (s, c) = r.rotation.sin_cos();
        let (sx, sy) = (r.width * t.shift_x, r.height * t.shift_y);
        // The shift in pixels, turned with the region.
        r.x_center += (size.width * sx * c - size.height * sy * s) / size.width;
        r.y_center += (size.width * sx * s + size.height * sy * c) / size.height;
        if t.square_long {
            let long = (r.width * size.width).max(r.height * size.height);
            r.width = long / size.width;
            r.height = long / size.height;
        }
        r.width *= t.scale_x;
        r.height *= t.scale_y;
        r
    }

    /// Centre x, centre y, width and height in pixels.
    pub fn pixels(&self, size: FrameSize) -> (f32, f32, f32, f32) {
        (
            self.x_center * size.width,
            self.y_center * size.height,
            self.width * size.width,
            self.height * size.height,
        )
    }

    /// Intersection over union of the upright boxes, rotation ignored
    /// (`AssociationNormRectCalculator`).
    pub fn iou(&self, o: &Region) -> f32 {
        let edges = |r: &Region| {
            (
                r.x_center - r.width / 2.0,
                r.y_center - r.height / 2.0,
                r.x_center + r.width / 2.0,
                r.y_center + r.height / 2.0,
            )
        };
        let (a, b) = (edges(self), edges(o));
        let iw = (a.2.min(b.2) - a.0.max(b.0)).max(0.0);
        let ih = (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
        let inter = iw * ih;
        let union = self.width * self.height + o.width * o.height - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// Turns a world landmark's x and y by the region's rotation
/// (`WorldLandmarkProjectionCalculator`); z is unchanged.
pub fn rotate_world(x: f32, y: f32, rotation: f32) -> (f32, f32) {
    let (s, c) = rotation.sin_cos();
    (x * c - y * s, x * s + y * c)
}

/// What goes outside the frame in a crop (`ImageToTensorCalculator`'s
/// `border_mode`; MediaPipe's default is replicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Black (the range's minimum).
    Zero,
    /// The nearest edge pixel.
    Replicate,
}

/// A model's input tensor as its graph's `ImageToTensorCalculator` fills
/// it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorSpec {
    /// Pixels across.
    pub width: i32,
    /// Pixels down.
    pub height: i32,
    /// The values 0 and 255 map to.
    pub range: (f32, f32),
    /// Outside the frame.
    pub border: Border,
    /// Pad the region to the tensor's aspect ratio (letterbox) instead of
    /// stretching it.
    pub keep_aspect: bool,
}

impl TensorSpec {
    /// The tensor's size in bytes (float32).
    pub fn bytes(&self) -> usize {
        self.width.max(0) as usize * self.height.max(0) as usize * 3 * 4
    }
}

/// The padding a crop added to keep the aspect ratio, normalised to the
/// tensor (`LETTERBOX_PADDING`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Letterbox {
    /// Left.
    pub left: f32,
    /// Top.
    pub top: f32,
    /// Right.
    pub right: f32,
    /// Bottom.
    pub bottom: f32,
}

impl Letterbox {
    /// A point in the tensor → the same point normalised to the region
    /// without its padding (`*LetterboxRemovalCalculator`).
    pub fn remove(&self, u: f32, v: f32) -> (f32, f32) {
        (
            (u - self.left) / (1.0 - self.left - self.right),
            (v - self.top) / (1.0 - self.top - self.bottom),
        )
    }
}

/// A crop made: the way back from its tensor to the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    /// The region asked for (without padding).
    pub region: Region,
    /// The padding inside the tensor.
    pub letterbox: Letterbox,
    /// The frame's size.
    pub size: FrameSize,
}

impl Crop {
    /// A point in the tensor (normalised) → frame pixels.
    pub fn to_pixels(&self, u: f32, v: f32) -> (f32, f32) {
        let (x, y) = self.letterbox.remove(u, v);
        let (cx, cy, w, h) = self.region.pixels(self.size);
        let (s, c) = self.region.rotation.sin_cos();
        let (dx, dy) = ((x - 0.5) * w, (y - 0.5) * h);
        (cx + dx * c - dy * s, cy + dx * s + dy * c)
    }

    /// A point in the tensor → normalised to the frame.
    pub fn to_frame(&self, u: f32, v: f32) -> (f32, f32) {
        let (x, y) = self.to_pixels(u, v);
        (x / self.size.width, y / self.size.height)
    }

    /// A depth normalised to the tensor's width → pixels, scaled as x is
    /// (`LandmarkProjectionCalculator`: z times the region's width).
    pub fn z_to_pixels(&self, z: f32) -> f32 {
        z / (1.0 - self.letterbox.left - self.letterbox.right) * self.region.width * self.size.width
    }
}

/// Crops `region` of a BGR `frame` into `out`, the model's input tensor
/// as `spec` says (float32 little-endian, RGB); the answer maps the
/// tensor's points back to the frame.
pub fn to_tensor(
    frame: &Mat,
    region: &Region,
    spec: &TensorSpec,
    out: &mut [u8],
) -> Result<Crop, WorkerError> {
    if frame.typ() != CV_8UC3 || frame.empty() {
        return Err(WorkerError::internal(format!(
            "a crop needs a non-empty 8-bit BGR frame; this one has type {} and size {}x{}",
            frame.typ(),
            frame.cols(),
            frame.rows()
        )));
    }
    if spec.width <= 0 || spec.height <= 0 || out.len() != spec.bytes() {
        return Err(WorkerError::internal(format!(
            "the tensor buffer has {} bytes; a {}x{}x3 float32 tensor has {}",
            out.len(),
            spec.width,
            spec.height,
            spec.bytes()
        )));
    }
    let size = FrameSize::of(frame);
    let (cx, cy, mut w, mut h) = region.pixels(size);
    let mut letterbox = Letterbox::default();
    if spec.keep_aspect && w > 0.0 && h > 0.0 {
        let tensor_aspect = spec.height as f32 / spec.width as f32;
        if tensor_aspect > h / w {
            let new_h = w * tensor_aspect;
            let pad = (new_h - h) / new_h / 2.0;
            (letterbox.top, letterbox.bottom) = (pad, pad);
            h = new_h;
        } else {
            let new_w = h / tensor_aspect;
            let pad = (new_w - w) / new_w / 2.0;
            (letterbox.left, letterbox.right) = (pad, pad);
            w = new_w;
        }
    }
    // Tensor pixel (u, v) → frame pixel: the region's corners onto the
    // tensor's (see the module's conventions).
    let (tw, th) = (spec.width as f64, spec.height as f64);
    let (s, c) = (region.rotation as f64).sin_cos();
    let (w, h, cx, cy) = (w as f64, h as f64, cx as f64, cy as f64);
    let m = Mat::from_slice_2d(&[
        [c * w / tw, -s * h / th, cx - c * w / 2.0 + s * h / 2.0],
        [s * w / tw, c * h / th, cy - s * w / 2.0 - c * h / 2.0],
    ])
    .map_err(cv("affine matrix"))?;
    let border = match spec.border {
        Border::Zero => BORDER_CONSTANT,
        Border::Replicate => BORDER_REPLICATE,
    };
    let mut warped = Mat::default();
    imgproc::warp_affine(
        frame,
        &mut warped,
        &m,
        Size::new(spec.width, spec.height),
        imgproc::INTER_LINEAR | imgproc::WARP_INVERSE_MAP,
        border,
        Scalar::all(0.0),
    )
    .map_err(cv("warpAffine"))?;
    let pixels = warped.data_bytes().map_err(cv("crop pixels"))?;
    let (lo, hi) = spec.range;
    let k = (hi - lo) / 255.0;
    // BGR in the matrix, RGB into the model.
    for (px, dst) in pixels.chunks_exact(3).zip(out.chunks_exact_mut(12)) {
        for (ch, v) in dst.chunks_exact_mut(4).enumerate() {
            let value = f32::from(px[2 - ch]) * k + lo;
            v.copy_from_slice(&value.to_le_bytes());
        }
    }
    Ok(Crop {
        region: *region,
        letterbox,
        size,
    })
}

#[cfg(test)]
#[path = "roi_tests.rs"]
mod tests;
