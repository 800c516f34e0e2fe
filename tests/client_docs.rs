//! The client documentation cannot rot: `docs/api.md` is what
//! `scripts/api_docs.py` makes of the protos' comments today, the README
//! links it and the client examples, and `examples/clients/README.md` has a
//! command line for every example (`tests/examples_clients.rs` runs them
//! and checks what they print).

use std::process::Command;

use e2e::root;

/// `docs/api.md` is what `scripts/api_docs.py` makes of the protos today:
/// a changed comment, field or RPC without the regenerated reference
/// fails here.
#[test]
fn the_api_reference_is_current_with_the_protos() {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root().join("scripts/api_docs.py"))
        .arg("--check")
        .output()
        .expect("run scripts/api_docs.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("docs/api.md is current ("), "{stdout}");
    let api = std::fs::read_to_string(root().join("docs/api.md")).expect("docs/api.md");
    for name in [
        "TextService",
        "VisionService",
        "LiteService",
        "ModelService",
        "SharedMemoryService",
        "AdminService",
    ] {
        assert!(
            api.contains(&format!("### service {name}")),
            "docs/api.md lacks {name}"
        );
    }
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert!(
        readme.contains("(docs/api.md)"),
        "README.md does not link docs/api.md"
    );
    assert!(
        readme.contains("(examples/clients/README.md)"),
        "README.md does not link the client examples"
    );
}

/// Every example has its line in `examples/clients/README.md`: the command
/// and what it prints.
#[test]
fn the_clients_readme_shows_every_example() {
    let readme = std::fs::read_to_string(root().join("examples/clients/README.md"))
        .expect("examples/clients/README.md");
    let dir = root().join("examples/clients/python");
    let mut scripts: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/clients/python")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".py"))
        .collect();
    scripts.sort();
    assert_eq!(scripts.len(), 10, "{scripts:?}");
    for s in &scripts {
        assert!(
            readme.contains(&format!("examples/clients/python/{s}")),
            "no command for {s} in the README"
        );
    }
    for sub in [
        "generate", "chat", "embed", "lite", "shm", "video", "h264", "health", "upload", "errors",
    ] {
        assert!(
            readme.contains(&format!("sidecar-examples {sub} "))
                || readme.contains(&format!("sidecar-examples {sub}\n")),
            "no command for `sidecar-examples {sub}` in the README"
        );
    }
}
