//! Hands through the worker's task code (`tasks::run` with a stream's
//! `Prepared`, `Batch`) on the moving-crop video and on photographs.

use opencv::core::{Mat, Rect};
use opencv::prelude::*;
use sidecar_proto::v1::{
    Image, ProcessBatchRequest, ProcessResponse, VisionTask, image, vision_task,
};
use worker_runtime::Resolved;

use super::tests::{compare, fixture, lib, model, models, photo, root};
use crate::batch::Batch;
use crate::detect::Ssd;
use crate::limits::Limits;
use crate::tasks::{self, Detector, Prepared, Served};
use sidecar_proto::v1::HandsTask;

/// A worker's loaded state: a face detector as the model, the hands
/// models as its pipeline (complexity "full").
fn served() -> Served {
    let face = Ssd::load(
        &lib(),
        std::path::Path::new(&model("face_detection_short_range.tflite")),
        1,
        None,
    )
    .unwrap();
    let mut s = Served::new(Detector::Ssd(Box::new(face)), Limits::default());
    s.hands = Some(models("full"));
    s
}

fn hands_task(t: HandsTask) -> vision_task::Task {
    vision_task::Task::Hands(t)
}

fn ran(r: &ProcessResponse, stage: &str) -> bool {
    r.stages.iter().any(|s| s.stage == stage)
}

/// Frame `i` of the video: the crop of the photo, not resized.
fn crops(solution: &str) -> (Vec<Mat>, serde_json::Value) {
    let video = fixture("video.json");
    let v = &video["solutions"][solution];
    let photo = photo(v["photo"].as_str().unwrap());
    let frames = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let n = |k: &str| f[k].as_i64().unwrap() as i32;
            let rect = Rect::new(n("x"), n("y"), n("w"), n("h"));
            Mat::roi(&photo, rect).unwrap().try_clone().unwrap()
        })
        .collect();
    (frames, video["phases"].clone())
}

fn phase(phases: &serde_json::Value, name: &str) -> std::ops::Range<usize> {
    let p = phases
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap();
    let first = p["first"].as_u64().unwrap() as usize;
    first..first + p["count"].as_u64().unwrap() as usize
}

