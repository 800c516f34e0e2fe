//! Model versions: a swap may keep the old version loaded, reached as
//! "id@version" or through an alias pinned to it; every answer names the
//! version that gave it (`x-sidecar-model-version`); numbers are never
//! given twice; a swap that does not fit beside the old version is
//! refused unless `allow_cold_swap`.

use std::time::Duration;

use e2e::names::{header, set};
use e2e::vision::BLAZEFACE;
use e2e::{MINILM, Sidecar, add_model, lite_config, minilm_config};
use sidecar_proto::v1::{
    EmbedRequest, ListModelsRequest, LoadModelRequest, ModelFamily, UnloadModelRequest,
};
use tonic::Code;

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
    let request = LoadModelRequest {
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
    };
    let swapped = manage
        .load_model(request.clone())
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
    let unload = |name: &str| UnloadModelRequest {
        model_id: name.into(),
        ..Default::default()
    };
    // A version an alias is pinned to is not unloaded by its number.
    let e = manage
        .unload_model(unload("minilm@1"))
        .await
        .expect_err("pinned by an alias");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains("\"minilm@1\" is named by aliases [\"stable\"]"),
        "{e:?}"
    );
    manage
        .delete_alias(sidecar_proto::v1::DeleteAliasRequest {
            alias: "stable".into(),
        })
        .await
        .expect("DeleteAlias");
    manage
        .unload_model(unload("minilm@1"))
        .await
        .expect("unload version 1");
    e2e::wait_gone(v1.worker_pid, Duration::from_secs(20), "version 1's worker").await;
    let m = sc.model("minilm").await;
    assert_eq!(
        (m.version, m.versions.clone(), m.worker_pid),
        (2, vec![2], swapped.worker_pid)
    );
    let (version, _) = embed(&sc, "minilm")
        .await
        .expect("the current version serves");
    assert_eq!(version, "2");

    // A swap that would unload a version an alias is pinned to is refused.
    manage
        .set_alias(set("pin", "minilm@2"))
        .await
        .expect("SetAlias");
    let to = |path: &str, keep: bool| LoadModelRequest {
        path: path.into(),
        keep_previous: keep,
        ..request.clone()
    };
    let e = manage
        .load_model(to(MINILM, false))
        .await
        .expect_err("the alias pins version 2");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains("aliases [\"pin\"] are pinned to version 2"),
        "{e:?}"
    );
    // At most three versions kept beside the current one.
    for (n, path) in [(3, MINILM), (4, "minilm/copy.gguf"), (5, MINILM)] {
        let m = manage
            .load_model(to(path, true))
            .await
            .unwrap_or_else(|e| panic!("swap to version {n}: {e:?}"))
            .into_inner()
            .model
            .expect("model");
        assert_eq!(m.version, n);
    }
    assert_eq!(sc.model("minilm").await.versions, [2, 3, 4, 5]);
    let e = manage
        .load_model(to("minilm/copy.gguf", true))
        .await
        .expect_err("a fourth kept version");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("keeps 3 versions"), "{e:?}");
    // The id unloaded: every version goes, and numbers are not given again.
    let pids: Vec<u32> = manage
        .list_models(ListModelsRequest::default())
        .await
        .expect("ListModels")
        .into_inner()
        .models
        .iter()
        .map(|m| m.worker_pid)
        .collect();
    assert_eq!(pids.len(), 4);
    manage
        .unload_model(unload("minilm"))
        .await
        .expect("unload every version");
    for pid in pids {
        e2e::wait_gone(pid, Duration::from_secs(20), "a version's worker").await;
    }
    let e = embed(&sc, "pin").await.expect_err("its version is gone");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let again = manage
        .load_model(to(MINILM, false))
        .await
        .expect("loaded again")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(again.version, 6, "1..5 are not given again");
    let e = embed(&sc, "pin")
        .await
        .expect_err("version 2 is not the new file");
    assert!(e.message().contains("no version 2"), "{e:?}");
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
        // 2 went to the reload's refused swap.
        (3, "mediapipe/copy.tflite")
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
