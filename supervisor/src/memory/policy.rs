//! The memory guard's decisions as pure functions: what a model needs,
//! whether it fits, what to unload to make room, how many layers fit on
//! a GPU, which worker to kill.

use super::gguf::TextShape;

/// Room the compute buffers, logits and runtime take beside the weights
/// and the KV cache.
pub const RUNTIME_OVERHEAD: u64 = 48 << 20;

/// A text model's need: its file, the KV cache for `context` tokens per
/// sequence times `parallel` sequences (f16), the logits of a batch, and
/// the runtime's overhead. Without a shape (not GGUF): the file plus the
/// overhead.
pub fn text_need(
    file_size: u64,
    shape: Option<&TextShape>,
    context: u32,
    parallel: u32,
    batch: u32,
) -> u64 {
    let Some(s) = shape else {
        return file_size + RUNTIME_OVERHEAD;
    };
    let context = match context {
        0 => s.context_train.clamp(1, 4096),
        n => u64::from(n),
    };
    // Saturating: a header's values cannot wrap the need around to a
    // small number (an impossible need is refused with its figures).
    let tokens = context.saturating_mul(u64::from(parallel.max(1)));
    let kv = tokens
        .saturating_mul(s.layers)
        .saturating_mul(s.kv_bytes_per_token_layer());
    let logits = u64::from(if batch == 0 { 512 } else { batch })
        .saturating_mul(s.vocab)
        .saturating_mul(4);
    file_size
        .saturating_add(kv)
        .saturating_add(logits)
        .saturating_add(RUNTIME_OVERHEAD)
}

/// A LITE model's need: the file, an arena as large again, and the
/// runtime's overhead.
pub fn lite_need(file_size: u64) -> u64 {
    2 * file_size + RUNTIME_OVERHEAD
}

/// A VISION model's need: the detector file, OpenCV's and LiteRT's
/// runtime, and frames in flight (8 of 1920x1080 BGR by default).
pub fn vision_need(file_size: u64) -> u64 {
    2 * file_size + RUNTIME_OVERHEAD + 8 * 1920 * 1080 * 3
}

/// A running model that admission could unload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Model id.
    pub id: String,
    /// What it holds (its estimate, or more when measured larger).
    pub footprint: u64,
    /// Last call (Unix ms; 0: never).
    pub last_used_ms: i64,
    /// Never unloaded to make room.
    pub pinned: bool,
    /// Calls running or waiting.
    pub busy: bool,
}

/// The room a load has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// What all models may use together.
    pub limit: u64,
    /// What the running models hold.
    pub committed: u64,
    /// Memory free now on the host (or under the container's limit).
    pub free: u64,
    /// Kept free.
    pub reserve: u64,
}

impl Room {
    /// What a new model may take without unloading anything.
    pub fn available(&self) -> u64 {
        let under_limit = self
            .limit
            .saturating_sub(self.reserve)
            .saturating_sub(self.committed);
        under_limit.min(self.free.saturating_sub(self.reserve))
    }
}

/// Admission's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Load now.
    Fits,
    /// Unload these (in this order), then load.
    Evict(Vec<String>),
    /// It cannot fit, even after unloading every idle, unpinned model.
    Refuse {
        /// The model's need.
        needed: u64,
        /// What it could have (unloading included).
        free: u64,
        /// The reserve kept free.
        reserve: u64,
    },
}

/// Whether a model that needs `need` fits in `room`, unloading idle,
/// unpinned models, least recently used first, when it does not.
pub fn admit(need: u64, room: Room, candidates: &[Candidate]) -> Admission {
    let mut have = room.available();
    if need <= have {
        return Admission::Fits;
    }
    let mut idle: Vec<&Candidate> = candidates.iter().filter(|c| !c.pinned && !c.busy).collect();
    idle.sort_by_key(|c| (c.last_used_ms, c.id.clone()));
    let mut evict = Vec::new();
    for c in idle {
        evict.push(c.id.clone());
        have += c.footprint;
        if need <= have {
            return Admission::Evict(evict);
        }
    }
    Admission::Refuse {
        needed: need,
        free: have,
        reserve: room.reserve,
    }
}

