//! Selfie segmentation and mask encoding on the real models and
//! photographs, against MediaPipe's own masks.

use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::SegmentationMaskFormat;

use super::pose_test_support::{
    at_half, fixture_mask, fixtures, iou, model, person_share, photo, runtime, testdata,
};
use super::segmentation::{
    DEFAULT_MAX_MASK_PIXELS, MAX_MASK_PIXELS, MaskSpec, Selfie, sanitize, smooth,
};

fn load_selfie(name: &str) -> Selfie {
    Selfie::load(&runtime(), &model(name), 1).expect("the selfie model loads")
}

#[test]
fn masks_encode_as_alpha_thresholded_or_png() {
    let probs: Vec<f32> = vec![0.0, 0.2, 0.5, 0.49, 1.0, 0.75];
    let mask = Mat::new_rows_cols_with_data(2, 3, &probs)
        .unwrap()
        .try_clone()
        .unwrap();
    let raw = MaskSpec::new(0.0, 0, 0, "t.", "max_mask_pixels")
        .unwrap()
        .encode(&mask)
        .unwrap();
    assert_eq!((raw.width, raw.height), (3, 2));
    assert_eq!(&raw.data[..], &[0, 51, 128, 125, 255, 191]);
    let cut = MaskSpec::new(0.5, 0, 0, "t.", "max_mask_pixels")
        .unwrap()
        .encode(&mask)
        .unwrap();
    assert_eq!(&cut.data[..], &[0, 0, 255, 0, 255, 255]);
    let png = MaskSpec::new(0.0, 1, 0, "t.", "max_mask_pixels")
        .unwrap()
        .encode(&mask)
        .unwrap();
    assert_eq!(png.format, SegmentationMaskFormat::Png as i32);
    let decoded = imgcodecs::imdecode(
        &Vector::<u8>::from_slice(&png.data),
        imgcodecs::IMREAD_GRAYSCALE,
    )
    .unwrap();
    assert_eq!((decoded.cols(), decoded.rows()), (3, 2));
    assert_eq!(decoded.data_bytes().unwrap(), &raw.data[..]);
}

#[test]
fn selfie_masks_have_the_frame_size_and_nobody_on_a_black_frame() {
    let frame = photo(&testdata("astronaut.png"));
    let black = Mat::zeros(240, 320, opencv::core::CV_8UC3)
        .unwrap()
        .to_mat()
        .unwrap();
    for name in [
        "selfie_segmentation.tflite",
        "selfie_segmentation_landscape.tflite",
    ] {
        let mut s = load_selfie(name);
        let mask = s.run(&frame, (frame.cols(), frame.rows())).unwrap();
        assert_eq!((mask.cols(), mask.rows()), (frame.cols(), frame.rows()));
        let share = person_share(&mask);
        eprintln!("{name}: astronaut.png {share:.4} of the pixels are the person");
        assert!(share > 0.3, "{name}: {share}");
        let mask = s.run(&black, (320, 240)).unwrap();
        assert_eq!((mask.cols(), mask.rows()), (320, 240));
        assert_eq!(
            person_share(&mask),
            0.0,
            "{name}: a person on a black frame"
        );
    }
}

#[test]
fn selfie_masks_match_mediapipe_on_the_fixture_photos() {
    let mut general = load_selfie("selfie_segmentation.tflite");
    let mut landscape = load_selfie("selfie_segmentation_landscape.tflite");
    for (path, fx) in fixtures(".json") {
        let p = path.to_string_lossy();
        let model = if p.ends_with(".selfie_segmentation.general.json") {
            &mut general
        } else if p.ends_with(".selfie_segmentation.landscape.json") {
            &mut landscape
        } else {
            continue;
        };
        let name = fx["image"].as_str().unwrap();
        let frame = photo(&testdata(name));
        let ours = at_half(&model.run(&frame, (frame.cols(), frame.rows())).unwrap());
        let theirs = fixture_mask(&fx["segmentation"]);
        let iou = iou(&ours, &theirs);
        let on = theirs.iter().filter(|x| **x).count();
        eprintln!(
            "{}: IoU {iou:.4} ({on} person pixels)",
            path.file_name().unwrap().to_string_lossy()
        );
        assert!(iou >= 0.95, "{p}: IoU {iou}");
    }
}

