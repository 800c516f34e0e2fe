//! MediaPipe's reference fixtures (`tests/fixtures/mediapipe/`, made by
//! `scripts/mediapipe_fixtures.py`) are whole and agree with the photographs
//! `scripts/setup.sh` extracts: every photo there with the recorded size,
//! landmark counts per solution, detection counts equal to the results,
//! masks whose run lengths fill the image, and the moving-crop video's
//! rectangles inside their photo with MediaPipe's per-frame truth for each.
//! The solutions' own tests compare the pipeline against these files.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mediapipe")
}

/// The photographs: `models/testdata` (MEDIAPIPE_TESTDATA overrides it).
fn testdata() -> PathBuf {
    std::env::var_os("MEDIAPIPE_TESTDATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata"),
        PathBuf::from,
    )
}

fn load(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"))
}

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {v}"))
}

/// Width and height from a PNG's IHDR or a JPEG's SOF marker.
fn image_size(path: &Path) -> (u64, u64) {
    let b = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        let be = |i: usize| u64::from(u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
        return (be(16), be(20));
    }
    assert!(
        b.starts_with(&[0xFF, 0xD8]),
        "{}: neither PNG nor JPEG",
        path.display()
    );
    let mut i = 2;
    while i + 9 < b.len() {
        assert_eq!(b[i], 0xFF, "{}: bad JPEG marker at {i}", path.display());
        let marker = b[i + 1];
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let h = u64::from(u16::from_be_bytes([b[i + 5], b[i + 6]]));
            let w = u64::from(u16::from_be_bytes([b[i + 7], b[i + 8]]));
            return (w, h);
        }
        i += 2 + len;
    }
    panic!("{}: no JPEG frame header", path.display())
}

/// A mask's foreground from its run-length rows, checking that each row
/// fills the width and the count matches `foreground_pixels`.
fn check_mask(m: &Value, w: u64, h: u64, what: &str) -> u64 {
    assert_eq!(m["width"].as_u64(), Some(w), "{what}: mask width");
    assert_eq!(m["height"].as_u64(), Some(h), "{what}: mask height");
    let rows = arr(&m["rle_rows"], what);
    assert_eq!(rows.len() as u64, h, "{what}: rle rows");
    let mut fg = 0;
    for (y, row) in rows.iter().enumerate() {
        let runs: Vec<u64> = arr(row, what).iter().map(|r| r.as_u64().unwrap()).collect();
        assert_eq!(runs.iter().sum::<u64>(), w, "{what}: row {y} runs {runs:?}");
        fg += runs.iter().skip(1).step_by(2).sum::<u64>();
    }
    assert_eq!(
        m["foreground_pixels"].as_u64(),
        Some(fg),
        "{what}: foreground"
    );
    let g = &m["grid"];
    let cells = g["cols"].as_u64().unwrap() * g["rows"].as_u64().unwrap();
    let values = arr(&g["values"], what);
    assert_eq!(values.len() as u64, cells, "{what}: grid cells");
    assert!(
        values.iter().all(|v| (0.0..=1.0).contains(&num(v, what))),
        "{what}: grid range"
    );
    fg
}

fn check_landmarks(list: &Value, count: usize, fields: usize, w: f64, h: f64, what: &str) {
    let l = arr(list, what);
    assert_eq!(l.len(), count, "{what}: landmarks");
    for p in l {
        let p = arr(p, what);
        assert_eq!(p.len(), fields, "{what}: landmark fields {p:?}");
        let (x, y) = (num(&p[0], what), num(&p[1], what));
        // MediaPipe places landmarks outside the image too (a pose's legs
        // below a portrait's edge), but not far.
        let inside = |v: f64, size: f64| (-2.0 * size..3.0 * size).contains(&v);
        assert!(inside(x, w) && inside(y, h), "{what}: {p:?}");
    }
}

#[test]
fn every_photo_fixture_is_whole_and_matches_its_photo() {
    let mut photos = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        // Photo fixtures only: not the video's, nor MediaPipe's hand regions
        // (`hands.regions.json`, the hands tests' own).
        if !name.ends_with(".json") || name.starts_with("video") || name == "hands.regions.json" {
            continue;
        }
        files += 1;
        let d = load(&name);
        assert_eq!(d["mediapipe_version"], "0.10.21", "{name}");
        let image = d["image"].as_str().unwrap().to_owned();
        let (w, h) = (d["width"].as_u64().unwrap(), d["height"].as_u64().unwrap());
        assert_eq!(
            image_size(&testdata().join(&image)),
            (w, h),
            "{name}: {image}"
        );
        photos.insert(image);
        let (fw, fh) = (w as f64, h as f64);
        match d["solution"].as_str().unwrap() {
            "hands" => {
                let hands = arr(&d["hands"], &name);
                assert_eq!(d["detections"].as_u64(), Some(hands.len() as u64), "{name}");
                assert!(hands.len() <= 2, "{name}: max_num_hands 2");
                for hand in hands {
                    let label = hand["handedness"]["label"].as_str().unwrap();
                    assert!(label == "Left" || label == "Right", "{name}: {label}");
                    check_landmarks(&hand["landmarks"], 21, 3, fw, fh, &name);
                    assert_eq!(arr(&hand["world_landmarks"], &name).len(), 21, "{name}");
                }
            }
            "pose" => {
                let poses = arr(&d["poses"], &name);
                assert_eq!(d["detections"].as_u64(), Some(poses.len() as u64), "{name}");
                for pose in poses {
                    check_landmarks(&pose["landmarks"], 33, 5, fw, fh, &name);
                    assert_eq!(arr(&pose["world_landmarks"], &name).len(), 33, "{name}");
                }
                if poses.is_empty() {
                    assert!(d["segmentation"].is_null(), "{name}: a mask without a pose");
                } else {
                    check_mask(&d["segmentation"], w, h, &name);
                }
            }
            "face_mesh" => {
                let faces = arr(&d["faces"], &name);
                assert_eq!(d["detections"].as_u64(), Some(faces.len() as u64), "{name}");
                let n = if d["options"]["refine_landmarks"] == true {
                    478
                } else {
                    468
                };
                for face in faces {
                    check_landmarks(&face["landmarks"], n, 3, fw, fh, &name);
                }
            }
            "selfie_segmentation" => {
                check_mask(&d["segmentation"], w, h, &name);
            }
            other => panic!("{name}: unknown solution {other}"),
        }
    }
    assert_eq!(files, 7 * 7, "7 photographs, 7 fixtures each");
    assert_eq!(photos.len(), 7, "{photos:?}");
}