/// GPU layers of a text model that fit in a device's free memory less its
/// reserve and `overhead` (KV cache and buffers), at most `wanted` (-1 or
/// more than the model has: all `layers`).
pub fn gpu_layers_that_fit(
    free: u64,
    reserve: u64,
    overhead: u64,
    layers: u64,
    per_layer: u64,
    wanted: i32,
) -> i32 {
    let wanted = if wanted < 0 {
        layers
    } else {
        (wanted as u64).min(layers)
    };
    if per_layer == 0 {
        return wanted as i32;
    }
    let room = free.saturating_sub(reserve).saturating_sub(overhead);
    (room / per_layer).min(wanted) as i32
}

/// A worker's memory as the guard weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Model id.
    pub id: String,
    /// Its worker (a swap's two versions share the id).
    pub pid: u32,
    /// Private memory now.
    pub private: u64,
    /// Its estimate.
    pub estimate: u64,
    /// Its budget (0: none).
    pub budget: u64,
    /// Never killed for the host reserve while another can be.
    pub pinned: bool,
}

/// Why the guard kills a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Over its own budget.
    OverBudget {
        id: String,
        pid: u32,
        used: u64,
        budget: u64,
    },
    /// The host fell under its reserve; this worker is the most over its
    /// estimate (or the largest).
    HostReserve {
        id: String,
        pid: u32,
        used: u64,
        free: u64,
        reserve: u64,
    },
}