#[test]
fn a_mask_is_the_frame_size_up_to_its_bound_then_scaled_down_to_fit() {
    let spec = |max: u64| MaskSpec::new(0.0, 0, max, "selfie_segmentation.", "max_mask_pixels");
    let d = spec(0).unwrap();
    assert_eq!(d.max_pixels, DEFAULT_MAX_MASK_PIXELS);
    assert_eq!(DEFAULT_MAX_MASK_PIXELS, 2_097_152);
    assert_eq!(d.size_for(1920, 1080), (1920, 1080), "1080p at full size");
    assert_eq!(d.size_for(640, 480), (640, 480));
    // 8K (33,177,600 pixels): the aspect kept, under the bound.
    assert_eq!(d.size_for(7680, 4320), (1930, 1086));
    assert_eq!(d.size_for(4320, 7680), (1086, 1930));
    assert_eq!(d.size_for(16384, 1), (16384, 1), "16,384 pixels fit");
    let big = spec(MAX_MASK_PIXELS).unwrap();
    assert_eq!(big.size_for(7680, 4320), (3861, 2172));
    assert_eq!(big.size_for(3840, 2160), (3840, 2160), "4K at full size");
    let tiny = spec(1).unwrap();
    assert_eq!(tiny.size_for(7680, 4320), (1, 1));
    for (w, h) in [
        (7680, 4320),
        (16384, 16384),
        (16384, 3),
        (3, 16384),
        (1999, 1051),
    ] {
        for s in [&d, &big, &tiny] {
            let (mw, mh) = s.size_for(w, h);
            assert!(
                mw >= 1 && mh >= 1 && mw <= w && mh <= h,
                "{w}x{h}: {mw}x{mh}"
            );
            assert!(mw as u64 * mh as u64 <= s.max_pixels, "{w}x{h}: {mw}x{mh}");
        }
    }
    let e = spec(MAX_MASK_PIXELS + 1).unwrap_err();
    assert_eq!(e.code, worker_runtime::Code::InvalidArgument);
    assert_eq!(
        e.message,
        "selfie_segmentation.max_mask_pixels 8388609 exceeds the limit of 8388608"
    );
}

#[test]
fn an_8k_frame_gets_its_selfie_mask_at_the_bounded_size() {
    let src = photo(&testdata("grace_hopper.jpg"));
    let mut frame = Mat::default();
    opencv::imgproc::resize(
        &src,
        &mut frame,
        opencv::core::Size::new(7680, 4320),
        0.0,
        0.0,
        opencv::imgproc::INTER_LINEAR,
    )
    .unwrap();
    let spec = MaskSpec::new(0.0, 0, 0, "selfie_segmentation.", "max_mask_pixels").unwrap();
    let mut s = load_selfie("selfie_segmentation.tflite");
    let mask = s
        .run(&frame, spec.size_for(frame.cols(), frame.rows()))
        .unwrap();
    assert_eq!((mask.cols(), mask.rows()), (1930, 1086));
    let out = spec.encode(&mask).unwrap();
    assert_eq!((out.width, out.height), (1930, 1086));
    assert_eq!(out.data.len(), 1930 * 1086);
    let share = person_share(&mask);
    eprintln!("selfie 8K: {share:.4} of the 1930x1086 mask is the person");
    assert!(share > 0.3, "{share}");
}

#[test]
fn mask_values_that_are_not_numbers_are_no_person_and_never_reach_the_state() {
    let mut probs = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.5, 1.5, 0.25];
    sanitize(&mut probs);
    assert_eq!(probs, [0.0, 0.0, 0.0, 0.0, 1.0, 0.25]);
    // Smoothing against a sanitized previous mask stays finite.
    let prev = Mat::new_rows_cols_with_data(2, 3, &probs)
        .unwrap()
        .try_clone()
        .unwrap();
    let cur: Vec<f32> = vec![0.5; 6];
    let mut cur = Mat::new_rows_cols_with_data(2, 3, &cur)
        .unwrap()
        .try_clone()
        .unwrap();
    smooth(&mut cur, &prev, 0.7).unwrap();
    for y in 0..2 {
        for v in cur.at_row::<f32>(y).unwrap() {
            assert!(v.is_finite() && (0.0..=1.0).contains(v), "{v}");
        }
    }
}
