//! Pose against untrusted numbers and large frames: model outputs that
//! are not finite numbers never reach the client nor the stream's
//! filters; an 8K frame's mask, and the mask a stream keeps to smooth the
//! next one, stay at the task's bounded size.

use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;
use sidecar_proto::v1::PoseTask;

use super::pose::State;
use super::pose_landmark::{Outputs, decode};
use super::pose_test_support::{photo, testdata};
use super::pose_tests::{load_pose, pose_timed};
use super::roi::{Border, Crop, FrameSize, Region, TensorSpec, to_tensor};
use super::segmentation::DEFAULT_MAX_MASK_PIXELS;

/// A crop of a 640x480 frame as the pose landmark model's input takes it.
fn crop() -> (Crop, Region) {
    let frame = Mat::zeros(480, 640, opencv::core::CV_8UC3)
        .unwrap()
        .to_mat()
        .unwrap();
    let region = Region::from_pixels(320.0, 240.0, 300.0, 300.0, 0.2, FrameSize::of(&frame));
    let spec = TensorSpec {
        width: 256,
        height: 256,
        range: (0.0, 1.0),
        border: Border::Replicate,
        keep_aspect: true,
    };
    let mut buf = vec![0u8; 256 * 256 * 3 * 4];
    (to_tensor(&frame, &region, &spec, &mut buf).unwrap(), region)
}

/// Finite outputs: every point in the crop's middle.
fn finite() -> Outputs {
    Outputs {
        landmarks: (0..39 * 5)
            .map(|i| {
                if i % 5 < 2 {
                    100.0 + i as f32 / 5.0
                } else {
                    0.5
                }
            })
            .collect(),
        score: 0.9,
        mask: Some(vec![2.0; 256 * 256]),
        heat: vec![-5.0; 64 * 64 * 39],
        world: vec![0.1; 39 * 3],
    }
}

/// What spoils one output, and how.
type Spoil = (&'static str, fn(&mut Outputs));

#[test]
fn outputs_that_are_not_finite_numbers_are_no_pose() {
    let (crop, region) = crop();
    let good = decode(&finite(), &crop, &region, Some((640, 480)))
        .unwrap()
        .expect("finite outputs are a pose");
    assert_eq!(good.world.len(), 33);
    assert!(good.points.iter().flatten().all(|v| v.is_finite()));
    let bad: [Spoil; 7] = [
        ("a NaN landmark x", |o| o.landmarks[0] = f32::NAN),
        ("an infinite depth", |o| {
            o.landmarks[5 * 10 + 2] = f32::INFINITY
        }),
        ("a NaN visibility", |o| o.landmarks[5 * 20 + 3] = f32::NAN),
        ("a NaN auxiliary point", |o| {
            o.landmarks[5 * 34 + 1] = f32::NAN
        }),
        ("a NaN world landmark", |o| o.world[3 * 32 + 2] = f32::NAN),
        ("an infinite world landmark", |o| {
            o.world[0] = f32::NEG_INFINITY
        }),
        ("an infinite score", |o| o.score = f32::INFINITY),
    ];
    for (what, spoil) in bad {
        let mut o = finite();
        spoil(&mut o);
        let found = decode(&o, &crop, &region, Some((640, 480))).unwrap();
        assert!(found.is_none(), "{what}: {found:?}");
    }
    // The 4 unused points may be anything.
    let mut o = finite();
    o.landmarks[5 * 38] = f32::NAN;
    assert!(decode(&o, &crop, &region, None).unwrap().is_some());
    // A degenerate crop (a region too large to map) sends points to
    // infinity: no pose.
    let huge = Crop {
        region: Region {
            width: f32::MAX,
            height: f32::MAX,
            ..region
        },
        ..crop
    };
    assert!(decode(&finite(), &huge, &region, None).unwrap().is_none());
    // Mask logits that are not numbers are no person.
    let mut o = finite();
    if let Some(m) = o.mask.as_mut() {
        m.iter_mut().for_each(|v| *v = f32::NAN);
    }
    let found = decode(&o, &crop, &region, Some((64, 48)))
        .unwrap()
        .expect("the landmarks are finite");
    let mask = found.mask.expect("asked for");
    assert_eq!((mask.cols(), mask.rows()), (64, 48));
    for y in 0..48 {
        assert!(mask.at_row::<f32>(y).unwrap().iter().all(|v| *v == 0.0));
    }
}

#[test]
fn an_8k_stream_keeps_its_mask_at_the_bounded_size() {
    // bus.jpg (810x1080) at 4x, 3240x4320, on the left of a black 8K
    // frame.
    let src = photo(&testdata("bus.jpg"));
    let mut big = Mat::default();
    imgproc::resize(
        &src,
        &mut big,
        Size::new(3240, 4320),
        0.0,
        0.0,
        imgproc::INTER_LINEAR,
    )
    .unwrap();
    let mut frame = Mat::zeros(4320, 7680, opencv::core::CV_8UC3)
        .unwrap()
        .to_mat()
        .unwrap();
    let mut left = Mat::roi_mut(&mut frame, opencv::core::Rect::new(0, 0, 3240, 4320)).unwrap();
    big.copy_to(&mut left).unwrap();
    let mut m = load_pose();
    let mut st = State::new(&PoseTask {
        segmentation: true,
        ..Default::default()
    })
    .unwrap();
    for i in 0..3 {
        let (pose, stages) = pose_timed(&mut m, &mut st, &frame, i * 33_333);
        let pose = pose.expect("a person");
        assert_eq!(
            stages.iter().any(|s| s.stage == "pose_detection"),
            i == 0,
            "frame {i}: detected first, then tracked"
        );
        let mask = pose.segmentation.expect("the mask asked for");
        assert_eq!((mask.width, mask.height), (1930, 1086), "frame {i}");
        assert_eq!(mask.data.len(), 1930 * 1086);
        let on = mask.data.iter().filter(|&&b| b >= 128).count();
        assert!(on > 10_000, "frame {i}: {on} person pixels");
        // Smoothing keeps the last mask: 4 bytes a pixel of the bounded
        // size, not of the 33 MP frame (132 MB).
        let held = st.held_bytes();
        eprintln!("pose 8K frame {i}: {on} person pixels; the stream holds {held} bytes of mask");
        assert_eq!(held, 1930 * 1086 * 4);
        assert!(held as u64 <= 4 * DEFAULT_MAX_MASK_PIXELS);
    }
}
