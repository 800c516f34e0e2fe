use std::f32::consts::{FRAC_PI_2, PI};

use opencv::core::{CV_8UC3, Mat, Scalar};
use opencv::prelude::*;

use super::*;

const EPS: f32 = 1e-5;

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn radians_are_brought_into_minus_pi_to_pi() {
    assert!(close(normalize_radians(1.5 * PI), -FRAC_PI_2, EPS));
    assert!(close(normalize_radians(-1.5 * PI), FRAC_PI_2, EPS));
    assert!(close(normalize_radians(0.3), 0.3, EPS));
    assert!(close(normalize_radians(PI), -PI, EPS));
}

#[test]
fn rotation_turns_the_keypoint_vector_to_the_target() {
    let size = FrameSize {
        width: 200.0,
        height: 100.0,
    };
    // Pointing up (y falls): already at 90°, no rotation.
    let up = rotation((0.5, 0.8), (0.5, 0.2), FRAC_PI_2, size);
    assert!(close(up, 0.0, EPS), "{up}");
    // Pointing right: the region turns 90° clockwise.
    let right = rotation((0.2, 0.5), (0.8, 0.5), FRAC_PI_2, size);
    assert!(close(right, FRAC_PI_2, EPS), "{right}");
    // Measured in pixels: 0.1 across is 20 px, 0.2 down is 20 px: 45°.
    let diag = rotation((0.5, 0.5), (0.6, 0.3), FRAC_PI_2, size);
    assert!(close(diag, PI / 4.0, EPS), "{diag}");
}

#[test]
fn transform_shifts_along_the_turned_axis_squares_and_scales() {
    let size = FrameSize {
        width: 200.0,
        height: 100.0,
    };
    // 40 x 20 px, turned 90° clockwise: its own "up" points left on
    // screen, so shift_y -0.5 moves it half its height (10 px) right.
    let r = Region {
        x_center: 0.5,
        y_center: 0.5,
        width: 0.2,
        height: 0.2,
        rotation: FRAC_PI_2,
    };
    let t = RectTransform {
        scale_x: 2.0,
        scale_y: 2.0,
        shift_y: -0.5,
        square_long: true,
        ..RectTransform::default()
    };
    let out = r.transform(&t, size);
    assert!(close(out.x_center, 0.55, EPS), "{out:?}");
    assert!(close(out.y_center, 0.5, EPS), "{out:?}");
    // Square of the long side (40 px), then doubled: 80 x 80 px.
    assert!(close(out.width, 0.4, EPS), "{out:?}");
    assert!(close(out.height, 0.8, EPS), "{out:?}");
    assert_eq!(out.rotation, FRAC_PI_2);
}

#[test]
fn regions_around_points_upright_and_turned() {
    let size = FrameSize {
        width: 100.0,
        height: 100.0,
    };
    let a = Region::around(&[(0.1, 0.2), (0.3, 0.6), (0.2, 0.4)]).unwrap();
    assert_eq!(a, Region::from_box(0.1, 0.2, 0.3, 0.6));
    assert!(close(a.x_center, 0.2, EPS) && close(a.height, 0.4, EPS));
    assert_eq!(Region::around(&[]), None);
    // The corners of a 20 x 10 px rectangle turned by 0.5 rad about
    // (50, 60): the turned box is that rectangle again.
    let (s, c) = 0.5f32.sin_cos();
    let corners: Vec<(f32, f32)> = [(-10.0, -5.0), (10.0, -5.0), (10.0, 5.0), (-10.0, 5.0)]
        .iter()
        .map(|&(x, y)| {
            (
                (50.0 + x * c - y * s) / 100.0,
                (60.0 + x * s + y * c) / 100.0,
            )
        })
        .collect();
    let r = Region::around_rotated(&corners, 0.5, size).unwrap();
    assert!(
        close(r.x_center, 0.5, 1e-4) && close(r.y_center, 0.6, 1e-4),
        "{r:?}"
    );
    assert!(
        close(r.width, 0.2, 1e-4) && close(r.height, 0.1, 1e-4),
        "{r:?}"
    );
}

#[test]
fn iou_ignores_rotation() {
    let a = Region::from_box(0.0, 0.0, 0.2, 0.2);
    let b = Region::from_box(0.1, 0.0, 0.3, 0.2).rotated(1.0);
    assert!(close(a.iou(&a), 1.0, EPS));
    assert!(close(a.iou(&b), 1.0 / 3.0, EPS), "{}", a.iou(&b));
    assert_eq!(a.iou(&Region::from_box(0.5, 0.5, 0.6, 0.6)), 0.0);
}

#[test]
fn world_landmarks_turn_with_the_region() {
    let (x, y) = rotate_world(1.0, 0.0, FRAC_PI_2);
    assert!(close(x, 0.0, EPS) && close(y, 1.0, EPS));
}

