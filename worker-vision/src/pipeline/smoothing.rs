//! Landmark smoothing across a stream's frames, as MediaPipe's
//! `LandmarksSmoothingCalculator` (one-euro filter) and
//! `VisibilitySmoothingCalculator` (low-pass filter) do it, with the
//! parameters a solution's graph gives (pose: `PoseLandmarkFiltering`).
//!
//! Conventions, MediaPipe's: every axis of every landmark has its own
//! filter; normalised landmarks are filtered in frame pixels (x·width,
//! y·height, z·width), their speed divided by the object's scale (the mean
//! of its region's width and height in pixels) unless value scaling is
//! off; the rate comes from the frames' timestamps (µs), 30 Hz until two
//! have been seen; a timestamp not after the last one passes the value
//! through unfiltered; a frame without landmarks resets the filters (the
//! owner calls [`Landmarks::reset`]).

use std::f64::consts::PI;

/// MediaPipe's `LowPassFilter`: exponential smoothing, the first value
/// passed through.
#[derive(Debug, Clone, Default)]
pub struct LowPass {
    /// The last value given (before smoothing), once there is one.
    raw: Option<f64>,
    stored: f64,
}

impl LowPass {
    /// `alpha`·value + (1 − `alpha`)·previous result; the first value as is.
    pub fn apply(&mut self, value: f64, alpha: f64) -> f64 {
        let out = match self.raw {
            Some(_) => alpha * value + (1.0 - alpha) * self.stored,
            None => value,
        };
        self.raw = Some(value);
        self.stored = out;
        out
    }

    /// The last value given, if any.
    pub fn last_raw(&self) -> Option<f64> {
        self.raw
    }
}

/// One-euro filter parameters (`LandmarksSmoothingCalculatorOptions.
/// OneEuroFilter`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneEuroConfig {
    /// Rate assumed until two timestamps are known, Hz (MediaPipe: 30).
    pub frequency: f64,
    /// Cutoff at rest, Hz: lower smooths more.
    pub min_cutoff: f64,
    /// How fast the cutoff rises with speed: higher lags less.
    pub beta: f64,
    /// Cutoff of the speed's own filter, Hz.
    pub derivate_cutoff: f64,
    /// Filter raw values, not values divided by the object's scale.
    pub disable_value_scaling: bool,
    /// Below this object scale the landmarks pass unfiltered.
    pub min_allowed_object_scale: f64,
}

impl OneEuroConfig {
    /// MediaPipe's defaults with these three parameters.
    pub const fn new(min_cutoff: f64, beta: f64, derivate_cutoff: f64) -> OneEuroConfig {
        OneEuroConfig {
            frequency: 30.0,
            min_cutoff,
            beta,
            derivate_cutoff,
            disable_value_scaling: false,
            min_allowed_object_scale: 1e-6,
        }
    }
}

/// One value's one-euro filter (MediaPipe's `OneEuroFilter`).
#[derive(Debug, Clone)]
pub struct OneEuro {
    frequency: f64,
    /// Last timestamp, ns; 0: none.
    last_ns: i64,
    x: LowPass,
    dx: LowPass,
}

impl OneEuro {
    /// A filter that has seen nothing.
    pub fn new(c: &OneEuroConfig) -> OneEuro {
        OneEuro {
            frequency: c.frequency,
            last_ns: 0,
            x: LowPass::default(),
            dx: LowPass::default(),
        }
    }

    fn alpha(&self, cutoff: f64) -> f64 {
        let te = 1.0 / self.frequency;
        let tau = 1.0 / (2.0 * PI * cutoff);
        1.0 / (1.0 + tau / te)
    }

    /// The filtered `value` at `t_ns`; `value_scale` multiplies the speed.
    pub fn apply(&mut self, c: &OneEuroConfig, t_ns: i64, value_scale: f64, value: f64) -> f64 {
        if self.last_ns >= t_ns {
            return value;
        }
        if self.last_ns != 0 && t_ns != 0 {
            self.frequency = 1.0 / ((t_ns - self.last_ns) as f64 * 1e-9);
        }
        self.last_ns = t_ns;
        let speed = match self.x.last_raw() {
            Some(last) => (value - last) * value_scale * self.frequency,
            None => 0.0,
        };
        let speed = self.dx.apply(speed, self.alpha(c.derivate_cutoff));
        let cutoff = c.min_cutoff + c.beta * speed.abs();
        self.x.apply(value, self.alpha(cutoff))
    }
}

/// The one-euro filters of a list of landmarks (x, y, z each).
#[derive(Debug, Clone)]
pub struct Landmarks {
    config: OneEuroConfig,
    filters: Vec<[OneEuro; 3]>,
}

impl Landmarks {
    /// Filters with these parameters, made on the first frame.
    pub fn new(config: OneEuroConfig) -> Landmarks {
        Landmarks {
            config,
            filters: Vec::new(),
        }
    }

    /// Forgets every landmark (a frame without them).
    pub fn reset(&mut self) {
        self.filters.clear();
    }

