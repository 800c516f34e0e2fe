use super::*;

#[test]
fn rings_that_carry_frames_and_tensors_hold_the_largest_message() {
    let config = Config::default();
    let big = config.max_message_bytes;
    let text = config.channel(Family::Text);
    assert_eq!(text.request_ring_bytes, 4 << 20);
    assert_eq!(text.response_ring_bytes, 4 << 20);
    let vision = config.channel(Family::Vision);
    assert!(vision.request_ring_bytes > big);
    assert_eq!(vision.response_ring_bytes, 4 << 20);
    let lite = config.channel(Family::Lite);
    assert!(lite.request_ring_bytes > big && lite.response_ring_bytes > big);
    // The configured ring size still wins when it is larger.
    let mut roomy = Config::default();
    roomy.workers.channel_bytes = 256 << 20;
    assert_eq!(roomy.channel(Family::Vision).request_ring_bytes, 256 << 20);
}

#[test]
fn sizes_read_with_and_without_units() {
    for (text, want) in [
        ("4096", 4096),
        ("512MiB", 512 << 20),
        ("2 GiB", 2 << 30),
        ("100MB", 100_000_000),
        ("1.5GiB", 3 << 29),
    ] {
        assert_eq!(bytes::parse(text), Ok(want), "{text}");
    }
    assert!(bytes::parse("12 parsecs").is_err());
    assert!(bytes::parse("MiB").is_err());
    let c: Config = toml::from_str(
        "[memory]\nhost_reserve = \"1GiB\"\n[[models]]\nid='a'\nfamily='text'\npath='x'\nmemory_budget = 1000\nkeep_alive = 2.5\n",
    )
    .unwrap();
    assert_eq!(c.memory.host_reserve, 1 << 30);
    assert_eq!(c.models[0].memory_budget, 1000);
    assert_eq!(c.models[0].keep_alive, Some(Duration::from_millis(2500)));
}

#[test]
fn the_example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sidecar.toml");
    let c = Config::from_file(&path).unwrap();
    assert_eq!(c.models[0].id, "smollm2");
    assert_eq!(c.models[0].family, Family::Text);
    assert!(c.models[0].preload);
    c.validate().unwrap();
}

#[test]
fn unknown_keys_and_duplicate_ids_are_refused() {
    assert!(toml::from_str::<Config>("listen_typo = 1").is_err());
    let c: Config = toml::from_str(
        "[[models]]\nid='a'\nfamily='text'\npath='x'\n[[models]]\nid='a'\nfamily='text'\npath='y'\n",
    )
    .unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("twice"));
}

#[test]
fn prompt_cache_is_on_by_default_and_refused_on_an_embedding_model() {
    let model = |text: &str| {
        toml::from_str::<Config>(&format!(
            "[[models]]\nid='m'\nfamily='text'\npath='x'\ntext = {{ {text} }}\n"
        ))
        .unwrap()
    };
    let c = model("");
    assert_eq!(c.models[0].text.to_proto().prompt_cache, None);
    c.validate().unwrap();
    let c = model("prompt_cache = false");
    assert_eq!(c.models[0].text.to_proto().prompt_cache, Some(false));
    c.validate().unwrap();
    let err = model("prompt_cache = true, embeddings = true")
        .validate()
        .unwrap_err()
        .to_string();
    for part in [
        "\"m\"",
        "text.prompt_cache = true",
        "text.embeddings = true",
    ] {
        assert!(err.contains(part), "{err}");
    }
    assert!(
        toml::from_str::<Config>(
            "[[models]]\nid='m'\nfamily='text'\npath='x'\ntext = { prompt_cache = 1 }\n"
        )
        .is_err()
    );
}

#[test]
fn a_vision_model_takes_its_ssd_options_from_the_file() {
    let c: Config = toml::from_str(
        "[[models]]\nid='palm'\nfamily='vision'\npath='palm_detection_lite.tflite'\nvision = { threads = 2, ssd = { input_width = 192, input_height = 192, min_scale = 0.1484375, max_scale = 0.75, strides = [8, 16, 16, 16], num_keypoints = 7, labels = ['palm'] } }\n",
    )
    .unwrap();
    let wire = c.models[0].vision.to_proto();
    assert_eq!(wire.threads, 2);
    let ssd = wire.ssd.expect("ssd options");
    assert_eq!((ssd.input_width, ssd.num_keypoints), (192, 7));
    assert_eq!(ssd.strides, [8, 16, 16, 16]);
    assert_eq!(ssd.labels, ["palm"]);
    assert_eq!(ssd.x_scale, 0.0, "unset fields keep their defaults");
    // A misspelt option is an error, not a silent default.
    let typo = "[[models]]\nid='p'\nfamily='vision'\npath='p.tflite'\nvision = { ssd = { stride = [8] } }\n";
    assert!(toml::from_str::<Config>(typo).is_err());
    // Without options: BlazeFace's, chosen by the worker.
    assert_eq!(VisionSpec::default().to_proto().ssd, None);
}

