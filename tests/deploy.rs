//! What can be checked of the Kubernetes deployment without Docker or a
//! cluster, beyond the schemas (`tests/kubernetes.rs`): the sidecar's
//! probes point at the admin port and the paths the supervisor serves, the
//! config in the ConfigMap is one the supervisor accepts, and the image's
//! build runs the project's own setup script.

use std::path::Path;
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

/// The sidecar container of the Deployment's pod, and the pod's spec.
fn sidecar_container(docs: &[serde_json::Value]) -> (&serde_json::Value, &serde_json::Value) {
    let pod = &docs[2]["spec"]["template"]["spec"];
    let sidecar = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "sidecar")
        .expect("a sidecar container");
    (pod, sidecar)
}

/// The config the ConfigMap carries, as the supervisor reads it.
fn configmap_config(docs: &[serde_json::Value]) -> supervisor::Config {
    let config = docs[0]["data"]["sidecar.toml"]
        .as_str()
        .expect("sidecar.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sidecar.toml");
    std::fs::write(&file, config).expect("write");
    supervisor::Config::from_file(&file).expect("the ConfigMap's config parses")
}

/// Where the sidecar container mounts volume `name`.
fn mount<'a>(sidecar: &'a serde_json::Value, name: &str) -> &'a str {
    sidecar["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("volume {name} is mounted"))
}

/// The entry named `name` of the pod's list `list` ("volumes",
/// "containers").
fn named<'a>(pod: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
    pod[list]
        .as_array()
        .unwrap_or_else(|| panic!("the pod has {list}"))
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the pod's {list}"))
}

