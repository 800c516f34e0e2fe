//! Aliases: an alias resolves when a call or stream is admitted (a
//! running stream stays on the model it found; new streams go to the new
//! target); the refusals, the limit, sidecarctl, a dangling alias; the
//! config file's `[aliases]` at start and through a reload.

use std::time::Duration;

use e2e::names::{alias, header, set};
use e2e::vision::{BLAZEFACE, astronaut};
use e2e::{Sidecar, add_model, lite_config};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    DeleteAliasRequest, FaceDetector, Frame, GetModelRequest, ListModelsRequest, LoadModelRequest,
    ModelFamily, ProcessRequest, ProcessResponse, SetAliasRequest, StreamConfig,
    UnloadModelRequest, frame, image, process_request,
};
use tokio::sync::mpsc;
use tonic::Code;

fn frame_msg(index: u64) -> ProcessRequest {
    let Some(image::Data::Encoded(png)) = astronaut().data else {
        unreachable!("astronaut() is encoded")
    };
    ProcessRequest {
        msg: Some(process_request::Msg::Frame(Frame {
            index,
            timestamp_us: index as i64,
            data: Some(frame::Data::Encoded(png)),
            flush: false,
        })),
    }
}

/// A stream on `model` fed through a channel, so frames go one by one.
struct Stream {
    tx: mpsc::Sender<ProcessRequest>,
    rx: tonic::Streaming<ProcessResponse>,
    version: String,
}

impl Stream {
    async fn open(
        client: &mut VisionServiceClient<tonic::transport::Channel>,
        model: &str,
    ) -> Self {
        let (tx, input) = mpsc::channel(4);
        tx.send(ProcessRequest {
            msg: Some(process_request::Msg::Config(StreamConfig {
                model_id: model.into(),
                tasks: vec![e2e::vision::faces(FaceDetector::Unspecified)],
                ..Default::default()
            })),
        })
        .await
        .expect("send config");
        let resp = client
            .process(tokio_stream::wrappers::ReceiverStream::new(input))
            .await
            .expect("the stream opens");
        let version = header(resp.metadata());
        Stream {
            tx,
            rx: resp.into_inner(),
            version,
        }
    }

    /// Sends frame `index` and reads its answer: one face.
    async fn frame(&mut self, index: u64) {
        self.tx.send(frame_msg(index)).await.expect("send frame");
        let r = self
            .rx
            .message()
            .await
            .expect("the stream goes on")
            .expect("an answer");
        assert_eq!((r.frame_index, r.faces.len()), (index, 1), "{r:?}");
    }