    /// Filters `points` (x, y, z; pixels for normalised landmarks, or
    /// metres) in place at `t_us`; `object_scale` (pixels) scales the speed
    /// unless the config turns value scaling off. A list of another length
    /// than the last one starts new filters.
    pub fn apply(&mut self, points: &mut [[f32; 3]], t_us: i64, object_scale: f32) {
        let c = self.config;
        let mut value_scale = 1.0;
        if !c.disable_value_scaling {
            let scale = f64::from(object_scale);
            if scale.is_nan() || scale < c.min_allowed_object_scale {
                return;
            }
            value_scale = 1.0 / scale;
        }
        if self.filters.len() != points.len() {
            self.filters = (0..points.len())
                .map(|_| [OneEuro::new(&c), OneEuro::new(&c), OneEuro::new(&c)])
                .collect();
        }
        let t_ns = t_us.saturating_mul(1000);
        for (p, f) in points.iter_mut().zip(&mut self.filters) {
            for (v, f) in p.iter_mut().zip(f.iter_mut()) {
                *v = f.apply(&c, t_ns, value_scale, f64::from(*v)) as f32;
            }
        }
    }
}

/// Low-pass filters of a list of landmarks' visibilities
/// (`VisibilitySmoothingCalculator`, `low_pass_filter`).
#[derive(Debug, Clone)]
pub struct Visibility {
    alpha: f64,
    filters: Vec<LowPass>,
}

impl Visibility {
    /// Filters of weight `alpha` on each new value (pose: 0.1).
    pub fn new(alpha: f64) -> Visibility {
        Visibility {
            alpha,
            filters: Vec::new(),
        }
    }

    /// Forgets every landmark.
    pub fn reset(&mut self) {
        self.filters.clear();
    }

    /// Smooths `values` in place.
    pub fn apply(&mut self, values: &mut [f32]) {
        if self.filters.len() != values.len() {
            self.filters = vec![LowPass::default(); values.len()];
        }
        for (v, f) in values.iter_mut().zip(&mut self.filters) {
            *v = f.apply(f64::from(*v), self.alpha) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_pass_passes_the_first_value_then_blends() {
        let mut f = LowPass::default();
        assert_eq!(f.apply(10.0, 0.1), 10.0);
        assert!((f.apply(20.0, 0.1) - 11.0).abs() < 1e-12);
        assert_eq!(f.last_raw(), Some(20.0));
    }

    #[test]
    fn one_euro_smooths_jitter_at_rest_and_follows_a_move() {
        let c = OneEuroConfig::new(0.05, 80.0, 1.0);
        let mut f = Landmarks::new(c);
        // At rest with ±2 px jitter at 30 fps on a 200 px object: the
        // output stays within a fraction of the jitter.
        let mut worst: f32 = 0.0;
        for i in 0..60 {
            let jitter = if i % 2 == 0 { 2.0 } else { -2.0 };
            let mut p = [[100.0 + jitter, 50.0, 0.0]];
            f.apply(&mut p, 1 + i * 33_333, 200.0);
            if i > 10 {
                worst = worst.max((p[0][0] - 100.0).abs());
            }
        }
        assert!(worst < 1.0, "jitter at rest {worst} px");
        // A steady 10 px/frame move: the filter follows within 10 px.
        let mut last = 0.0;
        for i in 60..120 {
            let x = 100.0 + (i - 59) as f32 * 10.0;
            let mut p = [[x, 50.0, 0.0]];
            f.apply(&mut p, 1 + i * 33_333, 200.0);
            last = x - p[0][0];
        }
        assert!(last.abs() < 10.0, "lag {last} px");
    }

    #[test]
    fn one_euro_passes_values_at_an_old_timestamp_and_resets() {
        let c = OneEuroConfig::new(0.05, 80.0, 1.0);
        let mut f = Landmarks::new(c);
        let mut p = [[0.0, 0.0, 0.0]];
        f.apply(&mut p, 100_000, 100.0);
        let mut p = [[50.0, 0.0, 0.0]];
        f.apply(&mut p, 100_000, 100.0);
        assert_eq!(p[0][0], 50.0, "same timestamp: unfiltered");
        let mut p = [[50.0, 0.0, 0.0]];
        f.apply(&mut p, 133_333, 100.0);
        assert!(p[0][0] < 50.0 && p[0][0] > 0.0, "{}", p[0][0]);
        f.reset();
        let mut p = [[70.0, 0.0, 0.0]];
        f.apply(&mut p, 166_666, 100.0);
        assert_eq!(p[0][0], 70.0, "after a reset the first value passes");
        // An object too small to scale by: unfiltered.
        let mut p = [[0.0, 0.0, 0.0]];
        f.apply(&mut p, 200_000, 0.0);
        assert_eq!(p[0][0], 0.0);
    }

    #[test]
    fn visibility_low_pass_moves_a_tenth_of_the_way() {
        let mut v = Visibility::new(0.1);
        let mut a = [1.0, 0.0];
        v.apply(&mut a);
        assert_eq!(a, [1.0, 0.0]);
        let mut a = [0.0, 1.0];
        v.apply(&mut a);
        assert!(
            (a[0] - 0.9).abs() < 1e-6 && (a[1] - 0.1).abs() < 1e-6,
            "{a:?}"
        );
    }
}
