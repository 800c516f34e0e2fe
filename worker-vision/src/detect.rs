//! Detectors: an SSD-style `.tflite` model through LiteRT (BlazeFace and
//! the like: letterboxed input, MediaPipe's decoding) or an OpenCV cascade.

use std::path::Path;

use litert::{Compiled, HW_CPU, Runtime};
use opencv::core::{Mat, Rect, Size, Vector};
use opencv::imgproc;
use opencv::objdetect::CascadeClassifier;
use opencv::prelude::*;
use sidecar_proto::v1::{Box as PixelBox, Detection, Point, SsdOptions};
use worker_runtime::WorkerError;

use crate::error::{cv, lite_error};
use crate::pipeline::roi::{Border, Region, TensorSpec, to_tensor};
use crate::ssd::{self, Anchor, Raw};

/// Where Debian's `opencv-data` puts the cascades.
pub const CASCADE_DIRS: [&str; 2] = [
    "/usr/share/opencv4/haarcascades",
    "/usr/share/opencv4/lbpcascades",
];

/// An SSD-style detector compiled for the CPU.
pub struct Ssd {
    compiled: Compiled,
    options: SsdOptions,
    anchors: Vec<Anchor>,
    /// Output index of the box tensor and of the score tensor.
    boxes: usize,
    scores: usize,
}

impl std::fmt::Debug for Ssd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ssd")
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

/// How a detection maps back from the detector's input to the frame.
struct Letterbox {
    /// Content size inside the input, normalised.
    content_w: f32,
    content_h: f32,
    /// Left/top padding, normalised.
    pad_x: f32,
    pad_y: f32,
}

impl Ssd {
    /// Loads and compiles `path`; the options default to BlazeFace short
    /// range.
    pub fn load(
        lib: &Path,
        path: &Path,
        threads: u32,
        options: Option<SsdOptions>,
    ) -> Result<Ssd, WorkerError> {
        let options = match options {
            Some(o) => {
                ssd::check(&o).map_err(WorkerError::invalid)?;
                o
            }
            None => ssd::blazeface_short_range(),
        };
        let rt = Runtime::load(lib).map_err(lite_error)?;
        let compiled = rt
            .model(path)
            .and_then(|m| m.compile(HW_CPU, threads))
            .map_err(|e| {
                WorkerError::unavailable(format!("LiteRT could not load {}: {e}", path.display()))
            })?;
        let input = compiled
            .input_desc
            .first()
            .ok_or_else(|| WorkerError::unavailable("the detector has no input"))?;
        let want = [
            1,
            options.input_height as i32,
            options.input_width as i32,
            3,
        ];
        // A model and options that do not fit together are the caller's
        // to fix: INVALID_ARGUMENT, the model FAILED at once.
        if input.shape != want || input.element_type != 1 {
            return Err(WorkerError::invalid(format!(
                "the detector's input {:?} is {:?} (type {}); an SSD detector takes float32 {want:?}",
                input.name, input.shape, input.element_type
            )));
        }
        let anchors = ssd::anchors(&options);
        let coords = 4 + 2 * options.num_keypoints as i32;
        let classes = options.num_classes.max(1) as i32;
        let find = |last: i32| {
            compiled.output_desc.iter().position(|d| {
                d.shape.len() == 3 && d.shape[1] as usize == anchors.len() && d.shape[2] == last
            })
        };
        let (Some(boxes), Some(scores)) = (find(coords), find(classes)) else {
            return Err(WorkerError::invalid(format!(
                "the detector's outputs {:?} are not [1, {}, {coords}] boxes and [1, {}, {classes}] scores for these anchors",
                compiled
                    .output_desc
                    .iter()
                    .map(|d| &d.shape)
                    .collect::<Vec<_>>(),
                anchors.len(),
                anchors.len()
            )));
        };
        Ok(Ssd {
            compiled,
            options,
            anchors,
            boxes,
            scores,
        })
    }

