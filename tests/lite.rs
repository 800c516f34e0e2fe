//! LITE models end to end: the real sidecar and worker-lite running
//! MediaPipe `.tflite` models through `libLiteRt.so`, compared with the
//! official Python interpreter's outputs (`fixtures/lite_reference.json`,
//! made by `fixtures/make_lite_reference.py`); bad tensors, bad files, a
//! missing GPU, a killed and a stopped worker.

use std::time::{Duration, Instant};

use e2e::{
    Sidecar, add_model, float_pattern, int8_pattern, lite_config, serial, signal, smollm2_config,
    store,
};
use nix::sys::signal::Signal;
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::{
    Accelerator, DType, GetModelInfoRequest, InferBatchRequest, InferRequest, InputSet, KillReason,
    LiteOptions, LoadModelRequest, ModelFamily, ModelState, Tensor, load_model_request,
};
use tonic::Code;
use tonic::transport::Channel;

const FACE: &str = "mediapipe/face_detection_short_range.tflite";
/// A MediaPipe model with a custom op LiteRT does not have.
const CUSTOM_OP: &str = "mediapipe/face_landmark_with_attention.tflite";

struct Output {
    name: String,
    dtype: String,
    shape: Vec<i64>,
    count: usize,
    sum: f64,
    sum_sq: f64,
    sample_at: Vec<usize>,
    sample: Vec<f64>,
}

struct Case {
    model: String,
    /// Name, shape, dtype ("float32" or "int8").
    input: (String, Vec<i64>, String),
    outputs: Vec<Output>,
}

