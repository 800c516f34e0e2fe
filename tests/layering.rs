//! The workspace's dependency rules, checked over `cargo metadata`:
//!
//! - the supervisor depends on no worker, worker runtime or LiteRT crate,
//!   and nothing it links (however indirectly) is a model runtime
//!   (llama.cpp, OpenCV, OpenH264, `litert`; it does load NVML at run time,
//!   through `nvml-wrapper`);
//! - no worker crate depends on another worker crate; `worker-runtime` and
//!   `litert` depend on no worker crate;
//! - `ipc` depends on no protocol crate (`sidecar-proto`, `prost`) and on
//!   no worker-side crate; `procmem` depends on nothing in the workspace;
//! - the client examples (`sidecar-client-examples`) link nothing native
//!   and no server crate: only `sidecar-proto`, tonic and tokio's world.
//!
//! Every kind of dependency counts (normal, build and dev).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

const WORKERS: [&str; 3] = ["worker-text", "worker-lite", "worker-vision"];
const WORKER_SIDE: [&str; 5] = [
    "worker-text",
    "worker-lite",
    "worker-vision",
    "worker-runtime",
    "litert",
];
const NATIVE: [&str; 5] = [
    "llama-cpp-2",
    "llama-cpp-sys-2",
    "opencv",
    "openh264",
    "openh264-sys2",
];

/// This machine's target triple (`rustc -vV`), so the resolve covers the
/// packages this platform builds (no Windows-only crate to download).
fn host() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

fn metadata(no_deps: bool) -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--manifest-path",
        manifest,
    ]);
    if no_deps {
        cmd.arg("--no-deps");
    } else {
        cmd.args(["--filter-platform", &host()]);
    }
    let out = cmd.output().expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON")
}

/// Each workspace package's declared dependencies, by name.
fn declared() -> BTreeMap<String, BTreeSet<String>> {
    let m = metadata(true);
    m["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| d["name"].as_str().expect("name").to_owned())
                .collect();
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

fn names_of(deps: &BTreeSet<String>, among: &[&str]) -> Vec<String> {
    deps.iter()
        .filter(|d| among.contains(&d.as_str()))
        .cloned()
        .collect()
}

#[test]
fn each_crate_depends_only_on_what_its_layer_allows() {
    let d = declared();
    for needed in [
        "supervisor",
        "ipc",
        "procmem",
        "sidecar-proto",
        "worker-runtime",
        "litert",
    ]
    .iter()
    .chain(WORKERS.iter())
    {
        assert!(
            d.contains_key(*needed),
            "no package {needed} in the workspace: {:?}",
            d.keys()
        );
    }
    let bad = names_of(&d["supervisor"], &WORKER_SIDE);
    assert!(bad.is_empty(), "the supervisor depends on {bad:?}");
    for w in WORKERS {
        let others: Vec<&str> = WORKERS.iter().copied().filter(|o| *o != w).collect();
        let bad = names_of(&d[w], &others);
        assert!(bad.is_empty(), "{w} depends on {bad:?}");
    }
    for lib in ["worker-runtime", "litert"] {
        let bad = names_of(&d[lib], &WORKERS);
        assert!(bad.is_empty(), "{lib} depends on {bad:?}");
    }
    let mut not_for_ipc = vec!["sidecar-proto", "prost"];
    not_for_ipc.extend(WORKER_SIDE);
    let bad = names_of(&d["ipc"], &not_for_ipc);
    assert!(bad.is_empty(), "ipc depends on {bad:?}");
    let workspace: Vec<&str> = d.keys().map(String::as_str).collect();
    let bad = names_of(&d["procmem"], &workspace);
    assert!(bad.is_empty(), "procmem depends on {bad:?}");
}

#[test]
fn the_supervisor_links_no_native_runtime() {
    let m = metadata(false);
    let nodes = m["resolve"]["nodes"].as_array().expect("resolve.nodes");
    let name_of = |id: &str| -> String {
        m["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["name"].as_str())
            .expect("package of id")
            .to_owned()
    };
    let deps_of = |id: &str| -> Vec<String> {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| {
                n["deps"]
                    .as_array()
                    .expect("deps")
                    .iter()
                    .filter(|d| {
                        // Normal and build dependencies: what the binary links.
                        d["dep_kinds"]
                            .as_array()
                            .is_some_and(|k| k.iter().any(|k| k["kind"] != "dev"))
                    })
                    .map(|d| d["pkg"].as_str().expect("pkg").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let id_of = |name: &str| -> String {
        m["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| p["name"] == name && p["source"].is_null())
            .and_then(|p| p["id"].as_str())
            .expect("workspace package")
            .to_owned()
    };
    // Everything the supervisor links, transitively.
    let closure = |root: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![id_of(root)];
        while let Some(id) = todo.pop() {
            if seen.insert(id.clone()) {
                todo.extend(deps_of(&id));
            }
        }
        seen.iter().map(|id| name_of(id)).collect()
    };
    let sup = closure("supervisor");
    assert!(
        sup.contains("tonic") && sup.contains("ipc"),
        "closure too small: {sup:?}"
    );
    let bad: Vec<&String> = sup
        .iter()
        .filter(|n| NATIVE.contains(&n.as_str()) || WORKER_SIDE.contains(&n.as_str()))
        .collect();
    assert!(bad.is_empty(), "the supervisor links {bad:?}");
    // The client examples link nothing native and nothing of the server:
    // what a user copies needs only the protos, tonic and tokio.
    let ex = closure("sidecar-client-examples");
    assert!(ex.contains("tonic"), "closure too small: {ex:?}");
    let bad: Vec<&String> = ex
        .iter()
        .filter(|n| {
            NATIVE.contains(&n.as_str())
                || WORKER_SIDE.contains(&n.as_str())
                || ["supervisor", "ipc", "procmem"].contains(&n.as_str())
        })
        .collect();
    assert!(bad.is_empty(), "the client examples link {bad:?}");
    // The workers do link their runtimes: the check above can see them.
    assert!(closure("worker-text").contains("llama-cpp-2"));
    let ipc = closure("ipc");
    assert!(
        !ipc.contains("prost") && !ipc.contains("sidecar-proto"),
        "ipc links {ipc:?}"
    );
}