    /// Runs the detector on a BGR frame.
    pub fn detect(
        &mut self,
        frame: &Mat,
        min_score: f32,
        iou: f32,
    ) -> Result<Vec<Detection>, WorkerError> {
        let (w, h) = (frame.cols(), frame.rows());
        let (iw, ih) = (
            self.options.input_width as i32,
            self.options.input_height as i32,
        );
        let s = (iw as f32 / w as f32).min(ih as f32 / h as f32);
        let (nw, nh) = (
            ((w as f32 * s).round() as i32).clamp(1, iw),
            ((h as f32 * s).round() as i32).clamp(1, ih),
        );
        let mut small = Mat::default();
        imgproc::resize(
            frame,
            &mut small,
            Size::new(nw, nh),
            0.0,
            0.0,
            imgproc::INTER_LINEAR,
        )
        .map_err(cv("resize"))?;
        let (px, py) = ((iw - nw) / 2, (ih - nh) / 2);
        let pixels = small.data_bytes().map_err(cv("pixels"))?;
        let step = small.step1(0).map_err(cv("step"))?;
        self.compiled
            .write_input(0, |buf| {
                for (i, v) in buf.chunks_exact_mut(4).enumerate() {
                    let (c, p) = (i % 3, i / 3);
                    let (x, y) = (p as i32 % iw - px, p as i32 / iw - py);
                    let value = if x >= 0 && y >= 0 && x < nw && y < nh {
                        // BGR in the frame, RGB into the model, scaled to -1..1.
                        let byte = pixels[y as usize * step + x as usize * 3 + (2 - c)];
                        f32::from(byte) / 127.5 - 1.0
                    } else {
                        -1.0
                    };
                    v.copy_from_slice(&value.to_le_bytes());
                }
            })
            .map_err(lite_error)?;
        let raw = self.run_and_decode(min_score)?;
        let lb = Letterbox {
            content_w: nw as f32 / iw as f32,
            content_h: nh as f32 / ih as f32,
            pad_x: px as f32 / iw as f32,
            pad_y: py as f32 / ih as f32,
        };
        Ok(ssd::weighted_nms(raw, iou)
            .into_iter()
            .map(|d| to_pixels(&d, &lb, w, h, &self.options.labels))
            .collect())
    }

    /// Runs the model on the input written, and decodes its boxes and
    /// scores (before NMS).
    fn run_and_decode(&mut self, min_score: f32) -> Result<Vec<Raw>, WorkerError> {
        self.compiled.run().map_err(lite_error)?;
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let boxes = self
            .compiled
            .read_output(self.boxes, floats)
            .map_err(lite_error)?;
        let scores = self
            .compiled
            .read_output(self.scores, floats)
            .map_err(lite_error)?;
        Ok(ssd::decode(
            &self.options,
            &self.anchors,
            &boxes,
            &scores,
            min_score,
        ))
    }

    /// Whether this is a BlazeFace-style face detector (one class, six
    /// keypoints: the eyes first), as the face mesh needs.
    pub fn is_face_detector(&self) -> bool {
        self.options.num_classes <= 1 && self.options.num_keypoints == 6
    }

    /// Runs the detector as MediaPipe's face detection graph does
    /// (`ImageToTensorCalculator`: the whole frame letterboxed into the
    /// input with a black border, RGB -1..1): detections normalised to the
    /// frame (letterbox removed, not clipped), best first.
    pub fn detect_raw(
        &mut self,
        frame: &Mat,
        min_score: f32,
        iou: f32,
    ) -> Result<Vec<Raw>, WorkerError> {
        let spec = TensorSpec {
            width: self.options.input_width as i32,
            height: self.options.input_height as i32,
            range: (-1.0, 1.0),
            border: Border::Zero,
            keep_aspect: true,
        };
        let mut crop = Err(WorkerError::internal(
            "the detector's input was not written",
        ));
        self.compiled
            .write_input(0, |buf| {
                crop = to_tensor(frame, &Region::whole(), &spec, buf)
            })
            .map_err(lite_error)?;
        let crop = crop?;
        let raw = self.run_and_decode(min_score)?;
        Ok(ssd::weighted_nms(raw, iou)
            .into_iter()
            .map(|d| {
                let (xmin, ymin) = crop.to_frame(d.xmin, d.ymin);
                let (xmax, ymax) = crop.to_frame(d.xmax, d.ymax);
                let keypoints = d
                    .keypoints
                    .iter()
                    .map(|&(x, y)| crop.to_frame(x, y))
                    .collect();
                Raw {
                    xmin,
                    ymin,
                    xmax,
                    ymax,
                    keypoints,
                    ..d
                }
            })
            .collect())
    }
}

