//! Shared-memory regions in the real worker-lite (issue 19), started as
//! the supervisor starts it (full sandbox, seccomp enforcing), driven over
//! a real channel by this test playing the supervisor, with real memfd
//! objects passed by descriptor: BlazeFace's input read from a region
//! gives the same outputs as inline, bit for bit; outputs written into a
//! region are the inline outputs; every bad case (sizes, names, bounds,
//! read-only, a missing descriptor, a shrunk object, a detached region)
//! is that request's clear error and the worker (same pid) serves on.
//! worker-vision's are in `worker_regions_vision.rs`.

// Shared by both region test files; each uses part of it.
#[allow(dead_code)]
#[path = "worker_regions_support.rs"]
mod support;

use std::os::fd::AsFd;

use e2e::{float_pattern, serial};
use sidecar_proto::v1::{
    DType, InferBatchRequest, InferRequest, InputSet, LiteOptions, ModelFamily, OutputPlacement,
    Tensor,
};
use sidecar_proto::worker::{
    RegionDetach, RegionUse, WorkerRequest, load, worker_request, worker_response,
};

use support::{Worker, at, call, get, object, put, region};

const FACE: &str = "mediapipe/face_detection_short_range.tflite";
const INPUT_BYTES: u64 = 128 * 128 * 3 * 4;

fn infer(
    inputs: Vec<Tensor>,
    placements: Vec<OutputPlacement>,
    regions: Vec<RegionUse>,
) -> WorkerRequest {
    call(
        worker_request::Body::Infer(InferRequest {
            model_id: "m".into(),
            inputs,
            outputs: vec![],
            output_placements: placements,
        }),
        regions,
    )
}

fn tensor(data: Vec<u8>, shm: Option<sidecar_proto::v1::SharedMemoryRef>) -> Tensor {
    Tensor {
        name: "input".into(),
        dtype: DType::DtypeFloat32 as i32,
        shape: vec![1, 128, 128, 3],
        data: data.into(),
        shm,
    }
}

