//! SSD-style detectors as MediaPipe decodes them: anchor generation
//! (`SsdAnchorsCalculator`), box decoding (`TensorsToDetectionsCalculator`)
//! and weighted non-max suppression (`NonMaxSuppressionCalculator`,
//! WEIGHTED). Coordinates are normalised to the detector's input (0..1).

use sidecar_proto::v1::SsdOptions;

/// An anchor: centre and size, normalised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    /// Centre x.
    pub x: f32,
    /// Centre y.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

/// A decoded detection, normalised to the detector's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    /// Left, top, right, bottom.
    pub xmin: f32,
    /// Top.
    pub ymin: f32,
    /// Right.
    pub xmax: f32,
    /// Bottom.
    pub ymax: f32,
    /// Sigmoid score.
    pub score: f32,
    /// Class index.
    pub class_id: u32,
    /// Keypoints (x, y).
    pub keypoints: Vec<(f32, f32)>,
}

/// MediaPipe's BlazeFace short-range configuration.
pub fn blazeface_short_range() -> SsdOptions {
    SsdOptions {
        input_width: 128,
        input_height: 128,
        min_scale: 0.148_437_5,
        max_scale: 0.75,
        anchor_offset_x: 0.5,
        anchor_offset_y: 0.5,
        strides: vec![8, 16, 16, 16],
        aspect_ratios: vec![1.0],
        fixed_anchor_size: true,
        interpolated_scale_aspect_ratio: 1.0,
        num_classes: 1,
        num_keypoints: 6,
        x_scale: 128.0,
        y_scale: 128.0,
        w_scale: 128.0,
        h_scale: 128.0,
        score_clipping_thresh: 100.0,
        labels: vec![],
    }
}

/// MediaPipe's BlazeFace full-range configuration
/// (`face_detection_full_range_sparse.tflite`: 192x192, one 48x48 layer).
pub fn blazeface_full_range() -> SsdOptions {
    SsdOptions {
        input_width: 192,
        input_height: 192,
        strides: vec![4],
        interpolated_scale_aspect_ratio: 0.0,
        x_scale: 192.0,
        y_scale: 192.0,
        w_scale: 192.0,
        h_scale: 192.0,
        ..blazeface_short_range()
    }
}

/// Refuses options no SSD detector has, before anchors are made from
/// them (a caller's options must not make millions of anchors): a zero
/// input size, no layers or more than 8, a stride under 4, more than 8
/// aspect ratios, scales that are not positive and finite, more than 32 keypoints or
/// 1000 classes.
pub fn check(o: &SsdOptions) -> Result<(), String> {
    let positive = [
        ("min_scale", o.min_scale),
        ("max_scale", o.max_scale),
        ("x_scale", o.x_scale),
        ("y_scale", o.y_scale),
        ("w_scale", o.w_scale),
        ("h_scale", o.h_scale),
    ];
    if o.input_width == 0 || o.input_height == 0 {
        Err("ssd.input_width and ssd.input_height must be set".into())
    } else if o.strides.is_empty() || o.strides.len() > 8 {
        Err(format!(
            "ssd.strides has {} layers; 1..8 are allowed",
            o.strides.len()
        ))
    } else if let Some(s) = o.strides.iter().find(|s| **s < 4) {
        Err(format!("ssd.strides holds {s}; a stride is at least 4"))
    } else if o.aspect_ratios.len() > 8 {
        Err(format!(
            "ssd.aspect_ratios has {}; at most 8 are allowed",
            o.aspect_ratios.len()
        ))
    } else if let Some((name, v)) = positive.iter().find(|(_, v)| !v.is_finite() || *v <= 0.0) {
        Err(format!("ssd.{name} is {v}; it must be positive"))
    } else if o.num_keypoints > 32 || o.num_classes > 1000 {
        Err(format!(
            "ssd has {} keypoints and {} classes; at most 32 and 1000",
            o.num_keypoints, o.num_classes
        ))
    } else {
        Ok(())
    }
}

fn scale(min: f32, max: f32, i: usize, n: usize) -> f32 {
    if n == 1 {
        (min + max) / 2.0
    } else {
        min + (max - min) * i as f32 / (n - 1) as f32
    }
}

