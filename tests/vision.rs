//! VISION models end to end: the real sidecar and worker-vision running
//! MediaPipe's BlazeFace through LiteRT (and OpenCV's cascades) on
//! scikit-image's astronaut photograph, with a face box labelled by hand.

use e2e::{Sidecar, add_model, serial, store};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    Box as PixelBox, FaceDetectionTask, FaceDetector, Image, PixelFormat, ProcessBatchRequest,
    ProcessRequest, RawImage, StreamConfig, TrackingTask, VisionTask, image, process_request,
    vision_task,
};
use tonic::Code;
use tonic::transport::Channel;

const BLAZEFACE: &str = "mediapipe/face_detection_short_range.tflite";

/// Eileen Collins' face in astronaut.png (512x512), labelled by hand: from
/// the eyebrows to the chin, cheek to cheek.
const FACE: PixelBox = PixelBox {
    x: 172.0,
    y: 84.0,
    width: 100.0,
    height: 100.0,
};

fn iou(a: &PixelBox, b: &PixelBox) -> f32 {
    let ix = ((a.x + a.width).min(b.x + b.width) - a.x.max(b.x)).max(0.0);
    let iy = ((a.y + a.height).min(b.y + b.height) - a.y.max(b.y)).max(0.0);
    let inter = ix * iy;
    inter / (a.width * a.height + b.width * b.height - inter)
}

fn astronaut() -> Image {
    let path = e2e::root().join("models/testdata/astronaut.png");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    Image {
        data: Some(image::Data::Encoded(bytes.into())),
    }
}

fn faces(detector: FaceDetector) -> VisionTask {
    VisionTask {
        task: Some(vision_task::Task::Faces(FaceDetectionTask {
            detector: detector as i32,
            min_score: 0.5,
            max_faces: 0,
        })),
    }
}

async fn sidecar() -> (Sidecar, VisionServiceClient<Channel>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blazeface_and_the_cascades_find_the_face_where_it_is() {
    let _serial = serial().await;
    let (_sc, mut client) = sidecar().await;
    let blank = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 320,
            height: 240,
            format: PixelFormat::Rgb8 as i32,
            stride: 0,
            data: vec![128u8; 320 * 240 * 3].into(),
        })),
    };
    // Mid-grey in I420: luma and both chroma planes at 128.
    let yuv = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 64,
            height: 48,
            format: PixelFormat::I420 as i32,
            stride: 0,
            data: vec![128u8; 64 * 48 * 3 / 2].into(),
        })),
    };
    let r = client
        .process_batch(ProcessBatchRequest {
            model_id: "faces".into(),
            task: Some(faces(FaceDetector::Unspecified)),
            images: vec![astronaut(), blank, yuv],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(r.results.len(), 3);
    assert_eq!((r.results[2].width, r.results[2].height), (64, 48));
    assert!(r.results[2].faces.is_empty());
    let photo = &r.results[0];
    assert_eq!((photo.width, photo.height), (512, 512));
    assert_eq!(photo.faces.len(), 1, "{:?}", photo.faces);
    let face = &photo.faces[0];
    let found = face.r#box.expect("box");
    eprintln!(
        "BlazeFace: {found:?} score {} IoU {}",
        face.score,
        iou(&found, &FACE)
    );
    assert!(iou(&found, &FACE) >= 0.5, "{found:?} against {FACE:?}");
    assert!(face.score >= 0.5);
    assert_eq!(face.keypoints.len(), 6, "eyes, nose, mouth, ears");
    for k in &face.keypoints {
        assert!(
            k.x >= found.x - 30.0
                && k.x <= found.x + found.width + 30.0
                && k.y >= found.y
                && k.y <= found.y + found.height,
            "keypoint {k:?} outside {found:?}"
        );
    }
    assert_eq!((r.results[1].width, r.results[1].height), (320, 240));
    assert!(r.results[1].faces.is_empty(), "a blank image has no face");
    assert!(r.results[0].timings.expect("timings").process_us > 0);

    for detector in [FaceDetector::Haar, FaceDetector::Lbp] {
        let r = client
            .process_batch(ProcessBatchRequest {
                model_id: "faces".into(),
                task: Some(faces(detector)),
                images: vec![astronaut()],
            })
            .await
            .expect("cascade")
            .into_inner();
        let boxes: Vec<PixelBox> = r.results[0].faces.iter().filter_map(|f| f.r#box).collect();
        eprintln!("{detector:?}: {boxes:?}");
        assert!(
            boxes.iter().any(|b| iou(b, &FACE) >= 0.5),
            "{detector:?} missed the face: {boxes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_and_tasks_get_clear_errors() {
    let _serial = serial().await;
    let (sc, mut client) = sidecar().await;
    let before = sc.model("faces").await;
    let batch = |images: Vec<Image>, task: VisionTask| ProcessBatchRequest {
        model_id: "faces".into(),
        task: Some(task),
        images,
    };
    let mut truncated = astronaut();
    if let Some(image::Data::Encoded(b)) = &mut truncated.data {
        *b = b.slice(..200);
    }
    let short_raw = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 10,
            height: 10,
            format: PixelFormat::Rgb8 as i32,
            stride: 0,
            data: vec![0u8; 299].into(),
        })),
    };
    let zero = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 0,
            height: 10,
            format: PixelFormat::Gray8 as i32,
            ..Default::default()
        })),
    };
    let odd_nv12 = Image {
        data: Some(image::Data::Raw(RawImage {
            width: 64,
            height: 48,
            format: PixelFormat::Nv12 as i32,
            stride: 0,
            data: vec![0u8; 64 * 48].into(),
        })),
    };
    let tracking = VisionTask {
        task: Some(vision_task::Task::Tracking(TrackingTask::default())),
    };
    let cases: Vec<(ProcessBatchRequest, Code, Vec<&str>)> = vec![
        (
            batch(
                vec![astronaut(), truncated],
                faces(FaceDetector::Unspecified),
            ),
            Code::InvalidArgument,
            vec!["images[1]", "200 bytes"],
        ),
        (
            batch(vec![short_raw], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["images[0]", "300 bytes", "got 299"],
        ),
        (
            batch(vec![zero], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["images[0]", "0x10"],
        ),
        (
            batch(vec![], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["1..256"],
        ),
        (
            batch(vec![astronaut()], tracking),
            Code::InvalidArgument,
            vec!["tracking"],
        ),
        (
            batch(vec![odd_nv12], faces(FaceDetector::Unspecified)),
            Code::InvalidArgument,
            vec!["images[0]", "4608 bytes", "got 3072"],
        ),
    ];
    for (req, code, words) in cases {
        let err = client.process_batch(req).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        for w in words {
            assert!(
                err.message().contains(w),
                "{w:?} not in {:?}",
                err.message()
            );
        }
    }
    // Streaming Process is not served yet, and says so.
    let first = ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "faces".into(),
            tasks: vec![faces(FaceDetector::Unspecified)],
            ..Default::default()
        })),
    };
    let err = client
        .process(tokio_stream::iter(vec![first]))
        .await
        .expect_err("not served yet");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // The worker is the same one and still serves.
    client
        .process_batch(batch(vec![astronaut()], faces(FaceDetector::Unspecified)))
        .await
        .expect("still serves");
    let after = sc.model("faces").await;
    assert_eq!((after.worker_pid, after.restarts), (before.worker_pid, 0));
}