fn to_pixels(d: &Raw, lb: &Letterbox, w: i32, h: i32, labels: &[String]) -> Detection {
    let x = |v: f32| ((v - lb.pad_x) / lb.content_w * w as f32).clamp(0.0, w as f32);
    let y = |v: f32| ((v - lb.pad_y) / lb.content_h * h as f32).clamp(0.0, h as f32);
    let (x0, y0, x1, y1) = (x(d.xmin), y(d.ymin), x(d.xmax), y(d.ymax));
    Detection {
        r#box: Some(PixelBox {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }),
        score: d.score,
        class_id: d.class_id,
        label: labels.get(d.class_id as usize).cloned().unwrap_or_default(),
        keypoints: d
            .keypoints
            .iter()
            .map(|&(kx, ky)| Point { x: x(kx), y: y(ky) })
            .collect(),
    }
}

/// An OpenCV cascade (Haar or LBP).
pub struct Cascade {
    classifier: CascadeClassifier,
}

impl std::fmt::Debug for Cascade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cascade").finish_non_exhaustive()
    }
}

impl Cascade {
    /// Loads a cascade file.
    pub fn load(path: &Path) -> Result<Cascade, WorkerError> {
        let classifier = CascadeClassifier::new(path).map_err(cv("CascadeClassifier"))?;
        if classifier.empty().map_err(cv("CascadeClassifier"))? {
            return Err(WorkerError::unavailable(format!(
                "{} is not a cascade OpenCV can read",
                path.display()
            )));
        }
        Ok(Cascade { classifier })
    }

    /// One of Debian's frontal-face cascades by file name.
    pub fn system(name: &str) -> Result<Cascade, WorkerError> {
        let path = CASCADE_DIRS
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                WorkerError::precondition(format!(
                    "the OpenCV cascade {name} is not installed (opencv-data)"
                ))
            })?;
        Cascade::load(&path)
    }

    /// Faces in a BGR frame. Cascades give no score: every hit reads 1.
    pub fn detect(&mut self, frame: &Mat) -> Result<Vec<Detection>, WorkerError> {
        let mut grey = Mat::default();
        imgproc::cvt_color(frame, &mut grey, imgproc::COLOR_BGR2GRAY, 0).map_err(cv("cvtColor"))?;
        let mut eq = Mat::default();
        imgproc::equalize_hist(&grey, &mut eq).map_err(cv("equalizeHist"))?;
        let mut hits = Vector::<Rect>::new();
        let min = (frame.cols().min(frame.rows()) / 10).max(24);
        self.classifier
            .detect_multi_scale(
                &eq,
                &mut hits,
                1.1,
                5,
                0,
                Size::new(min, min),
                Size::new(0, 0),
            )
            .map_err(cv("detectMultiScale"))?;
        Ok(hits
            .iter()
            .map(|r| Detection {
                r#box: Some(PixelBox {
                    x: r.x as f32,
                    y: r.y as f32,
                    width: r.width as f32,
                    height: r.height as f32,
                }),
                score: 1.0,
                ..Default::default()
            })
            .collect())
    }
}

/// A detection normalised to a `w`x`h` frame, in its pixels, clipped to
/// it.
pub fn frame_pixels(d: &Raw, w: i32, h: i32) -> Detection {
    let identity = Letterbox {
        content_w: 1.0,
        content_h: 1.0,
        pad_x: 0.0,
        pad_y: 0.0,
    };
    to_pixels(d, &identity, w, h, &[])
}
