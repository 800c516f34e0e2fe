//! The supervisor's top-level modules form no cycle.
//!
//! The graph is built from the sources: every `crate::` path (in `use`
//! lines, brace groups included, and inline), and every `super::` chain that
//! climbs to the crate root, names the top-level module it reaches. A cycle
//! fails the test with its path, so a change that makes two modules import
//! each other is caught where it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file under `src/` (`worker/actor/mod.rs` →
/// `["worker", "actor"]`); `None` for the crate roots and binaries.
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    match parts.first().map(String::as_str) {
        None | Some("lib") | Some("main") => None,
        Some(_) => Some(parts),
    }
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first identifier of each item of a `{ ... }` group at `s` (which
/// starts after the `{`).
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut at_item = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident(&s[i..]).to_owned());
                at_item = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level names `text` reaches from the file at `module` (its module
/// path), through `crate::` and through `super::` chains that reach the root.
fn reached(module: &[String], text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            match after.strip_prefix('{') {
                Some(group) => out.extend(group_heads(group)),
                None => out.push(ident(after).to_owned()),
            }
            rest = after;
        }
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            // Only a chain that starts here (not the tail of a longer one).
            let before = &rest[..at];
            if before.ends_with("::") {
                rest = &rest[at + 7..];
                continue;
            }
            let mut after = &rest[at..];
            let mut ups = 0;
            while let Some(a) = after.strip_prefix("super::") {
                ups += 1;
                after = a;
            }
            // A file's own module is `module`; each `super` climbs one.
            if ups >= module.len() {
                match after.strip_prefix('{') {
                    Some(group) => out.extend(group_heads(group)),
                    None => out.push(ident(after).to_owned()),
                }
            }
            rest = after;
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(&src, f))
        .map(|m| m[0].clone())
        .collect();
    let mut g = Graph::new();
    for file in &files {
        let Some(module) = module_path(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let edges = g.entry(module[0].clone()).or_default();
        for to in reached(&module, &text) {
            if to != module[0] && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    g
}

/// A cycle, as the path of modules around it, if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let g = graph();
    // The walk found the crate: a dozen modules and the edges between them.
    assert!(g.len() >= 12, "too few modules found: {:?}", g.keys());
    let edges: usize = g.values().map(BTreeSet::len).sum();
    assert!(edges >= 20, "too few edges found ({edges}): {g:?}");
    assert!(
        g["app"].contains("registry") && g["worker"].contains("memory"),
        "expected edges missing: {g:?}"
    );
    if let Some(cycle) = find_cycle(&g) {
        panic!("module cycle: {}\ngraph: {g:#?}", cycle.join(" -> "));
    }
}

#[test]
fn the_reader_sees_every_form_of_path_and_the_finder_sees_a_cycle() {
    let m = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let text = "use crate::{config::Config, error::Error};\n\
                let x = crate::clock::now_ms();\n\
                // use crate::commented;\n\
                use super::super::{metrics::M, logs};\n\
                use super::sibling;\n";
    let got = reached(&m(&["worker", "actor"]), text);
    assert_eq!(got, ["config", "error", "clock", "metrics", "logs"]);
    // From a top-level file, `super::` is the crate root.
    assert_eq!(
        reached(&m(&["registry"]), "use super::memory::Guard;"),
        ["memory"]
    );
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_owned())
    );
}
