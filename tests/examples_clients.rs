//! Every client example in `examples/clients/` (the Python scripts and the
//! Rust `sidecar-examples` subcommands) run against the real sidecar with
//! SmolLM2, MiniLM and BlazeFace, each with a short input, and the lines
//! that prove it worked checked: tokens streamed and a stream cancelled,
//! a two-turn chat, embeddings' dimension and the local cache, a retry
//! after RESOURCE_EXHAUSTED that waited the server's `retry-after-ms`,
//! LITE outputs (inline and through a shared-memory region), a video's frames with back-pressure and with drops
//! counted, H.264 pictures, health and `/readyz`, an upload and a load.
//! So the examples cannot rot.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::vision::BLAZEFACE;
use e2e::{MINILM, Sidecar, add_model, binary, root, serial, smollm2_config, store};

/// A rate-limited class for the error table (2 calls, then one each 2 s)
/// and one for the embeddings' batches (4 inputs, then one each second):
/// both examples meet RESOURCE_EXHAUSTED with `retry-after-ms` whatever
/// the machine's speed.
const TRAFFIC: &str = "[auth]\nclient_ids = [\"limited\", \"batch\"]\n\
    [traffic.classes.limited]\nmatch = [\"client:limited\"]\nrate = 0.5\nburst = 2\n\
    [traffic.classes.batch]\nmatch = [\"client:batch\"]\nrate = 1.0\nburst = 4\n";

fn config(api_socket: &Path) -> String {
    format!(
        "[api_socket]\npath = \"{}\"\n{TRAFFIC}{}[[models]]\nid = \"minilm\"\nfamily = \"text\"\npath = \"{MINILM}\"\ntext = {{ threads = 1 }}\n\
         [[models]]\nid = \"face-detector\"\nfamily = \"lite\"\npath = \"{BLAZEFACE}\"\nlite = {{ threads = 1 }}\n\
         [[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n",
        api_socket.display(),
        smollm2_config("")
    )
}

/// Runs `cmd`; its stdout, after asserting it exited 0 (a failure shows
/// both streams).
async fn run(what: String, mut cmd: Command) -> String {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} exited {:?}:\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("--- {what}\n{stdout}");
    stdout
}

/// The lines the example must print, compared without case (Python says
/// `True`, Rust `true`).
fn expect(what: &str, out: &str, needles: &[&str]) {
    let low = out.to_lowercase();
    for n in needles {
        assert!(
            low.contains(&n.to_lowercase()),
            "{what}: no {n:?} in:\n{out}"
        );
    }
}

/// The integer after `key` in `line`.
fn int_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Every retry line that names a `retry-after-ms` waited at least that
/// long; how many there were.
fn honoured_retries(what: &str, out: &str) -> usize {
    let mut n = 0;
    for line in out.lines().filter(|l| l.trim_start().starts_with("retry ")) {
        let after =
            int_after(line, "retry-after-ms=").or_else(|| int_after(line, "retry-after-ms "));
        let waited = int_after(line, "waiting ");
        match (after, waited) {
            (Some(a), Some(w)) => {
                assert!(
                    a > 0 && w >= a,
                    "{what}: waited {w} ms < retry-after-ms {a}: {line}"
                );
                n += 1;
            }
            _ => panic!("{what}: a retry without retry-after-ms: {line}"),
        }
    }
    n
}

/// `key=N` of a counts line.
fn count(what: &str, out: &str, key: &str) -> u64 {
    out.lines()
        .find(|l| l.starts_with("frames read="))
        .and_then(|l| {
            int_after(l, &format!(" {key}=")).or_else(|| int_after(l, &format!("{key}=")))
        })
        .unwrap_or_else(|| panic!("{what}: no {key}= in:\n{out}"))
}

/// A file made by ffmpeg (installed by scripts/setup.sh).
fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("ffmpeg (run scripts/setup.sh): {e}"));
    assert!(status.success(), "ffmpeg made no {}", out.display());
}

/// The clip every video example reads: the astronaut's face moving
/// across 50 frames (25 fps), as MP4 (OpenCV), Y4M (Rust) and H.264.
fn clips(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let astronaut = root().join("models/testdata/astronaut.png");
    assert!(
        astronaut.is_file(),
        "{} is missing: run scripts/setup.sh",
        astronaut.display()
    );
    let mp4 = dir.join("face.mp4");
    let a = astronaut.to_string_lossy().into_owned();
    ffmpeg(
        &[
            "-loop",
            "1",
            "-i",
            &a,
            "-vf",
            "crop=448:448:'32+32*sin(t*3)':32,format=yuv420p",
        ]
        .into_iter()
        .chain(["-t", "2", "-r", "25", "-c:v", "libx264"])
        .collect::<Vec<_>>(),
        &mp4,
    );
    let y4m = dir.join("face.y4m");
    ffmpeg(&["-i", &mp4.to_string_lossy(), "-pix_fmt", "yuv420p"], &y4m);
    let h264 = dir.join("clip.264");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-frames:v",
            "50",
            "-c:v",
            "libx264",
            "-f",
            "h264",
        ],
        &h264,
    );
    (mp4, y4m, h264)
}