/// MediaPipe's own video-mode run with `max_num_hands` = `max`: per frame,
/// whether its palm detector ran and found a palm, and how many hands it
/// returned.
fn mediapipe_video_mode(truth: &serde_json::Value, max: u64) -> (Vec<bool>, Vec<usize>) {
    let run = truth["mediapipe_video_mode"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["options"]["max_num_hands"] == max)
        .unwrap();
    let list = |k: &str| -> Vec<u64> {
        run[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    (
        list("detector_ran_and_found")
            .iter()
            .map(|&v| v == 1)
            .collect(),
        list("results").iter().map(|&v| v as usize).collect(),
    )
}

#[test]
fn a_stream_tracks_the_hand_and_runs_the_palm_detector_rarely() {
    let (frames, phases) = crops("hands");
    let fx = fixture("video.hands.json");
    let (mp_found, mp_count) = mediapipe_video_mode(&fx, 1);
    let truth = fx["frames"].as_array().unwrap();
    assert_eq!(frames.len(), truth.len());
    let mut s = served();
    // One hand in view: with max_hands 1 a tracked hand is enough, so the
    // palm detector waits until the hand is lost (as MediaPipe's graph).
    let task = hands_task(HandsTask {
        max_hands: 1,
        ..Default::default()
    });
    tasks::check(&task, &s).unwrap();
    let tasks = [task];
    let mut prepared = Prepared::new(&tasks, &s.limits).unwrap();
    let mut results = Vec::new();
    let (mut worst_mean, mut worst_max, mut sum, mut n) = (0.0f32, 0.0f32, 0.0f32, 0);
    for (i, (frame, t)) in frames.iter().zip(truth).enumerate() {
        let mut r = ProcessResponse {
            frame_index: i as u64,
            ..Default::default()
        };
        tasks::run(&mut s, &tasks, &mut prepared, frame, &mut r, "frame", 0).unwrap();
        let diag = (frame.cols() as f32).hypot(frame.rows() as f32);
        let theirs = t["hands"].as_array().unwrap();
        let (mean, max) = compare(&r.hands, theirs, diag, &format!("frame {i}"));
        if !theirs.is_empty() {
            sum += mean;
            n += 1;
        }
        (worst_mean, worst_max) = (worst_mean.max(mean), worst_max.max(max));
        if !r.hands.is_empty() {
            assert!(ran(&r, "hand_landmark"), "frame {i}: {:?}", r.stages);
        }
        results.push(r);
    }
    let runs = |range: std::ops::Range<usize>| {
        results[range]
            .iter()
            .filter(|r| ran(r, "palm_detection"))
            .count()
    };
    let (track, away, back) = (
        phase(&phases, "track"),
        phase(&phases, "away"),
        phase(&phases, "back"),
    );
    let (on_track, on_back) = (runs(track.clone()), runs(back.clone()));
    let us = |stage: &str| {
        let t: Vec<u64> = results
            .iter()
            .flat_map(|r| r.stages.iter().filter(|s| s.stage == stage).map(|s| s.us))
            .collect();
        t.iter().sum::<u64>() / t.len().max(1) as u64
    };
    eprintln!(
        "per run: palm_detection {} us, hand_landmark {} us",
        us("palm_detection"),
        us("hand_landmark")
    );
    eprintln!(
        "palm detector on {on_track} of {} tracked frames, {} of {} away, {on_back} of {} back; landmarks: mean {:.2} px, worst frame mean {worst_mean:.2} px, max {worst_max:.2} px",
        track.len(),
        runs(away.clone()),
        away.len(),
        back.len(),
        sum / n as f32
    );
    assert!(
        ran(&results[0], "palm_detection"),
        "the first frame detects"
    );
    // Frame for frame as MediaPipe's own graph in video mode: the palm
    // detector found a palm on the same frames, the same hand counts.
    let found: Vec<bool> = results
        .iter()
        .map(|r| r.hands.iter().any(|h| h.palm.is_some()))
        .collect();
    assert_eq!(
        found, mp_found,
        "frames where the palm detector found a palm"
    );
    let count: Vec<usize> = results.iter().map(|r| r.hands.len()).collect();
    assert_eq!(count, mp_count, "hands per frame");
    assert!(
        (on_track as f32) < 0.2 * track.len() as f32,
        "the palm detector ran on {on_track} of {} frames",
        track.len()
    );
    // Away: no hand. On the first away frame the lost hand's region is
    // tried (the landmark model finds no hand there: the detector does not
    // run); from then on nothing is tracked, the detector looks on every
    // frame and finds nothing, and the landmark model has nothing to run
    // on. Back: the detector finds the hand again, then tracking takes
    // over.
    for r in &results[away.clone()] {
        assert!(r.hands.is_empty(), "frame {}", r.frame_index);
    }
    let first = &results[away.start];
    assert!(ran(first, "hand_landmark") && !ran(first, "palm_detection"));
    for r in &results[away.start + 1..away.end] {
        assert!(
            ran(r, "palm_detection"),
            "frame {}: {:?}",
            r.frame_index,
            r.stages
        );
        assert!(
            !ran(r, "hand_landmark"),
            "frame {}: {:?}",
            r.frame_index,
            r.stages
        );
    }
    assert!(ran(&results[back.start], "palm_detection"));
    assert!(results[back.start].hands[0].palm.is_some());
    assert!(
        on_back >= 1 && (on_back as f32) < 0.2 * back.len() as f32,
        "{on_back}"
    );
    // A tracked hand has no palm detection.
    assert!(results[back.start + 1].hands[0].palm.is_none());
}

#[test]
fn with_room_for_more_hands_or_in_static_mode_the_detector_runs_on_every_frame() {
    let (frames, _) = crops("hands");
    // MediaPipe in video mode with 2 hands allowed: its detector finds the
    // one hand on every frame of the track phase.
    let (mp_found, mp_count) = mediapipe_video_mode(&fixture("video.hands.json"), 2);
    assert!(mp_found[..60].iter().all(|&f| f));
    let mut s = served();
    for task in [
        // One hand tracked, two allowed: MediaPipe's graph looks for the
        // second on every frame.
        HandsTask::default(),
        HandsTask {
            max_hands: 1,
            static_image_mode: true,
            ..Default::default()
        },
    ] {
        let tasks = [hands_task(task)];
        let mut prepared = Prepared::new(&tasks, &s.limits).unwrap();
        for (i, frame) in frames.iter().take(60).enumerate() {
            let mut r = ProcessResponse::default();
            tasks::run(&mut s, &tasks, &mut prepared, frame, &mut r, "frame", 0).unwrap();
            assert!(ran(&r, "palm_detection"), "{task:?} frame {i}");
            assert_eq!(r.hands.len(), mp_count[i], "{task:?} frame {i}");
            // The palm found on a tracked hand gives way to it (the
            // association keeps the tracked region), so past the first
            // frame a tracking stream's hand has no palm; in static mode
            // every hand comes from a palm.
            let from_palm = i == 0 || task.static_image_mode;
            assert_eq!(r.hands[0].palm.is_some(), from_palm, "{task:?} frame {i}");
            // What a stream keeps: this frame's hands only.
            assert_eq!(prepared.hands_mut().unwrap().tracked.len(), 1);
        }
    }
}

#[test]
fn a_batch_treats_each_image_alone() {
    let mut s = served();
    let dir = std::env::var_os("SIDECAR_TESTDATA")
        .map_or_else(|| root().join("models/testdata"), std::path::PathBuf::from);
    let read = |name: &str| Image {
        data: Some(image::Data::Encoded(
            std::fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .into(),
        )),
    };
    let req = ProcessBatchRequest {
        model_id: "m".into(),
        task: Some(VisionTask {
            task: Some(hands_task(HandsTask {
                max_hands: 1,
                ..Default::default()
            })),
        }),
        // The same hand twice (a stream would track it), then no hand.
        images: vec![
            read("people_stairs.jpg"),
            read("people_stairs.jpg"),
            read("rocket.jpg"),
        ],
    };
    let mut b = Batch::start(1, 0, req, Resolved::default(), &s).unwrap();
    let answer = loop {
        if let Some(a) = b.step(&mut s, usize::MAX).unwrap() {
            break a;
        }
    };
    let r = &answer.results;
    assert_eq!(r.len(), 3);
    for (k, one) in r.iter().enumerate().take(2) {
        assert!(ran(one, "palm_detection"), "image {k}: {:?}", one.stages);
        assert_eq!(one.hands.len(), 1);
        assert_eq!(one.hands[0].handedness, "Right");
        assert!(one.hands[0].palm.is_some());
    }
    assert_eq!(r[0].hands, r[1].hands);
    // No hand: an empty result, not an error.
    assert!(r[2].hands.is_empty() && ran(&r[2], "palm_detection"));
    assert!(!ran(&r[2], "hand_landmark"));
}

#[test]
fn a_hands_task_on_a_worker_without_the_models_is_refused() {
    let mut s = served();
    s.hands = None;
    let e = tasks::check(&hands_task(HandsTask::default()), &s).unwrap_err();
    assert_eq!(e.code, worker_runtime::Code::InvalidArgument);
    assert!(
        e.message.contains("pipeline.palm_detection"),
        "{}",
        e.message
    );
    let e = tasks::check(
        &hands_task(HandsTask {
            max_hands: 9,
            ..Default::default()
        }),
        &served(),
    )
    .unwrap_err();
    assert_eq!(e.message, "hands.max_hands 9 exceeds the limit of 4");
}
