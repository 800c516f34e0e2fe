//! The worker's seccomp filter, installed last at start (after the
//! capabilities, no_new_privs and the rlimits), before any model file is
//! read, on every thread (`SECCOMP_FILTER_FLAG_TSYNC`).
//!
//! Three filters, built in-process with `seccompiler` (the kernel applies
//! the strictest answer of all, so a refusal in one is not undone by an
//! allow in another):
//!
//! - the refusals: [`lists::REFUSED`] answer EPERM, and so do `clone` with
//!   any `CLONE_NEW*` flag and the signal calls of
//!   [`lists::OWN_PID_ONLY`] aimed at another pid: code that probes for
//!   them sees an error it can handle, and a test can read it;
//! - `clone3` answers ENOSYS: its flags sit behind a pointer the filter
//!   cannot read, and glibc falls back to `clone` on ENOSYS;
//! - the allow-list: the family's calls ([`lists`]). Anything else kills
//!   the process with SIGSYS (`enforce`): a call the lists missed is loud
//!   (reason `crash`, signal 31, in the supervisor's log and metrics)
//!   rather than an error some native runtime would swallow or turn into a
//!   wrong answer; `log` lets it through and has the kernel log it
//!   (`SECCOMP_RET_LOG`, the operator's switch when a runtime path needs a
//!   call we missed); `off` installs nothing.

mod lists;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use sidecar_proto::v1::ModelFamily;

/// The environment variable the supervisor sets from `[workers] seccomp`.
pub const ENV: &str = "SIDECAR_WORKER_SECCOMP";

/// What the filter does with a call its family's list lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kill the process (SIGSYS).
    Enforce,
    /// Allow it and have the kernel log it.
    Log,
    /// No filter at all.
    Off,
}

impl Mode {
    /// Reads [`ENV`]: unset means `enforce`; a value other than `enforce`,
    /// `log` or `off` also means `enforce` (a typo must not open the
    /// sandbox), with a message saying so.
    pub fn from_env() -> (Mode, Option<String>) {
        match std::env::var(ENV) {
            Err(std::env::VarError::NotPresent) => (Mode::Enforce, None),
            Ok(v) => match Mode::parse(&v) {
                Some(m) => (m, None),
                None => (Mode::Enforce, Some(unknown(&v))),
            },
            Err(std::env::VarError::NotUnicode(v)) => {
                (Mode::Enforce, Some(unknown(&v.to_string_lossy())))
            }
        }
    }

    /// `enforce`, `log` or `off`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "enforce" => Some(Mode::Enforce),
            "log" => Some(Mode::Log),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

fn unknown(v: &str) -> String {
    let v: String = v.chars().take(32).collect();
    format!("{ENV} is {v:?}, not one of \"enforce\", \"log\", \"off\": enforcing")
}

/// [`install`] in the mode [`ENV`] names (a value it cannot read is
/// logged, and enforced).
pub fn install_configured(family: ModelFamily) -> Vec<String> {
    let (mode, complaint) = Mode::from_env();
    if let Some(c) = complaint {
        tracing::warn!("{c}");
    }
    install(family, mode)
}

/// Installs the filter of `family` in `mode` on every thread; returns what
/// is missing from the sandbox (for the `missing` list): the filter when
/// the kernel refused it or the architecture has no list, or the mode when
/// the operator weakened it.
pub fn install(family: ModelFamily, mode: Mode) -> Vec<String> {
    match mode {
        Mode::Off => return vec![format!("seccomp: off ({ENV}=off)")],
        Mode::Log => {}
        Mode::Enforce => {}
    }
    // A GPU model opens its device nodes read-write (and Landlock allows
    // exactly those); otherwise no descriptor is ever opened for writing.
    let gpu = std::env::var_os(crate::sandbox::GPU_ENV).is_some_and(|v| v == "1");
    let result = programs(family, mode, std::process::id(), gpu).and_then(|progs| {
        progs
            .iter()
            .try_for_each(|p| seccompiler::apply_filter_all_threads(p).map_err(|e| e.to_string()))
    });
    let mut missing = Vec::new();
    if let Err(e) = result {
        missing.push(format!("seccomp: {e}"));
    } else if mode == Mode::Log {
        missing.push(format!(
            "seccomp: log only ({ENV}=log: calls outside the allow-list are logged, not refused)"
        ));
    }
    missing
}

/// The architecture the filters are built for; `Err` where there is no
/// list for it.
fn arch() -> Result<TargetArch, String> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(format!(
            "no allow-list for architecture {}",
            std::env::consts::ARCH
        ))
    }
}