fn reference() -> Vec<Case> {
    let path = e2e::root().join("tests/fixtures/lite_reference.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read the reference")).expect("json");
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_i64().expect("int"))
            .collect()
    };
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let input = &c["inputs"][0];
            Case {
                model: c["model"].as_str().expect("model").to_owned(),
                input: (
                    input["name"].as_str().expect("name").to_owned(),
                    ints(&input["shape"]),
                    input["dtype"].as_str().expect("dtype").to_owned(),
                ),
                outputs: c["outputs"]
                    .as_array()
                    .expect("outputs")
                    .iter()
                    .map(|o| Output {
                        name: o["name"].as_str().expect("name").to_owned(),
                        dtype: o["dtype"].as_str().expect("dtype").to_owned(),
                        shape: ints(&o["shape"]),
                        count: o["count"].as_u64().expect("count") as usize,
                        sum: o["sum"].as_f64().expect("sum"),
                        sum_sq: o["sum_sq"].as_f64().expect("sum_sq"),
                        sample_at: ints(&o["sample_at"])
                            .into_iter()
                            .map(|x| x as usize)
                            .collect(),
                        sample: o["sample"]
                            .as_array()
                            .expect("sample")
                            .iter()
                            .map(|x| x.as_f64().expect("float"))
                            .collect(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// An output's values, by the dtype the reference names.
fn values(t: &Tensor, dtype: &str) -> Vec<f64> {
    match dtype {
        "float32" => {
            assert_eq!(t.dtype, DType::DtypeFloat32 as i32, "{}", t.name);
            t.data
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        }
        "int8" => {
            assert_eq!(t.dtype, DType::DtypeInt8 as i32, "{}", t.name);
            t.data.iter().map(|&b| f64::from(b as i8)).collect()
        }
        other => panic!("the reference has an output of dtype {other}"),
    }
}

fn input(name: &str, shape: &[i64]) -> Tensor {
    typed_input(name, shape, "float32")
}

fn typed_input(name: &str, shape: &[i64], dtype: &str) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let (dtype, data) = match dtype {
        "float32" => (DType::DtypeFloat32, float_pattern(n)),
        "int8" => (DType::DtypeInt8, int8_pattern(n)),
        other => panic!("the reference has an input of dtype {other}"),
    };
    Tensor {
        shm: Default::default(),
        name: name.into(),
        dtype: dtype as i32,
        shape: shape.to_vec(),
        data: data.into(),
    }
}

fn id_of(model: &str) -> String {
    model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .trim_end_matches(".tflite")
        .replace('_', "-")
}

async fn lite(sc: &Sidecar) -> LiteServiceClient<Channel> {
    LiteServiceClient::connect(format!("http://{}", sc.api))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

fn face_sidecar(extra_config: &str) -> Sidecar {
    let store = store();
    add_model(&store, FACE);
    Sidecar::start(
        store,
        &format!("{extra_config}{}", lite_config("face", FACE, "")),
    )
}

fn face_input() -> Tensor {
    input("input", &[1, 128, 128, 3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_match_the_python_interpreter() {
    let _serial = serial().await;
    let cases = reference();
    let store = store();
    let mut config = String::new();
    for c in &cases {
        add_model(&store, &c.model);
        config.push_str(&lite_config(&id_of(&c.model), &c.model, ""));
    }
    let sc = Sidecar::start(store, &config);
    let mut client = lite(&sc).await;
    for c in &cases {
        let id = id_of(&c.model);
        sc.ready(&id).await;
        let info = client
            .get_model_info(GetModelInfoRequest {
                model_id: id.clone(),
            })
            .await
            .expect("model info")
            .into_inner();
        assert_eq!(info.accelerator, "cpu");
        assert_eq!(info.inputs.len(), 1, "{info:?}");
        assert_eq!(
            (&info.inputs[0].name, &info.inputs[0].shape),
            (&c.input.0, &c.input.1)
        );
        if c.input.2 == "int8" {
            let q = info.inputs[0]
                .quantization
                .as_ref()
                .expect("int8 input quantization");
            assert!(q.scale.len() == 1 && q.scale[0] > 0.0, "{q:?}");
        }
        let names: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
        for o in &c.outputs {
            assert!(
                names.contains(&o.name.as_str()),
                "{} lacks {}: {names:?}",
                c.model,
                o.name
            );
        }

        let r = client
            .infer(InferRequest {
                output_placements: Default::default(),
                model_id: id.clone(),
                inputs: vec![typed_input(&c.input.0, &c.input.1, &c.input.2)],
                outputs: vec![],
            })
            .await
            .expect("infer")
            .into_inner();
        let mut exact = true;
        let mut worst = 0f64;
        for want in &c.outputs {
            let got = r
                .outputs
                .iter()
                .find(|t| t.name == want.name)
                .unwrap_or_else(|| panic!("{}: no output {}", c.model, want.name));
            assert_eq!(got.shape, want.shape, "{} {}", c.model, want.name);
            let v = values(got, &want.dtype);
            assert_eq!(v.len(), want.count);
            for (&at, &expected) in want.sample_at.iter().zip(&want.sample) {
                let diff = (v[at] - expected).abs();
                // Compared as the f32 they are (the JSON holds their f64 form).
                exact &= v[at] as f32 == expected as f32;
                worst = worst.max(f64::from((v[at] as f32 - expected as f32).abs()));
                assert!(
                    diff <= 1e-5 * (1.0 + expected.abs()),
                    "{} {}[{at}]: {} vs the interpreter's {expected}",
                    c.model,
                    want.name,
                    v[at]
                );
            }
            let sum: f64 = v.iter().sum();
            let sum_sq: f64 = v.iter().map(|x| x * x).sum();
            for (what, got, expected) in [
                ("sum", sum, want.sum),
                ("sum of squares", sum_sq, want.sum_sq),
            ] {
                assert!(
                    (got - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                    "{} {} {what}: {got} vs {expected}",
                    c.model,
                    want.name
                );
            }
        }
        let t = r.timings.expect("timings");
        eprintln!(
            "{}: {} (largest sample difference {worst:e}; invoke {} µs)",
            c.model,
            if exact {
                "samples bit-exact"
            } else {
                "within 1e-5"
            },
            t.invoke_us
        );
        assert!(t.invoke_us > 0 && t.total_us >= t.invoke_us, "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_each_set_as_a_single_call_would() {
    let _serial = serial().await;
    let sc = face_sidecar("");
    sc.ready("face").await;
    let mut client = lite(&sc).await;
    let single = client
        .infer(InferRequest {
            output_placements: Default::default(),
            model_id: "face".into(),
            inputs: vec![face_input()],
            outputs: vec!["classificators".into()],
        })
        .await
        .expect("infer")
        .into_inner();
    assert_eq!(single.outputs.len(), 1, "only the output asked for");
    let zeros = Tensor {
        data: vec![0u8; 128 * 128 * 3 * 4].into(),
        ..face_input()
    };
    let batch = client
        .infer_batch(InferBatchRequest {
            model_id: "face".into(),
            sets: vec![
                InputSet {
                    output_placements: Default::default(),
                    inputs: vec![face_input()],
                },
                InputSet {
                    output_placements: Default::default(),
                    inputs: vec![zeros],
                },
                InputSet {
                    output_placements: Default::default(),
                    inputs: vec![face_input()],
                },
            ],
            outputs: vec!["classificators".into()],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.results.len(), 3);
    assert_eq!(batch.results[0].outputs[0].data, single.outputs[0].data);
    assert_eq!(batch.results[2].outputs[0].data, single.outputs[0].data);
    assert_ne!(batch.results[1].outputs[0].data, single.outputs[0].data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tensors_files_and_accelerators_get_clear_errors() {
    let _serial = serial().await;
    let store = store();
    add_model(&store, FACE);
    std::fs::write(
        store.path().join("junk.tflite"),
        b"this is not a flatbuffer model",
    )
    .expect("write");
    add_model(&store, CUSTOM_OP);
    // Fast restarts: a file LiteRT refuses is retried like a crash.
    let config = format!(
        "[workers]\nbackoff_initial = 0.02\nbackoff_max = 0.1\n{}{}",
        lite_config("face", FACE, ""),
        smollm2_config("")
    );
    let sc = Sidecar::start(store, &config);
    let before = sc.ready("face").await;
    sc.ready("smollm2").await;
    let mut client = lite(&sc).await;
    let req = |inputs: Vec<Tensor>| InferRequest {
        output_placements: Default::default(),
        model_id: "face".into(),
        inputs,
        outputs: vec![],
    };
    let cases: Vec<(InferRequest, Code, Vec<&str>)> = vec![
        (
            req(vec![]),
            Code::InvalidArgument,
            vec!["missing tensor \"input\"", "[1, 128, 128, 3]"],
        ),
        (
            req(vec![
                face_input(),
                Tensor {
                    name: "extra".into(),
                    ..face_input()
                },
            ]),
            Code::InvalidArgument,
            vec!["unknown tensor \"extra\""],
        ),
        (
            req(vec![Tensor {
                dtype: DType::DtypeUint8 as i32,
                ..face_input()
            }]),
            Code::InvalidArgument,
            vec!["\"input\"", "float32", "uint8"],
        ),
        (
            req(vec![Tensor {
                shape: vec![1, 3, 128, 128],
                ..face_input()
            }]),
            Code::InvalidArgument,
            vec!["\"input\"", "[1, 128, 128, 3]", "[1, 3, 128, 128]"],
        ),
        (
            req(vec![Tensor {
                data: vec![0u8; 1000].into(),
                ..face_input()
            }]),
            Code::InvalidArgument,
            vec!["\"input\"", "196608 bytes", "got 1000"],
        ),
        (
            InferRequest {
                outputs: vec!["nope".into()],
                ..req(vec![face_input()])
            },
            Code::InvalidArgument,
            vec!["unknown tensor \"nope\"", "regressors"],
        ),
        (
            InferRequest {
                model_id: "smollm2".into(),
                ..req(vec![face_input()])
            },
            Code::FailedPrecondition,
            vec!["TEXT model, not LITE"],
        ),
    ];
    for (r, code, words) in cases {
        let err = client.infer(r).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        for w in words {
            assert!(
                err.message().contains(w),
                "{w:?} not in {:?}",
                err.message()
            );
        }
    }
    let err = client
        .infer_batch(InferBatchRequest {
            model_id: "face".into(),
            sets: vec![
                InputSet {
                    output_placements: Default::default(),
                    inputs: vec![face_input()],
                },
                InputSet {
                    output_placements: Default::default(),
                    inputs: vec![Tensor {
                        shape: vec![1, 64, 64, 3],
                        ..face_input()
                    }],
                },
            ],
            outputs: vec![],
        })
        .await
        .expect_err("bad set");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sets[1]"), "{}", err.message());

    let mut models = sc.manage().await;
    let load = |id: &str, path: &str, options: LiteOptions| LoadModelRequest {
        model_id: id.into(),
        family: ModelFamily::Lite as i32,
        path: path.into(),
        options: Some(load_model_request::Options::Lite(options)),
        ..Default::default()
    };
    let started = Instant::now();
    let err = models
        .load_model(load("junk", "junk.tflite", LiteOptions::default()))
        .await
        .expect_err("not a model");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("LiteRT could not load"),
        "{}",
        err.message()
    );
    eprintln!("junk refused in {:?}: {}", started.elapsed(), err.message());
    assert!(
        err.message().contains("TFL3"),
        "LiteRT's reason: {}",
        err.message()
    );

    let err = models
        .load_model(load("custom-op", CUSTOM_OP, LiteOptions::default()))
        .await
        .expect_err("an op LiteRT lacks");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("Landmarks2TransformMatrix"),
        "LiteRT's reason: {}",
        err.message()
    );

    let gpu = LiteOptions {
        accelerator: Accelerator::Gpu as i32,
        ..Default::default()
    };
    let err = models
        .load_model(load("face-gpu", FACE, gpu))
        .await
        .expect_err("no GPU here");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("GPU"), "{}", err.message());
    let fallback = models
        .load_model(load(
            "face-fallback",
            FACE,
            LiteOptions {
                allow_fallback: true,
                ..gpu
            },
        ))
        .await
        .expect("falls back to the CPU when allowed")
        .into_inner()
        .model
        .expect("model");
    match fallback.options {
        Some(sidecar_proto::v1::model_info::Options::Lite(o)) => {
            assert_eq!(
                o.accelerator,
                Accelerator::Cpu as i32,
                "the effective accelerator"
            )
        }
        other => panic!("{other:?}"),
    }

    // None of this disturbed the model that works.
    client
        .infer(req(vec![face_input()]))
        .await
        .expect("still serves");
    let after = sc.model("face").await;
    assert_eq!((after.worker_pid, after.restarts), (before.worker_pid, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_stopped_lite_worker_is_replaced_and_the_next_call_succeeds() {
    let _serial = serial().await;
    let config = "[workers]\nbackoff_initial = 0.05\nheartbeat_timeout = 5\nkill_grace = 1\n[deadlines]\nunary = 2\ncancel_grace = 1\n";
    let sc = face_sidecar(config);
    let first = sc.ready("face").await;
    let mut client = lite(&sc).await;
    let call = || InferRequest {
        output_placements: Default::default(),
        model_id: "face".into(),
        inputs: vec![face_input()],
        outputs: vec![],
    };

    signal(first.worker_pid, Signal::SIGKILL);
    let second = sc
        .eventually("face", Duration::from_secs(30), |m| {
            m.state == ModelState::Ready as i32 && m.worker_pid != first.worker_pid
        })
        .await;
    assert_eq!(second.last_kill_reason, KillReason::Crash as i32);
    client
        .infer(call())
        .await
        .expect("served by the new worker");

    signal(second.worker_pid, Signal::SIGSTOP);
    let started = Instant::now();
    let err = client.infer(call()).await.expect_err("hung worker");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let third = sc
        .eventually("face", Duration::from_secs(30), |m| {
            m.state == ModelState::Ready as i32 && m.worker_pid != second.worker_pid
        })
        .await;
    assert!(
        [KillReason::Timeout as i32, KillReason::Unhealthy as i32]
            .contains(&third.last_kill_reason),
        "{third:?}"
    );
    client.infer(call()).await.expect("served after the hang");
}
