//! The config file reloaded without a restart: SIGHUP and `sidecarctl
//! reload` load the models the file adds, drain and unload the ones it
//! removes, swap the ones whose entry changed and leave the others (and
//! the supervisor) alone; an invalid file changes nothing and names every
//! error; a setting that cannot change live is reported as not applied.

use std::time::Duration;

use e2e::vision::BLAZEFACE;
use e2e::{MINILM, Sidecar, add_model, lite_config, minilm_config, smollm2_config, wait_gone};
use nix::sys::signal::Signal;
use sidecar_proto::v1::{GetModelRequest, GetStatusRequest, ModelInfo, ModelState};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(90);

/// GetModel over the control socket; `None` when the id is not loaded.
async fn find(sc: &Sidecar, id: &str) -> Option<ModelInfo> {
    match sc
        .manage()
        .await
        .get_model(GetModelRequest {
            model_id: id.into(),
        })
        .await
    {
        Ok(m) => Some(m.into_inner()),
        Err(e) if e.code() == Code::NotFound => None,
        Err(e) => panic!("GetModel {id}: {e:?}"),
    }
}

/// Waits until `check` holds for what GetModel says of `id` (`None`: not
/// loaded).
async fn until(
    sc: &Sidecar,
    id: &str,
    check: impl Fn(Option<&ModelInfo>) -> bool,
) -> Option<ModelInfo> {
    let start = std::time::Instant::now();
    loop {
        let m = find(sc, id).await;
        if check(m.as_ref()) {
            return m;
        }
        assert!(
            start.elapsed() < LIMIT,
            "model {id} did not get there within {LIMIT:?}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(m: Option<&ModelInfo>) -> bool {
    m.is_some_and(|m| m.state == ModelState::Ready as i32)
}

/// (id, pid, version) of every model, sorted.
async fn snapshot(sc: &Sidecar) -> Vec<(String, u32, u32)> {
    let s = sc
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    let mut v: Vec<_> = s
        .models
        .iter()
        .map(|m| (m.model_id.clone(), m.worker_pid, m.version))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_adds_removes_and_swaps_and_a_broken_file_changes_nothing() {
    let _serial = e2e::serial().await;
    let store = e2e::store();
    add_model(&store, MINILM);
    add_model(&store, BLAZEFACE);
    let a = smollm2_config("preload = true\nrequired = true");
    let b_old = minilm_config("memory_budget = \"1GiB\"");
    let b_new = minilm_config("memory_budget = \"1536MiB\"");
    let c = lite_config("face-c", BLAZEFACE, "");
    let d = lite_config("face-d", BLAZEFACE, "");
    let sc = Sidecar::start(store, &format!("{a}{b_old}{d}"));
    let supervisor = sc.child.id();
    let file = sc.store.path().join("sidecar.toml");
    let a0 = sc.ready("smollm2").await;
    let b0 = sc.ready("minilm").await;
    let d0 = sc.ready("face-d").await;
    assert!(
        find(&sc, "face-c").await.is_none(),
        "face-c is not in the first file"
    );
    assert_eq!((a0.version, b0.version), (1, 1));

    // The file: B's budget changed, A unchanged, C added, D removed.
    let first = std::fs::read_to_string(&file).expect("read the config");
    let second = first.replace(&b_old, &b_new).replace(&d, &c);
    assert_ne!(first, second);
    std::fs::write(&file, &second).expect("write the config");
    sc.signal(Signal::SIGHUP);

    let c1 = until(&sc, "face-c", ready).await.expect("face-c");
    until(&sc, "face-d", |m| m.is_none()).await;
    wait_gone(d0.worker_pid, LIMIT, "face-d's worker after its removal").await;
    let b1 = until(&sc, "minilm", |m| {
        m.is_some_and(|m| m.version == 2 && m.state == ModelState::Ready as i32)
    })
    .await
    .expect("minilm");
    assert_ne!(b1.worker_pid, b0.worker_pid, "minilm runs a new worker");
    wait_gone(b0.worker_pid, LIMIT, "minilm's old worker after the drain").await;
    until(&sc, "minilm", |m| m.is_some_and(|m| m.swap.is_empty())).await;
    let a1 = sc.model("smollm2").await;
    assert_eq!(
        (a1.worker_pid, a1.version, a1.restarts),
        (a0.worker_pid, 1, 0),
        "smollm2 is untouched"
    );
    assert_eq!(sc.child.id(), supervisor);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    let status = sc
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    assert_eq!(status.pid, supervisor, "the same supervisor");
    let last = status.last_reload.expect("GetStatus shows the last reload");
    assert!(last.ok, "{last:?}");
    assert_eq!(last.trigger, "SIGHUP");
    assert_eq!(last.file, file.display().to_string());
    assert_eq!(last.added, ["face-c"]);
    assert_eq!(last.removed, ["face-d"]);
    assert_eq!(last.swapped, ["minilm: version 2"]);
    assert_eq!(last.unchanged, ["smollm2"]);
    assert!(
        last.refused.is_empty() && last.errors.is_empty() && last.not_applied.is_empty(),
        "{last:?}"
    );
    assert_eq!(sc.metric("sidecar_config_reloads_total{outcome=\"ok\"}"), 1);
    assert_eq!(
        sc.metric("sidecar_config_reloads_total{outcome=\"error\"}"),
        0
    );
    let at = sc.metric("sidecar_config_last_reload_success_timestamp_seconds");
    assert_eq!(at, (last.unix_ms / 1000) as u64);

    let settled = snapshot(&sc).await;
    assert_eq!(
        settled,
        vec![
            ("face-c".to_owned(), c1.worker_pid, 1),
            ("minilm".to_owned(), b1.worker_pid, 2),
            ("smollm2".to_owned(), a0.worker_pid, 1),
        ]
    );

    // A TOML syntax error: nothing changes; the error names the file and line.
    std::fs::write(&file, format!("{second}\n[[models]\nid = \"broken\"\n")).expect("write");
    let (code, out, err) = sc.ctl(&["reload"]);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(
        err.contains(&file.display().to_string()) && err.contains("line"),
        "{err}"
    );

    // Valid TOML, invalid models: every one is named.
    let bad = format!(
        "{second}[[models]]\nid = \"x1\"\nfamily = \"sound\"\npath = \"{BLAZEFACE}\"\n\
         [[models]]\nid = \"x2\"\nfamily = \"lite\"\npath = \"../../etc/hosts\"\n\
         [[models]]\nid = \"x3\"\nfamily = \"lite\"\npath = \"mediapipe/missing.tflite\"\n"
    );
    std::fs::write(&file, &bad).expect("write");
    let (code, out, err) = sc.ctl(&["reload"]);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(
        err.contains("(id \"x1\")") && err.contains("unknown variant `sound`"),
        "{err}"
    );
    assert!(
        err.contains("model \"x2\": path \"../../etc/hosts\" contains '..'"),
        "{err}"
    );
    assert!(
        err.contains(
            "model \"x3\": path \"mediapipe/missing.tflite\": no such file in the model store"
        ),
        "{err}"
    );
    let (code, out, err) = sc.ctl(&["--json", "reload"]);
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON error");
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("x1") && m.contains("x2") && m.contains("x3")),
        "{v}"
    );
    assert_eq!(
        snapshot(&sc).await,
        settled,
        "an invalid file changes nothing"
    );
    assert_eq!(
        sc.metric("sidecar_config_reloads_total{outcome=\"error\"}"),
        3
    );
    assert_eq!(
        sc.metric("sidecar_config_last_reload_success_timestamp_seconds"),
        at
    );
    let last = sc
        .admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
        .last_reload
        .expect("last reload");
    assert!(!last.ok);
    assert_eq!(last.errors.len(), 3, "{last:?}");
    assert!(last.added.is_empty() && last.removed.is_empty() && last.swapped.is_empty());

    // A listen address changed: reported as not applied; nothing else moves.
    let moved: String = second
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                "listen = \"127.0.0.1:1\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&file, &moved).expect("write");
    let (code, out, err) = sc.ctl(&["--json", "reload"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["not_applied"],
        serde_json::json!(["listen: 127.0.0.1:0 -> 127.0.0.1:1 (not applied: restart needed)"]),
        "{v}"
    );
    assert_eq!(
        v["unchanged"],
        serde_json::json!(["face-c", "minilm", "smollm2"]),
        "{v}"
    );
    assert_eq!(
        v["trigger"]
            .as_str()
            .map(|t| t.starts_with("ReloadConfig by uid:")),
        Some(true),
        "{v}"
    );
    let (code, out, err) = sc.ctl(&["reload"]);
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    assert!(
        out.contains(
            "  not applied: listen: 127.0.0.1:0 -> 127.0.0.1:1 (not applied: restart needed)"
        ),
        "{out}"
    );
    assert_eq!(
        snapshot(&sc).await,
        settled,
        "a settings change restarts nothing"
    );
    assert_eq!(sc.metric("sidecar_config_reloads_total{outcome=\"ok\"}"), 3);
    assert_eq!(sc.admin_get("/readyz").0, 200);
    assert_eq!(sc.child.id(), supervisor);
    assert!(e2e::alive(supervisor));
}