#[test]
fn a_vision_model_takes_its_limits_from_the_file() {
    let c: Config = toml::from_str(
        "[[models]]\nid='faces'\nfamily='vision'\npath='f.tflite'\nvision = { max_pixels = 2073600, max_pictures_per_chunk = 16, max_batch_images = 32, max_tracks = 8, max_pending_bytes = 8388608 }\n",
    )
    .unwrap();
    let wire = c.models[0].vision.to_proto();
    assert_eq!(
        (
            wire.max_pixels,
            wire.max_pictures_per_chunk,
            wire.max_batch_images,
            wire.max_tracks
        ),
        (2_073_600, 16, 32, 8)
    );
    assert_eq!(wire.max_pending_bytes, 8 << 20);
    // Unset: 0 on the wire, the worker's documented defaults.
    let wire = VisionSpec::default().to_proto();
    assert_eq!(
        (
            wire.max_pixels,
            wire.max_pictures_per_chunk,
            wire.max_batch_images,
            wire.max_tracks
        ),
        (0, 0, 0, 0)
    );
    let typo = "[[models]]\nid='p'\nfamily='vision'\npath='p.tflite'\nvision = { max_pixel = 5 }\n";
    assert!(toml::from_str::<Config>(typo).is_err());
}

#[test]
fn an_api_other_hosts_can_reach_is_warned_about_unless_accepted() {
    let mut c = Config::default();
    assert_eq!(c.exposure(), None, "loopback by default");
    c.listen = "[::1]:50051".parse().unwrap();
    assert_eq!(c.exposure(), None);
    for public in ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"] {
        c.listen = public.parse().unwrap();
        let warning = c.exposure().expect("a warning");
        assert!(
            warning.contains(public) && warning.contains("--insecure-public"),
            "{warning}"
        );
    }
    c.insecure_public = true;
    assert_eq!(c.exposure(), None, "accepted");
    let file: Config = toml::from_str("listen = \"0.0.0.0:1\"\ninsecure_public = true\n").unwrap();
    assert_eq!(file.exposure(), None);
    let tokens: Config =
        toml::from_str("listen = \"0.0.0.0:1\"\n[auth]\ntokens_file = \"/etc/sidecar/tokens\"\n")
            .unwrap();
    let clear = tokens
        .exposure()
        .expect("tokens without TLS travel in clear");
    assert!(
        clear.contains("TOKENS TRAVEL IN CLEAR") && clear.contains("[tls]"),
        "{clear}"
    );
    let tls: Config = toml::from_str(
        "listen = \"0.0.0.0:1\"\n[auth]\ntokens_file = \"/etc/sidecar/tokens\"\n\
         [tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n",
    )
    .unwrap();
    assert_eq!(tls.exposure(), None, "tokens over TLS tell callers apart");
    // The HTTP API gets the same warnings at its own address.
    let public: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let http = tokens
        .exposure_at("HTTP API", public)
        .expect("tokens in clear on the HTTP API");
    assert!(
        http.starts_with("THE HTTP API'S TOKENS TRAVEL IN CLEAR: it listens on 0.0.0.0:8080"),
        "{http}"
    );
    let open: Config = toml::from_str("").unwrap();
    assert!(
        open.exposure_at("HTTP API", public)
            .is_some_and(|w| w.starts_with("THE HTTP API IS OPEN")),
        "no tokens, no TLS"
    );
    assert_eq!(
        tokens.exposure_at("HTTP API", "127.0.0.1:8080".parse().unwrap()),
        None,
        "loopback"
    );
}