#[test]
fn a_turned_crop_maps_a_point_back_to_where_it_was() {
    // A grey frame with a white 3x3 dot centred on pixel (200, 90).
    let mut frame = Mat::new_rows_cols_with_default(240, 320, CV_8UC3, Scalar::all(60.0)).unwrap();
    for y in 89..=91 {
        for x in 199..=201 {
            *frame.at_2d_mut::<opencv::core::Vec3b>(y, x).unwrap() = [255, 255, 255].into();
        }
    }
    let region = Region::from_pixels(
        180.0,
        100.0,
        80.0,
        80.0,
        0.7,
        FrameSize {
            width: 320.0,
            height: 240.0,
        },
    );
    let spec = TensorSpec {
        width: 64,
        height: 64,
        range: (0.0, 1.0),
        border: Border::Replicate,
        keep_aspect: true,
    };
    let mut buf = vec![0u8; spec.bytes()];
    let crop = to_tensor(&frame, &region, &spec, &mut buf).unwrap();
    assert_eq!(crop.letterbox, Letterbox::default());
    // The dot's centroid in the tensor (pixel indices are the mapped
    // points, as MediaPipe's warp samples them).
    let t = floats(&buf);
    let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
    for (i, px) in t.chunks_exact(3).enumerate() {
        let w = (px[0] - 60.0 / 255.0).max(0.0);
        sx += w * (i % 64) as f32;
        sy += w * (i / 64) as f32;
        sw += w;
    }
    assert!(sw > 0.0, "the dot is not in the crop");
    let (x, y) = crop.to_pixels(sx / sw / 64.0, sy / sw / 64.0);
    assert!(
        close(x, 200.0, 0.5) && close(y, 90.0, 0.5),
        "the dot maps back to ({x}, {y}), not (200, 90)"
    );
    // The tensor's corners are the region's corners.
    let (x0, y0) = crop.to_pixels(0.0, 0.0);
    let (s, c) = 0.7f32.sin_cos();
    assert!(close(x0, 180.0 - 40.0 * c + 40.0 * s, 1e-3), "{x0}");
    assert!(close(y0, 100.0 - 40.0 * s - 40.0 * c, 1e-3), "{y0}");
    // z scales as x: by the region's width in pixels.
    assert!(close(crop.z_to_pixels(0.5), 40.0, 1e-4));
}

#[test]
fn a_whole_frame_is_letterboxed_and_the_padding_removed() {
    // 640 x 480 into 192 x 192: 24 rows of padding above and below.
    let frame =
        Mat::new_rows_cols_with_default(480, 640, CV_8UC3, Scalar::new(10.0, 20.0, 30.0, 0.0))
            .unwrap();
    let spec = TensorSpec {
        width: 192,
        height: 192,
        range: (0.0, 1.0),
        border: Border::Zero,
        keep_aspect: true,
    };
    let mut buf = vec![0u8; spec.bytes()];
    let crop = to_tensor(&frame, &Region::whole(), &spec, &mut buf).unwrap();
    assert!(close(crop.letterbox.top, 0.125, EPS) && close(crop.letterbox.bottom, 0.125, EPS));
    assert_eq!((crop.letterbox.left, crop.letterbox.right), (0.0, 0.0));
    let t = floats(&buf);
    // Padding is the range's minimum; the frame's pixels are RGB.
    assert_eq!(&t[..3], &[0.0, 0.0, 0.0]);
    let mid = (96 * 192 + 96) * 3;
    assert!(close(t[mid], 30.0 / 255.0, EPS) && close(t[mid + 2], 10.0 / 255.0, EPS));
    let (x, y) = crop.to_pixels(0.5, 0.125);
    assert!(close(x, 320.0, 1e-3) && close(y, 0.0, 1e-3), "({x}, {y})");
    let (x, y) = crop.to_frame(1.0, 0.875);
    assert!(close(x, 1.0, EPS) && close(y, 1.0, EPS), "({x}, {y})");
    // The other range: 0 → -1.
    let spec = TensorSpec {
        range: (-1.0, 1.0),
        ..spec
    };
    to_tensor(&frame, &Region::whole(), &spec, &mut buf).unwrap();
    assert_eq!(floats(&buf)[0], -1.0);
}

#[test]
fn a_buffer_of_the_wrong_size_is_refused_naming_both() {
    let frame = Mat::new_rows_cols_with_default(10, 10, CV_8UC3, Scalar::all(0.0)).unwrap();
    let spec = TensorSpec {
        width: 4,
        height: 4,
        range: (0.0, 1.0),
        border: Border::Zero,
        keep_aspect: false,
    };
    let e = to_tensor(&frame, &Region::whole(), &spec, &mut [0u8; 10]).unwrap_err();
    assert!(
        e.message.contains("has 10 bytes") && e.message.contains("has 192"),
        "{}",
        e.message
    );
}
