//! Selfie segmentation and mask encoding on the real models and
//! photographs, against MediaPipe's own masks.

use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use sidecar_proto::v1::SegmentationMaskFormat;

use super::pose_test_support::{
    at_half, fixture_mask, fixtures, iou, model, person_share, photo, runtime, testdata,
};
use super::segmentation::{MaskSpec, Selfie};

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
    let raw = MaskSpec::new(0.0, 0, "t.").unwrap().encode(&mask).unwrap();
    assert_eq!((raw.width, raw.height), (3, 2));
    assert_eq!(&raw.data[..], &[0, 51, 128, 125, 255, 191]);
    let cut = MaskSpec::new(0.5, 0, "t.").unwrap().encode(&mask).unwrap();
    assert_eq!(&cut.data[..], &[0, 0, 255, 0, 255, 255]);
    let png = MaskSpec::new(0.0, 1, "t.").unwrap().encode(&mask).unwrap();
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
        let mask = s.run(&frame).unwrap();
        assert_eq!((mask.cols(), mask.rows()), (frame.cols(), frame.rows()));
        let share = person_share(&mask);
        eprintln!("{name}: astronaut.png {share:.4} of the pixels are the person");
        assert!(share > 0.3, "{name}: {share}");
        let mask = s.run(&black).unwrap();
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
        let ours = at_half(&model.run(&frame).unwrap());
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
