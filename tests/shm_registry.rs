//! Shared-memory regions against the real sidecar (issue 19):
//! SharedMemoryService over tonic with objects made here in /dev/shm,
//! every refusal by code and message, identities kept apart, and LITE
//! refs refused before any worker is involved. Every object made here is
//! removed at the end (`Objects`' drop).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{Sidecar, add_model, lite_config, serial};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::shared_memory_service_client::SharedMemoryServiceClient;
use sidecar_proto::v1::{
    DType, InferRequest, ListRegionsRequest, OutputPlacement, RegisterRegionRequest,
    SharedMemoryRef, Tensor, UnregisterRegionRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

const FACE: &str = "mediapipe/face_detection_short_range.tflite";

/// Objects made in /dev/shm for one test, removed when it ends.
struct Objects {
    paths: Vec<PathBuf>,
    tag: String,
}

impl Objects {
    fn new(test: &str) -> Objects {
        Objects {
            paths: Vec::new(),
            tag: format!("sidecar-test-{}-{test}", std::process::id()),
        }
    }

    fn path(&mut self, n: &str) -> (String, PathBuf) {
        let file = format!("{}-{n}", self.tag);
        let path = PathBuf::from("/dev/shm").join(&file);
        let _ = std::fs::remove_file(&path);
        self.paths.push(path.clone());
        (format!("/{file}"), path)
    }

    /// A regular object of `size` bytes every user may read and write
    /// (the ownership rule lets a TCP caller use it whoever the sidecar
    /// runs as); its key.
    fn object(&mut self, n: &str, size: u64) -> String {
        let (key, path) = self.path(n);
        let f = std::fs::File::create(&path).expect("create the object");
        f.set_len(size).expect("size the object");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        key
    }
}

impl Drop for Objects {
    fn drop(&mut self) {
        for p in &self.paths {
            if p.is_dir() {
                let _ = std::fs::remove_dir(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn as_client<T>(client: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("x-client-id", client.parse().expect("client id"));
    req
}

fn reg(name: &str, key: &str, offset: u64, byte_size: u64) -> RegisterRegionRequest {
    RegisterRegionRequest {
        name: name.into(),
        key: key.into(),
        offset,
        byte_size,
        writable: false,
    }
}

async fn shm(sc: &Sidecar) -> SharedMemoryServiceClient<Channel> {
    SharedMemoryServiceClient::new(sc.channel().await)
}

/// The call fails with `code` and a message holding every `parts`.
fn refused<T: std::fmt::Debug>(got: Result<T, tonic::Status>, code: Code, parts: &[&str]) {
    let s = got.expect_err("refused");
    assert_eq!(s.code(), code, "{}", s.message());
    for p in parts {
        assert!(s.message().contains(p), "{p:?} not in {:?}", s.message());
    }
}

/// The supervisor is the same process and ready.
fn healthy(sc: &Sidecar, pid: u32) {
    assert_eq!(sc.child.id(), pid);
    assert!(e2e::alive(pid), "supervisor alive");
    assert_eq!(sc.admin_get("/livez").0, 200);
    assert_eq!(sc.admin_get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_are_registered_checked_and_bounded() {
    let _serial = serial().await;
    let sc = Sidecar::start(e2e::store(), "");
    let pid = sc.child.id();
    let mut c = shm(&sc).await;
    let mut o = Objects::new("reg");
    let key = o.object("a", 4096);

    let got = c
        .register_region(reg("in", &key, 1024, 3072))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(
        (
            got.name.as_str(),
            got.key.as_str(),
            got.offset,
            got.byte_size,
            got.writable,
            got.in_use
        ),
        ("in", key.as_str(), 1024, 3072, true, 0)
    );
    let list = c
        .list_regions(ListRegionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.regions.len(), 1);
    assert_eq!(list.regions[0].byte_size, 3072);
    let (_, metrics) = sc.admin_get("/metrics");
    assert!(metrics.contains("sidecar_shm_regions 1"), "{metrics}");
    assert!(
        metrics.contains("sidecar_shm_region_bytes 3072"),
        "{metrics}"
    );

    refused(
        c.register_region(reg("in", &key, 0, 1)).await,
        Code::AlreadyExists,
        &["\"in\"", "already registered"],
    );
    let (missing, _) = o.path("missing");
    refused(
        c.register_region(reg("x", &missing, 0, 1)).await,
        Code::NotFound,
        &["does not exist"],
    );
    refused(
        c.register_region(reg("x", "/a/b", 0, 1)).await,
        Code::InvalidArgument,
        &["\"/a/b\"", "\"/\" past its first byte"],
    );
    refused(
        c.register_region(reg("x", "/..", 0, 1)).await,
        Code::InvalidArgument,
        &["directory"],
    );
    let long = format!("/{}", "k".repeat(300));
    let s = c
        .register_region(reg("x", &long, 0, 1))
        .await
        .expect_err("300 bytes");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("300 bytes") && s.message().contains("1..=255"),
        "{}",
        s.message()
    );
    assert!(
        !s.message().contains("kkkkkkkk"),
        "a long key is never echoed: {}",
        s.message()
    );
    refused(
        c.register_region(reg("x", "/a\0b", 0, 1)).await,
        Code::InvalidArgument,
        &["NUL"],
    );
    refused(
        c.register_region(reg(&"n".repeat(65), &key, 0, 1)).await,
        Code::InvalidArgument,
        &["65 bytes", "1..=64"],
    );
    let small = o.object("small", 100);
    refused(
        c.register_region(reg("x", &small, 50, 51)).await,
        Code::InvalidArgument,
        &["holds 100 bytes", "offset 50 + byte_size 51 = 101"],
    );
    refused(
        c.register_region(reg("x", &small, 200, 1)).await,
        Code::InvalidArgument,
        &["holds 100 bytes", "offset 200"],
    );
    refused(
        c.register_region(reg("x", &small, 1, u64::MAX)).await,
        Code::InvalidArgument,
        &["overflows"],
    );
    refused(
        c.register_region(reg("x", &small, 0, u64::MAX)).await,
        Code::InvalidArgument,
        &["holds 100 bytes", "18446744073709551615"],
    );

    // A link in the shm directory to a real file is not followed.
    let target = sc.store.path().join("secret");
    std::fs::write(&target, vec![7u8; 4096]).expect("target");
    let (link, link_path) = o.path("link");
    std::os::unix::fs::symlink(&target, &link_path).expect("symlink");
    refused(
        c.register_region(reg("x", &link, 0, 16)).await,
        Code::InvalidArgument,
        &["symbolic link"],
    );
    // A FIFO: refused at once (the open never waits for a writer).
    let (fifo, fifo_path) = o.path("fifo");
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        c.register_region(reg("x", &fifo, 0, 1)),
    )
    .await
    .expect("a FIFO must not hang the register");
    refused(got, Code::InvalidArgument, &["not a regular file"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    let (dir, dir_path) = o.path("dir");
    std::fs::create_dir(&dir_path).expect("dir");
    refused(
        c.register_region(reg("x", &dir, 0, 1)).await,
        Code::InvalidArgument,
        &["not a regular file"],
    );

    // A read-only object gives a read-only region; writable = true needs
    // write access.
    let ro = o.object("ro", 64);
    std::fs::set_permissions(
        o.paths.last().expect("ro"),
        std::fs::Permissions::from_mode(0o444),
    )
    .expect("chmod");
    let got = c
        .register_region(reg("ro", &ro, 0, 64))
        .await
        .expect("read-only")
        .into_inner();
    assert!(!got.writable, "no one may write it: a read-only region");
    // Private to its owner (this test's uid, the sidecar's too): a TCP
    // caller never borrows the owner bits, root or not.
    let private = o.object("private", 64);
    std::fs::set_permissions(
        o.paths.last().expect("private"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    refused(
        c.register_region(reg("private", &private, 0, 64)).await,
        Code::PermissionDenied,
        &["mode 600", "may not be read by this caller", "o+r"],
    );
    let mut need = reg("rw", &ro, 0, 64);
    need.writable = true;
    refused(
        c.register_region(need).await,
        Code::PermissionDenied,
        &["for writing"],
    );

    // 16 per client (in and ro held): 14 more fit, the 17th does not.
    for i in 0..14 {
        c.register_region(reg(&format!("r{i}"), &key, 0, 16))
            .await
            .expect("within the bound");
    }
    refused(
        c.register_region(reg("r17", &key, 0, 16)).await,
        Code::ResourceExhausted,
        &["holds 16", "max_regions_per_client is 16"],
    );
    let list = c
        .list_regions(ListRegionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.regions.len(), 16);

    refused(
        c.unregister_region(UnregisterRegionRequest {
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
        &["\"nope\" is not registered"],
    );
    let one = c
        .unregister_region(UnregisterRegionRequest { name: "in".into() })
        .await
        .expect("one")
        .into_inner();
    assert_eq!(one.unregistered, 1);
    let all = c
        .unregister_region(UnregisterRegionRequest::default())
        .await
        .expect("all")
        .into_inner();
    assert_eq!(all.unregistered, 15);
    assert!(
        c.list_regions(ListRegionsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .regions
            .is_empty()
    );
    let (_, metrics) = sc.admin_get("/metrics");
    assert!(metrics.contains("sidecar_shm_regions 0"), "{metrics}");
    healthy(&sc, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_neither_sees_nor_uses_anothers_regions() {
    let _serial = serial().await;
    let store = e2e::store();
    add_model(&store, FACE);
    let config = format!(
        "[auth]\nclient_ids = [\"a\", \"b\"]\n{}",
        lite_config("face", FACE, "preload = false")
    );
    let sc = Sidecar::start(store, &config);
    let pid = sc.child.id();
    let mut c = shm(&sc).await;
    let mut o = Objects::new("ids");
    let key = o.object("a", 4096);
    c.register_region(as_client("a", reg("mine", &key, 0, 4096)))
        .await
        .expect("a registers");
    // b may use the same name for its own region of the same object.
    let listed = c
        .list_regions(as_client("b", ListRegionsRequest::default()))
        .await
        .expect("b lists")
        .into_inner();
    assert!(listed.regions.is_empty(), "b sees none of a's: {listed:?}");
    refused(
        c.list_regions(as_client(
            "b",
            ListRegionsRequest {
                name: "mine".into(),
            },
        ))
        .await,
        Code::NotFound,
        &["\"mine\" is not registered"],
    );
    refused(
        c.unregister_region(as_client(
            "b",
            UnregisterRegionRequest {
                name: "mine".into(),
            },
        ))
        .await,
        Code::NotFound,
        &["\"mine\" is not registered"],
    );
    let mut lite = LiteServiceClient::new(sc.channel().await);
    let infer = |region: &str, offset: u64, byte_size: u64| InferRequest {
        model_id: "face".into(),
        inputs: vec![Tensor {
            name: "input".into(),
            dtype: DType::DtypeFloat32 as i32,
            shape: vec![1, 128, 128, 3],
            data: Vec::new().into(),
            shm: Some(SharedMemoryRef {
                region: region.into(),
                offset,
                byte_size,
            }),
        }],
        outputs: Vec::new(),
        output_placements: Vec::new(),
    };
    // The same answer as an unknown name: a's region does not exist for b.
    let other = lite.infer(as_client("b", infer("mine", 0, 16))).await;
    refused(
        other,
        Code::NotFound,
        &["shared-memory region \"mine\" is not registered"],
    );
    let unknown = lite.infer(as_client("a", infer("nowhere", 0, 16))).await;
    refused(
        unknown,
        Code::NotFound,
        &["shared-memory region \"nowhere\" is not registered"],
    );
    let past = lite.infer(as_client("a", infer("mine", 4000, 100))).await;
    refused(
        past,
        Code::InvalidArgument,
        &[
            "inputs[0].shm",
            "offset 4000 + byte_size 100 = 4100",
            "(4096 bytes)",
        ],
    );
    let mut both = infer("mine", 0, 16);
    both.inputs[0].data = vec![0u8; 16].into();
    refused(
        lite.infer(as_client("a", both)).await,
        Code::InvalidArgument,
        &["both inline (16 bytes)"],
    );
    let mut out = infer("mine", 0, 16);
    out.output_placements.push(OutputPlacement {
        name: "regressors".into(),
        shm: Some(SharedMemoryRef {
            region: "mine".into(),
            offset: 5000,
            byte_size: 16,
        }),
    });
    refused(
        lite.infer(as_client("a", out)).await,
        Code::InvalidArgument,
        &["output_placements[0].shm", "5016"],
    );
    // None of it reached a worker: the model was never loaded.
    let m = sc.model("face").await;
    assert_eq!(m.worker_pid, 0, "no worker was started: {m:?}");
    let listed = c
        .list_regions(as_client("a", ListRegionsRequest::default()))
        .await
        .expect("a lists")
        .into_inner();
    assert_eq!(listed.regions.len(), 1);
    assert_eq!(listed.regions[0].in_use, 0, "refused calls hold nothing");
    healthy(&sc, pid);
}
