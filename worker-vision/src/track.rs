//! Tracking with trajectories: OpenCV trackers per object, ids stable for
//! the stream, tracks created from the client's boxes or from detections
//! (re-anchored every `detect_every` frames), dropped after `max_lost`
//! frames unseen.

use std::collections::VecDeque;

use opencv::core::{Mat, Ptr, Rect, Rect2d};
use opencv::prelude::*;
use opencv::tracking::{
    Legacy_TrackerMOSSE, Legacy_TrackerMedianFlow, Legacy_TrackerMedianFlow_Params, TrackerCSRT,
    TrackerCSRT_Params, TrackerKCF, TrackerKCF_Params,
};
use opencv::video::{TrackerMIL, TrackerMIL_Params};
use sidecar_proto::v1::{
    Box as PixelBox, Detection, Point, Track, TrackerType, TrackingTask, TrajectoryPoint,
};
use worker_runtime::{WorkerError, deadline};

use crate::error::cv;

/// One OpenCV tracker of any kind.
enum Engine {
    Csrt(Ptr<TrackerCSRT>),
    Kcf(Ptr<TrackerKCF>),
    Mil(Ptr<TrackerMIL>),
    Mosse(Ptr<Legacy_TrackerMOSSE>),
    MedianFlow(Ptr<Legacy_TrackerMedianFlow>),
}

impl Engine {
    fn new(kind: TrackerType, frame: &Mat, b: Rect) -> Result<Engine, WorkerError> {
        let mut e = match kind {
            TrackerType::Unspecified | TrackerType::Csrt => Engine::Csrt(
                TrackerCSRT::create(&TrackerCSRT_Params::default().map_err(cv("CSRT"))?)
                    .map_err(cv("CSRT"))?,
            ),
            TrackerType::Kcf => Engine::Kcf(
                TrackerKCF::create(TrackerKCF_Params::default().map_err(cv("KCF"))?)
                    .map_err(cv("KCF"))?,
            ),
            TrackerType::Mil => Engine::Mil(
                TrackerMIL::create(TrackerMIL_Params::default().map_err(cv("MIL"))?)
                    .map_err(cv("MIL"))?,
            ),
            TrackerType::Mosse => {
                Engine::Mosse(Legacy_TrackerMOSSE::create().map_err(cv("MOSSE"))?)
            }
            TrackerType::Medianflow => Engine::MedianFlow(
                Legacy_TrackerMedianFlow::create(
                    &Legacy_TrackerMedianFlow_Params::default().map_err(cv("MedianFlow"))?,
                )
                .map_err(cv("MedianFlow"))?,
            ),
        };
        let d = Rect2d::new(
            f64::from(b.x),
            f64::from(b.y),
            f64::from(b.width),
            f64::from(b.height),
        );
        match &mut e {
            Engine::Csrt(t) => t.init(frame, b).map_err(cv("init"))?,
            Engine::Kcf(t) => t.init(frame, b).map_err(cv("init"))?,
            Engine::Mil(t) => t.init(frame, b).map_err(cv("init"))?,
            Engine::Mosse(t) => {
                t.init(frame, d).map_err(cv("init"))?;
            }
            Engine::MedianFlow(t) => {
                t.init(frame, d).map_err(cv("init"))?;
            }
        }
        Ok(e)
    }

    /// The object's box in this frame, if found.
    fn update(&mut self, frame: &Mat) -> Result<Option<Rect>, WorkerError> {
        let mut r = Rect::default();
        let mut d = Rect2d::default();
        let found = match self {
            Engine::Csrt(t) => t.update(frame, &mut r).map_err(cv("update"))?,
            Engine::Kcf(t) => t.update(frame, &mut r).map_err(cv("update"))?,
            Engine::Mil(t) => t.update(frame, &mut r).map_err(cv("update"))?,
            Engine::Mosse(t) => {
                let ok = t.update(frame, &mut d).map_err(cv("update"))?;
                r = Rect::new(d.x as i32, d.y as i32, d.width as i32, d.height as i32);
                ok
            }
            Engine::MedianFlow(t) => {
                let ok = t.update(frame, &mut d).map_err(cv("update"))?;
                r = Rect::new(d.x as i32, d.y as i32, d.width as i32, d.height as i32);
                ok
            }
        };
        Ok(found.then_some(r))
    }
}

struct Tracked {
    id: u32,
    engine: Engine,
    rect: Rect,
    lost: u32,
    age: u32,
    trajectory: VecDeque<TrajectoryPoint>,
}

/// A stream's tracking task and its tracks.
pub struct Tracking {
    kind: TrackerType,
    initial: Vec<PixelBox>,
    /// Tracks come from this frame's detections.
    pub from_detections: bool,
    detect_every: u32,
    max_lost: u32,
    trajectory_len: usize,
    match_iou: f32,
    /// Most tracks at once (the model's `max_tracks`).
    max_tracks: usize,
    tracks: Vec<Tracked>,
    next_id: u32,
    frames: u64,
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("tracks", &self.tracks.len())
            .finish_non_exhaustive()
    }
}

fn to_rect(b: &PixelBox) -> Rect {
    Rect::new(
        b.x.round() as i32,
        b.y.round() as i32,
        b.width.round().max(1.0) as i32,
        b.height.round().max(1.0) as i32,
    )
}

fn to_box(r: Rect) -> PixelBox {
    PixelBox {
        x: r.x as f32,
        y: r.y as f32,
        width: r.width as f32,
        height: r.height as f32,
    }
}

