//! Hostile uploads and a hostile control-socket path, against the real
//! sidecar: concurrent uploads racing for one name, uploads over the
//! store's quotas, and a control socket path or directory someone else
//! prepared. Each gets a clear error with the right code or a clean
//! refusal to start; nothing is left behind and nothing planted is touched.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{SMOLLM2, Sidecar, binary, greedy, serial, sha256_hex, smollm2_config, store, upload};
use sidecar_proto::v1::{
    GetStatusRequest, ModelState, PutFileHeader, PutFileRequest, put_file_request,
};
use tonic::Code;

/// Every path under `dir` (relative), links not followed.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).expect("inside").display().to_string());
            if std::fs::symlink_metadata(&p).expect("stat").is_dir() {
                dirs.push(p);
            }
        }
    }
    out.sort();
    out
}

fn temporaries(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|p| p.rsplit('/').next().unwrap_or(p).starts_with(".upload-"))
        .collect()
}

/// A different 1 MiB for each upload.
fn content(i: usize) -> Vec<u8> {
    (0..(1usize << 20))
        .map(|j| ((j * (i + 3) + i) % 251) as u8)
        .collect()
}

/// Sends only the header of an upload declaring `size` bytes and keeps
/// the stream open: the answer must come without a single byte sent.
async fn refused_up_front(sc: &Sidecar, path: &str, size: u64) -> tonic::Status {
    let mut models = sc.manage().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(PutFileRequest {
        msg: Some(put_file_request::Msg::Header(PutFileHeader {
            path: path.into(),
            size_bytes: size,
            sha256: "0".repeat(64),
            overwrite: false,
        })),
    })
    .await
    .expect("send header");
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        models.put_file(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("answered up front, before any byte was sent");
    drop(tx);
    answer.expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_to_one_name_have_one_winner_and_quotas_refuse_up_front() {
    let _serial = serial().await;
    let dir = store();
    let model_bytes = std::fs::metadata(dir.path().join(SMOLLM2))
        .expect("model")
        .len();
    let max_file: u64 = 8 << 20;
    // The model, the config file, and 21 MiB of uploads: room for the 20
    // racing uploads of 1 MiB in flight at once.
    let max_total = model_bytes + 4096 + (21 << 20);
    let config = format!(
        "{}\n[store]\nmax_file_bytes = {max_file}\nmax_total_bytes = {max_total}\n",
        smollm2_config("")
    );
    let sc = Sidecar::start(dir, &config);
    sc.ready("smollm2").await;
    let pid = sc.child.id();
    let rss_before = e2e::status_bytes(pid, "VmRSS");

    // 20 uploads of different contents to one name, overwrite=false, each
    // on its own connection, all at once.
    let n = 20;
    let mut calls = Vec::new();
    for i in 0..n {
        let mut models = sc.manage().await;
        calls.push(tokio::spawn(async move {
            let data = content(i);
            let sha = sha256_hex(&data);
            let answer = models
                .put_file(tokio_stream::iter(upload(
                    "race/one.bin",
                    &data,
                    &sha,
                    false,
                    None,
                )))
                .await;
            (sha, answer)
        }));
    }
    let mut winners = Vec::new();
    let mut exists = 0;
    for c in calls {
        let (sha, answer) = c.await.expect("upload task");
        match answer {
            Ok(r) => {
                let file = r.into_inner().file.expect("file");
                assert_eq!(file.sha256, sha);
                assert_eq!(file.path, "race/one.bin");
                winners.push(sha);
            }
            Err(e) => {
                assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
                assert!(
                    e.message()
                        .contains("\"race/one.bin\" exists; set overwrite to replace it"),
                    "{}",
                    e.message()
                );
                exists += 1;
            }
        }
    }
    eprintln!("{} won, {exists} ALREADY_EXISTS", winners.len());
    assert_eq!((winners.len(), exists), (1, n - 1));
    let stored = std::fs::read(sc.store.path().join("race/one.bin")).expect("stored");
    assert_eq!(sha256_hex(&stored), winners[0], "the winner's bytes");
    assert_eq!(temporaries(sc.store.path()), Vec::<String>::new());

    // Declared larger than store.max_file_bytes: refused before a byte.
    let e = refused_up_front(&sc, "big/too-large.bin", max_file + 1).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("size_bytes {}", max_file + 1))
            && e.message()
                .contains(&format!("store.max_file_bytes {max_file}")),
        "{}",
        e.message()
    );
    assert!(!sc.store.path().join("big").exists(), "nothing created");
    assert_eq!(temporaries(sc.store.path()), Vec::<String>::new());

    // The next uploads succeed (8 MiB each: within both quotas).
    for (i, name) in ["next/ok.bin", "next/ok2.bin"].into_iter().enumerate() {
        let data: Vec<u8> = (0..max_file as usize)
            .map(|j| ((j + i) % 253) as u8)
            .collect();
        let sha = sha256_hex(&data);
        let mut models = sc.manage().await;
        let put = models
            .put_file(tokio_stream::iter(upload(name, &data, &sha, false, None)))
            .await
            .expect("the next upload succeeds")
            .into_inner();
        assert_eq!(put.file.expect("file").sha256, sha);
        assert_eq!(
            sha256_hex(&std::fs::read(sc.store.path().join(name)).expect("stored")),
            sha
        );
    }

    // 17 MiB of uploads are stored: 5 MiB more (under max_file_bytes)
    // exceeds store.max_total_bytes.
    let e = refused_up_front(&sc, "full/more.bin", 5 << 20).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains(&format!("size_bytes {}", 5 << 20))
            && e.message()
                .contains(&format!("store.max_total_bytes {max_total}")),
        "{}",
        e.message()
    );
    assert!(!sc.store.path().join("full").exists(), "nothing created");
    assert_eq!(temporaries(sc.store.path()), Vec::<String>::new());

    // Unharmed: same process, probes 200, the model serves, memory bounded.
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "the supervisor is alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    let (code, body) = sc.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        sc.model("smollm2").await.state,
        ModelState::Ready as i32,
        "smollm2 READY"
    );
    sc.text()
        .await
        .generate(greedy("Hello", 2))
        .await
        .expect("the model serves");
    let grown = e2e::status_bytes(pid, "VmRSS").saturating_sub(rss_before);
    eprintln!(
        "supervisor VmRSS {} MiB, grew by {} MiB",
        e2e::status_bytes(pid, "VmRSS") >> 20,
        grown >> 20
    );
    assert!(
        grown < 64 << 20,
        "the supervisor's memory grew by {} MiB",
        grown >> 20
    );
}

