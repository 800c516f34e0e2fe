//! `Config::load_whole` (every error of a file) and
//! `Config::settings_changed` (what a reload cannot apply).

use clap::Parser;

use super::{Cli, Config};

/// A file in a fresh directory and the flags that name it.
fn file(text: &str) -> (tempfile::TempDir, Cli) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, text).expect("write");
    let cli = Cli::parse_from(["sidecar", "--config", path.to_str().expect("utf-8")]);
    (dir, cli)
}

#[test]
fn every_error_of_a_file_is_reported() {
    let (_dir, cli) = file(
        "listen = 5\n\
         [[models]]\nid = \"ok\"\nfamily = \"lite\"\npath = \"a.tflite\"\n\
         [[models]]\nid = \"x1\"\nfamily = \"sound\"\npath = \"a.tflite\"\n\
         [[models]]\nid = \"x2\"\nfamily = \"lite\"\npath = \"b.tflite\"\nbogus = 1\n\
         [[models]]\nid = \"x3\"\nfamily = \"lite\"\npath = \"../c.tflite\"\n",
    );
    let checked = std::cell::RefCell::new(Vec::new());
    let errors = Config::load_whole(&cli, &|m| {
        checked.borrow_mut().push(m.id.clone());
        if m.path.contains("..") {
            Err(format!("model {:?}: path {:?} contains '..'", m.id, m.path))
        } else {
            Ok(())
        }
    })
    .expect_err("an invalid file");
    assert_eq!(
        *checked.borrow(),
        ["ok", "x3"],
        "only the entries that parse"
    );
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].contains("models[1] (id \"x1\")")
            && errors[0].contains("unknown variant `sound`")
    );
    assert!(errors[1].contains("models[2] (id \"x2\")") && errors[1].contains("bogus"));
    assert_eq!(
        errors[2],
        "model \"x3\": path \"../c.tflite\" contains '..'"
    );
    assert!(errors[3].contains("listen"), "{}", errors[3]);

    let (_dir, cli) = file("[[models]\nid = 1\n");
    let errors = Config::load_whole(&cli, &|_| Ok(())).expect_err("a syntax error");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("sidecar.toml") && errors[0].contains("line 1"),
        "{}",
        errors[0]
    );

    // Two entries under one id and contradicting options: both named.
    let (_dir, cli) = file(
        "[[models]]\nid = \"a\"\nfamily = \"text\"\npath = \"a.gguf\"\ntext = { prompt_cache = true, embeddings = true }\n\
         [[models]]\nid = \"a\"\nfamily = \"text\"\npath = \"b.gguf\"\n",
    );
    let errors = Config::load_whole(&cli, &|_| Ok(())).expect_err("two errors");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("prompt_cache")));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("model id \"a\" appears twice"))
    );
}

#[test]
fn a_valid_file_keeps_its_flags_and_names_the_settings_that_changed() {
    let (_dir, cli) = file(
        "listen = \"127.0.0.1:7000\"\n[[models]]\nid = \"m\"\nfamily = \"lite\"\npath = \"a.tflite\"\n",
    );
    let running = Config::default();
    let new = Config::load_whole(&cli, &|_| Ok(())).expect("valid");
    assert_eq!(new.models.len(), 1);
    assert!(new.origin.is_some(), "a reload reads the same file again");
    assert_eq!(
        running.settings_changed(&new),
        ["listen: 127.0.0.1:50051 -> 127.0.0.1:7000 (not applied: restart needed)"]
    );
    assert!(new.settings_changed(&new).is_empty());
    let mut traffic = new.clone();
    traffic.deadlines.unary = std::time::Duration::from_secs(1);
    assert_eq!(
        new.settings_changed(&traffic),
        [
            "deadlines: Deadlines { unary: 30s, stream: 300s, load: 120s, cancel_grace: 2s, max: 3600s } -> Deadlines { unary: 1s, stream: 300s, load: 120s, cancel_grace: 2s, max: 3600s } (not applied: restart needed)"
        ]
    );
}

#[test]
fn without_a_file_there_is_nothing_to_reload() {
    let cli = Cli::parse_from(["sidecar"]);
    let errors = Config::load_whole(&cli, &|_| Ok(())).expect_err("no file");
    assert!(errors[0].contains("without a config file"), "{errors:?}");
}

#[test]
fn every_bad_alias_of_a_file_is_reported() {
    let (_dir, cli) = file(
        "[[models]]\nid = \"a\"\nfamily = \"lite\"\npath = \"a.tflite\"\n\
         [aliases]\nok = \"a\"\npinned = \"a@1\"\n\"Bad Name\" = \"a\"\na = \"a\"\n\
         ghost = \"nope\"\nzero = \"a@0\"\n",
    );
    let errors = Config::load_whole(&cli, &|_| Ok(())).expect_err("bad aliases");
    let text = errors.join("\n");
    for words in [
        "[aliases] \"Bad Name\": an alias is 1..64 characters",
        "[aliases] \"a\": a model of the file has this id",
        "[aliases] \"ghost\": \"nope\" is not a model of the file's [[models]]",
        "[aliases] \"zero\": model_id \"a@0\": the version after '@' must be a number",
    ] {
        assert!(text.contains(words), "{words:?} not in\n{text}");
    }
    assert_eq!(errors.len(), 4, "{text}");
    let many: String = (0..=crate::ids::MAX_ALIASES)
        .map(|i| format!("n{i} = \"a\"\n"))
        .collect();
    let (_dir, cli) = file(&format!(
        "[[models]]\nid = \"a\"\nfamily = \"lite\"\npath = \"a.tflite\"\n[aliases]\n{many}"
    ));
    let errors = Config::load_whole(&cli, &|_| Ok(())).expect_err("too many");
    assert_eq!(errors, ["config: [aliases] has 257 entries; at most 256"]);
}