#[test]
fn the_photo_without_a_person_has_empty_results_and_the_hand_photos_have_hands() {
    for f in [
        "hands.full",
        "hands.lite",
        "pose",
        "face_mesh.mesh",
        "face_mesh.refined",
    ] {
        let d = load(&format!("rocket.{f}.json"));
        assert_eq!(d["detections"].as_u64(), Some(0), "rocket.{f}");
    }
    for f in ["general", "landscape"] {
        let d = load(&format!("rocket.selfie_segmentation.{f}.json"));
        assert_eq!(
            d["segmentation"]["foreground_pixels"].as_u64(),
            Some(0),
            "rocket {f}"
        );
    }
    let labels = |name: &str| -> Vec<String> {
        let d = load(name);
        let mut l: Vec<String> = arr(&d["hands"], name)
            .iter()
            .map(|h| h["handedness"]["label"].as_str().unwrap().to_owned())
            .collect();
        l.sort();
        l
    };
    for v in ["full", "lite"] {
        assert_eq!(
            labels(&format!("people_sofa.hands.{v}.json")),
            ["Left", "Right"]
        );
        assert_eq!(labels(&format!("people_stairs.hands.{v}.json")), ["Right"]);
    }
}

#[test]
fn the_moving_crop_video_has_its_truth_frame_by_frame() {
    let video = load("video.json");
    let phases = arr(&video["phases"], "phases");
    let span = |name: &str| {
        let p = phases.iter().find(|p| p["name"] == name).unwrap();
        let first = p["first"].as_u64().unwrap() as usize;
        first..first + p["count"].as_u64().unwrap() as usize
    };
    let (track, away, back) = (span("track"), span("away"), span("back"));
    assert_eq!(track.len(), 60);
    assert_eq!((track.end, away.end), (away.start, back.start));
    for (name, key) in [
        ("hands", "hands"),
        ("pose", "poses"),
        ("face_mesh", "faces"),
    ] {
        let s = &video["solutions"][name];
        let photo = s["photo"].as_str().unwrap();
        let (pw, ph) = image_size(&testdata().join(photo));
        assert_eq!(
            (s["photo_width"].as_u64(), s["photo_height"].as_u64()),
            (Some(pw), Some(ph))
        );
        let (cw, ch) = (
            s["crop_width"].as_u64().unwrap(),
            s["crop_height"].as_u64().unwrap(),
        );
        let frames = arr(&s["frames"], name);
        assert_eq!(frames.len(), back.end, "{name}: frames");
        let mut previous: Option<(i64, i64)> = None;
        for (i, f) in frames.iter().enumerate() {
            let (x, y) = (f["x"].as_u64().unwrap(), f["y"].as_u64().unwrap());
            assert_eq!(
                (f["w"].as_u64(), f["h"].as_u64()),
                (Some(cw), Some(ch)),
                "{name} {i}"
            );
            assert!(
                x + cw <= pw && y + ch <= ph,
                "{name}: frame {i} outside {pw}x{ph}"
            );
            // Smooth motion within a phase: a few pixels a frame.
            let at = (x as i64, y as i64);
            if let Some(p) = previous.filter(|_| i != away.start && i != back.start) {
                let step = (at.0 - p.0).abs().max((at.1 - p.1).abs());
                assert!(step <= 16, "{name}: frame {i} moves {step} px");
            }
            previous = Some(at);
        }
        let truth = load(&format!("video.{name}.json"));
        let per_frame = arr(&truth["frames"], name);
        assert_eq!(per_frame.len(), frames.len(), "{name}: truth frames");
        for (i, t) in per_frame.iter().enumerate() {
            let expected = u64::from(!away.contains(&i));
            assert_eq!(
                t["detections"].as_u64(),
                Some(expected),
                "{name}: frame {i}"
            );
            assert_eq!(
                arr(&t[key], name).len() as u64,
                expected,
                "{name}: frame {i}"
            );
        }
        // MediaPipe's own tracking: its detector finds on the first frame
        // and on the re-entry only (hands with max_num_hands 1).
        let tracked = &truth["mediapipe_video_mode"][0];
        let ran: Vec<usize> = arr(&tracked["detector_ran_and_found"], name)
            .iter()
            .enumerate()
            .filter(|(_, v)| v.as_u64() == Some(1))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ran, [track.start, back.start], "{name}");
    }
}