/// Starts `sidecar` (no models) with its control socket at `socket` and
/// waits for it to exit: (exit code, stderr). Fails if it keeps running.
fn refused_start(socket: &Path) -> (i32, String) {
    let store = tempfile::tempdir().expect("store");
    let file = store.path().join("sidecar.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodel_store = \"{}\"\ncontrol_socket = \"{}\"\n[openai]\naddress = \"127.0.0.1:0\"\n",
            store.path().display(),
            socket.display()
        ),
    )
    .expect("config");
    let mut child = Command::new(binary("sidecar"))
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sidecar");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the sidecar started with control_socket {}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (status.code().unwrap_or(-1), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_never_bound_over_a_file_or_in_an_open_directory() {
    let _serial = serial().await;
    let base = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");

    // A regular file at the path: refused, kept byte for byte.
    let planted = base.path().join("control.sock");
    std::fs::write(&planted, b"not a socket").expect("plant");
    let (code, err) = refused_start(&planted);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "control_socket {}: the path exists and is a regular file, not a socket; refusing to replace it",
            planted.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&planted).expect("kept"), b"not a socket");

    // A directory anyone may enter: refused, naming its mode; left as is.
    let open = base.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, err) = refused_start(&open.join("control.sock"));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("its directory {} has mode 0777", open.display()))
            && err.contains("it must be 0700"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&open).expect("stat").permissions().mode() & 0o7777,
        0o777
    );
    assert_eq!(tree(&open), Vec::<String>::new(), "nothing created in it");

    // A socket another sidecar serves: refused, and the first keeps it.
    let sc = Sidecar::start(tempfile::tempdir().expect("store"), "");
    let live = sc.store.path().join("control.sock");
    let (code, err) = refused_start(&live);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("another process is listening"), "{err}");
    sc.admin()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("the first sidecar still answers on its control socket");
}
