//! Only the one child can reach the region: nothing is named under
//! `/dev/shm`, the descriptors reach the child and not its children, and a
//! process started without them has none.

mod common;

use std::process::Command;

use common::Peer;
use ipc::ChannelConfig;

fn dev_shm() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn channel_fds(listing: &str) -> Vec<&str> {
    listing
        .split('|')
        .filter(|fd| fd.contains("memfd:") || fd.contains("[eventfd]") || fd.contains("socket:"))
        .collect()
}

#[test]
fn the_region_has_no_name_and_reaches_only_the_child() {
    let before = dev_shm();
    let (a, b) = ipc::create(ChannelConfig::default()).unwrap();
    assert_eq!(dev_shm(), before, "nothing appears under /dev/shm");
    assert!(std::fs::File::open("/dev/shm/sidecar-ipc").is_err());

    let mut peer = Peer::spawn(b, &["grandchild"]);
    let child = peer.line();
    let grandchild = peer.line();
    let child = child.strip_prefix("CHILD ").expect("child line");
    let grandchild = grandchild
        .strip_prefix("GRANDCHILD ")
        .expect("grandchild line");

    let fds = channel_fds(child);
    assert!(
        fds.iter().any(|f| f.contains("memfd:sidecar-ipc")),
        "{child}"
    );
    // Two doorbells, plus the stop bell of the worker's death-watch thread.
    assert!(
        fds.iter().filter(|f| f.contains("[eventfd]")).count() >= 2,
        "{child}"
    );
    assert_eq!(
        fds.iter().filter(|f| f.contains("socket:")).count(),
        1,
        "{child}"
    );
    assert!(
        channel_fds(grandchild).is_empty(),
        "the worker's own children inherit nothing: {grandchild}"
    );

    // A process this one starts without the ends gets none of them, even
    // while side A is open here.
    let _a = a;
    let out = Command::new(env!("CARGO_BIN_EXE_ipc-peer"))
        .arg("list-fds")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(channel_fds(listing.trim()).is_empty(), "{listing}");
}
