//! The registry against a real directory of objects: bounds, identities,
//! refused objects, windows, in-use holds and detach on unregister.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sidecar_proto::v1::{InferRequest, OutputPlacement, SharedMemoryRef, Tensor};
use sidecar_proto::worker::{WorkerRequest, worker_request::Body};

use super::*;
use crate::config::ShmConfig;

struct Dir {
    dir: tempfile::TempDir,
    regions: Regions,
}

fn setup(per_client: usize, total: usize) -> Dir {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ShmConfig {
        dir: dir.path().to_owned(),
        max_regions_per_client: per_client,
        max_regions: total,
        ..Default::default()
    };
    let regions = Regions::new(config, Arc::new(Metrics::new()));
    Dir { dir, regions }
}

impl Dir {
    /// An object of `size` bytes every user may read and write (the
    /// ownership rule lets a caller without peer credentials use it
    /// whoever the supervisor runs as).
    fn object(&self, file: &str, size: u64) {
        let path = self.dir.path().join(file);
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(size).expect("size");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    }
}

fn who(name: &str) -> Caller {
    Caller {
        identity: Identity::Client(name.into()),
        uid: None,
    }
}

fn reg(name: &str, key: &str, offset: u64, byte_size: u64) -> Registration {
    Registration {
        name: name.into(),
        key: key.into(),
        offset,
        byte_size,
        writable: false,
    }
}

fn infer(inputs: Vec<SharedMemoryRef>, out: Option<SharedMemoryRef>) -> Body {
    Body::Infer(InferRequest {
        model_id: "m".into(),
        inputs: inputs
            .into_iter()
            .map(|s| Tensor {
                name: "x".into(),
                shm: Some(s),
                ..Default::default()
            })
            .collect(),
        outputs: Vec::new(),
        output_placements: out
            .map(|s| OutputPlacement {
                name: "y".into(),
                shm: Some(s),
            })
            .into_iter()
            .collect(),
    })
}

fn at(region: &str, offset: u64, byte_size: u64) -> SharedMemoryRef {
    SharedMemoryRef {
        region: region.into(),
        offset,
        byte_size,
    }
}

#[test]
fn register_list_unregister_with_ids_never_reused() {
    let d = setup(16, 256);
    d.object("obj", 4096);
    let a = who("a");
    let r1 = d
        .regions
        .register(&a, reg("in", "/obj", 0, 4096))
        .expect("register");
    assert!(r1.writable, "read-write when it can");
    let Err(Error::AlreadyExists(m)) = d.regions.register(&a, reg("in", "/obj", 0, 1)) else {
        panic!("duplicate accepted");
    };
    assert!(m.contains("\"in\""), "{m}");
    assert_eq!(d.regions.list(&a, "").len(), 1);
    assert_eq!(d.regions.metrics.shm_regions.get(), 1);
    assert_eq!(d.regions.metrics.shm_region_bytes.get(), 4096);
    assert_eq!(d.regions.unregister(&a, "in").len(), 1);
    assert_eq!(d.regions.metrics.shm_regions.get(), 0);
    let r2 = d
        .regions
        .register(&a, reg("in", "/obj", 0, 4096))
        .expect("again");
    assert!(r2.id > r1.id, "ids are never reused");
}

#[test]
fn bounds_name_which() {
    let d = setup(2, 3);
    d.object("obj", 64);
    for (c, n) in [("a", "1"), ("a", "2")] {
        d.regions
            .register(&who(c), reg(n, "/obj", 0, 8))
            .expect("room");
    }
    let Err(Error::ResourceExhausted(m)) = d.regions.register(&who("a"), reg("3", "/obj", 0, 8))
    else {
        panic!("over the per-client bound");
    };
    assert!(m.contains("max_regions_per_client is 2"), "{m}");
    d.regions
        .register(&who("b"), reg("1", "/obj", 0, 8))
        .expect("room");
    let Err(Error::ResourceExhausted(m)) = d.regions.register(&who("c"), reg("1", "/obj", 0, 8))
    else {
        panic!("over the total bound");
    };
    assert!(m.contains("shm.max_regions is 3"), "{m}");
    assert_eq!(d.regions.unregister(&who("a"), "").len(), 2, "all of a's");
    assert_eq!(d.regions.list(&who("b"), "").len(), 1, "b's untouched");
}