fn outputs(b: Result<worker_response::Body, support::Failure>) -> Vec<Tensor> {
    match b {
        Ok(worker_response::Body::Infer(r)) => r.outputs,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_reads_inputs_from_a_region_and_writes_outputs_into_one() {
    let _serial = serial().await;
    let options = load::Options::Lite(LiteOptions {
        threads: 1,
        ..Default::default()
    });
    let mut w = Worker::start("worker-lite", ModelFamily::Lite, FACE, options, 64).await;
    let pid = w.pid;
    let input = float_pattern((INPUT_BYTES / 4) as usize);

    // Inline, the reference.
    let inline = outputs(
        w.ask(&infer(vec![tensor(input.clone(), None)], vec![], vec![]))
            .await,
    );
    assert_eq!(inline.len(), 2, "BlazeFace's two outputs: {inline:?}");
    assert!(inline.iter().all(|t| !t.data.is_empty() && t.shm.is_none()));

    // The input at offset 4096 of region "in"; both outputs into region
    // "out", the second with room to spare.
    let (input_obj, output_obj) = (object(1 << 20), object(1 << 20));
    put(&input_obj, 4096, &input);
    let uses = |attach| {
        vec![
            region("in", 1, 1 << 20, false, attach),
            region("out", 2, 1 << 20, true, attach),
        ]
    };
    let lens: Vec<u64> = inline.iter().map(|t| t.data.len() as u64).collect();
    let placements = vec![
        OutputPlacement {
            name: inline[0].name.clone(),
            shm: Some(at("out", 0, lens[0])),
        },
        OutputPlacement {
            name: inline[1].name.clone(),
            shm: Some(at("out", 65536, lens[1] + 100)),
        },
    ];
    w.chan.send_fd(1, input_obj.as_fd()).await.expect("send fd");
    w.chan
        .send_fd(2, output_obj.as_fd())
        .await
        .expect("send fd");
    let req = infer(
        vec![tensor(vec![], Some(at("in", 4096, INPUT_BYTES)))],
        placements.clone(),
        uses(true),
    );
    let placed = outputs(w.ask(&req).await);
    for (k, (got, want)) in placed.iter().zip(&inline).enumerate() {
        assert_eq!(
            (&got.name, got.dtype, &got.shape),
            (&want.name, want.dtype, &want.shape)
        );
        assert!(
            got.data.is_empty(),
            "output {k} was written into the region, not inline"
        );
        let r = got.shm.as_ref().expect("the answer names where");
        let offset = [0, 65536][k];
        assert_eq!(
            r,
            &at("out", offset, lens[k]),
            "the ref as given, byte_size = the bytes written"
        );
        assert_eq!(
            get(&output_obj, offset, lens[k] as usize),
            want.data.to_vec(),
            "output {k} bit for bit"
        );
    }
    assert_eq!(
        get(&output_obj, 65536 + lens[1], 100),
        vec![0u8; 100],
        "nothing written past the output"
    );

    // Kept by the worker: no descriptor this time; one output placed, the
    // other inline; the input from region, in a batch next to an inline set.
    put(&output_obj, 0, &vec![0u8; lens[0] as usize]);
    let batch = call(
        worker_request::Body::InferBatch(InferBatchRequest {
            model_id: "m".into(),
            outputs: vec![],
            sets: vec![
                InputSet {
                    inputs: vec![tensor(input.clone(), None)],
                    output_placements: vec![],
                },
                InputSet {
                    inputs: vec![tensor(vec![], Some(at("in", 4096, INPUT_BYTES)))],
                    output_placements: vec![placements[0].clone()],
                },
            ],
        }),
        uses(false),
    );
    let sets = match w.ask(&batch).await {
        Ok(worker_response::Body::InferBatch(r)) => r.results,
        other => panic!("{other:?}"),
    };
    assert_eq!(sets[0].outputs, inline, "the inline set is unchanged");
    assert!(sets[1].outputs[0].data.is_empty() && sets[1].outputs[0].shm.is_some());
    assert_eq!(sets[1].outputs[1].data, inline[1].data);
    assert_eq!(
        get(&output_obj, 0, lens[0] as usize),
        inline[0].data.to_vec()
    );

    // Bad cases: each its own clear error; the worker serves on.
    let good = || {
        infer(
            vec![tensor(vec![], Some(at("in", 4096, INPUT_BYTES)))],
            vec![],
            uses(false),
        )
    };
    let cases: Vec<(WorkerRequest, u32, Vec<String>)> = vec![
        (
            infer(
                vec![tensor(vec![], Some(at("in", 0, INPUT_BYTES - 4)))],
                vec![],
                uses(false),
            ),
            3,
            vec![format!(
                "is {INPUT_BYTES} bytes, shm.byte_size is {}",
                INPUT_BYTES - 4
            )],
        ),
        (
            infer(
                vec![tensor(vec![], Some(at("in", 1 << 20, INPUT_BYTES)))],
                vec![],
                uses(false),
            ),
            3,
            vec!["passes the end of region \"in\" (1048576 bytes)".into()],
        ),
        (
            infer(
                vec![tensor(vec![], Some(at("in", u64::MAX, INPUT_BYTES)))],
                vec![],
                uses(false),
            ),
            3,
            vec![format!(
                "offset {} + byte_size {INPUT_BYTES} passes the end",
                u64::MAX
            )],
        ),
        (
            infer(
                vec![tensor(vec![], Some(at("in", 0, INPUT_BYTES)))],
                vec![],
                vec![],
            ),
            3,
            vec![
                "inputs[\"input\"].shm.region: \"in\" is not a region this request may use".into(),
            ],
        ),
        (
            infer(
                vec![tensor(input.clone(), None)],
                vec![OutputPlacement {
                    name: "nope".into(),
                    shm: Some(at("out", 0, 1 << 16)),
                }],
                uses(false),
            ),
            3,
            vec!["output_placements[0].name: \"nope\" is not an output this call returns".into()],
        ),
        (
            infer(
                vec![tensor(input.clone(), None)],
                vec![OutputPlacement {
                    name: inline[0].name.clone(),
                    shm: Some(at("in", 0, 1 << 16)),
                }],
                uses(false),
            ),
            3,
            vec!["region \"in\" was not registered writable".into()],
        ),
        (
            infer(
                vec![tensor(input.clone(), None)],
                vec![OutputPlacement {
                    name: inline[0].name.clone(),
                    shm: Some(at("out", 0, lens[0] - 1)),
                }],
                uses(false),
            ),
            3,
            vec![format!(
                "output_placements[0].shm.byte_size: {} bytes, but {} are needed",
                lens[0] - 1,
                lens[0]
            )],
        ),
        (
            infer(
                vec![tensor(vec![], Some(at("x", 0, INPUT_BYTES)))],
                vec![],
                vec![region("x", 99, 1 << 20, false, false)],
            ),
            9,
            vec!["region \"x\" (id 99) is not attached to this worker".into()],
        ),
        (
            infer(
                vec![tensor(vec![], Some(at("y", 0, INPUT_BYTES)))],
                vec![],
                vec![region("y", 98, 1 << 20, false, true)],
            ),
            14,
            vec!["region \"y\" (id 98): its descriptor did not arrive within 2000 ms".into()],
        ),
    ];
    for (req, code, wants) in cases {
        let (got_code, msg) = w.ask(&req).await.expect_err("refused");
        assert_eq!(got_code, code, "{msg}");
        for want in wants {
            assert!(msg.contains(&want), "{msg:?} lacks {want:?}");
        }
        w.alive();
        assert_eq!(
            outputs(w.ask(&good()).await),
            inline,
            "the next request works"
        );
    }

    // The client shrinks its object under the worker: an error, never a
    // SIGBUS; the object is never grown back by a write.
    nix::unistd::ftruncate(&input_obj, 0).expect("truncate");
    let (code, msg) = w.ask(&good()).await.expect_err("shrank");
    assert_eq!(code, 9, "{msg}");
    assert!(msg.contains("region \"in\" shrank to 0 bytes"), "{msg}");
    nix::unistd::ftruncate(&output_obj, 10).expect("truncate");
    let req = infer(
        vec![tensor(input.clone(), None)],
        vec![placements[0].clone()],
        uses(false),
    );
    let (code, msg) = w.ask(&req).await.expect_err("shrank");
    assert_eq!(code, 9, "{msg}");
    assert!(msg.contains("region \"out\" shrank to 10 bytes"), "{msg}");
    assert_eq!(support::get(&output_obj, 0, 10).len(), 10);
    assert_eq!(
        std::fs::File::from(output_obj.try_clone().expect("dup"))
            .metadata()
            .expect("fstat")
            .len(),
        10,
        "never grown"
    );
    w.alive();
    nix::unistd::ftruncate(&input_obj, 1 << 20).expect("grow");
    put(&input_obj, 4096, &input);
    assert_eq!(
        outputs(w.ask(&good()).await),
        inline,
        "the same region works again"
    );

    // Detached: forgotten by the worker.
    match w
        .ask(&call(
            worker_request::Body::RegionDetach(RegionDetach { ids: vec![1, 2, 3] }),
            vec![],
        ))
        .await
    {
        Ok(worker_response::Body::RegionsDetached(n)) => assert_eq!(n, 2),
        other => panic!("{other:?}"),
    }
    let (code, msg) = w.ask(&good()).await.expect_err("detached");
    assert_eq!(
        (code, msg.as_str()),
        (9, "region \"in\" (id 1) is not attached to this worker")
    );
    assert_eq!(
        outputs(
            w.ask(&infer(vec![tensor(input, None)], vec![], vec![]))
                .await
        ),
        inline
    );
    w.alive();
    assert_eq!(w.pid, pid);
}