/// The checks each example's output must pass, whichever language ran it.
fn check(lang: &str, name: &str, out: &str) {
    let what = format!("{lang} {name}");
    match name {
        "health" => expect(
            &what,
            out,
            &[
                "health (server): SERVING",
                "health sidecar.v1.TextService: SERVING",
                "health model/smollm2: SERVING",
                "health model/faces: SERVING",
                "health model/no-such-model: NOT_FOUND",
                "readyz: 200 ready",
            ],
        ),
        "generate" => expect(
            &what,
            out,
            &[
                "unary: ",
                "finish=FINISH_REASON_LENGTH prompt_tokens=5 completion_tokens=16",
                "stream: 16 tokens, finish=FINISH_REASON_LENGTH",
                "same as unary: true",
                "cancelled: after 4 tokens",
            ],
        ),
        "chat" => expect(
            &what,
            out,
            &[
                "assistant: The capital of France is Paris.",
                "turn 1: ",
                "(template applied), finish=FINISH_REASON_EOS",
                "turn 2: ",
                "4 messages sent",
            ],
        ),
        "embed" => {
            expect(
                &what,
                out,
                &[
                    "pass 1: 10 texts (9 unique) sent in 3 batches, dimension 384",
                    "pass 2: 11 texts, 1 sent, 10 from the local cache",
                    "RESOURCE_EXHAUSTED (retry-after-ms ",
                    "client class \"batch\" is over its rate limit (traffic.classes.batch.rate = 1 per second, burst 4)",
                ],
            );
            assert!(
                honoured_retries(&what, out) >= 1,
                "{what}: no retry:\n{out}"
            );
        }
        "lite" => expect(
            &what,
            out,
            &[
                "input input: shape=[1, 128, 128, 3] dtype=DTYPE_FLOAT32",
                "output regressors: shape=",
                "output classificators: shape=",
                "infer: 2 outputs",
                "batch: 2 sets, identical to Infer: true",
            ],
        ),
        "shm" => expect(
            &what,
            out,
            &[
                "shm: region io (/sidecar-example-",
                ", 200192 bytes) registered, writable=true",
                "shm infer: input 196608 bytes read from the region, output classificators 3584 bytes written into it (inline data 0 bytes), identical to inline: true",
                "shm: unregistered 1",
            ],
        ),
        "video" => expect(
            &what,
            out,
            &[
                "video: 448x448 at 25 fps",
                "frames read=50 sent=50 results=50 processed=50 dropped_by_server=0 dropped_locally=0 with_faces=50",
            ],
        ),
        "video-live" => {
            expect(&what, out, &["live mode, window 1"]);
            let (read, sent, results) = (
                count(&what, out, "read"),
                count(&what, out, "sent"),
                count(&what, out, "results"),
            );
            let (processed, server, local) = (
                count(&what, out, "processed"),
                count(&what, out, "dropped_by_server"),
                count(&what, out, "dropped_locally"),
            );
            eprintln!(
                "{what}: {processed} processed, {server} dropped by the server, {local} here"
            );
            assert_eq!(read, 50, "{what}");
            assert_eq!(
                sent + local,
                read,
                "{what}: every frame sent or dropped here"
            );
            assert_eq!(results, sent, "{what}: one result per frame sent");
            assert_eq!(processed + server, results, "{what}");
            assert!(processed > 0, "{what}");
        }
        "h264" => expect(
            &what,
            out,
            &["in 17 chunks of 4096, pictures=50 size=320x240 in order: true"],
        ),
        "upload" => {
            expect(
                &what,
                out,
                &[
                    "upload: 224 / 224 KiB (100%)",
                    "uploaded uploads/face_detection_short_range.tflite: 229714 bytes, sha256 verified by the server: true",
                    "load uploaded-face: ",
                    "READY in ",
                    "inputs [[1, 128, 128, 3]], 2 outputs",
                    " (threads 1 -> 2), ",
                    " calls during the swap, 0 failed",
                    "and deleted uploads/face_detection_short_range.tflite",
                ],
            );
            // The swap's new version is the next number (numbers are never
            // given twice, so a second example run starts past 1).
            let line = out
                .lines()
                .find_map(|l| l.strip_prefix("swap uploaded-face: version "))
                .unwrap_or_else(|| panic!("{what}: no swap line in:\n{out}"));
            let (from, rest) = line.split_once(" -> ").expect("from -> to");
            let to = rest.split_once(' ').expect("to").0;
            let (from, to): (u32, u32) = (from.parse().expect("from"), to.parse().expect("to"));
            assert_eq!(to, from + 1, "{what}: {line}");
        }
        "errors" => {
            expect(
                &what,
                out,
                &[
                    "invalid argument: INVALID_ARGUMENT retry=no: max_tokens 1000000 plus the prompt's 1 tokens exceeds the model's context of 1024 tokens per sequence",
                    "unknown model: NOT_FOUND retry=no: model \"no-such-model\" is not loaded",
                    "deadline: DEADLINE_EXCEEDED retry=no",
                    "rate limit: 4/4 calls succeeded",
                    "unavailable: UNAVAILABLE after 4 attempts",
                ],
            );
            let n = honoured_retries(&what, out);
            assert!(n >= 1, "{what}: no retry after RESOURCE_EXHAUSTED:\n{out}");
            expect(
                &what,
                out,
                &[&format!(
                    "{n} retries, {n} after waiting the server's retry-after-ms"
                )],
            );
        }
        other => panic!("no checks for {other}"),
    }
}