#[test]
fn objects_that_are_not_plain_files_are_refused() {
    let d = setup(16, 256);
    d.object("small", 100);
    let a = who("a");
    let Err(Error::InvalidArgument(m)) = d.regions.register(&a, reg("s", "/small", 50, 51)) else {
        panic!("past the end accepted");
    };
    assert!(m.contains("holds 100 bytes") && m.contains("= 101"), "{m}");
    assert!(matches!(
        d.regions.register(&a, reg("s", "/small", 0, u64::MAX)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        d.regions.register(&a, reg("s", "/nothing", 0, 1)),
        Err(Error::NotFound(_))
    ));
    let real = d.dir.path().join("small");
    std::os::unix::fs::symlink(&real, d.dir.path().join("link")).expect("symlink");
    let Err(Error::InvalidArgument(m)) = d.regions.register(&a, reg("l", "/link", 0, 1)) else {
        panic!("a link followed");
    };
    assert!(m.contains("symbolic link"), "{m}");
    nix::unistd::mkfifo(&d.dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
    let Err(Error::InvalidArgument(m)) = d.regions.register(&a, reg("f", "/fifo", 0, 1)) else {
        panic!("a FIFO accepted");
    };
    assert!(m.contains("not a regular file"), "{m}");
    std::fs::create_dir(d.dir.path().join("sub")).expect("dir");
    assert!(matches!(
        d.regions.register(&a, reg("d", "/sub", 0, 1)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(d.regions.list(&a, "").is_empty());
}

#[test]
fn a_read_only_object_gives_a_read_only_region() {
    let d = setup(16, 256);
    d.object("ro", 64);
    let path = d.dir.path().join("ro");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let a = who("a");
    let r = d
        .regions
        .register(&a, reg("ro", "/ro", 0, 64))
        .expect("read");
    assert!(!r.writable, "no one may write it: a read-only region");
    // Private to its owner (the test's uid, the sidecar's too): a caller
    // without peer credentials never borrows the owner bits, whoever runs
    // the sidecar.
    d.object("private", 64);
    let private = d.dir.path().join("private");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let got = d.regions.register(&a, reg("p", "/private", 0, 64));
    assert!(
        matches!(got, Err(Error::PermissionDenied(ref m)) if m.contains("mode 600")),
        "{got:?}"
    );
    let mut need = reg("rw", "/ro", 0, 64);
    need.writable = true;
    assert!(matches!(
        d.regions.register(&a, need),
        Err(Error::PermissionDenied(_))
    ));
    let body = infer(vec![at("ro", 0, 8)], Some(at("ro", 8, 8)));
    let Err(Error::InvalidArgument(m)) = d.regions.resolve(&a.identity, &body) else {
        panic!("an output in a read-only region");
    };
    assert!(
        m.contains("output_placements[0].shm") && m.contains("read-only"),
        "{m}"
    );
}

#[test]
fn refs_resolve_among_the_callers_own_regions_only() {
    let d = setup(16, 256);
    d.object("obj", 1024);
    let (a, b) = (who("a"), who("b"));
    d.regions
        .register(&a, reg("buf", "/obj", 512, 512))
        .expect("register");
    let body = infer(
        vec![at("buf", 0, 256), at("buf", 256, 256)],
        Some(at("buf", 0, 16)),
    );
    let held = d.regions.resolve(&a.identity, &body).expect("resolve");
    let uses = held.uses();
    assert_eq!(uses.len(), 1, "one use per distinct region");
    assert_eq!(
        (uses[0].offset, uses[0].byte_size, uses[0].attach),
        (512, 512, false)
    );
    assert_eq!(d.regions.list(&a, "buf")[0].in_use(), 1);
    drop(held);
    assert_eq!(d.regions.list(&a, "buf")[0].in_use(), 0);
    let Err(Error::NotFound(m)) = d.regions.resolve(&b.identity, &body) else {
        panic!("another identity used a's region");
    };
    assert_eq!(m, "shared-memory region \"buf\" is not registered");
    let past = infer(vec![at("buf", 500, 13)], None);
    let Err(Error::InvalidArgument(m)) = d.regions.resolve(&a.identity, &past) else {
        panic!("a window past the end");
    };
    assert!(
        m.contains("inputs[0].shm: offset 500 + byte_size 13 = 513") && m.contains("(512 bytes)"),
        "{m}"
    );
    let wrap = infer(vec![at("buf", u64::MAX, 1)], None);
    assert!(
        matches!(d.regions.resolve(&a.identity, &wrap), Err(Error::InvalidArgument(m)) if m.contains("overflows"))
    );
    let mut both = infer(vec![at("buf", 0, 4)], None);
    if let Body::Infer(r) = &mut both {
        r.inputs[0].data = vec![0; 4].into();
    }
    let Err(Error::InvalidArgument(m)) = d.regions.resolve(&a.identity, &both) else {
        panic!("inline and ref together");
    };
    assert!(m.contains("both inline (4 bytes)"), "{m}");
    // Truncated since it was registered.
    std::fs::File::options()
        .write(true)
        .open(d.dir.path().join("obj"))
        .expect("open")
        .set_len(600)
        .expect("truncate");
    let Err(Error::FailedPrecondition(m)) = d.regions.resolve(&a.identity, &body) else {
        panic!("a shrunk object served");
    };
    assert!(
        m.contains("shrank to 600 bytes") && m.contains("end at 1024"),
        "{m}"
    );
}

#[test]
fn requests_without_refs_are_untouched() {
    let d = setup(16, 256);
    let body = Body::Infer(InferRequest {
        model_id: "m".into(),
        inputs: vec![Tensor {
            name: "x".into(),
            data: vec![1, 2, 3, 4].into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert!(!resolve::uses_regions(&body));
    let held = d
        .regions
        .resolve(&Identity::Anonymous, &body)
        .expect("no refs");
    assert!(held.is_empty() && held.uses().is_empty());
    assert!(resolve::uses_regions(&infer(vec![at("x", 0, 1)], None)));
}

#[test]
fn a_disabled_registry_refuses_both_register_and_refs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ShmConfig {
        dir: dir.path().to_owned(),
        enabled: false,
        ..Default::default()
    };
    let regions = Regions::new(config, Arc::new(Metrics::new()));
    assert!(matches!(
        regions.register(&who("a"), reg("x", "/x", 0, 1)),
        Err(Error::FailedPrecondition(m)) if m.contains("enabled = false")
    ));
    assert!(matches!(
        regions.resolve(&Identity::Anonymous, &infer(vec![at("x", 0, 1)], None)),
        Err(Error::FailedPrecondition(_))
    ));
}

#[test]
fn oip_calls_have_tritons_semantics() {
    use sidecar_proto::inference::*;
    let d = setup(16, 256);
    d.object("obj", 64);
    let a = who("a");
    oip::register(
        &d.regions,
        &a,
        SystemSharedMemoryRegisterRequest {
            name: "in".into(),
            key: "/obj".into(),
            offset: 0,
            byte_size: 64,
        },
    )
    .expect("register");
    assert!(
        d.regions.list(&a, "in")[0].writable,
        "read-write when it can"
    );
    let all =
        oip::status(&d.regions, &a, SystemSharedMemoryStatusRequest::default()).expect("status");
    assert_eq!(all.regions["in"].byte_size, 64);
    assert_eq!(all.regions["in"].key, "/obj");
    let Err(Error::NotFound(_)) = oip::status(
        &d.regions,
        &a,
        SystemSharedMemoryStatusRequest {
            name: "nope".into(),
        },
    ) else {
        panic!("unknown status");
    };
    let other = oip::status(
        &d.regions,
        &who("b"),
        SystemSharedMemoryStatusRequest::default(),
    )
    .expect("status");
    assert!(other.regions.is_empty(), "another identity sees none");
    oip::unregister(
        &d.regions,
        &a,
        SystemSharedMemoryUnregisterRequest {
            name: "nope".into(),
        },
    )
    .expect("unknown name: OK, as Triton");
    oip::unregister(
        &d.regions,
        &a,
        SystemSharedMemoryUnregisterRequest::default(),
    )
    .expect("all");
    assert!(d.regions.list(&a, "").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_go_once_per_worker_and_are_detached_on_unregister() {
    let d = setup(16, 256);
    d.object("obj", 64);
    let a = who("a");
    d.regions
        .register(&a, reg("r", "/obj", 0, 64))
        .expect("register");
    let (side_a, side_b) = ipc::create(ipc::ChannelConfig::default()).expect("channel");
    let chan = Arc::new(ipc::AsyncChannel::new(side_a).expect("async"));
    let worker = ipc::BlockingChannel::new(side_b).expect("blocking");
    let attached = Arc::new(Attached::new(chan.clone(), 1));
    d.regions.holders.add(&attached);
    let body = infer(vec![at("r", 0, 8)], None);
    for round in 0..2 {
        let held = d.regions.resolve(&a.identity, &body).expect("resolve");
        let mut uses = held.uses();
        let order = attached.prepare(&held, &mut uses).await.expect("prepare");
        assert_eq!(uses[0].attach, round == 0, "round {round}");
        let req = WorkerRequest {
            regions: uses,
            body: Some(body.clone()),
            ..Default::default()
        };
        drop(chan.request(&req.encode_to_vec()).await.expect("request"));
        order.commit();
    }
    let id = d.regions.list(&a, "r")[0].id;
    let fd = worker
        .take_fd(id, Duration::from_secs(5))
        .expect("the descriptor came");
    assert!(std::fs::File::from(fd).metadata().expect("stat").len() == 64);
    assert!(
        matches!(
            worker.take_fd(id, Duration::from_millis(100)),
            Err(ipc::Error::Timeout)
        ),
        "sent once"
    );
    d.regions.unregister(&a, "r");
    assert_eq!(attached.held(), 0);
    let mut detach = None;
    for _ in 0..10 {
        let Ok(frame) = tokio::task::block_in_place(|| worker.recv_timeout(Duration::from_secs(5)))
        else {
            break;
        };
        if frame.kind() != ipc::Kind::Request {
            continue;
        }
        let req = WorkerRequest::decode(frame.payload()).expect("decode");
        if let Some(Body::RegionDetach(r)) = req.body {
            detach = Some(r.ids);
            break;
        }
    }
    assert_eq!(detach, Some(vec![id]), "the worker is told to close it");
}
