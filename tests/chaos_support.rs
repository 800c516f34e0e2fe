//! The chaos harness that `scripts/chaos.sh` (the `chaos` example) and
//! `tests/chaos.rs` share: a sidecar with four models of three families,
//! client tasks calling Embed (MiniLM), Tokenize (SmolLM2), LITE Infer
//! (BlazeFace as a LITE model) and VISION ProcessBatch (BlazeFace on the
//! astronaut) without pause, first without chaos, then while a killer
//! `kill -9`s the READY workers round robin. Every answer is checked
//! against the answer recorded before any kill; the report gives calls,
//! errors by code, kills, latencies with and without chaos, restarts and
//! the models' final states.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use prost::Message as _;
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::text_service_client::TextServiceClient;
use sidecar_proto::v1::vision_service_client::VisionServiceClient;
use sidecar_proto::v1::{
    DType, EmbedRequest, FaceDetector, GetModelRequest, InferRequest, ModelState,
    ProcessBatchRequest, Tensor, TokenizeRequest,
};
use tonic::transport::Channel;

use crate::vision::{BLAZEFACE, astronaut, faces};
use crate::{MINILM, Sidecar, add_model, float_pattern, lite_config, minilm_config, store};

/// The models, in the killer's round-robin order.
pub const MODELS: [&str; 4] = ["minilm", "smollm2", "face-lite", "faces"];
/// Request variants per method (each recorded once before the chaos).
const VARIANTS: usize = 4;
/// The response metadata that marks an answer given after a transparent
/// retry on a respawned worker.
pub const RETRIED: &str = "x-sidecar-retried";
/// The least cosine similarity an Embed vector may have with its
/// no-chaos answer.
pub const MIN_COSINE: f64 = 0.99999;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Client tasks calling without pause.
    pub threads: usize,
    /// The load without kills (latency and answers without chaos).
    pub calm: Duration,
    /// The load with kills.
    pub chaos: Duration,
    /// Time between two kills.
    pub kill_every: Duration,
    /// Each call's deadline (`grpc-timeout`).
    pub deadline: Duration,
}

/// The four methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    /// TextService.Embed on `minilm`.
    Embed,
    /// TextService.Tokenize on `smollm2`.
    Tokenize,
    /// LiteService.Infer on `face-lite`.
    Infer,
    /// VisionService.ProcessBatch on `faces`.
    ProcessBatch,
}

const METHODS: [Method; 4] = [
    Method::Embed,
    Method::Tokenize,
    Method::Infer,
    Method::ProcessBatch,
];

impl Method {
    /// The model it calls (an index into [`MODELS`]).
    fn model(self) -> usize {
        self as usize
    }
}

/// A comparable answer: Embed's vectors, or the other answers' encoded
/// bytes (timings cleared).
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Vectors(Vec<Vec<f32>>),
    Bytes(Vec<u8>),
}

/// The three service clients, over one HTTP/2 connection.
#[derive(Debug, Clone)]
struct Clients {
    text: TextServiceClient<Channel>,
    lite: LiteServiceClient<Channel>,
    vision: VisionServiceClient<Channel>,
}

/// A sidecar with the four models, all READY.
pub async fn start() -> Sidecar {
    let store = store();
    add_model(&store, MINILM);
    add_model(&store, BLAZEFACE);
    let config = format!(
        "{}{}{}[[models]]\nid = \"faces\"\nfamily = \"vision\"\npath = \"{BLAZEFACE}\"\nvision = {{ threads = 1 }}\n",
        minilm_config(""),
        crate::smollm2_config(""),
        lite_config("face-lite", BLAZEFACE, ""),
    );
    let sc = Sidecar::start(store, &config);
    for id in MODELS {
        sc.ready(id).await;
    }
    sc
}

/// `body` with `deadline`, answered by the worker, never by the cache.
pub fn request<T>(body: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.set_timeout(deadline);
    // Answered by the worker, never by a result cache.
    r.metadata_mut().insert(
        "cache-control",
        tonic::metadata::MetadataValue::from_static("no-cache"),
    );
    r
}