    /// Ends the input; the stream ends cleanly.
    async fn close(mut self) {
        drop(self.tx);
        assert!(
            self.rx.message().await.expect("a clean end").is_none(),
            "no answer after the last frame"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alias_flip_leaves_a_running_stream_on_its_model_and_sends_new_streams_to_the_new_target()
 {
    let _serial = e2e::serial().await;
    let store = e2e::store();
    add_model(&store, BLAZEFACE);
    let vision = |id: &str| {
        format!(
            "[[models]]\nid = \"{id}\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n"
        )
    };
    let sc = Sidecar::start(
        store,
        &format!("{}{}", vision("faces-a"), vision("faces-b")),
    );
    let a = sc.ready("faces-a").await;
    let b = sc.ready("faces-b").await;
    let supervisor = sc.child.id();
    let mut manage = sc.manage().await;
    let r = manage
        .set_alias(set("cam", "faces-a"))
        .await
        .expect("SetAlias")
        .into_inner();
    assert_eq!(r.alias, Some(alias("cam", "faces-a", 0)));
    assert_eq!(r.previous, None);
    let mut client = VisionServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);

    // A stream through the alias, running when the alias flips.
    let mut first = Stream::open(&mut client, "cam").await;
    assert_eq!(first.version, "1");
    first.frame(0).await;
    let r = manage
        .set_alias(set("cam", "faces-b"))
        .await
        .expect("flip")
        .into_inner();
    assert_eq!(r.previous, Some(alias("cam", "faces-a", 0)), "{r:?}");
    for i in 1..4 {
        first.frame(i).await;
    }
    // A new stream through the alias goes to the new target, while the
    // first one still runs.
    let mut second = Stream::open(&mut client, "cam").await;
    second.frame(0).await;
    second.frame(1).await;
    first.frame(4).await;
    first.close().await;
    second.close().await;
    // Frames are counted by the model that processed them, at each
    // stream's end.
    let processed = |model: &str| {
        sc.metric(&format!(
            "sidecar_vision_frames_total{{model=\"{model}\",kind=\"processed\"}}"
        ))
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while (processed("faces-a"), processed("faces-b")) != (5, 2) {
        assert!(
            std::time::Instant::now() < until,
            "the first stream ran on faces-a (5 frames), the second on faces-b (2): {:?}",
            (processed("faces-a"), processed("faces-b"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Where the alias shows: ListModels, GetModel (through it too), metrics.
    let list = manage
        .list_models(ListModelsRequest::default())
        .await
        .expect("ListModels")
        .into_inner();
    assert_eq!(list.aliases, [alias("cam", "faces-b", 0)]);
    let via = manage
        .get_model(GetModelRequest {
            model_id: "cam".into(),
        })
        .await
        .expect("GetModel through the alias")
        .into_inner();
    assert_eq!(
        (via.model_id.as_str(), via.aliases.clone()),
        ("faces-b", vec!["cam".to_owned()])
    );
    assert!(sc.model("faces-a").await.aliases.is_empty());
    let text = sc.admin_get("/metrics").1;
    assert!(
        text.lines().any(|l| l
            == "sidecar_model_alias_info{alias=\"cam\",model=\"faces-b\",version=\"current\"} 1"),
        "{text}"
    );

    // Refusals, each with its code and what it names.
    let refused = |r: Result<
        tonic::Response<sidecar_proto::v1::SetAliasResponse>,
        tonic::Status,
    >| { r.expect_err("refused") };
    let e = refused(manage.set_alias(set("faces-a", "faces-b")).await);
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("\"faces-a\" is a loaded model's id"),
        "{e:?}"
    );
    let e = refused(manage.set_alias(set("other", "nope")).await);
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("model \"nope\" is not loaded"),
        "{e:?}"
    );
    let e = refused(manage.set_alias(set("chain", "cam")).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("\"cam\" is an alias itself"), "{e:?}");
    let e = refused(manage.set_alias(set("Bad Name", "faces-a")).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let huge = "a".repeat(1 << 20);
    let e = refused(manage.set_alias(set(&huge, "faces-a")).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().len() < 400,
        "a bounded message: {}",
        e.message().len()
    );
    let e = refused(manage.set_alias(set("pinned", "faces-a@2")).await);
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no version 2"), "{e:?}");
    let e = refused(manage.set_alias(set("pinned", "faces-a@zero")).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = refused(
        manage
            .set_alias(SetAliasRequest {
                version: 1,
                ..set("pinned", "faces-a@1")
            })
            .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = manage
        .load_model(LoadModelRequest {
            model_id: "cam".into(),
            family: ModelFamily::Vision as i32,
            path: BLAZEFACE.into(),
            ..Default::default()
        })
        .await
        .expect_err("an alias's name is taken");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("is an alias"), "{e:?}");
    let e = manage
        .unload_model(UnloadModelRequest {
            model_id: "cam".into(),
            ..Default::default()
        })
        .await
        .expect_err("an alias is not unloaded");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("DeleteAlias"), "{e:?}");
    // The alias limit: 256 in all.
    for i in 1..256 {
        manage
            .set_alias(set(&format!("many-{i}"), "faces-a"))
            .await
            .unwrap_or_else(|e| panic!("alias {i}: {e:?}"));
    }
    let e = refused(manage.set_alias(set("one-too-many", "faces-a")).await);
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("256 aliases"), "{e:?}");
    manage
        .set_alias(set("many-1", "faces-b"))
        .await
        .expect("moving an alias at the limit is fine");
    for i in 1..256 {
        manage
            .delete_alias(DeleteAliasRequest {
                alias: format!("many-{i}"),
            })
            .await
            .expect("DeleteAlias");
    }

    // sidecarctl: set, list, delete.
    let (code, out, err) = sc.ctl(&["alias", "front", "faces-a@1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "alias front -> faces-a@1");
    let (code, out, err) = sc.ctl(&["--json", "aliases"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        list,
        serde_json::json!([
            {"alias": "cam", "model_id": "faces-b", "version": 0, "target": "faces-b"},
            {"alias": "front", "model_id": "faces-a", "version": 1, "target": "faces-a@1"},
        ])
    );
    let (code, out, err) = sc.ctl(&["unalias", "front"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "alias front deleted");
    let (code, _, err) = sc.ctl(&["unalias", "front"]);
    assert_eq!(code, 1);
    assert!(err.contains("alias \"front\" does not exist"), "{err}");

    // The target unloaded: calls through the alias say what it names.
    manage
        .unload_model(UnloadModelRequest {
            model_id: "faces-b".into(),
            ..Default::default()
        })
        .await
        .expect("unload faces-b");
    e2e::wait_gone(b.worker_pid, Duration::from_secs(20), "faces-b's worker").await;
    let (tx, input) = mpsc::channel(1);
    tx.send(ProcessRequest {
        msg: Some(process_request::Msg::Config(StreamConfig {
            model_id: "cam".into(),
            tasks: vec![e2e::vision::faces(FaceDetector::Unspecified)],
            ..Default::default()
        })),
    })
    .await
    .expect("send");
    let e = client
        .process(tokio_stream::wrappers::ReceiverStream::new(input))
        .await
        .expect_err("a dangling alias");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message()
            .contains("alias \"cam\" names \"faces-b\": model \"faces-b\" is not loaded"),
        "{e:?}"
    );
    manage
        .delete_alias(DeleteAliasRequest {
            alias: "cam".into(),
        })
        .await
        .expect("DeleteAlias");
    let e = manage
        .delete_alias(DeleteAliasRequest {
            alias: "cam".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let a_now = sc.model("faces-a").await;
    assert_eq!((a_now.worker_pid, a_now.restarts), (a.worker_pid, 0));
    assert_eq!(sc.child.id(), supervisor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_files_aliases_are_set_at_start_and_follow_a_reload() {
    let _serial = e2e::serial().await;
    let store = e2e::store();
    add_model(&store, BLAZEFACE);
    let models = format!(
        "{}{}",
        lite_config("face-a", BLAZEFACE, ""),
        lite_config("face-b", BLAZEFACE, "")
    );
    let sc = Sidecar::start(
        store,
        &format!("{models}[aliases]\nfront = \"face-a\"\nold = \"face-a@1\"\n"),
    );
    let a = sc.ready("face-a").await;
    let b = sc.ready("face-b").await;
    let mut manage = sc.manage().await;
    let list = || async {
        sc.manage()
            .await
            .list_models(ListModelsRequest::default())
            .await
            .expect("ListModels")
            .into_inner()
            .aliases
    };
    assert_eq!(
        list().await,
        [alias("front", "face-a", 0), alias("old", "face-a", 1)]
    );
    // A run-time alias the file does not name is left alone by reloads.
    manage
        .set_alias(set("mine", "face-b"))
        .await
        .expect("SetAlias");
    let file = sc.store.path().join("sidecar.toml");
    let first = std::fs::read_to_string(&file).expect("read the config");
    let second = first.replace(
        "[aliases]\nfront = \"face-a\"\nold = \"face-a@1\"\n",
        "[aliases]\nfront = \"face-b\"\nnew = \"face-a\"\n",
    );
    assert_ne!(first, second);
    std::fs::write(&file, &second).expect("write the config");
    let (code, out, err) = sc.ctl(&["--json", "reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        r["added"],
        serde_json::json!(["alias new -> face-a"]),
        "{r}"
    );
    assert_eq!(
        r["swapped"],
        serde_json::json!(["alias front -> face-b"]),
        "{r}"
    );
    assert_eq!(r["removed"], serde_json::json!(["alias old"]), "{r}");
    assert_eq!(
        r["unchanged"],
        serde_json::json!(["face-a", "face-b"]),
        "{r}"
    );
    assert_eq!(
        list().await,
        [
            alias("front", "face-b", 0),
            alias("mine", "face-b", 0),
            alias("new", "face-a", 0)
        ]
    );
    // A broken alias in the file: nothing changes, every error is named.
    std::fs::write(
        &file,
        second.replace(
            "new = \"face-a\"\n",
            "new = \"face-z\"\n\"Bad\" = \"face-a\"\n",
        ),
    )
    .expect("write the config");
    let (code, out, err) = sc.ctl(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    for words in [
        "[aliases] \"new\": \"face-z\" is not a model of the file's [[models]]",
        "[aliases] \"Bad\": an alias is 1..64 characters",
    ] {
        assert!(err.contains(words), "{words:?} not in {err}");
    }
    assert_eq!(
        list().await,
        [
            alias("front", "face-b", 0),
            alias("mine", "face-b", 0),
            alias("new", "face-a", 0)
        ]
    );
    let (a_now, b_now) = (sc.model("face-a").await, sc.model("face-b").await);
    assert_eq!(
        (a_now.worker_pid, b_now.worker_pid),
        (a.worker_pid, b.worker_pid)
    );
}
