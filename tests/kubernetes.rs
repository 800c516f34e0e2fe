//! `deploy/kubernetes`: every manifest is valid against the Kubernetes
//! API's schemas (`kubernetes-validate --strict` from PyPI, which carries
//! the schemas: nothing is fetched), a broken one is refused with the
//! field named, and the HorizontalPodAutoscaler scales the Deployment on a
//! metric the supervisor exports, through the Prometheus adapter's rule.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use e2e::root;

/// The Kubernetes versions the manifests are checked against: the oldest
/// minor still commonly run (1.30) and the newest the tool carries.
const VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Every `.yaml` under `deploy/kubernetes`, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` on `files` against `version`: (exit
/// code, stdout and stderr together).
fn validate(version: &str, files: &[PathBuf]) -> (i32, String) {
    let tool = root().join(".venv/bin/kubernetes-validate");
    assert!(
        tool.is_file(),
        "{} is missing: run scripts/setup.sh",
        tool.display()
    );
    let out = Command::new(tool)
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Every document of `path`, as JSON (parsed by PyYAML).
fn documents(path: &Path) -> Vec<Value> {
    let out = Command::new(root().join(".venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
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
fn every_manifest_is_valid_against_the_kubernetes_schemas() {
    let files = manifest_files();
    let names: Vec<&str> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str())
        .collect();
    assert_eq!(names, ["hpa.yaml", "sidecar.yaml"]);
    for version in VERSIONS {
        let (code, out) = validate(version, &files);
        eprintln!("{out}");
        assert_eq!(code, 0, "kubernetes {version}:\n{out}");
        let minor = version.trim_end_matches(".0");
        // One line per resource, each passed: nothing skipped as unknown.
        let passed: Vec<String> = out
            .lines()
            .map(|l| {
                let (_, rest) = l.split_once(" passed for resource ").unwrap_or(("", l));
                rest.to_owned()
            })
            .collect();
        assert_eq!(
            passed,
            [
                "horizontalpodautoscaler/app",
                "configmap/prometheus-adapter",
                "configmap/sidecar-config",
                "persistentvolumeclaim/sidecar-models",
                "deployment/app",
            ]
            .map(|r| format!("{r} against version {minor}")),
            "{out}"
        );
    }
}

/// A manifest with a wrong type and one with a misspelt field (which a
/// substring check, or PyYAML alone, lets through) are refused, the field
/// and the value named.
#[test]
fn a_broken_manifest_is_refused_with_the_field_named() {
    let good = std::fs::read_to_string(root().join("deploy/kubernetes/sidecar.yaml"))
        .expect("sidecar.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, from, to, error) in [
        (
            "replicas.yaml",
            "  replicas: 1\n",
            "  replicas: one\n",
            "spec.replicas: 'one' is not of type 'integer', 'null'",
        ),
        (
            "typo.yaml",
            "            failureThreshold: 120\n",
            "            failureTreshold: 120\n",
            "spec.template.spec.containers.1.startupProbe: Additional properties are not allowed ('failureTreshold' was unexpected)",
        ),
    ] {
        assert_eq!(
            good.matches(from).count(),
            1,
            "{from:?} once in sidecar.yaml"
        );
        let path = dir.path().join(name);
        std::fs::write(&path, good.replace(from, to)).expect("write");
        let (code, out) = validate("1.37.0", std::slice::from_ref(&path));
        eprintln!("{out}");
        assert_eq!(code, 1, "{name}: {out}");
        let line = format!(
            "ERROR {} did not validate for resource deployment/app against version 1.37: {error}",
            path.display()
        );
        assert!(out.lines().any(|l| l == line), "{line:?} in\n{out}");
        // The other resources of the file still pass.
        assert!(
            out.contains("passed for resource configmap/sidecar-config"),
            "{out}"
        );
    }
}

#[test]
fn the_autoscaler_scales_the_deployment_on_the_sidecars_queue_depth() {
    let docs = documents(&root().join("deploy/kubernetes/hpa.yaml"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["HorizontalPodAutoscaler", "ConfigMap"]);
    let (hpa, adapter) = (&docs[0], &docs[1]);
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");

    // The target is the Deployment of sidecar.yaml (the app's pods, each
    // with its sidecar).
    let deployment = documents(&root().join("deploy/kubernetes/sidecar.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (&target["apiVersion"], &target["kind"], &target["name"]),
        (
            &deployment["apiVersion"],
            &deployment["kind"],
            &deployment["metadata"]["name"]
        )
    );
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0]["type"], "Pods");
    let metric = metrics[0]["pods"]["metric"]["name"]
        .as_str()
        .expect("metric name");
    assert_eq!(
        metrics[0]["pods"]["target"],
        serde_json::json!({"type": "AverageValue", "averageValue": "2"})
    );
    // Scraped: the pod template's annotations point at the admin port.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9090");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The adapter's rule makes that metric of the series the supervisor
    // exports, per pod.
    let config = adapter["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config).expect("write");
    let rules = &documents(&file)[0]["rules"];
    let rules = rules.as_array().expect("rules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule["name"]["as"], metric);
    assert_eq!(rule["name"]["matches"], format!("^{metric}$"));
    assert_eq!(
        rule["seriesQuery"],
        format!("{metric}{{namespace!=\"\",pod!=\"\"}}")
    );
    assert_eq!(
        rule["resources"]["overrides"],
        serde_json::json!({"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}})
    );
    let query = rule["metricsQuery"].as_str().expect("metricsQuery");
    assert!(
        query.starts_with("sum(") && query.ends_with("by (<<.GroupBy>>)"),
        "a pod's models summed: {query}"
    );

    // The supervisor exports that series, per model, as a gauge.
    let rendered =
        supervisor::metrics::Metrics::new().render(&[supervisor::metrics::ModelGauges {
            model: "smollm2".into(),
            state: supervisor::lifecycle::State::Ready,
            in_flight: 1,
            queue_depth: 3,
            uptime_s: Some(5),
            memory: None,
            version: 1,
            versions: 1,
            swapping: false,
            aliases: Vec::new(),
        }]);
    let lines: Vec<&str> = rendered.lines().filter(|l| l.contains(metric)).collect();
    assert_eq!(
        lines,
        [
            "# HELP sidecar_queue_depth Calls waiting per model.",
            "# TYPE sidecar_queue_depth gauge",
            "sidecar_queue_depth{model=\"smollm2\"} 3",
        ],
        "{rendered}"
    );
}