/// The allow-list of `family`: its base, its own calls, and the refused
/// ones (so that the refusal filter, not a kill, answers them).
fn allowed(family: ModelFamily) -> Vec<lists::Sys> {
    let own = match family {
        ModelFamily::Text => lists::TEXT,
        ModelFamily::Vision => lists::VISION,
        ModelFamily::Lite => lists::LITE,
        ModelFamily::Unspecified => &[],
    };
    [
        lists::BASE,
        lists::BASE_X86_64,
        own,
        lists::REFUSED,
        lists::OWN_PID_ONLY,
        lists::OWN_PID_OR_SELF,
    ]
    .concat()
}

/// The three programs, in the order they are installed (the refusals,
/// `clone3`, the allow-list).
fn programs(
    family: ModelFamily,
    mode: Mode,
    pid: u32,
    gpu: bool,
) -> Result<Vec<BpfProgram>, String> {
    let arch = arch()?;
    let unlisted = match mode {
        Mode::Log => SeccompAction::Log,
        Mode::Enforce | Mode::Off => SeccompAction::KillProcess,
    };
    let allow: BTreeMap<i64, Vec<SeccompRule>> = allowed(family)
        .into_iter()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    // The allow-list last: it does not list seccomp() itself, so nothing
    // can be installed after it.
    let filters = [
        SeccompFilter::new(
            refusals(pid, gpu)?,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        ),
        SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        ),
        SeccompFilter::new(allow, unlisted, SeccompAction::Allow, arch),
    ];
    filters
        .into_iter()
        .map(|f| {
            f.and_then(BpfProgram::try_from)
                .map_err(|e| format!("building the filter: {e}"))
        })
        .collect()
}

/// `fcntl` commands that name who receives a descriptor's SIGIO/SIGURG, and
/// which signal: a worker could have the kernel signal the supervisor (the
/// kernel checks only the uid). Linux's values, the same on x86_64 and
/// aarch64 (`F_SETSIG` and `F_SETOWN_EX` are not in the `libc` crate).
const FCNTL_SIGNAL_OWNER: [u64; 3] = [libc::F_SETOWN as u64, 10, 15];

/// What the EPERM filter matches: every [`lists::REFUSED`] call; `clone`
/// with a namespace flag, `CLONE_PARENT`, or without `CLONE_THREAD` (a new
/// process: no fork, no spawn; threads only); the signal calls aimed at a
/// pid not `pid`; `prlimit64` aimed at a pid neither 0 (self) nor `pid`;
/// `fcntl` naming a signal owner; and unless the model uses a `gpu`,
/// `openat` for writing, creating or truncating (a second wall where
/// Landlock is missing: a same-uid worker could reopen its model's
/// `/proc/self/fd/N` read-write and poison the store).
fn refusals(pid: u32, gpu: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let err = |e: seccompiler::BackendError| format!("building the filter: {e}");
    // A rule that matches when `(arg & mask) == value`.
    let masked = |arg: u8, mask: u64, value: u64| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            value,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(err)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = lists::REFUSED
        .iter()
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    let namespaces = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
    ];
    let clone = namespaces
        .iter()
        .map(|&flag| {
            let flag = flag as u32 as u64;
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut clone = clone;
    let thread = libc::CLONE_THREAD as u64;
    let parent = libc::CLONE_PARENT as u64;
    clone.push(masked(0, thread, 0)?);
    clone.push(masked(0, parent, parent)?);
    rules.insert(libc::SYS_clone, clone);
    let fcntl = FCNTL_SIGNAL_OWNER
        .iter()
        .map(|&cmd| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cmd)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_fcntl, fcntl);
    if !gpu {
        let mode = libc::O_ACCMODE as u64;
        let (create, truncate) = (libc::O_CREAT as u64, libc::O_TRUNC as u64);
        rules.insert(
            libc::SYS_openat,
            vec![
                masked(2, mode, libc::O_WRONLY as u64)?,
                masked(2, mode, libc::O_RDWR as u64)?,
                masked(2, create, create)?,
                masked(2, truncate, truncate)?,
            ],
        );
    }
    for &(_, nr) in lists::OWN_PID_ONLY {
        let other =
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(pid))
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(err)?;
        rules.insert(nr, vec![other]);
    }
    for &(_, nr) in lists::OWN_PID_OR_SELF {
        let not = |v: u64| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v);
        let other = not(0)
            .and_then(|zero| Ok(vec![zero, not(u64::from(pid))?]))
            .and_then(SeccompRule::new)
            .map_err(err)?;
        rules.insert(nr, vec![other]);
    }
    Ok(rules)
}

/// How many calls each family's allow-list holds (for the docs and tests).
pub fn allow_list_len(family: ModelFamily) -> usize {
    let mut nrs: Vec<_> = allowed(family).into_iter().map(|(_, nr)| nr).collect();
    nrs.sort_unstable();
    nrs.dedup();
    nrs.len()
}

#[cfg(test)]
mod tests;