#[test]
fn the_manifests_parse_and_match_what_the_sidecar_serves() {
    let docs = manifests();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "PersistentVolumeClaim", "Deployment"]);
    let parsed = configmap_config(&docs);
    assert_eq!(parsed.admin_listen, "0.0.0.0:9090".parse().expect("addr"));
    assert_eq!(
        parsed.listen,
        "127.0.0.1:50051".parse().expect("addr"),
        "the API stays pod-local"
    );
    let ids: Vec<&str> = parsed.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["smollm2", "minilm", "faces"]);

    let (pod, sidecar) = sidecar_container(&docs);
    let app = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "app")
        .expect("the app container");
    let addr = app["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SIDECAR_ADDR")
        .expect("SIDECAR_ADDR");
    assert_eq!(addr["value"], parsed.listen.to_string());
    let admin = sidecar["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("admin port");
    assert_eq!(admin["containerPort"], 9090);
    assert_eq!(
        sidecar["args"],
        serde_json::json!(["--config", "/etc/sidecar/sidecar.toml"])
    );
    assert_eq!(mount(sidecar, "config"), "/etc/sidecar");
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ] {
        assert_eq!(sidecar[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(sidecar[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    // The startup probe gives model loading 10 minutes, not seconds.
    let startup = &sidecar["startupProbe"];
    assert_eq!(
        (
            startup["periodSeconds"].as_u64(),
            startup["failureThreshold"].as_u64()
        ),
        (Some(5), Some(120))
    );
    assert_eq!(sidecar["resources"]["limits"]["memory"], "3Gi");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(
        sidecar["securityContext"]["readOnlyRootFilesystem"], true,
        "the sidecar writes only to its volumes"
    );

    // The model store is the PVC's mount.
    assert_eq!(Path::new(mount(sidecar, "models")), parsed.model_store);
    // The control socket sits in a directory the sidecar creates (0700)
    // inside the memory-backed "run" emptyDir: Kubernetes makes the
    // emptyDir itself 0777, which the sidecar refuses as the socket's
    // directory.
    let run = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "run")
        .expect("the control socket's volume");
    assert_eq!(run["emptyDir"]["medium"], "Memory");
    let run_mount = mount(sidecar, "run");
    assert_eq!(run_mount, "/run/sidecar");
    assert_eq!(
        parsed.control_socket,
        Path::new("/run/sidecar/ctl/control.sock")
    );
    let socket_dir = parsed.control_socket.parent().expect("socket directory");
    assert_ne!(socket_dir, Path::new(run_mount));
    assert_eq!(socket_dir.parent(), Some(Path::new(run_mount)));

    // The API's Unix socket and the shared-memory regions: memory-backed
    // emptyDirs both containers mount at the same paths (containers of a
    // pod share no /dev/shm otherwise).
    let api_socket = parsed
        .api_socket
        .path
        .as_deref()
        .expect("[api_socket] path");
    for (volume, path) in [
        ("api", api_socket.parent().expect("socket dir")),
        ("shm", Path::new("/dev/shm")),
    ] {
        let v = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap_or_else(|| panic!("volume {volume}"));
        assert_eq!(v["emptyDir"]["medium"], "Memory", "{volume}");
        assert_eq!(Path::new(mount(sidecar, volume)), path, "sidecar {volume}");
        assert_eq!(Path::new(mount(app, volume)), path, "app {volume}");
    }
    assert!(
        !api_socket.starts_with(socket_dir),
        "not the control socket's directory"
    );
    assert_eq!(parsed.api_socket.mode, 0o660);
}

/// The Dockerfile's instructions: continuation lines joined, comments
/// and blank lines dropped, as (INSTRUCTION, arguments).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(more) = t.strip_suffix('\\') {
            current.push_str(more.trim());
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The commands of a RUN line (split on `&&`), each as its words.
fn commands(run: &str) -> Vec<Vec<String>> {
    run.split("&&")
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn the_image_is_built_by_the_setup_script_ci_runs() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let ins = instructions(&dockerfile);
    let stages: Vec<&str> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(
        stages,
        ["rust:1.95-bookworm AS builder", "debian:bookworm-slim"]
    );
    let runs: Vec<Vec<Vec<String>>> = ins
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| commands(a))
        .collect();
    let all: Vec<&Vec<String>> = runs.iter().flatten().collect();
    assert!(
        all.iter().any(|c| *c == &["scripts/setup.sh"]),
        "the builder runs scripts/setup.sh: {all:?}"
    );
    let build: Vec<&str> = [
        "cargo",
        "build",
        "--release",
        "--locked",
        "--workspace",
        "--bins",
    ]
    .to_vec();
    assert!(
        all.iter()
            .any(|c| c.iter().map(String::as_str).eq(build.iter().copied())),
        "{all:?}"
    );
    // The binaries copied out of the builder: exactly the five.
    let copy = all
        .iter()
        .find(|c| {
            c.first().is_some_and(|w| w == "cp") && c.last().is_some_and(|w| w == "/out/bin/")
        })
        .expect("the binaries are copied to /out/bin/");
    let mut bins: Vec<&str> = copy[1..copy.len() - 1]
        .iter()
        .map(|p| p.strip_prefix("target/release/").expect("a built binary"))
        .collect();
    bins.sort_unstable();
    assert_eq!(
        bins,
        [
            "sidecar",
            "sidecarctl",
            "worker-lite",
            "worker-text",
            "worker-vision"
        ]
    );
    let user: Vec<&str> = ins
        .iter()
        .filter(|(op, _)| op == "USER")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(user, ["10001"], "runs as a non-root user");
    let entry = ins
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, a)| serde_json::from_str::<Vec<String>>(a).expect("exec form"))
        .expect("ENTRYPOINT");
    assert_eq!(
        entry,
        [
            "/usr/local/bin/sidecar",
            "--config",
            "/etc/sidecar/sidecar.toml"
        ]
    );
    // sidecarctl in the pod finds the socket the ConfigMap binds.
    let env: std::collections::HashMap<&str, &str> = ins
        .iter()
        .filter(|(op, _)| op == "ENV")
        .flat_map(|(_, a)| a.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let parsed = configmap_config(&manifests());
    assert_eq!(
        Path::new(env["SIDECAR_CONTROL_SOCKET"]),
        parsed.control_socket
    );
    assert_eq!(Path::new(env["SIDECAR_MODEL_STORE"]), parsed.model_store);

    // CI runs the same setup script before anything else.
    let ci = std::fs::read_to_string(root().join("scripts/test.sh")).expect("test.sh");
    let steps: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let setup = steps
        .iter()
        .position(|l| *l == "scripts/setup.sh")
        .expect("test.sh runs scripts/setup.sh");
    let first_cargo = steps
        .iter()
        .position(|l| l.starts_with("cargo "))
        .expect("test.sh runs cargo");
    assert!(setup < first_cargo, "setup before the first cargo command");
}

#[test]
fn the_api_certificate_comes_from_the_mounted_tls_secret() {
    let docs = manifests();
    let parsed = configmap_config(&docs);
    let tls = parsed
        .tls
        .as_ref()
        .expect("the ConfigMap's config has [tls]");
    let (pod, sidecar) = sidecar_container(&docs);
    let dir = Path::new(mount(sidecar, "tls"));
    for (key, file) in [
        ("cert", &tls.cert),
        ("key", &tls.key),
        ("client_ca", tls.client_ca.as_ref().expect("mTLS")),
    ] {
        assert_eq!(
            file.parent(),
            Some(dir),
            "tls.{key} is in the Secret's mount"
        );
    }
    let names: Vec<&str> = [&tls.cert, &tls.key, tls.client_ca.as_ref().expect("mTLS")]
        .iter()
        .filter_map(|p| p.file_name()?.to_str())
        .collect();
    assert_eq!(
        names,
        ["tls.crt", "tls.key", "ca.crt"],
        "cert-manager's names"
    );
    let volume = named(pod, "volumes", "tls");
    assert_eq!(volume["secret"]["secretName"], "sidecar-tls");
    // The app holds a client certificate of its own.
    let app = named(pod, "containers", "app");
    assert_eq!(mount(app, "app-tls"), "/etc/app-tls");
}

/// Who may call what in the pod: the tokens come from a Secret the sidecar
/// re-reads, and every container runs under the runtime's default seccomp
/// filter (each worker narrows it further).
#[test]
fn tokens_come_from_a_secret_and_the_pod_runs_under_runtime_default_seccomp() {
    let docs = manifests();
    let parsed = configmap_config(&docs);
    let tokens = parsed
        .auth
        .tokens_file
        .as_ref()
        .expect("the ConfigMap's config has [auth] tokens_file");
    let (pod, sidecar) = sidecar_container(&docs);
    assert_eq!(
        tokens.parent(),
        Some(Path::new(mount(sidecar, "tokens"))),
        "auth.tokens_file is in the Secret's mount"
    );
    let volume = named(pod, "volumes", "tokens");
    assert_eq!(volume["secret"]["secretName"], "sidecar-tokens");
    // With tokens configured every call needs one: the app has its own.
    let app = named(pod, "containers", "app");
    let token = app["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "SIDECAR_TOKEN")
        .expect("SIDECAR_TOKEN");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        "app-sidecar-token"
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        sidecar["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        sidecar["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
}