/// The workers to kill: every one over its budget; and when the host is
/// under its reserve and none was, the one most over its estimate
/// (unpinned first; ties: the largest).
pub fn verdicts(usage: &[Usage], free: u64, reserve: u64) -> Vec<Verdict> {
    let over: Vec<Verdict> = usage
        .iter()
        .filter(|u| u.budget > 0 && u.private > u.budget)
        .map(|u| Verdict::OverBudget {
            id: u.id.clone(),
            pid: u.pid,
            used: u.private,
            budget: u.budget,
        })
        .collect();
    if !over.is_empty() || free >= reserve {
        return over;
    }
    usage
        .iter()
        .max_by_key(|u| (!u.pinned, u.private.saturating_sub(u.estimate), u.private))
        .map(|u| Verdict::HostReserve {
            id: u.id.clone(),
            pid: u.pid,
            used: u.private,
            free,
            reserve,
        })
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn cand(id: &str, mib: u64, used: i64, pinned: bool, busy: bool) -> Candidate {
        Candidate {
            id: id.into(),
            footprint: mib * MIB,
            last_used_ms: used,
            pinned,
            busy,
        }
    }

    #[test]
    fn admission_table() {
        let room = |committed: u64, free: u64| Room {
            limit: 1000 * MIB,
            committed: committed * MIB,
            free: free * MIB,
            reserve: 100 * MIB,
        };
        let models = [
            cand("old", 200, 10, false, false),
            cand("new", 300, 20, false, false),
            cand("pinned", 300, 1, true, false),
            cand("busy", 100, 0, false, true),
        ];
        let cases: Vec<(&str, u64, Room, Admission)> = vec![
            ("fits under both", 100, room(800, 5000), Admission::Fits),
            ("exactly fits", 100, room(800, 200), Admission::Fits),
            (
                "host free is the tighter bound",
                150,
                room(0, 200),
                Admission::Evict(vec!["old".into()]),
            ),
            (
                "least recently used goes first",
                150,
                room(900, 5000),
                Admission::Evict(vec!["old".into()]),
            ),
            (
                "then the next",
                400,
                room(900, 5000),
                Admission::Evict(vec!["old".into(), "new".into()]),
            ),
            (
                "pinned and busy models stay: refused with the numbers",
                600,
                room(900, 5000),
                Admission::Refuse {
                    needed: 600 * MIB,
                    free: 500 * MIB,
                    reserve: 100 * MIB,
                },
            ),
        ];
        for (what, need, room, want) in cases {
            assert_eq!(admit(need * MIB, room, &models), want, "{what}");
        }
        // Only pinned models left: refused without unloading anything.
        let pinned_only = [cand("p", 500, 0, true, false)];
        assert!(matches!(
            admit(200 * MIB, room(900, 5000), &pinned_only),
            Admission::Refuse { .. }
        ));
    }

    #[test]
    fn layers_that_fit_table() {
        let g = 1u64 << 30;
        // (free, reserve, overhead, layers, per_layer, wanted) -> layers
        let cases = [
            ((8 * g, g, g, 32, 100 * MIB, -1), 32),
            ((2 * g, g / 2, g / 2, 32, 100 * MIB, -1), 10),
            ((2 * g, g / 2, g / 2, 32, 100 * MIB, 4), 4),
            ((g, g, 0, 32, 100 * MIB, -1), 0),
            ((g / 2, g, 0, 32, 100 * MIB, 99), 0),
            ((g, 0, 0, 32, 0, 7), 7),
        ];
        for ((free, reserve, overhead, layers, per_layer, wanted), want) in cases {
            assert_eq!(
                gpu_layers_that_fit(free, reserve, overhead, layers, per_layer, wanted),
                want,
                "free {free} reserve {reserve} wanted {wanted}"
            );
        }
    }

    #[test]
    fn verdict_table() {
        let u = |id: &str, private: u64, estimate: u64, budget: u64, pinned: bool| Usage {
            id: id.into(),
            pid: id.len() as u32,
            private: private * MIB,
            estimate: estimate * MIB,
            budget: budget * MIB,
            pinned,
        };
        let workers = [
            u("a", 300, 250, 0, false),
            u("b", 500, 100, 400, false),
            u("c", 900, 100, 0, true),
        ];
        assert_eq!(
            verdicts(&workers, 5000 * MIB, 100 * MIB),
            vec![Verdict::OverBudget {
                id: "b".into(),
                pid: 1,
                used: 500 * MIB,
                budget: 400 * MIB
            }],
            "over its budget, host fine"
        );
        let within = [u("a", 300, 250, 0, false), u("c", 900, 100, 0, true)];
        assert!(verdicts(&within, 5000 * MIB, 100 * MIB).is_empty());
        assert_eq!(
            verdicts(&within, 50 * MIB, 100 * MIB),
            vec![Verdict::HostReserve {
                id: "a".into(),
                pid: 1,
                used: 300 * MIB,
                free: 50 * MIB,
                reserve: 100 * MIB
            }],
            "under the reserve: the unpinned one goes before the pinned one"
        );
        let pinned = [u("c", 900, 100, 0, true)];
        assert_eq!(verdicts(&pinned, 50 * MIB, 100 * MIB).len(), 1);
    }

    #[test]
    fn needs_grow_with_context_and_slots() {
        let shape = TextShape {
            layers: 30,
            embedding: 576,
            heads: 9,
            kv_heads: 3,
            context_train: 8192,
            vocab: 49152,
        };
        let one = text_need(100 * MIB, Some(&shape), 2048, 1, 512);
        let four = text_need(100 * MIB, Some(&shape), 2048, 4, 512);
        // 2048 tokens × 30 layers × 768 bytes = 45 MiB of KV per slot.
        assert_eq!(four - one, 3 * 2048 * 30 * 768);
        // Context 0: the model's, capped at 4096.
        assert_eq!(
            text_need(0, Some(&shape), 0, 1, 512),
            text_need(0, Some(&shape), 4096, 1, 512)
        );
        assert_eq!(text_need(10, None, 0, 0, 0), 10 + RUNTIME_OVERHEAD);
    }
}