fn iou(a: Rect, b: Rect) -> f32 {
    let inter = (a & b).area() as f32;
    let union = (a.area() + b.area()) as f32 - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

impl Tracking {
    /// Checks the options; at most `max_tracks` tracks.
    pub fn new(t: &TrackingTask, max_tracks: u32) -> Result<Tracking, WorkerError> {
        let kind = TrackerType::try_from(t.tracker).map_err(|_| {
            WorkerError::invalid(format!(
                "tracking.tracker {} is not a TrackerType value",
                t.tracker
            ))
        })?;
        if t.initial_boxes.is_empty() && !t.from_detections {
            return Err(WorkerError::invalid(
                "tracking needs initial_boxes or from_detections",
            ));
        }
        if t.initial_boxes.len() > max_tracks as usize {
            return Err(WorkerError::invalid(format!(
                "tracking.initial_boxes holds {} boxes; at most {max_tracks} are allowed (max_tracks)",
                t.initial_boxes.len()
            )));
        }
        for (i, b) in t.initial_boxes.iter().enumerate() {
            if !(b.width >= 1.0 && b.height >= 1.0) {
                return Err(WorkerError::invalid(format!(
                    "tracking.initial_boxes[{i}] is {}x{}; boxes are at least 1x1",
                    b.width, b.height
                )));
            }
        }
        let trajectory_len = match t.trajectory_length {
            0 => 64,
            n if n > 1024 => {
                return Err(WorkerError::invalid(format!(
                    "tracking.trajectory_length {n} exceeds the limit of 1024"
                )));
            }
            n => n as usize,
        };
        Ok(Tracking {
            kind,
            initial: t.initial_boxes.clone(),
            from_detections: t.from_detections,
            detect_every: if t.detect_every == 0 {
                10
            } else {
                t.detect_every
            },
            max_lost: if t.max_lost_frames == 0 {
                10
            } else {
                t.max_lost_frames
            },
            trajectory_len,
            match_iou: if t.match_iou > 0.0 { t.match_iou } else { 0.3 },
            max_tracks: max_tracks as usize,
            tracks: Vec::new(),
            next_id: 1,
            frames: 0,
        })
    }

    /// Whether this frame needs detections.
    pub fn wants_detections(&self) -> bool {
        self.from_detections
            && (self.frames == 0 || self.frames.is_multiple_of(u64::from(self.detect_every)))
    }

    /// Starts a track, unless `max_tracks` are kept already.
    fn add(&mut self, frame: &Mat, rect: Rect) -> Result<(), WorkerError> {
        if self.tracks.len() >= self.max_tracks {
            return Ok(());
        }
        let engine = Engine::new(self.kind, frame, rect)?;
        self.tracks.push(Tracked {
            id: self.next_id,
            engine,
            rect,
            lost: 0,
            age: 0,
            trajectory: VecDeque::new(),
        });
        self.next_id += 1;
        Ok(())
    }

    /// Advances every track to this frame; `detections` (when this frame
    /// was detected on) create and re-anchor tracks. The deadline (Unix
    /// ms, 0: none) is checked before each tracker's update or start.
    pub fn step(
        &mut self,
        frame: &Mat,
        index: u64,
        detections: Option<&[Detection]>,
        deadline_ms: i64,
    ) -> Result<Vec<Track>, WorkerError> {
        let first = self.frames == 0;
        self.frames += 1;
        // Existing tracks follow the object first.
        if !first {
            for t in &mut self.tracks {
                deadline::check(deadline_ms)?;
                match t.engine.update(frame)? {
                    Some(r) => {
                        t.rect = r;
                        t.lost = 0;
                    }
                    None => t.lost += 1,
                }
                t.age += 1;
            }
        }
        if first {
            for b in self.initial.clone() {
                deadline::check(deadline_ms)?;
                self.add(frame, to_rect(&b))?;
            }
        }
        if let Some(dets) = detections {
            for d in dets {
                deadline::check(deadline_ms)?;
                let Some(b) = d.r#box else { continue };
                let r = to_rect(&b);
                let best = self
                    .tracks
                    .iter_mut()
                    .map(|t| (iou(t.rect, r), t))
                    .filter(|(v, _)| *v >= self.match_iou)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                match best {
                    Some((_, t)) => {
                        // Re-anchor on the detection.
                        t.engine = Engine::new(self.kind, frame, r)?;
                        t.rect = r;
                        t.lost = 0;
                    }
                    None => self.add(frame, r)?,
                }
            }
        }
        let max_lost = self.max_lost;
        self.tracks.retain(|t| t.lost <= max_lost);
        let len = self.trajectory_len;
        Ok(self
            .tracks
            .iter_mut()
            .map(|t| {
                if t.lost == 0 {
                    t.trajectory.push_back(TrajectoryPoint {
                        frame_index: index,
                        center: Some(Point {
                            x: t.rect.x as f32 + t.rect.width as f32 / 2.0,
                            y: t.rect.y as f32 + t.rect.height as f32 / 2.0,
                        }),
                    });
                    while t.trajectory.len() > len {
                        t.trajectory.pop_front();
                    }
                }
                Track {
                    track_id: t.id,
                    r#box: Some(to_box(t.rect)),
                    visible: t.lost == 0,
                    lost_frames: t.lost,
                    age_frames: t.age,
                    trajectory: t.trajectory.iter().cloned().collect(),
                }
            })
            .collect())
    }
}