/// The anchors for these options, in the order the model's outputs use.
pub fn anchors(o: &SsdOptions) -> Vec<Anchor> {
    let n = o.strides.len();
    let ratios: &[f32] = if o.aspect_ratios.is_empty() {
        &[1.0]
    } else {
        &o.aspect_ratios
    };
    let mut out = Vec::new();
    let mut layer = 0;
    while layer < n {
        // Layers with the same stride share one feature map.
        let mut ws = Vec::new();
        let mut hs = Vec::new();
        let mut last = layer;
        while last < n && o.strides[last] == o.strides[layer] {
            let s = scale(o.min_scale, o.max_scale, last, n);
            for &r in ratios {
                ws.push(s * r.sqrt());
                hs.push(s / r.sqrt());
            }
            if o.interpolated_scale_aspect_ratio > 0.0 {
                let next = if last == n - 1 {
                    1.0
                } else {
                    scale(o.min_scale, o.max_scale, last + 1, n)
                };
                let s = (s * next).sqrt();
                let r = o.interpolated_scale_aspect_ratio;
                ws.push(s * r.sqrt());
                hs.push(s / r.sqrt());
            }
            last += 1;
        }
        let stride = o.strides[layer].max(1) as f32;
        let fw = (o.input_width as f32 / stride).ceil() as usize;
        let fh = (o.input_height as f32 / stride).ceil() as usize;
        for y in 0..fh {
            for x in 0..fw {
                for (w, h) in ws.iter().zip(&hs) {
                    let (w, h) = if o.fixed_anchor_size {
                        (1.0, 1.0)
                    } else {
                        (*w, *h)
                    };
                    out.push(Anchor {
                        x: (x as f32 + o.anchor_offset_x) / fw as f32,
                        y: (y as f32 + o.anchor_offset_y) / fh as f32,
                        w,
                        h,
                    });
                }
            }
        }
        layer = last;
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Decodes box and score tensors (`boxes`: per anchor 4 + 2·keypoints
/// values, x/y/w/h order; `scores`: per anchor `num_classes` logits) into
/// the detections scoring at least `min_score`.
pub fn decode(
    o: &SsdOptions,
    anchors: &[Anchor],
    boxes: &[f32],
    scores: &[f32],
    min_score: f32,
) -> Vec<Raw> {
    let coords = 4 + 2 * o.num_keypoints as usize;
    let classes = o.num_classes.max(1) as usize;
    let clip = if o.score_clipping_thresh > 0.0 {
        o.score_clipping_thresh
    } else {
        100.0
    };
    let sx = |v: f32| if v > 0.0 { v } else { o.input_width as f32 };
    let sy = |v: f32| if v > 0.0 { v } else { o.input_height as f32 };
    let (xs, ys, ws, hs) = (sx(o.x_scale), sy(o.y_scale), sx(o.w_scale), sy(o.h_scale));
    let mut out = Vec::new();
    for (i, a) in anchors.iter().enumerate() {
        let Some(raw) = boxes.get(i * coords..(i + 1) * coords) else {
            break;
        };
        let Some(class_scores) = scores.get(i * classes..(i + 1) * classes) else {
            break;
        };
        let (class_id, logit) =
            class_scores
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |best, (c, s)| if s > best.1 { (c, s) } else { best },
                );
        let score = sigmoid(logit.clamp(-clip, clip));
        // A model's NaN or infinite output is no detection (NaN passes
        // every comparison that would drop it).
        if score.is_nan() || score < min_score || raw.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let xc = raw[0] / xs * a.w + a.x;
        let yc = raw[1] / ys * a.h + a.y;
        let w = raw[2] / ws * a.w;
        let h = raw[3] / hs * a.h;
        let keypoints = (0..o.num_keypoints as usize)
            .map(|k| {
                (
                    raw[4 + 2 * k] / xs * a.w + a.x,
                    raw[5 + 2 * k] / ys * a.h + a.y,
                )
            })
            .collect();
        out.push(Raw {
            xmin: xc - w / 2.0,
            ymin: yc - h / 2.0,
            xmax: xc + w / 2.0,
            ymax: yc + h / 2.0,
            score,
            class_id: class_id as u32,
            keypoints,
        });
    }
    out
}

/// Intersection over union of two boxes.
pub fn iou(a: &Raw, b: &Raw) -> f32 {
    let ix = (a.xmax.min(b.xmax) - a.xmin.max(b.xmin)).max(0.0);
    let iy = (a.ymax.min(b.ymax) - a.ymin.max(b.ymin)).max(0.0);
    let inter = ix * iy;
    let area = |r: &Raw| (r.xmax - r.xmin).max(0.0) * (r.ymax - r.ymin).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Weighted non-max suppression: each cluster of boxes overlapping the best
/// remaining one above `threshold` becomes their score-weighted average,
/// with the best one's score.
pub fn weighted_nms(mut dets: Vec<Raw>, threshold: f32) -> Vec<Raw> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    while !dets.is_empty() {
        // The best one always leaves the list (even a box no comparison
        // matches, such as one with NaN corners): the loop ends.
        let top = dets.remove(0);
        let (mut cluster, rest): (Vec<Raw>, Vec<Raw>) =
            dets.into_iter().partition(|d| iou(&top, d) > threshold);
        cluster.insert(0, top.clone());
        dets = rest;
        let total: f32 = cluster.iter().map(|d| d.score).sum();
        let avg =
            |f: &dyn Fn(&Raw) -> f32| cluster.iter().map(|d| f(d) * d.score).sum::<f32>() / total;
        let keypoints = (0..top.keypoints.len())
            .map(|k| (avg(&|d| d.keypoints[k].0), avg(&|d| d.keypoints[k].1)))
            .collect();
        out.push(Raw {
            xmin: avg(&|d| d.xmin),
            ymin: avg(&|d| d.ymin),
            xmax: avg(&|d| d.xmax),
            ymax: avg(&|d| d.ymax),
            score: top.score,
            class_id: top.class_id,
            keypoints,
        });
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_nan_box_ends_the_suppression_and_decodes_to_nothing() {
        let nan = Raw {
            xmin: f32::NAN,
            ymin: 0.0,
            xmax: 1.0,
            ymax: 1.0,
            score: 0.9,
            class_id: 0,
            keypoints: vec![],
        };
        let fine = Raw {
            xmin: 0.0,
            ..nan.clone()
        };
        let out = weighted_nms(vec![nan, fine.clone(), fine], 0.3);
        assert_eq!(
            out.len(),
            2,
            "the NaN box alone, the two equal boxes merged"
        );
        let o = blazeface_short_range();
        let a = anchors(&o);
        let coords = 4 + 2 * o.num_keypoints as usize;
        let mut boxes = vec![0.0f32; a.len() * coords];
        boxes[0] = f32::NAN;
        boxes[coords + 2] = f32::INFINITY;
        let mut scores = vec![-100.0f32; a.len()];
        scores[0] = 10.0;
        scores[1] = 10.0;
        scores[2] = f32::NAN;
        assert!(
            decode(&o, &a, &boxes, &scores, 0.5).is_empty(),
            "NaN/inf outputs are no detections"
        );
    }

    use super::*;

    #[test]
    fn options_no_detector_has_are_refused() {
        assert_eq!(check(&blazeface_short_range()), Ok(()));
        let bad = |f: fn(&mut SsdOptions)| {
            let mut o = blazeface_short_range();
            f(&mut o);
            check(&o).unwrap_err()
        };
        assert!(bad(|o| o.input_width = 0).contains("input_width"));
        assert!(bad(|o| o.strides.clear()).contains("0 layers"));
        assert!(bad(|o| o.strides = vec![8; 9]).contains("9 layers"));
        assert!(bad(|o| o.strides[0] = 1).contains("holds 1"));
        assert!(bad(|o| o.aspect_ratios = vec![1.0; 9]).contains("aspect_ratios"));
        assert!(bad(|o| o.x_scale = 0.0).contains("x_scale is 0"));
        assert!(bad(|o| o.num_keypoints = 33).contains("33 keypoints"));
    }

    #[test]
    fn blazeface_short_range_has_896_anchors() {
        let o = blazeface_short_range();
        let a = anchors(&o);
        assert_eq!(a.len(), 896);
        // First layer: a 16x16 grid, two anchors per cell.
        assert_eq!(
            a[0],
            Anchor {
                x: 0.5 / 16.0,
                y: 0.5 / 16.0,
                w: 1.0,
                h: 1.0
            }
        );
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2].x, 1.5 / 16.0);
        // Then an 8x8 grid, six anchors per cell.
        assert_eq!(
            a[512],
            Anchor {
                x: 0.5 / 8.0,
                y: 0.5 / 8.0,
                w: 1.0,
                h: 1.0
            }
        );
        assert_eq!(a[895].x, 7.5 / 8.0);
    }

    #[test]
    fn decoding_places_a_box_around_its_anchor() {
        let o = blazeface_short_range();
        let a = anchors(&o);
        let mut boxes = vec![0.0; 896 * 16];
        let mut scores = vec![-10.0; 896];
        // Anchor 0, shifted 12.8 px right, 25.6 px wide and high.
        boxes[0] = 12.8;
        boxes[2] = 25.6;
        boxes[3] = 25.6;
        scores[0] = 3.0;
        let d = decode(&o, &a, &boxes, &scores, 0.5);
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert!((d.xmin - (0.03125 + 0.1 - 0.1)).abs() < 1e-6, "{d:?}");
        assert!((d.xmax - (0.03125 + 0.1 + 0.1)).abs() < 1e-6, "{d:?}");
        assert!((d.score - sigmoid(3.0)).abs() < 1e-6);
        assert_eq!(d.keypoints.len(), 6);
    }

    #[test]
    fn weighted_nms_merges_overlaps_and_keeps_the_rest() {
        let b = |x: f32, s: f32| Raw {
            xmin: x,
            ymin: 0.0,
            xmax: x + 1.0,
            ymax: 1.0,
            score: s,
            class_id: 0,
            keypoints: vec![],
        };
        let out = weighted_nms(vec![b(0.0, 0.9), b(0.1, 0.6), b(5.0, 0.7)], 0.3);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        assert!((out[0].xmin - 0.04).abs() < 1e-6, "{:?}", out[0]);
        assert_eq!(out[1].xmin, 5.0);
    }
}
