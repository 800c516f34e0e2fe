//! A Process stream under the default overflow policy is paused, never
//! failed, when its unanswered frames reach the model's
//! `max_pending_bytes`, however many frames `max_pending_frames` allows:
//! the real sidecar and worker-vision (limit 8 MiB), the worker stopped
//! (SIGSTOP) while the client sends twelve raw 1280x720 frames (2.76 MB
//! each, 33 MB in all, which its 64 MiB request ring would hold), then
//! resumed. Were the supervisor to read the client on to 64 frames, the
//! resumed worker would find them all waiting and end the stream with
//! RESOURCE_EXHAUSTED; it stops reading at the limit instead, and every
//! frame is answered.

use std::time::Duration;

use e2e::vision::{BLAZEFACE, config, raw_frame};
use e2e::{Sidecar, add_model, serial, signal, store};
use nix::sys::signal::Signal;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{OverflowPolicy, PixelFormat};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_at_its_byte_limit_is_paused_not_failed() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, BLAZEFACE);
    let config_file = format!(
        "[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1, max_pending_bytes = 8388608 }}\n"
    );
    let sc = Sidecar::start(store, &config_file);
    let before = sc.ready("faces").await;
    let mut client = VisionServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let (w, h) = (1280, 720);
    let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i / 3 % 251) as u8).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(config(OverflowPolicy::Unspecified, 64))
        .await
        .expect("config");
    let mut s = client
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open")
        .into_inner();

    signal(before.worker_pid, Signal::SIGSTOP);
    let sender = tokio::spawn(async move {
        for i in 1..=12u64 {
            let f = raw_frame(i, w, h, PixelFormat::Bgr8, pixels.clone());
            if tx.send(f).await.is_err() {
                return i - 1;
            }
        }
        12
    });
    // Long enough for the supervisor to read (or refuse to read) what the
    // client sends; well inside the 5 s of missed heartbeats.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(before.worker_pid, Signal::SIGCONT);

    let mut seen = Vec::new();
    while seen.len() < 12 {
        let r = s
            .message()
            .await
            .expect("paused, never failed")
            .expect("a result per frame");
        assert!(!r.dropped, "nothing is dropped: {r:?}");
        assert_eq!((r.width, r.height), (1280, 720));
        seen.push(r.frame_index);
    }
    assert_eq!(
        seen,
        (1..=12).collect::<Vec<_>>(),
        "each answered, in order"
    );
    assert_eq!(sender.await.expect("sender"), 12, "every frame was sent");
    let after = sc.model("faces").await;
    assert_eq!(after.worker_pid, before.worker_pid, "the same worker");
    assert_eq!(after.restarts, 0);
}