/// The `variant`th request of `method`'s, sent; its comparable answer.
async fn call(
    c: &mut Clients,
    method: Method,
    variant: usize,
    deadline: Duration,
) -> Result<(Answer, bool), tonic::Status> {
    let mut retried = false;
    let answer = match method {
        Method::Embed => {
            let texts = [
                "The quick brown fox jumps over the lazy dog.",
                "A sidecar serves models to the application next to it.",
                "Workers die; the supervisor brings them back.",
                "Deterministic answers compare bit for bit.",
                "Embeddings of the same text are the same vector.",
            ];
            let inputs = (0..1 + variant)
                .map(|i| texts[(variant + i) % texts.len()].to_owned())
                .collect();
            let r = c
                .text
                .embed(request(
                    EmbedRequest {
                        model_id: MODELS[0].into(),
                        inputs,
                        ..Default::default()
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    retried |= r.metadata().contains_key(RETRIED);
                    r.into_inner()
                })?;
            Answer::Vectors(r.embeddings.into_iter().map(|e| e.values).collect())
        }
        Method::Tokenize => {
            let text =
                format!("Variant {variant}: once upon a time, in a land far away, a worker died.");
            let r = c
                .text
                .tokenize(request(
                    TokenizeRequest {
                        model_id: MODELS[1].into(),
                        text,
                        with_pieces: true,
                        ..Default::default()
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    retried |= r.metadata().contains_key(RETRIED);
                    r.into_inner()
                })?;
            Answer::Bytes(r.encode_to_vec())
        }
        Method::Infer => {
            let shape = [1i64, 128, 128, 3];
            let mut data = float_pattern(shape.iter().product::<i64>() as usize);
            data.rotate_left(4 * 97 * variant);
            let mut r = c
                .lite
                .infer(request(
                    InferRequest {
                        output_placements: Default::default(),
                        model_id: MODELS[2].into(),
                        inputs: vec![Tensor {
                            shm: Default::default(),
                            name: "input".into(),
                            dtype: DType::DtypeFloat32 as i32,
                            shape: shape.to_vec(),
                            data: data.into(),
                        }],
                        outputs: vec![],
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    retried |= r.metadata().contains_key(RETRIED);
                    r.into_inner()
                })?;
            r.timings = None;
            Answer::Bytes(r.encode_to_vec())
        }
        Method::ProcessBatch => {
            let mut r = c
                .vision
                .process_batch(request(
                    ProcessBatchRequest {
                        model_id: MODELS[3].into(),
                        task: Some(faces(FaceDetector::Unspecified)),
                        images: (0..1 + variant % 2).map(|_| astronaut()).collect(),
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    retried |= r.metadata().contains_key(RETRIED);
                    r.into_inner()
                })?;
            for result in &mut r.results {
                result.timings = None;
            }
            Answer::Bytes(r.encode_to_vec())
        }
    };
    Ok((answer, retried))
}

/// The least cosine similarity between the vectors of `a` and `b` (0 when
/// their counts or lengths differ).
pub fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.len() != y.len() || x.is_empty() {
                return 0.0;
            }
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let n = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            dot / (n(x) * n(y))
        })
        .fold(1.0, f64::min)
}

/// One kill.
#[derive(Debug, Clone)]
pub struct Kill {
    /// Which model's worker.
    pub model: &'static str,
    /// Its pid.
    pub pid: u32,
    /// Seconds since the chaos began.
    pub at: f64,
    /// The harness's calls to that model in flight at the kill.
    pub in_flight: usize,
}

/// What one phase saw.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    /// Calls made, per method.
    pub calls: BTreeMap<Method, usize>,
    /// Errors by (method, code): count and the first message.
    pub errors: BTreeMap<(Method, String), (usize, String)>,
    /// Answers that differ from the no-chaos ones, per method (Embed:
    /// a cosine under [`MIN_COSINE`]).
    pub mismatches: BTreeMap<Method, usize>,
    /// The least Embed cosine seen.
    pub min_cosine: f64,
    /// Answers marked [`RETRIED`], per method.
    pub retried: BTreeMap<Method, usize>,
    /// Latency of every successful call, ms, per method.
    pub latency_ms: BTreeMap<Method, Vec<f64>>,
    /// The kills (chaos only).
    pub kills: Vec<Kill>,
}

