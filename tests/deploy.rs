//! What can be checked of the Kubernetes deployment without Docker or a
//! cluster: the manifests parse (PyYAML), the sidecar's probes point at
//! the admin port and the paths the supervisor serves, the config in the
//! ConfigMap is one the supervisor accepts, and the image's build runs the
//! project's own setup script.

use std::process::Command;

use e2e::root;

/// Every document of the manifest, as JSON (parsed by PyYAML).
fn manifests() -> Vec<serde_json::Value> {
    let path = root().join("deploy/kubernetes/sidecar.yaml");
    let out = Command::new(root().join(".venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(&path)
        .output()
        .expect("python (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn the_manifests_parse_and_match_what_the_sidecar_serves() {
    let docs = manifests();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "PersistentVolumeClaim", "Deployment"]);
    let config = docs[0]["data"]["sidecar.toml"]
        .as_str()
        .expect("sidecar.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sidecar.toml");
    std::fs::write(&file, config).expect("write");
    let parsed = supervisor::Config::from_file(&file).expect("the ConfigMap's config parses");
    assert_eq!(parsed.admin_listen.port(), 9090);
    assert!(parsed.listen.ip().is_loopback(), "the API stays pod-local");

    let pod = &docs[2]["spec"]["template"]["spec"];
    let sidecar = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "sidecar")
        .expect("a sidecar container");
    let admin = sidecar["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("admin port");
    assert_eq!(admin["containerPort"], 9090);
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ] {
        assert_eq!(sidecar[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(sidecar[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    // The startup probe gives model loading minutes, not seconds.
    let startup = &sidecar["startupProbe"];
    let window = startup["periodSeconds"].as_u64().unwrap_or(10)
        * startup["failureThreshold"].as_u64().unwrap_or(3);
    assert!(window >= 300, "startup window {window} s");
    assert!(sidecar["resources"]["limits"]["memory"].is_string());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let run = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "run")
        .expect("the control socket's volume");
    assert_eq!(run["emptyDir"]["medium"], "Memory");
}

#[test]
fn the_image_is_built_by_the_setup_script_ci_runs() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("RUN scripts/setup.sh"));
    assert!(dockerfile.contains("cargo build --release --locked --workspace --bins"));
    for bin in [
        "sidecar",
        "sidecarctl",
        "worker-text",
        "worker-lite",
        "worker-vision",
    ] {
        assert!(
            dockerfile.contains(&format!("target/release/{bin}")),
            "{bin} is in the image"
        );
    }
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    let ci = std::fs::read_to_string(root().join("scripts/test.sh")).expect("test.sh");
    assert!(ci.contains("scripts/setup.sh"));
}
