//! Tables for people, JSON for scripts.

use serde_json::{Value, json};
use sidecar_proto::v1::{
    LogLine, ModelAlias, ModelInfo, ReloadOutcome, SandboxState, SetAliasResponse, StatusResponse,
    WorkerInfo,
};

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / f64::from(1 << 20))
}

/// Prints rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn state(m: &ModelInfo) -> &'static str {
    m.state().as_str_name().trim_start_matches("MODEL_STATE_")
}

fn model_json(m: &ModelInfo) -> Value {
    let mem = m.memory.clone().unwrap_or_default();
    json!({
        "model_id": m.model_id,
        "family": m.family().as_str_name().trim_start_matches("MODEL_FAMILY_"),
        "path": m.path,
        "version": m.version,
        "current": m.current,
        "versions": m.versions,
        "aliases": m.aliases,
        "swap": m.swap,
        "state": state(m),
        "pid": m.worker_pid,
        "restarts": m.restarts,
        "last_kill_reason": m.last_kill_reason().as_str_name().trim_start_matches("KILL_REASON_"),
        "last_error": m.last_error,
        "pinned": m.pinned,
        "required": m.required,
        "in_flight": m.in_flight,
        "queue_depth": m.queue_depth,
        "memory": {
            "private_bytes": mem.host_private_bytes,
            "file_bytes": mem.host_file_bytes,
            "budget_bytes": mem.host_budget_bytes,
            "estimate_bytes": mem.estimate_bytes,
            "peak_resident_bytes": mem.peak_resident_bytes,
            "gpu_bytes": mem.gpu.iter().map(|g| g.used_bytes).sum::<u64>(),
        },
    })
}

fn model_rows(models: &[ModelInfo]) -> Vec<Vec<String>> {
    models
        .iter()
        .map(|m| {
            let mem = m.memory.clone().unwrap_or_default();
            vec![
                if m.current {
                    m.model_id.clone()
                } else {
                    format!("{}@{}", m.model_id, m.version)
                },
                m.family()
                    .as_str_name()
                    .trim_start_matches("MODEL_FAMILY_")
                    .to_lowercase(),
                state(m).to_owned(),
                m.worker_pid.to_string(),
                m.restarts.to_string(),
                mib(mem.host_private_bytes),
                mib(mem.gpu.iter().map(|g| g.used_bytes).sum()),
                m.last_error.clone(),
            ]
        })
        .collect()
}

const MODEL_HEADER: [&str; 8] = [
    "MODEL",
    "FAMILY",
    "STATE",
    "PID",
    "RESTARTS",
    "MEM_MIB",
    "GPU_MIB",
    "LAST_ERROR",
];

