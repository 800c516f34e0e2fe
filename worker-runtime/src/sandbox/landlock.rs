//! Landlock: what a worker may reach in the file system and the network
//! once its runtime has started. Every file-system right of the ABI is
//! handled (so denied unless a rule grants it), and the rules grant only
//! reading (and executing, where libraries load) of:
//!
//! - the system's libraries (`/usr`, `/lib`, `/lib64`, `/lib32`): LiteRT
//!   and OpenCV `dlopen` at load time (OpenCV's GDAL plugin directory
//!   included), and the dynamic loader reads `/etc/ld.so.cache`;
//! - the directory of the LiteRT library the supervisor named
//!   (`SIDECAR_LITERT_LIB`, the `lite_runtime` config), loaded with the
//!   model;
//! - what the runtimes and the worker read about the machine and
//!   themselves: `/proc/self` (memory reports from `status`, `maps`,
//!   `cgroup`), `/proc/cpuinfo`, `/proc/meminfo`, `/sys/devices/system/cpu`
//!   and `/sys/devices/system/node` (thread pools size themselves from the
//!   CPU topology), `/sys/fs/cgroup` (CPU quota), whether huge pages are
//!   on (`/sys/kernel/mm/transparent_hugepage/enabled`,
//!   `/proc/sys/vm/nr_hugepages`), `/dev/null`, `/dev/urandom`, and a few
//!   loader and libc files in `/etc`;
//! - the model: a rule on the descriptor the supervisor opened and handed
//!   over, so `/proc/self/fd/N` opens (a rule holds on the file itself,
//!   wherever it is reached from) while the model store, its listing and
//!   every other file in it stay out of reach;
//! - the GPU's device nodes (`/dev/nvidia*`, `/dev/dri`, read-write with
//!   device ioctls) only when the model asks for a GPU. Untested: the test
//!   machines have no GPU.
//!
//! Nothing is writable otherwise. ABI 4 and later: no TCP bind or connect
//! (no port is granted); ABI 6 and later: no signal to, and no abstract
//! Unix socket of, any process outside the worker's own domain (the
//! supervisor, the other workers).
//!
//! How the list was found: `strace -f -e trace=%file,socket,connect,bind`
//! over each worker loading its e2e models and serving (SmolLM2 and MiniLM
//! through llama.cpp; MediaPipe face detection through LiteRT, alone and
//! under OpenCV; an OpenCV cascade): every path opened after `main`
//! starts, none opened for writing, no socket. Then the e2e suites of
//! every family under the rules, traced again for EACCES: none left.
//!
//! Best effort across ABIs: on an older kernel the rights it does not know
//! are left out and the report says "partially enforced"; without
//! Landlock it says what is missing and the worker goes on.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, path_beneath_rules,
};

use super::Report;

/// The ABI the rules are written for (the newest this code was tested
/// on); a newer kernel enforces it whole, an older one what it knows.
pub const ABI_TARGET: ABI = ABI::V7;

/// Read and execute, beneath each (those missing on this system are
/// skipped).
pub const LIBRARIES: &[&str] = &["/usr", "/lib", "/lib64", "/lib32"];

/// Read only, beneath each.
pub const READ_ONLY: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/proc/self",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/sys/devices/system/cpu",
    "/sys/devices/system/node",
    "/sys/fs/cgroup",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/proc/sys/vm/nr_hugepages",
    "/dev/null",
    "/dev/urandom",
];

/// Read only, for a model on a GPU: what the drivers read.
const GPU_READ_ONLY: &[&str] = &["/proc/driver/nvidia", "/sys/bus/pci", "/sys/module/nvidia"];

/// What one worker may reach beyond the fixed lists.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// Files handed over open (the model): read, nothing else.
    pub files: Vec<BorrowedFd<'a>>,
    /// Directories of native libraries loaded at run time: read and
    /// execute.
    pub libraries: Vec<PathBuf>,
    /// The model asks for a GPU: its device nodes too.
    pub gpu: bool,
}

impl<'a> Plan<'a> {
    /// The plan of a worker the supervisor started: `files` (inherited
    /// open), LiteRT's directory from `SIDECAR_LITERT_LIB`, and the GPU
    /// when [`super::GPU_ENV`] is `1`.
    pub fn from_env(files: &'a [OwnedFd]) -> Plan<'a> {
        let libraries = std::env::var_os("SIDECAR_LITERT_LIB")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .and_then(|p| p.parent().map(PathBuf::from))
            .into_iter()
            .collect();
        Plan {
            files: files.iter().map(|f| f.as_fd()).collect(),
            libraries,
            gpu: std::env::var(super::GPU_ENV).is_ok_and(|v| v == "1"),
        }
    }
}

/// Restricts this thread and everything it starts from now on to `plan`;
/// what could not be enforced is reported as missing.
pub fn restrict(plan: &Plan<'_>) -> Report {
    describe(ruleset(plan).map(|s| (s.ruleset, s.landlock)))
}

/// The report of one attempt: what the kernel enforced, at which ABI.
fn describe(outcome: Result<(RulesetStatus, LandlockStatus), RulesetError>) -> Report {
    let mut report = Report::default();
    let (ruleset, landlock) = match outcome {
        Ok(o) => o,
        Err(e) => {
            report.missing(format!("landlock: {e}"));
            return report;
        }
    };
    let abi = match landlock {
        LandlockStatus::Available { effective_abi, .. } => format!("ABI {effective_abi:?}"),
        LandlockStatus::NotEnabled => "disabled at boot (lsm=)".to_owned(),
        LandlockStatus::NotImplemented => "not built into this kernel".to_owned(),
    };
    match ruleset {
        RulesetStatus::FullyEnforced => report.applied(format!("landlock {abi}: fully enforced")),
        RulesetStatus::PartiallyEnforced => {
            report.applied(format!("landlock {abi}: partially enforced"));
            report.missing(format!(
                "landlock: partially enforced: the kernel's {abi} lacks rights of {ABI_TARGET:?} (no network rules before ABI 4, no scoping before ABI 6)"
            ));
        }
        RulesetStatus::NotEnforced => report.missing(format!("landlock: not enforced: {abi}")),
    }
    report
}

fn ruleset(plan: &Plan<'_>) -> Result<landlock::RestrictionStatus, RulesetError> {
    let read_exec = AccessFs::from_read(ABI_TARGET);
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let files = plan
        .files
        .iter()
        .map(|f| Ok::<_, RulesetError>(PathBeneath::new(*f, AccessFs::ReadFile)));
    let (gpu_devices, gpu_read): (Vec<PathBuf>, &[&str]) = if plan.gpu {
        (gpu_device_nodes(), GPU_READ_ONLY)
    } else {
        (Vec::new(), &[])
    };
    Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_TARGET))?
        .handle_access(AccessNet::from_all(ABI_TARGET))?
        .scope(Scope::from_all(ABI_TARGET))?
        .create()?
        .add_rules(path_beneath_rules(LIBRARIES, read_exec))?
        .add_rules(path_beneath_rules(&plan.libraries, read_exec))?
        .add_rules(path_beneath_rules(READ_ONLY, read))?
        .add_rules(files)?
        .add_rules(path_beneath_rules(gpu_read, read))?
        .add_rules(path_beneath_rules(&gpu_devices, device | AccessFs::ReadDir))?
        .restrict_self()
}

/// `/dev/nvidia*` and `/dev/dri`, those present.
fn gpu_device_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    nodes.push(PathBuf::from("/dev/dri"));
    nodes
}

#[cfg(test)]
mod tests;