#[test]
fn the_auth_section_is_checked_naming_the_key() {
    let c: Config = toml::from_str(
        "[auth]\ntokens_file = \"/t\"\nclient_ids = [\"web\", \"batch-1\"]\nreload_interval = 0.5\n",
    )
    .unwrap();
    assert_eq!(c.auth.reload_interval, Duration::from_millis(500));
    assert!(c.auth.validate().is_ok());
    assert_eq!(
        Config::default().auth.reload_interval,
        Duration::from_secs(2)
    );
    assert!(toml::from_str::<Config>("[auth]\ntoken_file = \"/t\"\n").is_err());
    for (section, names) in [
        ("client_ids = [\"a b\"]", "auth.client_ids entry \"a b\""),
        (
            "client_ids = [\"anonymous\"]",
            "auth.client_ids entry \"anonymous\"",
        ),
        ("client_ids = [\"a\", \"a\"]", "appears twice"),
        ("reload_interval = 0", "auth.reload_interval"),
        ("tokens_file = \"\"", "auth.tokens_file is empty"),
    ] {
        let c: Config = toml::from_str(&format!("[auth]\n{section}\n")).unwrap();
        let err = c.validate().expect_err(section).to_string();
        assert!(err.contains(names), "{section}: {err}");
    }
}

#[test]
fn the_workers_seccomp_mode_is_one_of_three_words() {
    let c: Config = toml::from_str("").unwrap();
    assert_eq!(c.workers.seccomp, SeccompMode::Enforce);
    for (word, mode) in [
        ("enforce", SeccompMode::Enforce),
        ("log", SeccompMode::Log),
        ("off", SeccompMode::Off),
    ] {
        let c: Config = toml::from_str(&format!("[workers]\nseccomp = \"{word}\"\n")).unwrap();
        assert_eq!(
            (c.workers.seccomp, c.workers.seccomp.as_str()),
            (mode, word)
        );
    }
    let e = toml::from_str::<Config>("[workers]\nseccomp = \"permissive\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("permissive") && e.contains("enforce") && e.contains("log") && e.contains("off"),
        "{e}"
    );
}

#[test]
fn workers_uid_and_gid_go_together_and_need_a_root_supervisor() {
    let c: Config = toml::from_str("[workers]\nuid = 65534\ngid = 65534\n").unwrap();
    c.validate().unwrap();
    assert_eq!(c.workers.identity(), Some((65534, 65534)));
    c.workers.check_identity(0).unwrap();
    let e = c.workers.check_identity(1000).unwrap_err().to_string();
    assert!(
        e.contains("workers.uid = 65534, workers.gid = 65534")
            && e.contains("needs the supervisor to start as root (it runs as uid 1000)"),
        "{e}"
    );
    let half: Config = toml::from_str("[workers]\nuid = 65534\n").unwrap();
    let e = half.validate().unwrap_err().to_string();
    assert!(e.contains("workers.uid and workers.gid go together"), "{e}");
    assert_eq!(Config::default().workers.identity(), None);
    Config::default().workers.check_identity(1000).unwrap();
}

#[test]
fn the_lite_runtime_directory_holds_no_store_and_no_secret() {
    let ok = Config {
        model_store: "/srv/models".into(),
        lite_runtime: "/srv/runtime/litert/libLiteRt.so".into(),
        ..Config::default()
    };
    assert!(ok.check_runtime_dir().is_ok());
    for (lib, what) in [
        ("/libLiteRt.so", "everything"),
        ("/srv/libLiteRt.so", "model_store"),
        ("/srv/models/libLiteRt.so", "model_store"),
    ] {
        let c = Config {
            lite_runtime: lib.into(),
            ..ok.clone()
        };
        let e = c.check_runtime_dir().unwrap_err().to_string();
        assert!(e.contains(lib) && e.contains(what), "{e}");
    }
    let mut tokens = ok.clone();
    tokens.auth.tokens_file = Some("/srv/runtime/litert/tokens".into());
    let e = tokens.check_runtime_dir().unwrap_err().to_string();
    assert!(e.contains("auth.tokens_file"), "{e}");
}

#[test]
fn workers_may_not_run_as_root_by_name() {
    let c: Config = toml::from_str("[workers]\nuid = 0\ngid = 0\n").unwrap();
    let e = c.workers.check_pair().unwrap_err().to_string();
    assert!(e.contains("workers.uid = 0"), "{e}");
    let ok: Config = toml::from_str("[workers]\nuid = 65534\ngid = 0\n").unwrap();
    assert!(ok.workers.check_pair().is_ok());
}