/// `sidecarctl status`.
pub(super) fn status(s: &StatusResponse, json_out: bool) {
    let host = s.host.unwrap_or_default();
    if json_out {
        let gpus: Vec<Value> = s
            .gpus
            .iter()
            .map(|g| {
                json!({"index": g.index, "name": g.name, "uuid": g.uuid,
                "total_bytes": g.total_bytes, "used_bytes": g.used_bytes,
                "free_bytes": g.free_bytes, "reserve_bytes": g.reserve_bytes})
            })
            .collect();
        let v = json!({
            "version": s.version, "pid": s.pid, "uptime_s": s.uptime_s, "ready": s.ready,
            "host": {"total_bytes": host.total_bytes, "available_bytes": host.available_bytes,
                "cgroup_limit_bytes": host.cgroup_limit_bytes, "cgroup_usage_bytes": host.cgroup_usage_bytes,
                "cgroup_oom_kills": host.cgroup_oom_kills, "reserve_bytes": host.reserve_bytes},
            "gpu_monitoring": s.gpu_monitoring,
            "gpus": gpus,
            "models": s.models.iter().map(model_json).collect::<Vec<_>>(),
            "sandbox": s.sandbox.as_ref().map(sandbox_json),
            "worker_sandboxes": s.worker_sandboxes.iter().map(|w| json!({
                "model_id": w.model_id, "pid": w.pid,
                "sandbox": w.sandbox.as_ref().map(sandbox_json)})).collect::<Vec<_>>(),
            "last_reload": s.last_reload.as_ref().map(reload_json),
        });
        println!("{v}");
        return;
    }
    println!(
        "sidecar {} pid {} up {} s, {}",
        s.version,
        s.pid,
        s.uptime_s,
        if s.ready { "READY" } else { "NOT READY" }
    );
    println!(
        "host memory: {} MiB available of {} MiB (reserve {} MiB){}",
        mib(host.available_bytes),
        mib(host.total_bytes),
        mib(host.reserve_bytes),
        if host.cgroup_limit_bytes > 0 {
            format!(
                "; container {} MiB of {} MiB, {} OOM kills",
                mib(host.cgroup_usage_bytes),
                mib(host.cgroup_limit_bytes),
                host.cgroup_oom_kills
            )
        } else {
            String::new()
        }
    );
    if !s.gpu_monitoring {
        println!("GPUs: monitoring off (no NVML)");
    }
    for g in &s.gpus {
        println!(
            "GPU {} {}: {} MiB free of {} MiB (reserve {} MiB)",
            g.index,
            g.name,
            mib(g.free_bytes),
            mib(g.total_bytes),
            mib(g.reserve_bytes)
        );
    }
    if let Some(sb) = &s.sandbox {
        println!("supervisor sandbox: {}", sandbox_line(sb));
    }
    if let Some(r) = &s.last_reload {
        println!(
            "last config reload: {} at {} ms ({}): {} added, {} removed, {} swapped, {} refused, {} settings not applied",
            if r.ok { "ok" } else { "ERROR" },
            r.unix_ms,
            r.trigger,
            r.added.len(),
            r.removed.len(),
            r.swapped.len(),
            r.refused.len() + r.errors.len(),
            r.not_applied.len()
        );
    }
    println!();
    table(&MODEL_HEADER, &model_rows(&s.models));
    if !s.worker_sandboxes.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .worker_sandboxes
            .iter()
            .map(|w| {
                let sb = w.sandbox.clone().unwrap_or_default();
                vec![
                    w.model_id.clone(),
                    w.pid.to_string(),
                    sb.applied.join(", "),
                    sb.missing.join("; "),
                ]
            })
            .collect();
        table(&["MODEL", "PID", "SANDBOX", "MISSING"], &rows);
    }
}

/// A sandbox as JSON.
fn sandbox_json(s: &SandboxState) -> Value {
    json!({"applied": s.applied, "missing": s.missing})
}

/// A sandbox on one line: what holds, then what is missing.
fn sandbox_line(s: &SandboxState) -> String {
    if s.missing.is_empty() {
        s.applied.join(", ")
    } else {
        format!(
            "{}; MISSING: {}",
            s.applied.join(", "),
            s.missing.join("; ")
        )
    }
}

