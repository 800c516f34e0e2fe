//! Template matching (OpenCV `matchTemplate`): the template is decoded and
//! scaled once per call or stream; each frame reports its best match.

use opencv::core::{Mat, Point, Size, no_array};
use opencv::imgproc;
use opencv::prelude::*;
use sidecar_proto::v1::{Box as PixelBox, MatchMethod, TemplateMatch, TemplateMatchingTask};
use worker_runtime::WorkerError;

use crate::error::cv;
use crate::image::to_bgr;
use crate::limits::Limits;

/// A template ready to match.
#[derive(Debug)]
pub struct Template {
    templ: Mat,
    /// Template size at full scale.
    width: i32,
    height: i32,
    scale: f64,
    grey: bool,
    method: i32,
    /// SQDIFF: lower is better; reported as 1 - value.
    inverted: bool,
    min_score: f32,
}

impl Template {
    /// Checks the options and prepares the template (its size checked
    /// against the model's limits before it is decoded).
    pub fn new(t: &TemplateMatchingTask, limits: &Limits) -> Result<Template, WorkerError> {
        let image = t
            .template
            .as_ref()
            .ok_or_else(|| WorkerError::invalid("template_matching.template is required"))?;
        // A template lives in the stream's config: its regions are not
        // resolved there, so a template is given inline.
        let bgr = to_bgr(
            image,
            "template_matching.template",
            limits,
            &Default::default(),
        )?;
        let scale = match t.scale {
            0.0 => 1.0,
            s if s > 0.0 && s <= 1.0 => f64::from(s),
            s => {
                return Err(WorkerError::invalid(format!(
                    "template_matching.scale {s} is outside 0 < scale <= 1"
                )));
            }
        };
        let (method, inverted) = match MatchMethod::try_from(t.method) {
            Ok(MatchMethod::Unspecified | MatchMethod::CcoeffNormed) => {
                (imgproc::TM_CCOEFF_NORMED, false)
            }
            Ok(MatchMethod::CcorrNormed) => (imgproc::TM_CCORR_NORMED, false),
            Ok(MatchMethod::SqdiffNormed) => (imgproc::TM_SQDIFF_NORMED, true),
            Err(_) => {
                return Err(WorkerError::invalid(format!(
                    "template_matching.method {} is not a MatchMethod value",
                    t.method
                )));
            }
        };
        let (width, height) = (bgr.cols(), bgr.rows());
        let templ = prepare(&bgr, scale, t.grayscale)?;
        Ok(Template {
            templ,
            width,
            height,
            scale,
            grey: t.grayscale,
            method,
            inverted,
            min_score: if t.min_score > 0.0 { t.min_score } else { 0.8 },
        })
    }

    /// The best match in a BGR frame.
    pub fn find(&self, frame: &Mat, at: &str) -> Result<TemplateMatch, WorkerError> {
        if frame.cols() < self.width || frame.rows() < self.height {
            return Err(WorkerError::invalid(format!(
                "{at}: the frame ({}x{}) is smaller than the template ({}x{})",
                frame.cols(),
                frame.rows(),
                self.width,
                self.height
            )));
        }
        let image = prepare(frame, self.scale, self.grey)?;
        let mut scores = Mat::default();
        imgproc::match_template(&image, &self.templ, &mut scores, self.method, &no_array())
            .map_err(cv("matchTemplate"))?;
        let (mut min, mut max) = (0.0, 0.0);
        let (mut min_at, mut max_at) = (Point::default(), Point::default());
        opencv::core::min_max_loc(
            &scores,
            Some(&mut min),
            Some(&mut max),
            Some(&mut min_at),
            Some(&mut max_at),
            &no_array(),
        )
        .map_err(cv("minMaxLoc"))?;
        let (score, at) = if self.inverted {
            (1.0 - min, min_at)
        } else {
            (max, max_at)
        };
        let score = score as f32;
        Ok(TemplateMatch {
            r#box: Some(PixelBox {
                x: (f64::from(at.x) / self.scale) as f32,
                y: (f64::from(at.y) / self.scale) as f32,
                width: self.width as f32,
                height: self.height as f32,
            }),
            score,
            found: score >= self.min_score,
        })
    }
}

/// Scales and optionally greys an image for matching.
fn prepare(bgr: &Mat, scale: f64, grey: bool) -> Result<Mat, WorkerError> {
    let scaled = if scale < 1.0 {
        let size = Size::new(
            ((f64::from(bgr.cols()) * scale).round() as i32).max(1),
            ((f64::from(bgr.rows()) * scale).round() as i32).max(1),
        );
        let mut out = Mat::default();
        imgproc::resize(bgr, &mut out, size, 0.0, 0.0, imgproc::INTER_AREA)
            .map_err(cv("resize"))?;
        out
    } else {
        bgr.clone()
    };
    if grey {
        let mut out = Mat::default();
        imgproc::cvt_color(&scaled, &mut out, imgproc::COLOR_BGR2GRAY, 0)
            .map_err(cv("cvtColor"))?;
        Ok(out)
    } else {
        Ok(scaled)
    }
}
