//! The model store over the API: uploads are all-or-nothing, paths stay
//! inside the store, files in use are protected.

use e2e::{SMOLLM2, Sidecar, serial, sha256_hex, smollm2_config, store, upload};
use sidecar_proto::v1::{DeleteFileRequest, GetFileRequest, ListFilesRequest, PutFileRequest};
use tonic::Code;

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_verified_atomic_and_stay_inside_the_store() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    sc.ready("smollm2").await;
    let mut models = sc.manage().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256_hex(&data);

    // A good upload.
    let put = models
        .put_file(tokio_stream_iter(upload(
            "extra/blob.bin",
            &data,
            &sha,
            false,
            None,
        )))
        .await
        .expect("upload")
        .into_inner();
    assert_eq!(put.file.expect("file").sha256, sha);
    let on_disk = std::fs::read(sc.store.path().join("extra/blob.bin")).expect("stored");
    assert_eq!(on_disk, data);

    // Listed, and readable by range.
    let files = models
        .list_files(ListFilesRequest {
            prefix: String::new(),
            recursive: true,
            with_sha256: true,
        })
        .await
        .expect("list")
        .into_inner()
        .files;
    let blob = files
        .iter()
        .find(|f| f.path == "extra/blob.bin")
        .expect("listed");
    assert_eq!(
        (blob.size_bytes, blob.sha256.as_str()),
        (data.len() as u64, sha.as_str())
    );
    let model = files
        .iter()
        .find(|f| f.path == SMOLLM2)
        .expect("model listed");
    assert_eq!(model.used_by, vec!["smollm2".to_owned()]);
    let mut chunks = models
        .get_file(GetFileRequest {
            path: "extra/blob.bin".into(),
            offset: 1000,
            length: 100_000,
            chunk_size: 30_000,
        })
        .await
        .expect("get")
        .into_inner();
    let mut got = Vec::new();
    let mut first = true;
    while let Some(c) = chunks.message().await.expect("chunk") {
        assert_eq!(c.offset as usize, 1000 + got.len());
        if first {
            assert_eq!(c.file.expect("file info in the first chunk").sha256, sha);
            first = false;
        }
        got.extend_from_slice(&c.data);
    }
    assert_eq!(got, data[1000..101_000]);

    // A wrong checksum, an existing file without overwrite, a cut upload,
    // paths outside the store: refused, and nothing is left behind.
    let wrong = "0".repeat(64);
    let err = models
        .put_file(tokio_stream_iter(upload(
            "extra/other.bin",
            &data,
            &wrong,
            false,
            None,
        )))
        .await
        .expect_err("checksum");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("sha256 mismatch") && err.message().contains(&sha),
        "{}",
        err.message()
    );
    let err = models
        .put_file(tokio_stream_iter(upload(
            "extra/blob.bin",
            &data[..10],
            &sha256_hex(&data[..10]),
            false,
            None,
        )))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = models
        .put_file(tokio_stream_iter(upload(
            "extra/blob.bin",
            &data[..10],
            &sha256_hex(&data[..10]),
            true,
            Some(0),
        )))
        .await
        .expect_err("cut short");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        std::fs::read(sc.store.path().join("extra/blob.bin")).expect("kept"),
        data,
        "a good file is never replaced"
    );
    for bad in ["../evil.bin", "/tmp/evil.bin", "extra/../../evil.bin"] {
        let err = models
            .put_file(tokio_stream_iter(upload(
                bad,
                &data[..10],
                &sha256_hex(&data[..10]),
                false,
                None,
            )))
            .await
            .expect_err("outside");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }
    assert_eq!(
        leftovers(&sc.store.path().join("extra")),
        vec!["blob.bin".to_owned()]
    );

    // Files in use are protected; others can go.
    let err = models
        .delete_file(DeleteFileRequest {
            path: SMOLLM2.into(),
        })
        .await
        .expect_err("in use");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("smollm2"), "{}", err.message());
    models
        .delete_file(DeleteFileRequest {
            path: "extra/blob.bin".into(),
        })
        .await
        .expect("delete");
    assert!(leftovers(&sc.store.path().join("extra")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_the_client_leaves_nothing() {
    let _serial = serial().await;
    let sc = Sidecar::start(store(), &smollm2_config(""));
    let mut models = sc.manage().await;
    let data = vec![7u8; 1 << 20];
    let sha = sha256_hex(&data);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn(async move {
        models
            .put_file(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for m in upload("cut/partial.bin", &data, &sha, false, Some(3)) {
        tx.send(m).await.expect("send");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The client goes away mid-upload.
    call.abort();
    drop(tx);
    let dir = sc.store.path().join("cut");
    let start = std::time::Instant::now();
    while !leftovers(&dir).is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "left behind: {:?}",
            leftovers(&dir)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn tokio_stream_iter(
    msgs: Vec<PutFileRequest>,
) -> impl tokio_stream::Stream<Item = PutFileRequest> {
    tokio_stream::iter(msgs)
}
