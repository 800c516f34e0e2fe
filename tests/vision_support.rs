//! What the VISION tests share: BlazeFace in a sidecar, scikit-image's
//! astronaut with its face labelled by hand, face tasks and stream configs,
//! H.264 streams made by ffmpeg.

use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    Box as PixelBox, FaceDetectionTask, FaceDetector, Frame, Image, OverflowPolicy, PixelFormat,
    ProcessRequest, RawImage, StreamConfig, VisionTask, frame, image, process_request, vision_task,
};
use tonic::transport::Channel;

use crate::{Sidecar, add_model, store};

/// The face detector file, relative to the model store.
pub const BLAZEFACE: &str = "mediapipe/face_detection_short_range.tflite";

/// Eileen Collins' face in astronaut.png (512x512), labelled by hand: from
/// the eyebrows to the chin, cheek to cheek.
pub const FACE: PixelBox = PixelBox {
    x: 172.0,
    y: 84.0,
    width: 100.0,
    height: 100.0,
};

pub fn iou(a: &PixelBox, b: &PixelBox) -> f32 {
    let ix = ((a.x + a.width).min(b.x + b.width) - a.x.max(b.x)).max(0.0);
    let iy = ((a.y + a.height).min(b.y + b.height) - a.y.max(b.y)).max(0.0);
    let inter = ix * iy;
    inter / (a.width * a.height + b.width * b.height - inter)
}

pub fn astronaut() -> Image {
    let path = crate::root().join("models/testdata/astronaut.png");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    Image {
        data: Some(image::Data::Encoded(bytes.into())),
    }
}

pub fn faces(detector: FaceDetector) -> VisionTask {
    VisionTask {
        task: Some(vision_task::Task::Faces(FaceDetectionTask {
            detector: detector as i32,
            min_score: 0.5,
            max_faces: 0,
        })),
    }
}

/// A sidecar with BlazeFace loaded as the VISION model `faces`, and a
/// client.
pub async fn sidecar() -> (Sidecar, VisionServiceClient<Channel>) {
    let store = store();
    add_model(&store, BLAZEFACE);
    let config = format!(
        "[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
    );
    let sc = Sidecar::start(store, &config);
    sc.ready("faces").await;
    let client = VisionServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    (sc, client)
}

/// A stream's first message: face detection on `faces`.
pub fn config(overflow: OverflowPolicy, max_pending: u32) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![faces(FaceDetector::Unspecified)],
            max_pending_frames: max_pending,
            overflow: overflow as i32,
        })),
    }
}

/// A stream message of raw, tightly packed pixels.
pub fn raw_frame(
    index: u64,
    w: usize,
    h: usize,
    format: PixelFormat,
    data: Vec<u8>,
) -> ProcessRequest {
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            data: Some(frame::Data::Raw(RawImage {
                shm: Default::default(),
                width: w as u32,
                height: h as u32,
                format: format as i32,
                stride: 0,
                data: data.into(),
            })),
            ..Default::default()
        })),
    }
}

/// Makes `path`, an H.264 Annex-B stream of `frames` pictures of ffmpeg's
/// `testsrc2` at `w`x`h`, encoded by x264 with `x264` options.
pub fn ffmpeg_h264(
    path: &std::path::Path,
    w: usize,
    h: usize,
    frames: u32,
    x264: &[&str],
) -> Result<(), String> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .arg("-i")
        .arg(format!("testsrc2=size={w}x{h}:rate=25"))
        .args(["-frames:v", &frames.to_string(), "-c:v", "libx264"])
        .args(x264)
        .args(["-pix_fmt", "yuv420p", "-f", "h264"])
        .arg(path)
        .output()
        .map_err(|e| format!("ffmpeg (run scripts/setup.sh): {e}"))?;
    if !out.status.success() {
        return Err(format!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// An H.264 Annex-B stream made by ffmpeg (x264, High profile, up to 3
/// B-frames), and its frame count as ffprobe reads it.
pub fn b_frame_stream(w: u32, h: u32, frames: u32) -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stream.264");
    let x264 = ["-profile:v", "high", "-bf", "3", "-g", "24"];
    ffmpeg_h264(&path, w as usize, h as usize, frames, &x264).unwrap_or_else(|e| panic!("{e}"));
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames,has_b_frames"])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&probe.stdout).to_string();
    let field = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{k} not in ffprobe's {text:?}"))
    };
    assert!(field("has_b_frames") > 0, "a stream with B-frames: {text}");
    (
        std::fs::read(&path).expect("stream"),
        field("nb_read_frames"),
    )
}