/// `sidecarctl workers`.
pub(super) fn workers(w: &[WorkerInfo], json_out: bool) {
    if json_out {
        let v: Vec<Value> = w
            .iter()
            .map(|w| {
                json!({"model_id": w.model_id, "pid": w.pid,
                    "state": w.state().as_str_name().trim_start_matches("MODEL_STATE_"),
                    "restarts": w.restarts, "last_exit": w.last_exit,
                    "last_kill_reason": w.last_kill_reason().as_str_name().trim_start_matches("KILL_REASON_"),
                    "in_flight": w.in_flight, "queue_depth": w.queue_depth,
                    "heartbeat_age_ms": w.heartbeat_age_ms, "worker_version": w.worker_version,
                    "private_bytes": w.memory.clone().unwrap_or_default().host_private_bytes})
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    let rows: Vec<Vec<String>> = w
        .iter()
        .map(|w| {
            vec![
                w.model_id.clone(),
                w.pid.to_string(),
                w.state()
                    .as_str_name()
                    .trim_start_matches("MODEL_STATE_")
                    .to_owned(),
                w.restarts.to_string(),
                w.in_flight.to_string(),
                w.queue_depth.to_string(),
                w.heartbeat_age_ms.to_string(),
                mib(w.memory.clone().unwrap_or_default().host_private_bytes),
                w.last_exit.clone(),
            ]
        })
        .collect();
    table(
        &[
            "MODEL",
            "PID",
            "STATE",
            "RESTARTS",
            "IN_FLIGHT",
            "QUEUED",
            "BEAT_MS",
            "MEM_MIB",
            "LAST_EXIT",
        ],
        &rows,
    );
}

/// A model after a command.
pub(super) fn model(m: Option<&ModelInfo>, json_out: bool) {
    let Some(m) = m else { return };
    if json_out {
        println!("{}", model_json(m));
    } else {
        table(&MODEL_HEADER, &model_rows(std::slice::from_ref(m)));
    }
}

/// One log line.
pub(super) fn log_line(l: &LogLine, json_out: bool) {
    let source = l
        .source()
        .as_str_name()
        .trim_start_matches("LOG_SOURCE_")
        .to_lowercase();
    if json_out {
        println!(
            "{}",
            json!({"unix_ms": l.unix_ms, "model_id": l.model_id, "pid": l.pid,
                "source": source, "text": l.text, "request_id": l.request_id,
                "dropped_before": l.dropped_before})
        );
        return;
    }
    if l.dropped_before > 0 {
        println!("... {} lines dropped (slow reader)", l.dropped_before);
    }
    println!(
        "{} {}[{}] {source}: {}",
        l.unix_ms, l.model_id, l.pid, l.text
    );
}

/// A config reload's outcome as JSON.
fn reload_json(r: &ReloadOutcome) -> Value {
    json!({
        "unix_ms": r.unix_ms, "ok": r.ok, "trigger": r.trigger, "file": r.file,
        "added": r.added, "removed": r.removed, "swapped": r.swapped,
        "unchanged": r.unchanged, "refused": r.refused,
        "not_applied": r.not_applied, "errors": r.errors,
    })
}

/// `sidecarctl reload`'s answer: one line a change.
pub(super) fn reload(r: &ReloadOutcome, json_out: bool) {
    if json_out {
        println!("{}", reload_json(r));
        return;
    }
    println!(
        "config {} reloaded: {}",
        r.file,
        if r.ok { "ok" } else { "NOT APPLIED WHOLE" }
    );
    for (what, list) in [
        ("added", &r.added),
        ("removed", &r.removed),
        ("swapped", &r.swapped),
        ("unchanged", &r.unchanged),
        ("refused", &r.refused),
        ("not applied", &r.not_applied),
        ("error", &r.errors),
    ] {
        for item in list {
            println!("  {what}: {item}");
        }
    }
}

/// What an alias names, as `sidecarctl` prints it.
fn target(a: &ModelAlias) -> String {
    match a.version {
        0 => a.model_id.clone(),
        v => format!("{}@{v}", a.model_id),
    }
}

fn alias_json(a: &ModelAlias) -> Value {
    json!({"alias": a.alias, "model_id": a.model_id, "version": a.version, "target": target(a)})
}

/// An alias just set, and what it named before.
pub(super) fn alias_set(r: &SetAliasResponse, json_out: bool) {
    let Some(a) = &r.alias else { return };
    if json_out {
        let mut v = alias_json(a);
        v["previous"] = r.previous.as_ref().map_or(Value::Null, alias_json);
        println!("{v}");
        return;
    }
    match &r.previous {
        Some(p) => println!("alias {} -> {} (was {})", a.alias, target(a), target(p)),
        None => println!("alias {} -> {}", a.alias, target(a)),
    }
}

/// Every alias.
pub(super) fn aliases(list: &[ModelAlias], json_out: bool) {
    if json_out {
        println!("{}", Value::Array(list.iter().map(alias_json).collect()));
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| vec![a.alias.clone(), target(a)])
        .collect();
    table(&["ALIAS", "TARGET"], &rows);
}