/// Acceptance: every example runs against the real sidecar and prints
/// what its README line says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_example_runs_against_the_real_sidecar() {
    let _serial = serial().await;
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let rust = binary("sidecar-examples");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mp4, y4m, h264) = clips(dir.path());
    let store = store();
    add_model(&store, MINILM);
    add_model(&store, BLAZEFACE);
    // The API on a Unix socket too: a shared-memory client is on the same
    // host, and the socket tells the server its uid.
    let sockets = tempfile::tempdir().expect("tempdir");
    let api_socket = sockets.path().join("api.sock");
    let sc = Sidecar::start(store, &config(&api_socket));
    for m in ["smollm2", "minilm", "face-detector", "faces"] {
        sc.ready(m).await;
    }
    let api = sc.api.to_string();
    let admin = sc.admin.to_string();
    let local = format!("unix://{}", api_socket.display());
    let control = format!("unix://{}", sc.store.path().join("control.sock").display());
    let upload = root()
        .join("models")
        .join(BLAZEFACE)
        .to_string_lossy()
        .into_owned();
    let (mp4, y4m, h264) = (
        mp4.to_string_lossy(),
        y4m.to_string_lossy(),
        h264.to_string_lossy(),
    );
    // (name, Python script and arguments, Rust subcommand and arguments);
    // `--target` comes first, the API's unless the arguments name one.
    let examples: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "health",
            vec![
                "health.py",
                "--admin",
                &admin,
                "--model",
                "smollm2",
                "--model",
                "faces",
                "--wait",
            ],
            vec![
                "health", "--admin", &admin, "--model", "smollm2", "--model", "faces", "--wait",
            ],
        ),
        ("generate", vec!["generate.py"], vec!["generate"]),
        ("chat", vec!["chat.py"], vec!["chat"]),
        (
            "embed",
            vec!["embed.py", "--client-id", "batch"],
            vec!["--client-id", "batch", "embed"],
        ),
        ("lite", vec!["lite_numpy.py"], vec!["lite"]),
        (
            "shm",
            vec!["lite_shm.py", "--target", &local],
            vec!["--target", &local, "shm"],
        ),
        (
            "video",
            vec!["vision_video.py", "--video", &mp4],
            vec!["video", "--y4m", &y4m],
        ),
        (
            "video-live",
            vec![
                "vision_video.py",
                "--video",
                &mp4,
                "--live",
                "--window",
                "1",
            ],
            vec!["video", "--y4m", &y4m, "--live", "--window", "1"],
        ),
        (
            "h264",
            vec!["h264_chunks.py", "--file", &h264],
            vec!["h264", "--file", &h264],
        ),
        (
            "upload",
            vec![
                "upload_load.py",
                "--target",
                &control,
                "--file",
                &upload,
                "--family",
                "lite",
                "--model-id",
                "uploaded-face",
                "--api",
                &api,
                "--swap",
            ],
            vec![
                "--target",
                &control,
                "upload",
                "--file",
                &upload,
                "--family",
                "lite",
                "--model-id",
                "uploaded-face",
                "--api",
                &api,
                "--swap",
            ],
        ),
        (
            "errors",
            vec!["errors.py", "--client-id", "limited"],
            vec!["--client-id", "limited", "errors"],
        ),
    ];
    let scripts = root().join("examples/clients/python");
    let mut ran = 0;
    for (name, py, rs) in &examples {
        let mut cmd = Command::new(&python);
        cmd.arg(scripts.join(py[0]));
        if !py.contains(&"--target") {
            cmd.args(["--target", &api]);
        }
        cmd.args(&py[1..]);
        let out = run(format!("python {}", py[0]), cmd).await;
        check("python", name, &out);
        ran += 1;

        let mut cmd = Command::new(&rust);
        if !rs.contains(&"--target") {
            cmd.args(["--target", &api]);
        }
        cmd.args(rs);
        let out = run(format!("sidecar-examples {}", rs.join(" ")), cmd).await;
        check("rust", name, &out);
        ran += 1;
    }
    eprintln!("{ran} examples ran and passed their checks");
    assert_eq!(ran, 2 * examples.len());
}
