//! Model versions and aliases: an alias resolves when a call or stream is
//! admitted (a running stream stays on the model it found; new streams go
//! to the new target); a swap may keep the old version loaded, reached as
//! "id@version" or through an alias pinned to it; every answer names the
//! version that gave it (`x-sidecar-model-version`); a swap that does not
//! fit beside the old version is refused unless `allow_cold_swap`.

use std::time::Duration;

use e2e::vision::{BLAZEFACE, astronaut};
use e2e::{MINILM, Sidecar, add_model, lite_config, minilm_config};
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    DeleteAliasRequest, EmbedRequest, FaceDetector, Frame, GetModelRequest, ListModelsRequest,
    LoadModelRequest, ModelAlias, ModelFamily, ProcessRequest, ProcessResponse, SetAliasRequest,
    StreamConfig, UnloadModelRequest, frame, image, process_request,
};
use tokio::sync::mpsc;
use tonic::Code;

const VERSION: &str = "x-sidecar-model-version";

fn set(alias: &str, target: &str) -> SetAliasRequest {
    SetAliasRequest {
        alias: alias.into(),
        model_id: target.into(),
        version: 0,
    }
}

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

fn header(md: &tonic::metadata::MetadataMap) -> String {
    md.get(VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn alias(name: &str, model: &str, version: u32) -> ModelAlias {
    ModelAlias {
        alias: name.into(),
        model_id: model.into(),
        version,
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

async fn embed(
    sc: &Sidecar,
    model: &str,
) -> Result<(String, sidecar_proto::v1::EmbedResponse), tonic::Status> {
    let mut text = sc.text().await;
    let mut req = tonic::Request::new(EmbedRequest {
        model_id: model.into(),
        inputs: vec!["which version answers".into()],
        ..Default::default()
    });
    req.metadata_mut()
        .insert("cache-control", "no-cache".parse().expect("value"));
    let r = text.embed(req).await?;
    Ok((header(r.metadata()), r.into_inner()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_may_keep_the_old_version_reached_by_its_number_until_it_is_unloaded() {
    let _serial = e2e::serial().await;
    let store = e2e::store();
    add_model(&store, MINILM);
    std::fs::copy(
        e2e::root().join("models").join(MINILM),
        store.path().join("minilm/copy.gguf"),
    )
    .expect("copy the model");
    let sc = Sidecar::start(store, &minilm_config("preload = true\nrequired = true"));
    let v1 = sc.ready("minilm").await;
    let (version, before) = embed(&sc, "minilm").await.expect("embed");
    assert_eq!(version, "1");
    let mut manage = sc.manage().await;
    let swapped = manage
        .load_model(LoadModelRequest {
            model_id: "minilm".into(),
            family: ModelFamily::Text as i32,
            path: "minilm/copy.gguf".into(),
            replace: true,
            keep_previous: true,
            options: Some(sidecar_proto::v1::load_model_request::Options::Text(
                sidecar_proto::v1::TextOptions {
                    context_size: 512,
                    threads: 1,
                    embeddings: Some(true),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .await
        .expect("the swap")
        .into_inner()
        .model
        .expect("model");
    assert_eq!((swapped.version, swapped.current), (2, true));
    assert_eq!(swapped.versions, [1, 2]);
    // The old one is kept, not drained.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(e2e::alive(v1.worker_pid), "version 1's worker is kept");
    let (version, now) = embed(&sc, "minilm")
        .await
        .expect("embed the current version");
    assert_eq!(version, "2");
    let (version, old) = embed(&sc, "minilm@1").await.expect("embed version 1");
    assert_eq!(version, "1");
    assert_eq!(
        old.embeddings, before.embeddings,
        "the same model file, the same answer"
    );
    assert_eq!(now.embeddings, before.embeddings);
    let e = embed(&sc, "minilm@3").await.expect_err("no version 3");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("no version 3 loaded (loaded: [1, 2])"),
        "{e:?}"
    );
    for bad in ["minilm@0", "minilm@", "minilm@-1", "minilm@99999999999"] {
        let e = embed(&sc, bad).await.expect_err(bad);
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    // ListModels: the current version, then the kept one.
    let list = manage
        .list_models(ListModelsRequest::default())
        .await
        .expect("ListModels")
        .into_inner();
    let seen: Vec<_> = list
        .models
        .iter()
        .map(|m| (m.model_id.as_str(), m.version, m.current, m.worker_pid))
        .collect();
    assert_eq!(
        seen,
        [
            ("minilm", 2, true, swapped.worker_pid),
            ("minilm", 1, false, v1.worker_pid)
        ]
    );
    // An alias pinned to the kept version.
    manage
        .set_alias(set("stable", "minilm@1"))
        .await
        .expect("SetAlias to a kept version");
    let (version, _) = embed(&sc, "stable").await.expect("through the alias");
    assert_eq!(version, "1");
    let text = sc.admin_get("/metrics").1;
    for line in [
        "sidecar_model_version{model=\"minilm\"} 2",
        "sidecar_model_versions_loaded{model=\"minilm\"} 2",
        "sidecar_model_swap_in_progress{model=\"minilm\"} 0",
        "sidecar_model_swaps_total{model=\"minilm\",reason=\"ok\"} 1",
        "sidecar_model_alias_info{alias=\"stable\",model=\"minilm\",version=\"1\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    let (code, out, err) = sc.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("minilm"), "{out}");
    // The current version is unloaded with the id, not by its number.
    let e = manage
        .unload_model(UnloadModelRequest {
            model_id: "minilm@2".into(),
            ..Default::default()
        })
        .await
        .expect_err("the current version");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("current version"), "{e:?}");
    manage
        .unload_model(UnloadModelRequest {
            model_id: "minilm@1".into(),
            ..Default::default()
        })
        .await
        .expect("unload version 1");
    e2e::wait_gone(v1.worker_pid, Duration::from_secs(20), "version 1's worker").await;
    let e = embed(&sc, "stable").await.expect_err("its version is gone");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("alias \"stable\" names \"minilm@1\""),
        "{e:?}"
    );
    let m = sc.model("minilm").await;
    assert_eq!(
        (m.version, m.versions.clone(), m.worker_pid),
        (2, vec![2], swapped.worker_pid)
    );
    let (version, _) = embed(&sc, "minilm")
        .await
        .expect("the current version serves");
    assert_eq!(version, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_that_does_not_fit_beside_the_old_version_is_refused_unless_cold() {
    let _serial = e2e::serial().await;
    let store = e2e::store();
    add_model(&store, BLAZEFACE);
    std::fs::copy(
        e2e::root().join("models").join(BLAZEFACE),
        store.path().join("mediapipe/copy.tflite"),
    )
    .expect("copy the model");
    // The config's model is estimated at 300 MiB under a 330 MiB limit: a
    // second version (300 MiB from the config, about 48 MiB from LoadModel,
    // which has no estimate) does not fit beside it.
    let sc = Sidecar::start(
        store,
        &format!(
            "[memory]\nlimit = \"330MiB\"\nhost_reserve = 0\nsample_interval = 0.2\n{}",
            lite_config("face", BLAZEFACE, "memory_estimate = \"300MiB\"")
        ),
    );
    let v1 = sc.ready("face").await;
    let file = sc.store.path().join("sidecar.toml");
    let first = std::fs::read_to_string(&file).expect("read the config");
    let second = first.replace(
        &format!("path = \"{BLAZEFACE}\""),
        "path = \"mediapipe/copy.tflite\"",
    );
    assert_ne!(first, second);
    std::fs::write(&file, &second).expect("write the config");
    // A reload swaps without allow_cold_swap: refused, the old one serves.
    let (code, out, err) = sc.ctl(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("Both versions do not fit in memory at once: set allow_cold_swap"),
        "{out}{err}"
    );
    let m = sc.model("face").await;
    assert_eq!(
        (m.version, m.worker_pid, m.path.as_str()),
        (1, v1.worker_pid, BLAZEFACE)
    );
    let text = sc.admin_get("/metrics").1;
    assert!(
        text.lines()
            .any(|l| l == "sidecar_model_swaps_total{model=\"face\",reason=\"error\"} 1"),
        "{text}"
    );
    // LoadModel with allow_cold_swap: the old one goes first.
    let mut manage = sc.manage().await;
    let request = LoadModelRequest {
        model_id: "face".into(),
        family: ModelFamily::Lite as i32,
        path: "mediapipe/copy.tflite".into(),
        replace: true,
        ..Default::default()
    };
    let cold = manage
        .load_model(LoadModelRequest {
            allow_cold_swap: true,
            ..request.clone()
        })
        .await
        .expect("a cold swap")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(
        (cold.version, cold.path.as_str()),
        (2, "mediapipe/copy.tflite")
    );
    e2e::wait_gone(v1.worker_pid, Duration::from_secs(10), "version 1's worker").await;
    let text = sc.admin_get("/metrics").1;
    assert!(
        text.lines()
            .any(|l| l == "sidecar_model_swaps_total{model=\"face\",reason=\"cold\"} 1"),
        "{text}"
    );
    // keep_previous without replace is refused, naming the options.
    let e = manage
        .load_model(LoadModelRequest {
            replace: false,
            keep_previous: true,
            ..request
        })
        .await
        .expect_err("keep_previous needs replace");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("keep_previous"), "{e:?}");
}