impl Phase {
    /// Errors, all methods.
    pub fn error_count(&self) -> usize {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// Mismatched answers, all methods.
    pub fn mismatch_count(&self) -> usize {
        self.mismatches.values().sum()
    }

    /// Calls, all methods.
    pub fn call_count(&self) -> usize {
        self.calls.values().sum()
    }

    /// The `p` quantile of the latency of `method` (all when `None`), ms.
    pub fn quantile(&self, method: Option<Method>, p: f64) -> f64 {
        let mut v: Vec<f64> = self
            .latency_ms
            .iter()
            .filter(|(m, _)| method.is_none_or(|x| x == **m))
            .flat_map(|(_, l)| l.iter().copied())
            .collect();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

/// A model at the end.
#[derive(Debug, Clone)]
pub struct Final {
    /// Model id.
    pub model: &'static str,
    /// State.
    pub state: ModelState,
    /// Restarts counted.
    pub restarts: u32,
    /// Its worker.
    pub pid: u32,
    /// Its last error.
    pub last_error: String,
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plan.
    pub plan: Plan,
    /// Without kills.
    pub calm: Phase,
    /// With kills.
    pub chaos: Phase,
    /// The models after the chaos, once settled.
    pub models: Vec<Final>,
    /// The supervisor's pid before and after.
    pub supervisor: (u32, u32),
}

struct Shared {
    baseline: Vec<Vec<Answer>>,
    in_flight: [AtomicUsize; 4],
    end: Instant,
    plan: Plan,
}

/// One client task: calls one method (task `t` the `t % 4`th) until the
/// phase ends, so that every model has calls in flight all the time and
/// each kill lands on some.
async fn client(mut c: Clients, shared: Arc<Shared>, t: usize) -> Phase {
    let mut phase = Phase {
        min_cosine: 1.0,
        ..Phase::default()
    };
    let method = METHODS[t % METHODS.len()];
    let mut k = t / METHODS.len();
    while Instant::now() < shared.end {
        let variant = k % VARIANTS;
        k += 1;
        let counter = &shared.in_flight[method.model()];
        counter.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let answer = call(&mut c, method, variant, shared.plan.deadline).await;
        counter.fetch_sub(1, Ordering::SeqCst);
        *phase.calls.entry(method).or_default() += 1;
        match answer {
            Ok((a, retried)) => {
                if retried {
                    *phase.retried.entry(method).or_default() += 1;
                }
                let ms = started.elapsed().as_secs_f64() * 1e3;
                phase.latency_ms.entry(method).or_default().push(ms);
                let expected = &shared.baseline[method as usize][variant];
                let same = match (&a, expected) {
                    (Answer::Vectors(x), Answer::Vectors(y)) => {
                        let cos = min_cosine(x, y);
                        phase.min_cosine = phase.min_cosine.min(cos);
                        cos >= MIN_COSINE
                    }
                    _ => a == *expected,
                };
                if !same {
                    *phase.mismatches.entry(method).or_default() += 1;
                }
            }
            Err(e) => {
                let entry = phase
                    .errors
                    .entry((method, format!("{:?}", e.code())))
                    .or_insert_with(|| (0, e.message().to_owned()));
                entry.0 += 1;
            }
        }
    }
    phase
}

/// The killer: every `kill_every`, `kill -9` the next READY model's worker
/// in round-robin order.
async fn killer(mut models: ModelServiceClient<Channel>, shared: Arc<Shared>) -> Vec<Kill> {
    let began = Instant::now();
    let every = shared.plan.kill_every;
    let mut kills: Vec<Kill> = Vec::new();
    let mut next = 0;
    let mut tick = tokio::time::interval_at((began + every).into(), every);
    loop {
        tick.tick().await;
        if Instant::now() + every / 2 > shared.end {
            return kills;
        }
        // The next model in turn whose worker serves; one still coming
        // back from its last kill waits for its next turn.
        for _ in 0..MODELS.len() {
            let i = next % MODELS.len();
            next += 1;
            let Ok(m) = models
                .get_model(GetModelRequest {
                    model_id: MODELS[i].into(),
                })
                .await
            else {
                continue;
            };
            let m = m.into_inner();
            // Never the same worker twice within the interval.
            let recent = kills.iter().any(|k| {
                k.pid == m.worker_pid && began.elapsed().as_secs_f64() - k.at < every.as_secs_f64()
            });
            if m.state != ModelState::Ready as i32 || m.worker_pid == 0 || recent {
                continue;
            }
            let in_flight = shared.in_flight[i].load(Ordering::SeqCst);
            crate::signal(m.worker_pid, Signal::SIGKILL);
            kills.push(Kill {
                model: MODELS[i],
                pid: m.worker_pid,
                at: began.elapsed().as_secs_f64(),
                in_flight,
            });
            break;
        }
    }
}

async fn clients(sc: &Sidecar) -> Clients {
    let channel = sc.channel().await;
    Clients {
        text: TextServiceClient::new(channel.clone()),
        lite: LiteServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
        vision: VisionServiceClient::new(channel).max_decoding_message_size(64 << 20),
    }
}

/// `plan.threads` clients for `length` (and the killer when `kills`).
async fn load(
    sc: &Sidecar,
    baseline: &[Vec<Answer>],
    plan: &Plan,
    length: Duration,
    kills: bool,
) -> Phase {
    let shared = Arc::new(Shared {
        baseline: baseline.to_vec(),
        in_flight: Default::default(),
        end: Instant::now() + length,
        plan: plan.clone(),
    });
    let killer = if kills {
        Some(tokio::spawn(killer(sc.manage().await, shared.clone())))
    } else {
        None
    };
    let c = clients(sc).await;
    let tasks: Vec<_> = (0..plan.threads)
        .map(|t| tokio::spawn(client(c.clone(), shared.clone(), t)))
        .collect();
    let mut phase = Phase {
        min_cosine: 1.0,
        ..Phase::default()
    };
    for task in tasks {
        let p = task.await.expect("a client task");
        for (m, n) in p.calls {
            *phase.calls.entry(m).or_default() += n;
        }
        for (k, (n, msg)) in p.errors {
            phase.errors.entry(k).or_insert((0, msg)).0 += n;
        }
        for (m, n) in p.mismatches {
            *phase.mismatches.entry(m).or_default() += n;
        }
        for (m, n) in p.retried {
            *phase.retried.entry(m).or_default() += n;
        }
        for (m, l) in p.latency_ms {
            phase.latency_ms.entry(m).or_default().extend(l);
        }
        phase.min_cosine = phase.min_cosine.min(p.min_cosine);
    }
    if let Some(k) = killer {
        phase.kills = k.await.expect("the killer task");
    }
    phase
}

/// Runs `plan` on `sc` (its models READY): the no-chaos answers, the calm
/// load, the chaos load, then the models' final states once settled.
pub async fn run(sc: &Sidecar, plan: &Plan) -> Report {
    let supervisor = sc.child.id();
    let mut c = clients(sc).await;
    let mut baseline = Vec::new();
    for method in METHODS {
        let mut answers = Vec::new();
        for v in 0..VARIANTS {
            let (a, _) = call(&mut c, method, v, plan.deadline)
                .await
                .unwrap_or_else(|e| panic!("no-chaos {method:?} variant {v}: {e:?}"));
            answers.push(a);
        }
        baseline.push(answers);
    }
    let calm = load(sc, &baseline, plan, plan.calm, false).await;
    let chaos = load(sc, &baseline, plan, plan.chaos, true).await;
    let mut models = Vec::new();
    for id in MODELS {
        // Settled: READY (or FAILED) after the last kill.
        let m = sc
            .eventually(id, Duration::from_secs(60), |m| {
                [ModelState::Ready as i32, ModelState::Failed as i32].contains(&m.state)
            })
            .await;
        models.push(Final {
            model: id,
            state: ModelState::try_from(m.state).unwrap_or(ModelState::Unspecified),
            restarts: m.restarts,
            pid: m.worker_pid,
            last_error: m.last_error,
        });
    }
    let after = if crate::alive(supervisor) {
        sc.child.id()
    } else {
        0
    };
    Report {
        plan: plan.clone(),
        calm,
        chaos,
        models,
        supervisor: (supervisor, after),
    }
}

impl std::fmt::Display for Report {
    /// A Markdown report.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.plan;
        writeln!(
            f,
            "{} client tasks; {:?} without kills, then {:?} with a `kill -9` every {:?}; deadline {:?} per call.\n",
            p.threads, p.calm, p.chaos, p.kill_every, p.deadline
        )?;
        writeln!(
            f,
            "| method | phase | calls | errors | mismatched | retried | p50 ms | p99 ms |"
        )?;
        writeln!(f, "|---|---|---:|---:|---:|---:|---:|---:|")?;
        let rows = METHODS.iter().map(|m| (Some(*m), format!("{m:?}")));
        for (m, name) in rows.chain([(None, "all".to_owned())]) {
            for (label, ph) in [("calm", &self.calm), ("chaos", &self.chaos)] {
                let pick = |map: &BTreeMap<Method, usize>| match m {
                    Some(m) => map.get(&m).copied().unwrap_or(0),
                    None => map.values().sum(),
                };
                let errors: usize = ph
                    .errors
                    .iter()
                    .filter(|((x, _), _)| m.is_none_or(|m| m == *x))
                    .map(|(_, (n, _))| n)
                    .sum();
                writeln!(
                    f,
                    "| {name} | {label} | {} | {errors} | {} | {} | {:.1} | {:.1} |",
                    pick(&ph.calls),
                    pick(&ph.mismatches),
                    pick(&ph.retried),
                    ph.quantile(m, 0.5),
                    ph.quantile(m, 0.99)
                )?;
            }
        }
        writeln!(
            f,
            "\nLeast Embed cosine with the no-chaos vectors: {:.7} (calm {:.7}).",
            self.chaos.min_cosine, self.calm.min_cosine
        )?;
        let mut errors = String::new();
        for (label, ph) in [("calm", &self.calm), ("chaos", &self.chaos)] {
            for ((m, code), (n, msg)) in &ph.errors {
                let _ = writeln!(errors, "- {label}, {m:?}: {n} × {code} (first: {msg})");
            }
        }
        if errors.is_empty() {
            writeln!(f, "\nErrors: none.")?;
        } else {
            writeln!(f, "\nErrors by code:\n{errors}")?;
        }
        let k = &self.chaos.kills;
        let busy = k.iter().filter(|k| k.in_flight > 0).count();
        writeln!(
            f,
            "Kills: {} ({busy} with calls in flight to the killed worker's model):",
            k.len()
        )?;
        for kill in k {
            writeln!(
                f,
                "- {:6.1} s: {} (pid {}), {} calls in flight",
                kill.at, kill.model, kill.pid, kill.in_flight
            )?;
        }
        writeln!(
            f,
            "\n| model | final state | restarts | kills | worker pid |"
        )?;
        writeln!(f, "|---|---|---:|---:|---:|")?;
        for m in &self.models {
            let n = k.iter().filter(|k| k.model == m.model).count();
            writeln!(
                f,
                "| {} | {} | {} | {n} | {} |",
                m.model,
                m.state.as_str_name(),
                m.restarts,
                m.pid
            )?;
        }
        writeln!(
            f,
            "\nSupervisor pid {} before, {} after.",
            self.supervisor.0, self.supervisor.1
        )
    }
}
